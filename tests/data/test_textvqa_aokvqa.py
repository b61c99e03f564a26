"""TextVQA and A-OKVQA data modules, on hand-written fixtures in the published formats (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest
from conftest import (
    AOKVQA,
    TEXTVQA,
    answer_targets,
    aokvqa_question,
    make_aokvqa,
    make_textvqa,
    write_aokvqa,
    write_image,
    write_textvqa,
)

from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import ConfigError, DataError


def test_textvqa_splits_targets_and_images(textvqa_root):
    dm = make_textvqa(textvqa_root)
    dm.setup("fit")
    assert answer_targets(dm)["1"] == "coke" and answer_targets(dm)["2"] == "stop"
    assert answer_targets(dm)["7"] == "7" and len(dm.datasets["train"]) == 12
    assert answer_targets(dm, "val") == {"101": "red", "102": "no"}
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
        write_image(root / "flat" / f"val-{q['image_id']}.png")
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
    dm = make_textvqa(textvqa_root, instruction_tokenizer=byte_tokenizer())
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


def test_textvqa_wrong_top_level(tmp_path):
    root = write_textvqa(tmp_path)
    (root / "TextVQA_0.5.1_train.json").write_text(json.dumps(TEXTVQA["train"]))  # a bare list, no "data"
    with pytest.raises(DataError, match=r'TextVQA_0\.5\.1_train\.json: no "data" list'):
        make_textvqa(root).setup("fit")


def test_aokvqa_splits_targets_and_images(aokvqa_root):
    dm = make_aokvqa(aokvqa_root)
    dm.setup()
    assert (answer_targets(dm)["t1"] == "umbrella" and answer_targets(dm)["t2"] == "club"
            and len(dm.datasets["train"]) == 12)
    assert answer_targets(dm, "val") == {"v1": "crimson", "v2": "cat", "v3": "y"}
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


# module -> its bad cases, published fixture, writer, data module builder and file name per split.
BAD_QUESTIONS = {
    "textvqa": (textvqa_bad_cases, TEXTVQA, write_textvqa, make_textvqa, "TextVQA_0.5.1_{}.json"),
    "aokvqa": (aokvqa_bad_cases, AOKVQA, write_aokvqa, make_aokvqa, "aokvqa_v1p0_{}.json"),
}


@pytest.mark.parametrize(("module", "case"), [(module, case) for module, (cases, *_) in BAD_QUESTIONS.items()
                                              for case in cases()])
def test_bad_questions(tmp_path, module, case):
    bad_cases, published, write, make, file_name = BAD_QUESTIONS[module]
    bad, split, qid, message = bad_cases()[case]
    questions = {**published, split: published[split][:1] + [bad] + published[split][2:]}
    if case == "duplicate id":
        questions["train"] = published["train"] + [bad]
    root = write(tmp_path, questions)
    with pytest.raises(DataError) as error:
        make(root).setup("fit")
    text = str(error.value)
    assert f"{file_name.format(split)}: question_id {qid}" in text and message in text, text
    dm = make(root, on_bad_record="skip")
    dm.setup("fit")
    assert sum(dm.report[split]["skipped"].values()) == 1  # the split is the role here: train or val


def test_aokvqa_wrong_top_level(tmp_path):
    root = write_aokvqa(tmp_path)
    (root / "aokvqa_v1p0_train.json").write_text(json.dumps({"data": AOKVQA["train"]}))
    with pytest.raises(DataError, match=r"aokvqa_v1p0_train\.json: the top level is a dict, not a list"):
        make_aokvqa(root).setup("fit")


def test_scored_test_questions_need_what_the_scorers_read(tmp_path):
    """A test split with answers is scored after the run: the TextVQA evaluator takes exactly 10 answers, the
    A-OKVQA one all four of choices, correct_choice_idx, direct_answers, difficult_direct_answer."""
    nine = {**TEXTVQA, "test": [dict(TEXTVQA["val"][0], answers=["red"] * 9)]}
    root = write_textvqa(tmp_path / "textvqa", nine)
    make_textvqa(root).setup("fit")  # nine answers are fine to train on
    with pytest.raises(DataError, match=r"TextVQA_0\.5\.1_test\.json: question_id 101: field 'answers' has 9 "
                                        r"answers; the scorer needs exactly 10"):
        make_textvqa(root).setup("test")
    undecided = {k: v for k, v in AOKVQA["val"][0].items() if k != "difficult_direct_answer"}
    root = write_aokvqa(tmp_path / "aokvqa", {**AOKVQA, "test": [undecided]})
    with pytest.raises(DataError, match=r"aokvqa_v1p0_test\.json: question_id 'v1': field\(s\) "
                                        r"difficult_direct_answer missing; a scored question needs them"):
        make_aokvqa(root).setup("test")
    flagged = dict(AOKVQA["train"][1], difficult_direct_answer="no")
    root = write_aokvqa(tmp_path / "aokvqa2", {**AOKVQA, "train": AOKVQA["train"][:1] + [flagged]})
    with pytest.raises(DataError, match=r"question_id 't2': field 'difficult_direct_answer' is a str \('no'\), "
                                        "expected true or false"):
        make_aokvqa(root).setup("fit")
