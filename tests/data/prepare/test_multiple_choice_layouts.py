"""MMLU CSVs and TruthfulQA's mc_task.json from easy-VQA's vocabulary, read back and evaluated by `evaluate mc`."""

import json
import re

import pytest
import torch

pytest.importorskip("easy_vqa")

from data_modules.prepare.easy_vqa import COLORS, SHAPES  # noqa: E402
from data_modules.prepare.multiple_choice import (  # noqa: E402
    MMLU_DEV_QUESTIONS,
    MMLU_SUBJECTS,
    TRUTHFULQA_QUESTIONS,
    build_mmlu_from_easy_vqa,
    build_truthfulqa_from_easy_vqa,
)
from lavin_lightning.backbones.tiny import byte_tokenizer  # noqa: E402
from lavin_lightning.errors import DataError  # noqa: E402
from lavin_lightning.formats.multiple_choice import read_mmlu, read_mmlu_dev, read_truthfulqa_mc1  # noqa: E402

SIDES = {"circle": "none", "triangle": "three", "rectangle": "four"}


@pytest.fixture(scope="module")
def mmlu(tmp_path_factory):
    return build_mmlu_from_easy_vqa(tmp_path_factory.mktemp("mmlu") / "data", n_val=6, n_test=40)


@pytest.fixture(scope="module")
def truthfulqa(tmp_path_factory):
    return build_truthfulqa_from_easy_vqa(tmp_path_factory.mktemp("tqa") / "data", n_test=TRUTHFULQA_QUESTIONS)


def is_right(question: str, choice: str) -> bool:
    """Whether ``choice`` answers ``question`` correctly, worked out from the words alone."""
    if question == "Which of these is a shape?":
        return choice in SHAPES
    if question == "Which of these is not a shape?":
        return choice not in SHAPES
    if question == "Which of these is a color?" or question.startswith("Which word names the same kind of thing as"):
        return choice in COLORS
    if question == "Which of these is not a color?":
        return choice not in COLORS
    if m := re.fullmatch(r"How many straight sides does a (\w+) have\?", question):
        return SIDES[m.group(1)] == choice
    if question == "Which of these shapes has no corners?":
        return choice == "circle"
    if question == "Which of these shapes has exactly three corners?":
        return choice == "triangle"
    m = re.fullmatch(r"A picture shows a (\w+) (\w+)\. (.*)", question)
    assert m, f"no rule for {question!r}"
    color, shape, asked = m.groups()
    return choice == {"What color is the shape?": color, "What shape is in the picture?": shape,
                      "Which of these is in the picture?": f"a {color} {shape}"}[asked]


def test_mmlu_layout_is_read_and_every_answer_is_right(mmlu):
    test = read_mmlu(mmlu, "test")
    assert list(test) == sorted(MMLU_SUBJECTS)  # every subject found, sorted by name
    dev, val = read_mmlu_dev(mmlu, MMLU_SUBJECTS), read_mmlu(mmlu, "val")
    for subject in MMLU_SUBJECTS:
        assert (len(dev[subject]), len(val[subject]), len(test[subject])) == (MMLU_DEV_QUESTIONS, 6, 40)
        questions = dev[subject] + val[subject] + test[subject]
        # No question twice in a subject: the k-shot examples never give a test answer away.
        assert len({(q.question, frozenset(q.choices)) for q in questions}) == len(questions)
        for q in questions:
            assert len(q.choices) == 4 == len(set(q.choices))
            assert [is_right(q.question, c) for c in q.choices] == [i == q.answer for i in range(4)], q
    # Every answer letter occurs: the correct choice is not always in one place.
    assert {q.answer for qs in test.values() for q in qs} == {0, 1, 2, 3}


def test_truthfulqa_layout_is_read(truthfulqa):
    questions = read_truthfulqa_mc1(truthfulqa / "mc_task.json")
    assert len(questions) == TRUTHFULQA_QUESTIONS == len({q.question for q in questions})
    records = json.loads((truthfulqa / "mc_task.json").read_text())
    for q, record in zip(questions, records):
        # As published: the one true MC1 answer first, among four.
        assert q.answer == 0 and len(q.choices) == 4 == len(set(q.choices))
        mc2_true = {a for a, v in record["mc2_targets"].items() if v == 1}
        assert len(mc2_true) == 2 and q.choices[0] in mc2_true
        assert all(record["mc2_targets"][c] == 0 for c in q.choices[1:])
    with pytest.raises(DataError, match="110 distinct questions, 111 requested"):
        build_truthfulqa_from_easy_vqa(truthfulqa.parent / "more", n_test=TRUTHFULQA_QUESTIONS + 1)


def test_evaluate_mc_runs_on_both(mmlu, truthfulqa):
    from lavin_lightning.commands.evaluate import run_mc_evaluation

    def prefers_the_shortest_row(batch):
        # A stand-in model: enough to run the requests through the scorer end to end.
        return -batch["attention_mask"].sum(1).to(torch.float64)

    report = run_mc_evaluation(prefers_the_shortest_row, byte_tokenizer(), mmlu_root=mmlu,
                               truthfulqa_path=truthfulqa / "mc_task.json", k_shot=5, limit=4)
    assert report["mmlu"]["micro_average"]["total"] == 3 * 4 and report["mmlu"]["k_shot"] == 5
    assert set(report["mmlu"]["subjects"]) == set(MMLU_SUBJECTS)
    assert report["truthfulqa_mc1"]["total"] == 4
