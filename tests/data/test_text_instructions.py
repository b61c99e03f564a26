"""Text-only instructions mixed into ScienceQA training (mixture-of-modality training)."""

import json
from pathlib import Path

import pytest
from PIL import Image

from data_modules.batching import Collator
from data_modules.prepare.instructions import DEMO_HELD_OUT, general_instructions, write_self_distilled_instructions
from data_modules.scienceqa import ScienceQADataModule, instruction_prompt
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import DataError

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour."},
    {"instruction": "What is two plus two?", "output": "Four."},  # "input" is optional
]


def make_tree(root: Path) -> Path:
    """ScienceQA layout: train 1 (image) + 2, val 3, test 4."""
    def problem(question, split, image=None):
        return {"question": question, "choices": ["yes", "no"], "answer": 0, "hint": "", "image": image,
                "lecture": "", "solution": "", "split": split}

    problems = {"1": problem("Is it red?", "train", "image.png"), "2": problem("Do fish swim?", "train"),
                "3": problem("Is ice cold?", "val"), "4": problem("Is the sun hot?", "test")}
    (root / "images" / "train" / "1").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "images" / "train" / "1" / "image.png")
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": ["1", "2"], "val": ["3"], "test": ["4"]}))
    return root


def make_dm(root: Path, text_instructions=None) -> ScienceQADataModule:
    return ScienceQADataModule(
        data_root=str(root), prompt_format="QCM-A", global_batch_size=2, image_size=16,
        tokenizer=byte_tokenizer(), text_instructions=None if text_instructions is None else str(text_instructions),
    )


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def items(dm, role):
    ds = dm.datasets[role]
    return [ds[i] for i in range(len(ds))]


def test_instructions_join_train_only_as_text_only_samples(tmp_path):
    root = make_tree(tmp_path / "sqa")
    plain = make_dm(root)
    plain.setup(None)
    dm = make_dm(root, write_json(tmp_path / "instr.json", RECORDS))
    dm.setup(None)
    tok = dm.tokenizer

    train = items(dm, "train")
    assert len(train) == len(items(plain, "train")) + 3
    extra = [i for i in train if i["pid"].startswith("instruction-")]
    assert [i["pid"] for i in extra] == ["instruction-0", "instruction-1", "instruction-2"]
    for item, record in zip(extra, RECORDS):
        assert item["has_image"] is False and "n_choices" not in item
        assert (item["pixel_values"] == 0).all()
        ids, labels = item["input_ids"], item["labels"]
        prompt = instruction_prompt(record["instruction"], record.get("input", ""))
        n_masked = int((labels == -100).sum())
        # BOS + prompt are masked; exactly output + EOS are supervised.
        assert tok.decode(ids[:n_masked].tolist()) == "<s>" + prompt
        assert tok.decode(ids[labels != -100].tolist()) == record["output"] + "</s>"

    # Other roles are untouched.
    for role in ("val", "test", "predict"):
        assert [(i["pid"], i["input_ids"].tolist()) for i in items(dm, role)] == \
            [(i["pid"], i["input_ids"].tolist()) for i in items(plain, role)]
    assert dm.truncation_report["train"]["text_instructions"] == 3
    assert dm.truncation_report["train"]["samples"] == len(train)
    assert "text_instructions" not in plain.truncation_report["train"]
    assert "text_instructions" not in dm.truncation_report["val"]

    # Batches mix modalities (the collator sees image and text-only samples together).
    batch = Collator(0)(train)
    assert batch["has_image"].tolist() == [True, False, False, False, False]


def test_train_loader_shuffles_instructions_with_problems(tmp_path):
    dm = make_dm(make_tree(tmp_path / "sqa"), write_json(tmp_path / "instr.json", RECORDS))
    dm.setup("fit")
    orders = set()
    for _ in range(20):
        orders.add(tuple(p for batch in dm.train_dataloader() for p in batch["pids"]))
    assert len(orders) > 1 and all(len(o) == 5 for o in orders)


def test_alpaca_prompt_with_and_without_input():
    assert instruction_prompt("Say hi.") == "Instruction: Say hi.\nResponse:"
    assert instruction_prompt("Say hi.", "") == "Instruction: Say hi.\nResponse:"
    assert instruction_prompt("Translate.", "Hallo") == "Instruction: Translate.\nInput: Hallo\nResponse:"


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[1, 2", ["is not valid JSON", "line 1, column"]),
        (json.dumps({"instruction": "x", "output": "y"}), ["expected a list"]),
        (json.dumps([RECORDS[0], "text"]), ["record 1", "not an object"]),
        (json.dumps([RECORDS[0], RECORDS[1], {"output": "y"}]), ["record 2", "instruction"]),
        (json.dumps([{"instruction": "x", "output": ""}]), ["record 0", "output"]),
        (json.dumps([{"instruction": "  ", "output": "y"}]), ["record 0", "instruction"]),
        (json.dumps([RECORDS[0], {"instruction": "x", "output": 3}]), ["record 1", "output"]),
        (json.dumps([{"instruction": "x", "input": 5, "output": "y"}]), ["record 0", "input"]),
    ],
)
def test_bad_instruction_files_name_file_and_record(tmp_path, content, expected):
    path = tmp_path / "instr.json"
    path.write_text(content)
    dm = make_dm(make_tree(tmp_path / "sqa"), path)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_missing_instruction_file_is_named(tmp_path):
    path = tmp_path / "nowhere.json"
    dm = make_dm(make_tree(tmp_path / "sqa"), path)
    dm.setup("test")  # only the train role reads the instructions
    with pytest.raises(DataError, match="nowhere.json not found"):
        dm.setup("fit")


def test_general_instructions_are_varied_and_exclude_held_out():
    questions = general_instructions()
    assert len(questions) >= 60 and len(set(questions)) == len(questions)
    assert questions == general_instructions()  # deterministic
    assert not set(DEMO_HELD_OUT) & set(questions)
    text = " ".join(questions).lower()
    for leak in ("france", "paris", "rainbow", "spider", "colour", "color"):
        assert leak not in text
    kinds = {q.split()[0] for q in questions[:10]}
    assert len(kinds) >= 4  # a prefix already mixes the kinds of instruction


def test_self_distilled_file_round_trips_through_the_data_module(tmp_path):
    questions = general_instructions()[:4]
    responses = [" Berlin.", "Four legs.\n", "  ", "Apple, pear and plum."]
    path = write_self_distilled_instructions(tmp_path / "out" / "distilled.json", questions, responses)
    records = json.loads(path.read_text())
    assert records == [{"instruction": q, "input": "", "output": r.strip()}
                       for q, r in zip(questions, responses) if r.strip()]
    assert [p.name for p in path.parent.iterdir()] == ["distilled.json"]  # no temporary file left

    dm = make_dm(make_tree(tmp_path / "sqa"), path)
    dm.setup("fit")
    assert dm.truncation_report["train"]["text_instructions"] == 3

    with pytest.raises(DataError, match="4 instructions but 3 responses"):
        write_self_distilled_instructions(path, questions, responses[:3])
