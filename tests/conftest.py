"""Shared fixtures and helpers of the tests (imported as ``from conftest import ...``).

Tiny offline backbones, the location of the shared reference data, a W&B logger that keeps
what it is given, a reader of offline W&B runs, and small builders of the public data layouts.
Heavy packages (lightning, transformers, the data modules) are imported where a helper runs,
not here: collecting a subset of the tests stays quick.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

# No hub look-ups and no W&B account in tests: set before transformers/wandb import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The public reference samples live beside the repository; tests skip when absent.
REFERENCE_DATA = REPO.parent / "shared" / "reference-data"


def tiny_lavin(**adapter_kwargs):
    """A configured tiny LaVIN: 2-layer LLaMA (width 64) + 2-layer CLIP ViT (width 32)."""
    from lavin_lightning.adapters.mma import MMAConfig
    from lavin_lightning.backbones.llama import LLMSpec
    from lavin_lightning.backbones.vision import VisionSpec
    from lavin_lightning.models.base import OptimConfig
    from lavin_lightning.models.lavin import LaVIN

    adapter_kwargs.setdefault("dropout", 0.0)
    module = LaVIN(
        llm=LLMSpec(config="tiny"),
        vision=VisionSpec(kind="clip", config="tiny", cls_every=1),
        adapter=MMAConfig(**adapter_kwargs),
        optim=OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0),
    )
    module.configure_model()
    return module


@pytest.fixture
def make_tiny_lavin():
    def make(seed: int = 0, **adapter_kwargs):
        torch.manual_seed(seed)
        return tiny_lavin(**adapter_kwargs)

    return make


# --------------------------------------------------------------------------- files


def write_json(path: Path, value) -> Path:
    """``value`` as JSON at ``path`` (a string is written as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # newline="" keeps the \r\n and quoted newlines exactly as written.
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path


def write_image(path: Path, size=(8, 8), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def expect_data_error(call, *fragments) -> str:
    """Run ``call``; it must raise a DataError whose message holds every fragment."""
    from lavin_lightning.errors import DataError

    with pytest.raises(DataError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


# --------------------------------------------------------------------------- callbacks


def _fake_wandb_class():
    from lightning.pytorch.loggers import WandbLogger

    class FakeWandb(WandbLogger):
        """A WandbLogger that keeps what it is given (no run, no network)."""

        def __init__(self):  # noqa: D107 -- no wandb run
            self.metrics, self.tables, self.hyperparams = [], [], []

        def log_metrics(self, metrics, step=None):
            self.metrics.append(metrics)

        def log_hyperparams(self, params):
            self.hyperparams.append(params)

        def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
            self.tables.append((key, columns, data))

    return FakeWandb


def __getattr__(name: str):
    # `from conftest import FakeWandb` builds the class on first use: it subclasses lightning's
    # WandbLogger (the callbacks test for it), and lightning is slow to import.
    if name == "FakeWandb":
        globals()["FakeWandb"] = _fake_wandb_class()
        return globals()["FakeWandb"]
    raise AttributeError(name)


def run_test_epoch(callback, dm, tmp_path, texts, loggers=()):
    """Drive a TestScoring callback as Lightning does at test time, on one batch."""
    trainer = SimpleNamespace(datamodule=dm, loggers=list(loggers), is_global_zero=True, global_step=0,
                              default_root_dir=str(tmp_path / "run"))
    callback.on_test_epoch_start(trainer, None)
    outputs = {"pids": list(texts), "texts": list(texts.values())}
    callback.on_test_batch_end(trainer, None, outputs, None, 0)
    callback.on_test_epoch_end(trainer, None)
    return trainer


def answer_targets(dm, role="train"):
    """pid -> the decoded supervised answer (EOS left out) of each row of ``role``."""
    from lavin_lightning.batch import IGNORE_INDEX

    tok = dm.tokenizer
    return {s.pid: tok.decode([t for t in s.labels if t != IGNORE_INDEX][:-1]).strip()
            for s in dm.datasets[role].samples}


# --------------------------------------------------------------------------- ScienceQA


COLOURS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 50, 210)}


def write_colour_problems(root, n_train: int, n_test: int, seed: int = 0) -> None:
    """ScienceQA layout; the answer depends only on the picture (options in a fixed order)."""
    rng = random.Random(seed)
    names = list(COLOURS)
    problems, splits = {}, {"train": [], "test": []}
    for i in range(n_train + n_test):
        pid, split = str(i + 1), "train" if i < n_train else "test"
        answer = i % len(names)
        jitter = [rng.randint(-25, 25) for _ in range(3)]
        colour = tuple(max(0, min(255, c + j)) for c, j in zip(COLOURS[names[answer]], jitter))
        folder = root / "images" / split / pid
        folder.mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(folder / "image.png")
        problems[pid] = {
            "question": "What colour is the picture?", "choices": names, "answer": answer, "hint": "",
            "image": "image.png", "task": "closed choice", "grade": "grade3", "subject": "natural science",
            "topic": "colours", "category": "Colours", "skill": "", "lecture": "", "solution": "", "split": split,
        }
        splits[split].append(pid)
    (root / "problems.json").write_text(json.dumps(problems))
    splits["val"] = splits["train"][:8]
    (root / "pid_splits.json").write_text(json.dumps(splits))


def scored_problem(subject, grade, hint, image, topic, answer, n_choices=4):
    return {
        "question": "q",
        "choices": [f"c{i}" for i in range(n_choices)],
        "answer": answer,
        "hint": hint,
        "image": image,
        "task": "closed choice",
        "grade": grade,
        "subject": subject,
        "topic": topic,
        "category": "c",
        "skill": "s",
        "lecture": "",
        "solution": "",
        "split": "test",
    }


# Six problems covering every category: TXT+IMG overlap (p1, p6), IMG only (p2), TXT only
# (p4), NO context (p3, p5); both grade bands; three subjects; two topics, met in
# unsorted order (writing first) so that the sorted key order is really tested.
HAND_PROBLEMS = {
    "p1": scored_problem("natural science", "grade3", "a hint", "image.png", "writing", 1),
    "p2": scored_problem("natural science", "grade8", "", "image.png", "writing", 0),
    "p3": scored_problem("social science", "grade5", "", None, "physics", 2),
    "p4": scored_problem("social science", "grade10", "hint", None, "writing", 1),
    "p5": scored_problem("language science", "grade12", "", None, "physics", 0, n_choices=2),
    "p6": scored_problem("language science", "grade1", "ctx", "image.png", "physics", 1),
}
HAND_PREDICTIONS = {
    "p1": 1,  # int, correct
    "p2": " 0 ",  # digit string, correct
    "p3": "C",  # letter -> 2, correct
    "p4": "b",  # unparsable -> wrong, unparsed
    "p5": 3,  # out of range for 2 choices -> wrong, NOT unparsed
    "p6": True,  # bool would equal answer 1 if treated as int -> wrong, unparsed
}


@pytest.fixture
def scienceqa_root(tmp_path):
    root = tmp_path / "sqa"
    root.mkdir()
    (root / "problems.json").write_text(json.dumps(HAND_PROBLEMS), encoding="utf-8")
    splits = {"train": [], "test": list(HAND_PROBLEMS), "minitest": ["p1", "p2"]}
    (root / "pid_splits.json").write_text(json.dumps(splits), encoding="utf-8")
    return root


# --------------------------------------------------------------------------- captions


def write_coco_references(tmp_path: Path, with_images: bool = True) -> Path:
    """A COCO caption annotation file (refs.json) of images 7 and 3; ``images`` lists 3, 7, 9."""
    data = {
        "annotations": [
            {"image_id": 7, "id": 1, "caption": "a dog on the grass"},
            {"image_id": 3, "id": 2, "caption": "a cat on a sofa"},
            {"image_id": 7, "id": 3, "caption": "a brown dog"},
        ]
    }
    if with_images:
        data["images"] = [{"id": 3}, {"id": 7}, {"id": 9}]
    return write_json(tmp_path / "refs.json", data)


# --------------------------------------------------------------------------- MMLU, TruthfulQA


def write_mmlu(tmp_path):
    """Two subjects in the Hendrycks layout: physics (2 dev, 2 test) and alpha (2 dev, 1 test)."""
    root = tmp_path / "mmlu"
    write_text(root / "dev" / "high_school_physics_dev.csv",
          "Dev one?,a1,b1,c1,d1,A\n"
          "Dev two?,a2,b2,c2,d2,C\n")
    write_text(root / "test" / "high_school_physics_test.csv",
          "Test q?,t1,t2,t3,t4,B\n"
          "A longer question about velocity?,x,y,z,w,D\n")
    write_text(root / "dev" / "alpha_dev.csv", "d?,1,2,3,4,B\ne?,5,6,7,8,A\n")
    write_text(root / "test" / "alpha_test.csv", "Alpha q?,p,q,r,s,A\n")
    return root


def write_truthfulqa(tmp_path, records=None):
    records = records if records is not None else [
        {"question": "What is the capital of France?",
         "mc1_targets": {"Paris.": 1, "Lyon.": 0, "Marseille.": 0},
         "mc2_targets": {"Paris.": 1, "Lyon.": 0, "Marseille.": 0}},
        {"question": "Is the Earth flat?",
         "mc1_targets": {"Yes, it is flat.": 0, "No, it is round.": 1},
         "mc2_targets": {"Yes, it is flat.": 0, "No, it is round.": 1}},
    ]
    return write_text(tmp_path / "mc_task.json", json.dumps(records))


# --------------------------------------------------------------------------- VQA family


COMMON = {"global_batch_size": 2, "image_size": 16, "max_seq_len": 128}
NO_FILE = ("nowhere", 999)  # image ids whose file the fixtures never write


def textvqa_question(qid, image_id, question, answers=None):
    q = {"question_id": qid, "image_id": image_id, "question": question, "image_classes": ["Sign"],
         "flickr_original_url": f"https://example.org/{image_id}.jpg", "question_tokens": question.split()}
    if answers is not None:
        q["answers"] = answers
    return q


TEXTVQA = {
    "train": [
        textvqa_question(1, "a1", "what brand is it?", ["coca cola"] * 3 + ["coke"] * 4 + ["pepsi"] * 3),
        # A tie: "stop" and "STOP" 4 times each; the first seen wins.
        textvqa_question(2, "a2", "what does the sign say?", ["stop"] * 4 + ["STOP"] * 4 + ["halt"] * 2),
    ] + [textvqa_question(i, f"a{i}", f"what number is {i}?", [str(i)] * 10) for i in range(3, 13)],
    "val": [
        textvqa_question(101, "b1", "what colour is the text?", ["red"] * 10),
        textvqa_question(102, "b2", "is it open?", ["yes"] * 2 + ["no"] * 8),
    ],
    "test": [textvqa_question(201, "c1", "what is written?"), textvqa_question(202, "c2", "what time is it?")],
}
TEXTVQA_FOLDERS = {"train": "train_images", "val": "train_images", "test": "test_images"}


def write_textvqa(root, splits=TEXTVQA):
    for split, questions in splits.items():
        for q in questions:
            if isinstance(q, dict) and isinstance(q.get("image_id"), str) and q["image_id"] not in NO_FILE:
                path = root / TEXTVQA_FOLDERS[split] / f"{q['image_id']}.jpg"
                if not path.exists():
                    # One large image, to see the W&B thumbnail shrink it.
                    write_image(path, (300, 200) if q["image_id"] == "b1" else (8, 8))
        doc = {"dataset_name": "textvqa", "dataset_type": split, "dataset_version": "0.5.1", "data": questions}
        (root / f"TextVQA_0.5.1_{split}.json").write_text(json.dumps(doc))
    return root


def _tiny_data_module(cls, root, **kwargs):
    """``cls(root)`` with the byte tokenizer and small batches, images and rows (``COMMON``)."""
    from lavin_lightning.backbones.tiny import byte_tokenizer

    return cls(str(root), tokenizer=byte_tokenizer(), **{**COMMON, **kwargs})


def make_textvqa(root, **kwargs):
    from data_modules.textvqa import TextVQADataModule

    return _tiny_data_module(TextVQADataModule, root, **kwargs)


@pytest.fixture
def textvqa_root(tmp_path):
    return write_textvqa(tmp_path / "textvqa")


def aokvqa_question(qid, image_id, question, choices, correct=None, direct=None, difficult=False, split="train"):
    q = {"split": split, "image_id": image_id, "question_id": qid, "question": question, "choices": choices,
         "difficult_direct_answer": difficult}
    if correct is not None:
        q.update(correct_choice_idx=correct, direct_answers=direct, rationales=["Because.", "It is.", "Seen."])
    return q


AOKVQA = {
    "train": [
        aokvqa_question("t1", 1, "What is the man holding?", ["an umbrella", "a bat", "a dog", "a cup"], 0,
                        ["umbrella"] * 6 + ["parasol"] * 4),
        # A tie: the first seen of "bat" and "club" wins.
        aokvqa_question("t2", 2, "What sport?", ["golf", "baseball", "polo", "chess"], 1,
                        ["club"] * 3 + ["bat"] * 3 + ["baseball"] * 3 + ["ball"]),
    ] + [aokvqa_question(f"t{i}", i, f"Which {i}?", ["a", "b", "c", "d"], 0, [f"w{i}"] * 10) for i in range(3, 13)],
    "val": [
        aokvqa_question("v1", 101, "What colour is the bus?", ["red", "blue", "green", "yellow"], 0,
                        ["red"] * 2 + ["crimson"] * 8, split="val"),
        aokvqa_question("v2", 102, "Which animal sleeps here?", ["two dogs", "a cat", "three", "none"], 1,
                        ["cat"] * 10, split="val"),
        aokvqa_question("v3", 103, "Which letter?", ["x", "y", "z", "w"], 2, ["y"] * 10, difficult=True, split="val"),
    ],
    "test": [aokvqa_question("s1", 201, "What is on the table?", ["food", "a lamp", "books", "a cat"], split="test")],
}


def write_aokvqa(root, splits=AOKVQA):
    root.mkdir(parents=True, exist_ok=True)
    for split, questions in splits.items():
        for q in questions:
            if isinstance(q, dict) and isinstance(q.get("image_id"), int) and q["image_id"] not in NO_FILE:
                path = root / f"{split}2017" / f"{q['image_id']:012d}.jpg"
                if not path.exists():
                    write_image(path)
        (root / f"aokvqa_v1p0_{split}.json").write_text(json.dumps(questions))
    return root


def make_aokvqa(root, **kwargs):
    from data_modules.aokvqa import AOKVQADataModule

    return _tiny_data_module(AOKVQADataModule, root, **kwargs)


@pytest.fixture
def aokvqa_root(tmp_path):
    return write_aokvqa(tmp_path / "aokvqa")


def write_official_vqa(root):
    write_image(root / "images" / "val" / "1.png", (64, 256))
    (root / "questions_val.json").write_text(json.dumps(
        {"questions": [{"question_id": 7, "image_id": 1, "question": "Is it tall?"}]}))
    (root / "annotations_val.json").write_text(json.dumps({"annotations": [
        {"question_id": 7, "image_id": 1, "question_type": "is it", "answer_type": "yes/no",
         "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)]}]}))
    return root


# --------------------------------------------------------------------------- TextCaps


# image_id -> captions, per split; train and val have one entry per caption.
TEXTCAPS_CAPTIONS = {
    "train": {"aa01": ["A red Coca-Cola can.", "A can of coke.", " A soda can on a desk. "],
              "bb02": ["A stop sign.", "A red sign that says STOP."],
              **{f"c{i:03x}": [f"A sign with the number {i}."] for i in range(3, 9)}},
    "val": {"dd04": ["a red bus", "a big red bus"], "ee05": ["the blue sign", "a sign"]},
    "test": {"ff06": [], "ab07": []},
}


def textcaps_entries(split, captions=TEXTCAPS_CAPTIONS):
    """TextCaps entries of a split: one per caption (train/val), one per image (test)."""
    rows, caption_id = [], {"train": 0, "val": 1000, "test": 2000}[split]
    for image_id, sentences in captions[split].items():
        base = {"image_id": image_id, "image_classes": ["Sign"], "image_path": f"{split}/{image_id}.jpg",
                "image_width": 8, "image_height": 8, "set_name": split}
        if not sentences:
            rows.append(base)
        for sentence in sentences:
            caption_id += 1
            rows.append({**base, "caption_id": caption_id, "caption_str": sentence, "caption_tokens": sentence.split(),
                         "reference_strs": sentences, "reference_tokens": [s.split() for s in sentences]})
    return rows


def write_textcaps(root, data=None):
    data = data or {split: textcaps_entries(split) for split in TEXTCAPS_CAPTIONS}
    for split, rows in data.items():
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("image_path"), str) and "missing" not in row["image_path"]:
                # TextCaps uses TextVQA's images and image folders.
                path = root / TEXTVQA_FOLDERS[split] / row["image_path"]
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8) if row["image_id"] != "dd04" else (256, 64), (20, 20, 200)).save(path)
        (root / f"TextCaps_0.1_{split}.json").write_text(json.dumps(
            {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": "0.1", "data": rows}))
    return root


def make_textcaps(root, **kwargs):
    from data_modules.textcaps import TextCapsDataModule

    return _tiny_data_module(TextCapsDataModule, root, **kwargs)


@pytest.fixture
def textcaps_root(tmp_path):
    return write_textcaps(tmp_path / "textcaps")


# -- LaVIN-format batches ---------------------------------------------------------------------

LAVIN_PROMPTS = [
    ("Question: What colour is the square?\nContext: N/A\nOptions: (A) red (B) blue\nResponse:", "The answer is A."),
    ("Question: Is it round?\nContext: N/A\nOptions: (A) yes (B) no\nResponse:", "The answer is B."),
    ("Question: Which word is a colour?\nContext: N/A\nOptions: (A) teal (B) circle (C) three\nResponse:",
     "The answer is A."),
]


def make_batch(tokenizer, has_image=(True, False, True), with_labels=True, image_size=32, seed=0):
    """Right-padded batch in the data module's format, prompts of different lengths."""
    rows, labels = [], []
    for (prompt, answer), _ in zip(LAVIN_PROMPTS, has_image):
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        full = tokenizer(prompt + answer, add_special_tokens=False).input_ids if with_labels else prompt_ids
        ids = [tokenizer.bos_token_id] + full + ([tokenizer.eos_token_id] if with_labels else [])
        rows.append(ids)
        labels.append([-100] * (1 + len(prompt_ids)) + ids[1 + len(prompt_ids):])
    width = max(map(len, rows))
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "has_image": torch.tensor(has_image),
        "pixel_values": torch.randn(len(rows), 3, image_size, image_size, generator=gen)
        * torch.tensor(has_image, dtype=torch.float)[:, None, None, None],
        "pids": [str(i) for i in range(len(rows))],
    }
    if with_labels:
        batch["labels"] = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    return batch


def perturb_adapters(module, std=0.3, seed=1):
    """Non-zero adapters, so equality checks are not vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module._trainable.values():
            param.add_(torch.randn(param.shape, generator=gen) * std)


# -- the command line end to end -----------------------------------------------------------------


def prepare_easy_vqa(out, n_train: int, n_val: int, n_test: int):
    """The embedded easy-VQA data in the official VQA layout, built by `lavin-lightning prepare`."""
    pytest.importorskip("easy_vqa")
    from lavin_lightning.cli import main

    main(["prepare", "easy-vqa", "--layout", "vqa", "--out", str(out), "--n-train", str(n_train), "--n-val",
          str(n_val), "--n-test", str(n_test)])
    return out


def fit_test_and_rescore_vqa(args: list[str], data_root, run, *fit_args: str) -> tuple[dict, list, dict]:
    """`fit` then `test` with `args` on the VQA-layout data at `data_root` (CSV logs in `run`), then
    `score vqa` on the test loop's results file: (metrics, results, the standalone scores)."""
    from lavin_lightning.cli import main

    common = [*args, f"--data.init_args.root={data_root}", f"--trainer.default_root_dir={run}",
              "--trainer.logger.class_path=lightning.pytorch.loggers.CSVLogger",
              f"--trainer.logger.init_args.save_dir={run}"]
    main(["fit", *common, "--trainer.max_steps=2", *fit_args])
    main(["test", *common, f"--model.init_args.adapter_path={run / 'adapter'}"])
    metrics = json.loads((run / "metrics.json").read_text())
    results = json.loads((run / "results.json").read_text())
    main(["score", "vqa", "--questions", str(data_root / "questions_test.json"), "--annotations",
          str(data_root / "annotations_test.json"), "--results", str(run / "results.json"),
          "--output", str(run / "again.json")])
    return metrics, results, json.loads((run / "again.json").read_text())


# -- W&B offline runs ----------------------------------------------------------------------------


def wandb_run_records(run_dir) -> list:
    """The records of an offline W&B run folder (`offline-run-*`), as wandb's own protobuf
    `Record`s, in the order written.

    wandb writes `run-<id>.wandb` in LevelDB's log format: a 7-byte file header (":W&B",
    magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (checksum,
    length, kind: 1 whole record, 2 first, 3 middle, 4 last part); a block's last < 7
    bytes are padding.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    ident, _, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B run file"
    block, pos, parts, records = 32768, 7, None, []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # the padding at the end of a block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            records.append(parts + chunk)
        else:
            raise AssertionError(f"{path}: chunk kind {kind} at byte {pos}")
    out = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        out.append(record)
    return out


def wandb_run_contents(run_dir) -> SimpleNamespace:
    """What an offline W&B run holds, read from its records: `run` (the RunRecord: group,
    display_name, tags, job_type), `config` (the final config, charts under
    `_wandb.visualize`), `metrics` (define_metric records by name), `history` (the logged rows
    as dicts of `/`-joined keys), `summary` (the last summary values) and `artifacts` (by name:
    `{path in the artifact: local file}`; a logged table is an artifact holding its images)."""
    records = wandb_run_records(run_dir)
    run, config, metrics, history, summary, artifacts = None, {}, {}, [], {}, {}

    def apply(items, into):
        for item in items:
            keys = list(item.nested_key) or [item.key]
            target = into
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = json.loads(item.value_json)

    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            apply(record.run.config.update, config)
        elif kind == "config":
            apply(record.config.update, config)
        elif kind == "metric":
            metrics[record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "history":
            history.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            apply(record.summary.update, summary)
        elif kind == "artifact":
            artifacts[record.artifact.name] = {c.path: c.local_path for c in record.artifact.manifest.contents}
    return SimpleNamespace(run=run, config=config, metrics=metrics, history=history, summary=summary,
                           artifacts=artifacts)
