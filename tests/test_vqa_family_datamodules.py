"""TextVQA and A-OKVQA data modules and their scoring callbacks, on hand-written fixtures in the published formats."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from data_modules.aokvqa import AOKVQADataModule
from data_modules.templates import IGNORE_INDEX
from data_modules.textvqa import TextVQADataModule
from data_modules.vqa import VQADataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.callbacks.captions import CaptionEvaluation
from lavin_lightning.callbacks.vqa import AOKVQAEvaluation, TextVQAEvaluation, VQAEvaluation, matching_choice
from lavin_lightning.errors import ConfigError, DataError

COMMON = {"global_batch_size": 2, "image_size": 16, "max_seq_len": 128}
NO_FILE = ("nowhere", 999)  # image ids whose file the fixtures never write


def image(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)


def targets(dm, role="train"):
    """pid -> the decoded supervised answer (EOS left out) of each row of ``role``."""
    tok = dm.tokenizer
    return {s.pid: tok.decode([t for t in s.labels if t != IGNORE_INDEX][:-1]).strip()
            for s in dm.datasets[role].samples}


class FakeWandb(WandbLogger):
    """A WandbLogger that keeps what it is given (no run, no network)."""

    def __init__(self):  # noqa: D107 -- no wandb run
        self.metrics, self.tables = [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append(metrics)

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data))


def run_test_epoch(callback, dm, tmp_path, texts, loggers=()):
    """Drive a TestScoring callback as Lightning does at test time, on one batch."""
    trainer = SimpleNamespace(datamodule=dm, loggers=list(loggers), is_global_zero=True, global_step=0,
                              default_root_dir=str(tmp_path / "run"))
    callback.on_test_epoch_start(trainer, None)
    outputs = {"pids": list(texts), "texts": list(texts.values())}
    callback.on_test_batch_end(trainer, None, outputs, None, 0)
    callback.on_test_epoch_end(trainer, None)
    return trainer


# --------------------------------------------------------------------------- TextVQA fixture


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
                    image(path, (300, 200) if q["image_id"] == "b1" else (8, 8))
        doc = {"dataset_name": "textvqa", "dataset_type": split, "dataset_version": "0.5.1", "data": questions}
        (root / f"TextVQA_0.5.1_{split}.json").write_text(json.dumps(doc))
    return root


def make_textvqa(root, **kwargs):
    return TextVQADataModule(str(root), tokenizer=byte_tokenizer(), **{**COMMON, **kwargs})


@pytest.fixture
def textvqa_root(tmp_path):
    return write_textvqa(tmp_path / "textvqa")


def test_textvqa_splits_targets_and_images(textvqa_root):
    dm = make_textvqa(textvqa_root)
    dm.setup("fit")
    assert targets(dm)["1"] == "coke" and targets(dm)["2"] == "stop"
    assert targets(dm)["7"] == "7" and len(dm.datasets["train"]) == 12
    assert targets(dm, "val") == {"101": "red", "102": "no"}
    paths = dm.image_paths("val")
    assert paths == {"101": textvqa_root / "train_images" / "b1.jpg", "102": textvqa_root / "train_images" / "b2.jpg"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and "labels" in batch
    assert "Question: " in dm.tokenizer.decode(batch["input_ids"][0]) and "Short answer:" in dm.tokenizer.decode(
        batch["input_ids"][0])

    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["pids"] == ["201", "202"] and "labels" not in batch
    assert dm.image_paths("test")["201"] == textvqa_root / "test_images" / "c1.jpg"
    data = dm.textvqa_data("test")
    assert data["dataset_type"] == "test" and [q["question_id"] for q in data["data"]] == [201, 202]
    assert all("answers" not in q for q in data["data"])
    dm.setup("predict")
    assert [s.pid for s in dm.datasets["predict"].samples] == ["201", "202"]


def test_textvqa_image_pattern_is_configurable(tmp_path):
    root = write_textvqa(tmp_path, {"val": TEXTVQA["val"]})
    for q in TEXTVQA["val"]:
        image(root / "flat" / f"val-{q['image_id']}.png")
    dm = make_textvqa(root, splits={"test": "val"}, image_pattern="flat/{split}-{image_id}.png")
    dm.setup("test")
    assert dm.image_paths("test")["101"] == root / "flat" / "val-b1.png"
    with pytest.raises(ConfigError, match="image_pattern"):
        make_textvqa(root, image_pattern="{unknown}/{image_id}.jpg")


@pytest.mark.parametrize("module", ["textvqa", "aokvqa"])
def test_k_shot_and_limits(tmp_path, module):
    root = write_textvqa(tmp_path) if module == "textvqa" else write_aokvqa(tmp_path)
    make = make_textvqa if module == "textvqa" else make_aokvqa

    def shot(seed):
        dm = make(root, k_shot=5, seed=seed)
        dm.setup("fit")
        pids = [s.pid for s in dm.datasets["train"].samples]
        assert len(pids) == 5 and [str(q["question_id"]) for q in dm.served_questions("train")] == pids
        return pids

    assert shot(0) == shot(0) != shot(1)
    with pytest.raises(ConfigError, match="k_shot 50 exceeds"):
        make(root, k_shot=50).setup("fit")
    dm = make(root, limit_train=3, limit_val=1, limit_test=1)
    dm.setup()
    first = [str(q["question_id"]) for q in (TEXTVQA if module == "textvqa" else AOKVQA)["train"][:3]]
    assert [s.pid for s in dm.datasets["train"].samples] == first
    assert len(dm.datasets["val"]) == len(dm.datasets["test"]) == len(dm.datasets["predict"]) == 1
    assert len(dm.served_questions("test")) == 1


def test_instruction_tokenizer_reaches_the_batches(textvqa_root):
    dm = make_textvqa(textvqa_root)
    dm.instruction_tokenizer = byte_tokenizer()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["instruction_input_ids"].shape[0] == 2
    assert batch["instruction_attention_mask"].shape == batch["instruction_input_ids"].shape
    first = batch["instruction_input_ids"][0][: int(batch["instruction_attention_mask"][0].sum())]
    assert dm.instruction_tokenizer.decode(first).startswith("Question: ")


def textvqa_bad_cases():
    train = TEXTVQA["train"]
    return {
        "missing image": (dict(train[1], image_id="nowhere"), "train", 2, "not found"),
        "duplicate id": (dict(train[1], question_id=1), "train", 1, "appears more than once"),
        "non-string answer": (dict(train[1], answers=["stop"] * 9 + [7]), "train", 2, "answers[9] is a int"),
        "answers missing in a labelled split": ({k: v for k, v in train[1].items() if k != "answers"}, "val", 2,
                                                "field 'answers' is missing"),
    }


@pytest.mark.parametrize("case", list(textvqa_bad_cases()))
def test_textvqa_bad_questions(tmp_path, case):
    bad, split, qid, message = textvqa_bad_cases()[case]
    questions = {**TEXTVQA, split: TEXTVQA[split][:1] + [bad] + TEXTVQA[split][2:]}
    if case == "duplicate id":
        questions["train"] = TEXTVQA["train"] + [bad]
    root = write_textvqa(tmp_path, questions)
    with pytest.raises(DataError) as error:
        make_textvqa(root).setup("fit")
    text = str(error.value)
    assert f"TextVQA_0.5.1_{split}.json: question_id {qid}" in text and message in text, text
    dm = make_textvqa(root, on_bad_record="skip")
    dm.setup("fit")
    assert sum(dm.report[split if split == "train" else "val"]["skipped"].values()) == 1


def test_textvqa_wrong_top_level(tmp_path):
    root = write_textvqa(tmp_path)
    (root / "TextVQA_0.5.1_train.json").write_text(json.dumps(TEXTVQA["train"]))  # a bare list, no "data"
    with pytest.raises(DataError, match=r'TextVQA_0\.5\.1_train\.json: no "data" list'):
        make_textvqa(root).setup("fit")


def test_textvqa_evaluation_hand_computed(textvqa_root, tmp_path, monkeypatch):
    dm = make_textvqa(textvqa_root, splits={"test": "val"})
    dm.setup("test")
    created = []
    monkeypatch.setattr("wandb.Image", lambda picture: created.append(picture.size) or ("wandb.Image", picture.size))
    wandb, other = FakeWandb(), SimpleNamespace(metrics=[])
    other.log_metrics = lambda metrics, step=None: other.metrics.append(metrics)
    callback = TextVQAEvaluation(table_rows=1)
    # 101: "Red." normalises to "red", all 10 answers agree -> 1. 102: "yes" is 2 of 10 answers ->
    # leave-one-out (2 x 1/3 + 8 x 2/3) / 10 = 0.6. Mean 0.8.
    run_test_epoch(callback, dm, tmp_path, {"101": "Red.\nmore", "102": "yes"}, [wandb, other])
    assert callback.metrics["accuracy"] == 80.0 and callback.metrics["accuracy_fraction"] == pytest.approx(0.8)
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text()) == [{"question_id": 101, "answer": "Red."},
                                                              {"question_id": 102, "answer": "yes"}]
    assert json.loads((out / "metrics.json").read_text())["evalQA"]["102"] == pytest.approx(0.6)
    assert wandb.metrics == other.metrics == [{"test/textvqa_accuracy": 80.0}]
    ((key, columns, rows),) = wandb.tables
    assert key == "test/textvqa_predictions" and columns[0] == "image" and len(rows) == 1  # table_rows
    assert rows[0][0] == ("wandb.Image", (128, 85)) and rows[0][1:4] == [101, "what colour is the text?", "red x10"]
    assert created == [(128, 85)]  # the 300 x 200 image as a 128 px thumbnail


def test_textvqa_evaluation_needs_answers(textvqa_root, tmp_path):
    dm = make_textvqa(textvqa_root)
    dm.setup("test")
    with pytest.raises(ConfigError, match="question_id 201 has no answers"):
        run_test_epoch(TextVQAEvaluation(), dm, tmp_path, {"201": "x", "202": "y"})


# --------------------------------------------------------------------------- A-OKVQA fixture


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
                    image(path)
        (root / f"aokvqa_v1p0_{split}.json").write_text(json.dumps(questions))
    return root


def make_aokvqa(root, **kwargs):
    return AOKVQADataModule(str(root), tokenizer=byte_tokenizer(), **{**COMMON, **kwargs})


@pytest.fixture
def aokvqa_root(tmp_path):
    return write_aokvqa(tmp_path / "aokvqa")


def test_aokvqa_splits_targets_and_images(aokvqa_root):
    dm = make_aokvqa(aokvqa_root)
    dm.setup()
    assert targets(dm)["t1"] == "umbrella" and targets(dm)["t2"] == "club" and len(dm.datasets["train"]) == 12
    assert targets(dm, "val") == {"v1": "crimson", "v2": "cat", "v3": "y"}
    assert dm.image_paths("train")["t1"] == aokvqa_root / "train2017" / "000000000001.jpg"
    assert dm.image_paths("val")["v2"] == aokvqa_root / "val2017" / "000000000102.jpg"
    assert dm.image_paths("test") == {"s1": aokvqa_root / "test2017" / "000000000201.jpg"}
    batch = next(iter(dm.test_dataloader()))
    assert batch["pids"] == ["s1"] and "labels" not in batch
    assert dm.tokenizer.decode(batch["input_ids"][0]).endswith("Question: What is on the table? Short answer:"
                                                               "\nResponse:")
    assert [q["question_id"] for q in dm.aokvqa_dataset("val")] == ["v1", "v2", "v3"]
    assert dm.aokvqa_dataset("test") == AOKVQA["test"]


def test_aokvqa_prompt(aokvqa_root):
    dm = make_aokvqa(aokvqa_root, prompt="Q: {question} A:")
    dm.setup("test")
    assert dm.tokenizer.decode(dm.datasets["test"].samples[0].input_ids).endswith("Q: What is on the table? A:"
                                                                                  "\nResponse:")


def aokvqa_bad_cases():
    train = AOKVQA["train"]
    return {
        "missing image": (dict(train[1], image_id=999), "train", "'t2'", "not found"),
        "duplicate id": (dict(train[1], question_id="t1"), "train", "'t1'", "appears more than once"),
        "non-string answer": (dict(train[1], direct_answers=["bat"] * 9 + [None]), "train", "'t2'",
                              "direct_answers[9] is a NoneType"),
        "answers missing in a labelled split": (aokvqa_question("t2", 2, "What sport?", ["golf", "polo"]), "val",
                                                "'t2'", "field 'direct_answers' is missing"),
        "bad choice index": (dict(train[1], correct_choice_idx=4), "train", "'t2'", "correct_choice_idx 4"),
    }


@pytest.mark.parametrize("case", list(aokvqa_bad_cases()))
def test_aokvqa_bad_questions(tmp_path, case):
    bad, split, qid, message = aokvqa_bad_cases()[case]
    questions = {**AOKVQA, split: AOKVQA[split][:1] + [bad] + AOKVQA[split][2:]}
    if case == "duplicate id":
        questions["train"] = AOKVQA["train"] + [bad]
    root = write_aokvqa(tmp_path, questions)
    with pytest.raises(DataError) as error:
        make_aokvqa(root).setup("fit")
    text = str(error.value)
    assert f"aokvqa_v1p0_{split}.json: question_id {qid}" in text and message in text, text
    dm = make_aokvqa(root, on_bad_record="skip")
    dm.setup("fit")
    assert sum(dm.report[split]["skipped"].values()) == 1


def test_aokvqa_wrong_top_level(tmp_path):
    root = write_aokvqa(tmp_path)
    (root / "aokvqa_v1p0_train.json").write_text(json.dumps({"data": AOKVQA["train"]}))
    with pytest.raises(DataError, match=r"aokvqa_v1p0_train\.json: the top level is a dict, not a list"):
        make_aokvqa(root).setup("fit")


def test_matching_choice():
    assert matching_choice("The cat.", ["two dogs", "a cat"]) == "a cat"
    assert matching_choice("two", ["2", "two dogs"]) == "2"  # number words normalise to digits
    assert matching_choice("banana", ["a cat"]) is None and matching_choice("", ["a"]) is None


def test_aokvqa_evaluation_hand_computed(aokvqa_root, tmp_path, monkeypatch):
    dm = make_aokvqa(aokvqa_root, splits={"test": "val"})
    dm.setup("test")
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    wandb = FakeWandb()
    callback = AOKVQAEvaluation()
    # v1: "red" is 2 of the 10 direct answers -> 2/3; its choice "red" is correct.
    # v2: "The cat" is no direct answer as written -> 0; normalised it is the choice "a cat", correct.
    # v3: difficult, so out of the direct-answer setting; "banana" matches no choice -> wrong.
    run_test_epoch(callback, dm, tmp_path, {"v1": "red", "v2": "The cat", "v3": "banana"}, [wandb])
    metrics = callback.metrics
    assert metrics["direct_answer"] == pytest.approx(100 / 3) and metrics["multiple_choice"] == pytest.approx(200 / 3)
    assert metrics["counts"] == {"direct_answer": 2, "multiple_choice": 3, "missing": 1, "ignored_predictions": 0}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results == {"v1": {"direct_answer": "red", "multiple_choice": "red"},
                       "v2": {"direct_answer": "The cat", "multiple_choice": "a cat"},
                       "v3": {"direct_answer": "banana"}}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert wandb.metrics == [{"test/aokvqa_direct_answer": pytest.approx(100 / 3),
                              "test/aokvqa_multiple_choice": pytest.approx(200 / 3)}]
    ((key, columns, rows),) = wandb.tables
    assert key == "test/aokvqa_predictions" and columns[0] == "image" and len(rows) == 3
    assert rows[1] == [("wandb.Image", (8, 8)), "v2", "Which animal sleeps here?", "cat x10", "The cat",
                       "two dogs | a cat | three | none", "a cat", "a cat"]


def test_aokvqa_evaluation_needs_answers(aokvqa_root, tmp_path):
    dm = make_aokvqa(aokvqa_root)
    dm.setup("test")
    with pytest.raises(ConfigError, match="question_id 's1' has no answers"):
        run_test_epoch(AOKVQAEvaluation(), dm, tmp_path, {"s1": "food"})


# --------------------------------------------------------------------------- which callback scores what


def write_official_vqa(root):
    image(root / "images" / "val" / "1.png", (64, 256))
    (root / "questions_val.json").write_text(json.dumps(
        {"questions": [{"question_id": 7, "image_id": 1, "question": "Is it tall?"}]}))
    (root / "annotations_val.json").write_text(json.dumps({"annotations": [
        {"question_id": 7, "image_id": 1, "question_type": "is it", "answer_type": "yes/no",
         "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)]}]}))
    return root


def test_each_callback_scores_only_its_data_module(textvqa_root, aokvqa_root, tmp_path):
    vqa = VQADataModule(str(write_official_vqa(tmp_path / "vqa")), splits={"test": "val"},
                        tokenizer=byte_tokenizer(), **COMMON)
    modules = {"vqa": vqa, "textvqa": make_textvqa(textvqa_root), "aokvqa": make_aokvqa(aokvqa_root)}
    callbacks = {"vqa": VQAEvaluation(), "textvqa": TextVQAEvaluation(), "aokvqa": AOKVQAEvaluation()}
    for name, callback in callbacks.items():
        applies = {module: callback.applies(SimpleNamespace(datamodule=dm)) for module, dm in modules.items()}
        assert applies == {module: module == name for module in modules}, name
    assert not any(CaptionEvaluation().applies(SimpleNamespace(datamodule=dm)) for dm in modules.values())


def test_vqa_evaluation_table_has_thumbnails(tmp_path, monkeypatch):
    dm = VQADataModule(str(write_official_vqa(tmp_path / "vqa")), splits={"test": "val"},
                       tokenizer=byte_tokenizer(), **COMMON)
    dm.setup("test")
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    wandb = FakeWandb()
    callback = VQAEvaluation()
    run_test_epoch(callback, dm, tmp_path, {"7": "yes"}, [wandb])
    assert callback.metrics["overall"] == 100.0
    ((key, columns, rows),) = wandb.tables
    assert columns == ["image", "question_id", "question", "references", "answer", "accuracy"]
    assert rows == [[("wandb.Image", (32, 128)), 7, "Is it tall?", "yes x10", "yes", 100.0]]


def test_real_wandb_image_offline(textvqa_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    dm = make_textvqa(textvqa_root, splits={"test": "val"})
    dm.setup("test")
    callback = TextVQAEvaluation()
    (thumbnail, small) = callback.thumbnails(SimpleNamespace(datamodule=dm), ["101", "102"])
    assert isinstance(thumbnail, wandb.Image) and thumbnail.image.size == (128, 85)
    assert small.image.size == (8, 8)  # thumbnails never enlarge
    assert callback.thumbnails(SimpleNamespace(datamodule=dm), ["unknown"]) == [None]
