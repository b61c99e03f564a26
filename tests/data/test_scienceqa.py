"""ScienceQA data module: tokenisation/masks, truncation, batches, global batch, errors."""

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REFERENCE_DATA
from PIL import Image
from torch.utils.data import DataLoader

from data_modules.base import image_transform, split_global_batch
from data_modules.batching import Collator
from data_modules.prompts import scienceqa_prompt
from data_modules.scienceqa import ScienceQADataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import ConfigError, DataError

REFERENCE = REFERENCE_DATA / "scienceqa"
PAD, BOS, EOS = 0, 1, 2


def _problem(question, choices, answer, split, hint="", image=None, lecture="", solution=""):
    return {
        "question": question, "choices": choices, "answer": answer, "hint": hint, "image": image,
        "task": "closed choice", "grade": "grade3", "subject": "natural science", "topic": "biology",
        "category": "Animals", "skill": "", "lecture": lecture, "solution": solution, "split": split,
    }


def make_scienceqa_tree(root: Path, extra_problems=None, splits=None, captions=True) -> Path:
    """A small ScienceQA folder in the public layout: 6 problems, 3 with 8x8 PNG images."""
    problems = {
        "1": _problem("What color is the square?", ["red", "blue"], 0, "train", image="image.png",
                      lecture="Colors are seen.\nRed is warm.", solution="The square is red."),
        "2": _problem("Which animal swims?", ["cat", "fish", "bird"], 1, "train",
                      hint="Fish live in water.", lecture="Animals move.", solution="Fish swim."),
        "3": _problem("Which word rhymes with cat?", ["hat", "dog"], 0, "train",
                      solution="Hat rhymes with cat."),
        "4": _problem("What color is the circle?", ["green", "red", "blue", "black"], 2, "val",
                      hint="A picture.", image="image.png", lecture="Shapes have colors."),
        "5": _problem("Which is a planet?", ["Mars", "Moon"], 0, "test", lecture="Planets orbit stars."),
        "6": _problem("Which shape is shown?", ["circle", "square", "star"], 2, "test", image="image.png"),
    }
    problems.update(extra_problems or {})
    root.mkdir(parents=True, exist_ok=True)
    for pid, p in problems.items():
        if p["image"]:
            folder = root / "images" / p["split"] / pid
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 30 * int(pid) % 255, 40)).save(folder / p["image"])
    if splits is None:
        splits = {"train": ["1", "2", "3"], "val": ["4"], "test": ["5", "6"], "minitest": ["6"]}
        splits["train"] += [pid for pid in extra_problems or {}]
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    if captions:
        (root / "captions.json").write_text(json.dumps({"captions": {"1": "A red square.", "4": "A blue circle."}}))
    return root


def make_dm(root, **kwargs):
    kwargs.setdefault("tokenizer", byte_tokenizer())
    kwargs.setdefault("global_batch_size", 4)
    kwargs.setdefault("image_size", 16)
    return ScienceQADataModule(data_root=str(root), **kwargs)


def _all_items(dm, role):
    ds = dm.datasets[role]
    return [ds[i] for i in range(len(ds))]


def _supervised_text(tok, ids, labels):
    return tok.decode(ids[labels != -100].tolist())


# ------------------------------------------------------------------ tokenisation


def test_labels_supervise_exactly_answer_and_eos(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path), prompt_format="QCM-ALE")
    dm.setup("fit")
    tok = dm.tokenizer
    for item in _all_items(dm, "train") + _all_items(dm, "val"):
        text_in, target = scienceqa_prompt(dm.problems[item["pid"]], "QCM-ALE")
        ids, labels = item["input_ids"], item["labels"]
        assert ids[0] == BOS and ids[-1] == EOS and labels[0] == -100
        assert _supervised_text(tok, ids, labels) == target + "</s>"
        # Everything before the answer is the prompt, concatenated without a separator.
        n_masked = int((labels == -100).sum())
        assert tok.decode(ids[1:n_masked].tolist()) == text_in
        assert torch.equal(labels[n_masked:], ids[n_masked:])
    assert dm.truncation_report["train"] == {"split": "train", "samples": 3, "truncated": 0, "prompt_cut": 0}


def test_use_caption_adds_caption_to_context(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path), prompt_format="QCM-A", use_caption=True)
    dm.setup("fit")
    first = dm.datasets["train"][0]
    assert first["pid"] == "1"
    assert "Context: A red square.\nOptions:" in dm.tokenizer.decode(first["input_ids"].tolist())


def test_train_batch_padding_images_and_keys(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path), prompt_format="QCM-ALE")
    dm.setup("fit")
    items = _all_items(dm, "train")
    batch = Collator(PAD)(items)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values", "has_image", "pids"}
    lengths = [len(i["input_ids"]) for i in items]
    assert len(set(lengths)) > 1  # so that padding is exercised
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
    for row, n in enumerate(lengths):
        # Right padding: real tokens first, then pad ids with mask 0 and label -100.
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][row, n:] == PAD).all() and (batch["labels"][row, n:] == -100).all()
    assert batch["pids"] == ["1", "2", "3"]
    assert batch["has_image"].tolist() == [True, False, False]
    assert [len(dm.problems[pid]["choices"]) for pid in batch["pids"]] == [2, 3, 2]  # what the scorer reads
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"][0].abs().sum() > 0
    assert (batch["pixel_values"][1:] == 0).all()  # text-only samples feed a zero image


def test_image_transform_is_imagenet_normalised_bicubic():
    t = image_transform(image_size=4)
    x = t(Image.new("L", (10, 6), 255))  # grey-scale input is converted to RGB
    assert x.shape == (3, 4, 4)
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-4)
    assert "bicubic" in repr(t).lower()


def test_test_batches_hold_prompt_only(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path), prompt_format="QCM-ALE", test_prompt_format="CQM-A", eval_batch_size=2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert "labels" not in batch and batch["pids"] == ["5", "6"]
    assert batch["has_image"].tolist() == [False, True]
    for row, pid in enumerate(batch["pids"]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        text = dm.tokenizer.decode(ids.tolist())
        assert text == "<s>" + scienceqa_prompt(dm.problems[pid], "CQM-A")[0]
        assert text.startswith("<s>Context:") and text.endswith("Response:")


# ------------------------------------------------------------------ truncation


def test_long_lecture_keeps_answer_and_is_counted(tmp_path):
    long = _problem("Pick one.", ["yes", "no"], 1, "train", lecture="word " * 500, solution="Because.")
    root = make_scienceqa_tree(tmp_path, extra_problems={"7": long}, splits={"train": ["3", "7"], "val": ["4"]})
    dm = make_dm(root, prompt_format="QCM-ALE", max_seq_len=200, min_answer_tokens=16)
    dm.setup("fit")
    assert len(dm.datasets["train"][0]["input_ids"]) < 200  # pid 3 fits untouched
    item = dm.datasets["train"][1]
    assert item["pid"] == "7" and len(item["input_ids"]) == 200
    answer = _supervised_text(dm.tokenizer, item["input_ids"], item["labels"])
    assert answer.startswith("The answer is B. BECAUSE: word word") and answer.endswith("</s>")
    # The prompt was short enough to stay whole: only the explanation's tail was cut.
    prompt = dm.tokenizer.decode(item["input_ids"][: int((item["labels"] == -100).sum())].tolist())
    assert prompt == "<s>" + scienceqa_prompt(long, "QCM-ALE")[0]
    assert dm.truncation_report["train"] == {"split": "train", "samples": 2, "truncated": 1, "prompt_cut": 0}


def test_long_question_cuts_prompt_from_left(tmp_path, caplog):
    long = _problem("Why " * 400 + "is this?", ["yes", "no"], 0, "test", solution="It is.")
    root = make_scienceqa_tree(
        tmp_path, extra_problems={"7": long}, splits={"train": ["7"], "val": ["4"], "test": ["7", "5"]}
    )
    dm = make_dm(root, prompt_format="QCM-ALE", max_seq_len=100, min_answer_tokens=20)
    with caplog.at_level("WARNING"):
        dm.setup(None)
    item = dm.datasets["train"][0]
    ids, labels = item["input_ids"], item["labels"]
    assert len(ids) == 100 and ids[0] == BOS
    answer = _supervised_text(dm.tokenizer, ids, labels)
    assert answer == "The answer is A. BEC</s>"  # exactly min_answer_tokens answer bytes + EOS
    prompt = dm.tokenizer.decode(ids[1 : int((labels == -100).sum())].tolist())
    assert prompt.endswith("Options: (A) yes (B) no\nResponse:") and "Why Why" in prompt
    assert dm.truncation_report["train"]["truncated"] == dm.truncation_report["train"]["prompt_cut"] == 1
    # Generation input: BOS + the prompt's last tokens.
    test_ids = dm.datasets["test"][0]["input_ids"]
    assert len(test_ids) == 100 and test_ids[0] == BOS
    assert dm.tokenizer.decode(test_ids.tolist()).endswith("\nResponse:")
    assert dm.truncation_report["test"] == {"split": "test", "samples": 2, "truncated": 1, "prompt_cut": 1}
    assert any("test" in r.getMessage() and "1 of 2" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ global batch


@pytest.mark.parametrize(
    "global_bs, world, micro, expected",
    [(32, 1, None, (32, 1)), (32, 2, None, (16, 1)), (32, 1, 8, (8, 4)), (32, 2, 8, (8, 2)), (32, 8, 4, (4, 1))],
)
def test_split_global_batch(global_bs, world, micro, expected):
    assert split_global_batch(global_bs, world, micro) == expected


def test_split_global_batch_errors_name_the_numbers():
    with pytest.raises(ConfigError, match="32.*3"):
        split_global_batch(32, 3, None)
    with pytest.raises(ConfigError, match="32.*2.*12.*24"):
        split_global_batch(32, 2, 12)
    with pytest.raises(ConfigError):
        ScienceQADataModule("unused", global_batch_size=32, micro_batch_size=12)


def _trainer(**kwargs):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_setup_sets_trainer_accumulation(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path), global_batch_size=32, micro_batch_size=8)
    trainer = _trainer()
    dm.trainer = trainer
    dm.setup("fit")
    assert trainer.accumulate_grad_batches == 4 and dm.per_device_batch_size == 8
    assert dm.train_dataloader().batch_size == 8 and dm.val_dataloader().batch_size == 8

    conflicting = make_dm(tmp_path, global_batch_size=32, micro_batch_size=8)
    conflicting.trainer = _trainer(accumulate_grad_batches=2)
    with pytest.raises(ConfigError, match="accumulate_grad_batches=2"):
        conflicting.setup("fit")


class _TinyModule(L.LightningModule):
    """Consumes ScienceQA batches; its tokenizer is handed to the data module."""

    def __init__(self):
        super().__init__()
        self.tokenizer = byte_tokenizer()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batch_sizes = []

    def training_step(self, batch, batch_idx):
        self.batch_sizes.append(len(batch["pids"]))
        supervised = (batch["labels"] != -100).float().mean()
        return (self.weight * supervised + batch["pixel_values"].mean() * self.weight).sum() ** 2 + self.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_uses_module_tokenizer_and_accumulates(tmp_path):
    L.seed_everything(0)
    module = _TinyModule()
    dm = ScienceQADataModule(str(make_scienceqa_tree(tmp_path)), global_batch_size=4, micro_batch_size=2,
                             image_size=16, limit_val=0, tokenizer=module.tokenizer)
    trainer = _trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert dm.tokenizer is module.tokenizer
    assert trainer.accumulate_grad_batches == 2
    assert sorted(module.batch_sizes) == [1, 2]  # 3 train samples, micro batch 2, drop_last=False
    assert trainer.global_step == 1  # one optimizer step for the 2 accumulated micro batches


def test_shuffle_is_deterministic_given_seed(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path), global_batch_size=1)
    dm.setup("fit")

    def order():
        return [b["pids"][0] for b in dm.train_dataloader()]

    L.seed_everything(3)
    first = order()
    L.seed_everything(3)
    assert order() == first and sorted(first) == ["1", "2", "3"]


def test_limits_take_first_pids(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path), limit_train=2, limit_test=1)
    dm.setup(None)
    assert [s.pid for s in dm.datasets["train"].samples] == ["1", "2"]
    assert [s.pid for s in dm.datasets["test"].samples] == ["5"]
    assert [s.pid for s in dm.datasets["predict"].samples] == ["5", "6"]


# ------------------------------------------------------------------ bad input


def test_missing_files_name_path_and_layout(tmp_path):
    root = make_scienceqa_tree(tmp_path / "a")
    (root / "problems.json").unlink()
    with pytest.raises(DataError, match=r"problems\.json not found.*pid_splits\.json.*images/<split>/<pid>/image\.png"):
        make_dm(root).setup("fit")

    root = make_scienceqa_tree(tmp_path / "b")
    (root / "pid_splits.json").unlink()
    with pytest.raises(DataError, match=r"pid_splits\.json not found"):
        make_dm(root).setup("fit")

    root = make_scienceqa_tree(tmp_path / "c", captions=False)
    make_dm(root).setup("fit")  # captions are optional...
    with pytest.raises(DataError, match=r"captions\.json not found.*use_caption"):
        make_dm(root, use_caption=True).setup("fit")  # ...unless asked for


def test_missing_image_names_path_and_pid(tmp_path):
    root = make_scienceqa_tree(tmp_path)
    (root / "images" / "val" / "4" / "image.png").unlink()
    expected = str(root / "images" / "val" / "4" / "image.png")
    with pytest.raises(DataError) as err:
        make_dm(root).setup("fit")
    assert expected in str(err.value) and "pid 4" in str(err.value)


def test_image_folder_is_the_problems_own_split(tmp_path):
    # "minitest" lists pid 6, whose image lives under images/test/ (its own split field).
    dm = make_dm(make_scienceqa_tree(tmp_path), test_split="minitest")
    dm.setup("test")
    assert dm.datasets["test"].samples[0].image_path == tmp_path / "images" / "test" / "6" / "image.png"


def test_split_errors(tmp_path):
    root = make_scienceqa_tree(tmp_path, splits={"train": ["1", "99"], "val": ["4"]})
    with pytest.raises(DataError, match="pid 99.*problems.json"):
        make_dm(root).setup("fit")
    with pytest.raises(ConfigError, match="'nope'.*available.*train"):
        make_dm(root, val_split="nope").setup("validate")


def test_bad_problem_fails_in_setup(tmp_path):
    bad = _problem("Broken?", ["a", "b"], 5, "train")
    root = make_scienceqa_tree(tmp_path, extra_problems={"8": bad})
    with pytest.raises(DataError, match=r"problems\.json.*pid 8.*answer"):
        make_dm(root).setup("fit")


def test_config_errors():
    with pytest.raises(ConfigError, match="QCM-ABC"):
        ScienceQADataModule("unused", prompt_format="QCM-ABC")
    with pytest.raises(ConfigError, match="max_seq_len"):
        ScienceQADataModule("unused", max_seq_len=10, min_answer_tokens=16)
    with pytest.raises(ConfigError, match="tokenizer"):
        ScienceQADataModule("unused").setup("fit")


# ------------------------------------------------------------------ real ScienceQA records


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared reference data not available")
def test_real_problems_tokenise_and_labels_decode_to_target(tmp_path):
    shutil.copy(REFERENCE / "problems_test_subset.json", tmp_path / "problems.json")
    shutil.copy(REFERENCE / "pid_splits_subset.json", tmp_path / "pid_splits.json")
    problems = json.loads((tmp_path / "problems.json").read_text())
    # Real images are not shipped with the reference data: place tiny stand-ins.
    for pid, p in problems.items():
        if p["image"]:
            (tmp_path / "images" / p["split"] / pid).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / "images" / p["split"] / pid / p["image"])

    dm = make_dm(tmp_path, prompt_format="QCM-ALE", train_split="test", val_split="minitest", max_seq_len=8192)
    dm.setup("fit")
    assert len(dm.problems) == 361 and len(dm.datasets["train"]) == 361
    assert dm.truncation_report["train"]["truncated"] == 0
    cases = json.loads((REFERENCE / "lavin_prompt_cases.json").read_text())["cases"]
    reference = {c["pid"]: c["target"] for c in cases if c["prompt_format"] == "QCM-ALE" and not c["use_caption"]}
    tok, checked = dm.tokenizer, 0
    for sample in dm.datasets["train"].samples:
        ids, labels = torch.tensor(sample.input_ids), torch.tensor(sample.labels)
        target = reference.get(sample.pid) or scienceqa_prompt(problems[sample.pid], "QCM-ALE")[1]
        assert _supervised_text(tok, ids, labels) == target + "</s>"
        checked += sample.pid in reference
    assert checked == len(reference) > 0

    # At the release's 512 tokens (bytes here) many records overflow; all keep the answer.
    dm512 = make_dm(tmp_path, prompt_format="QCM-ALE", train_split="test", val_split="minitest")
    dm512.setup("fit")
    assert dm512.truncation_report["train"]["truncated"] > 0
    for sample in dm512.datasets["train"].samples:
        assert len(sample.input_ids) <= 512
        letter = "ABCDE"[problems[sample.pid]["answer"]]
        supervised = tok.decode([t for t in sample.labels if t != -100])
        assert supervised.startswith(f"The answer is {letter}.") and supervised.endswith("</s>")


def test_instruction_tokenizer_gets_each_prompt(tmp_path):
    """A model with an instruction encoder (InstructBLIP's Q-Former) gets the prompt tokenised by its tokenizer."""
    instruction_tokenizer = byte_tokenizer()
    dm = make_dm(make_scienceqa_tree(tmp_path), prompt_format="QCM-A", instruction_tokenizer=instruction_tokenizer)
    dm.setup("fit")
    items = _all_items(dm, "train")
    for item in items:
        text_in, _ = scienceqa_prompt(dm.problems[item["pid"]], "QCM-A")
        assert instruction_tokenizer.decode(item["instruction_ids"].tolist()) == text_in[:128]  # at most 128 ids
    batch = Collator(PAD)(items)
    assert batch["instruction_input_ids"].shape == batch["instruction_attention_mask"].shape


# ------------------------------------------------------------------ mistyped fields, bad images (on_bad_record)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # Both trained silently before: as the options "(A) n (B) o" and as the question "None".
        ({"choices": "no"}, "pid 8: field 'choices' is a str ('no'), expected a list of strings"),
        ({"question": None}, "pid 8: field 'question' is null"),
        ({"answer": 1.0}, "pid 8: field 'answer' (an index into choices) is a float (1.0), expected an integer"),
        ({"hint": ["a hint"]}, "pid 8: field 'hint' is a list (['a hint']), expected a string"),
    ],
)
def test_mistyped_fields_fail_in_setup_or_are_skipped_and_counted(tmp_path, changes, message):
    root = make_scienceqa_tree(tmp_path, extra_problems={"8": {**_problem("Which?", ["a", "b"], 0, "train"),
                                                               **changes}})
    with pytest.raises(DataError) as error:
        make_dm(root).setup("fit")
    assert str(root / "problems.json") in str(error.value) and message in str(error.value), str(error.value)
    dm = make_dm(root, on_bad_record="skip")
    dm.setup("fit")
    assert [s.pid for s in dm.datasets["train"].samples] == ["1", "2", "3"]
    assert sum(dm.truncation_report["train"]["skipped"].values()) == 1


def test_a_corrupt_image_fails_in_setup_not_mid_training(tmp_path, caplog):
    root = make_scienceqa_tree(tmp_path)
    image = root / "images" / "train" / "1" / "image.png"
    image.write_bytes(b"garbage bytes, not a PNG")
    with pytest.raises(DataError) as error:
        make_dm(root).setup("fit")
    assert f"problems.json: pid 1: image {image} cannot be decoded (UnidentifiedImageError" in str(error.value)
    dm = make_dm(root, on_bad_record="skip")
    dm.setup("fit")
    assert [s.pid for s in dm.datasets["train"].samples] == ["2", "3"]
    assert dm.truncation_report["train"]["skipped"] == {"bad_image": 1}
    assert "skipped 1 bad ones (on_bad_record='skip'): {'bad_image': 1}" in caplog.text
    # Each image is decoded once however many roles serve its problem; limits count usable problems.
    dm = make_dm(root, on_bad_record="skip", limit_train=2)
    dm.setup("fit")
    assert [s.pid for s in dm.datasets["train"].samples] == ["2", "3"]


def test_an_image_broken_after_setup_is_a_named_error_in_the_batch(tmp_path):
    dm = make_dm(make_scienceqa_tree(tmp_path))
    dm.setup("fit")
    image = tmp_path / "images" / "train" / "1" / "image.png"
    image.write_bytes(image.read_bytes()[:30])
    with pytest.raises(DataError, match=rf"image {image} of record 1 cannot be decoded \(UnidentifiedImageError"):
        next(iter(DataLoader(dm.datasets["train"], batch_size=3, collate_fn=Collator(PAD))))


def test_empty_train_split_and_unknown_caption_pids_are_errors(tmp_path):
    root = make_scienceqa_tree(tmp_path / "a", splits={"train": [], "val": ["4"]})
    with pytest.raises(DataError, match=r"pid_splits\.json: the train split 'train' is empty"):
        make_dm(root).setup("fit")
    root = make_scienceqa_tree(tmp_path / "b")
    (root / "captions.json").write_text(json.dumps({"captions": {"1": "A red square.", "77": "Nobody's."}}))
    with pytest.raises(DataError, match=r"captions\.json: 1 caption\(s\) for pids that are not in .*first: 77"):
        make_dm(root, use_caption=True).setup("fit")


def test_bad_text_instructions_follow_on_bad_record(tmp_path):
    root = make_scienceqa_tree(tmp_path)
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi."}, {"instruction": 3, "output": "x"}]))
    with pytest.raises(DataError, match=r"instructions\.json: record 1: field 'instruction' is a int"):
        make_dm(root, text_instructions=str(path)).setup("fit")
    dm = make_dm(root, text_instructions=str(path), on_bad_record="skip")
    dm.setup("fit")
    assert dm.truncation_report["train"]["text_instructions"] == 1
    assert dm.truncation_report["train"]["skipped"] == {"not_a_string": 1}
