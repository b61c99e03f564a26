"""ScienceQA prompt builder: exact LaVIN strings (reference cases) and clear errors."""

import json

import pytest
from conftest import REFERENCE_DATA

from data_modules.prompts import INPUT_FORMATS, OUTPUT_FORMATS, scienceqa_prompt
from lavin_lightning.errors import ConfigError, DataError

REFERENCE = REFERENCE_DATA / "scienceqa"


def _problem(**overrides):
    problem = {
        "question": "Which is a mammal?",
        "choices": ["frog", "dog", "trout"],
        "answer": 1,
        "hint": "Look at the animals.",
        "image": None,
        "lecture": "Mammals have fur.\nThey feed milk.",
        "solution": "A dog has fur.",
        "split": "train",
    }
    problem.update(overrides)
    return problem


def test_qcm_a_exact_strings():
    text_in, target = scienceqa_prompt(_problem(), "QCM-A")
    assert text_in == (
        "Question: Which is a mammal?\nContext: Look at the animals.\n"
        "Options: (A) frog (B) dog (C) trout\nResponse:"
    )
    assert target == "The answer is B."


def test_cqm_ale_context_first_and_escaped_newlines():
    text_in, target = scienceqa_prompt(_problem(hint=""), "CQM-ALE")
    assert text_in.startswith("Context: N/A\nQuestion: Which is a mammal?\nOptions:")
    # Newlines inside the lecture become the two characters backslash + n.
    assert target == "The answer is B. BECAUSE: Mammals have fur.\\nThey feed milk. A dog has fur."


def test_ae_uses_lecture_and_al_uses_solution():
    # The ScienceQA naming quirk that LaVIN keeps.
    assert scienceqa_prompt(_problem(), "QCM-AE")[1].endswith("BECAUSE: Mammals have fur.\\nThey feed milk.")
    assert scienceqa_prompt(_problem(), "QCM-AL")[1] == "The answer is B. BECAUSE: A dog has fur."
    assert scienceqa_prompt(_problem(), "QCM-LEA")[1] == (
        "Mammals have fur.\\nThey feed milk. A dog has fur. The answer is B."
    )


def test_upper_bound_inputs_place_because_line():
    assert "Options: (A) frog (B) dog (C) trout\nBECAUSE: A dog has fur.\nResponse:" in scienceqa_prompt(
        _problem(), "QCME-A"
    )[0]
    assert "Context: Look at the animals.\nBECAUSE: Mammals" in scienceqa_prompt(_problem(), "QCLEM-A")[0]


def test_caption_only_when_enabled_and_dangling_because_kept():
    with_caption = scienceqa_prompt(_problem(), "QCM-A", use_caption=True, caption="A dog on grass.")[0]
    assert "Context: Look at the animals. A dog on grass.\n" in with_caption
    assert "A dog on grass." not in scienceqa_prompt(_problem(), "QCM-A", caption="A dog on grass.")[0]
    # Empty lecture and solution: the release keeps the trailing "BECAUSE:".
    assert scienceqa_prompt(_problem(lecture="", solution=""), "QCM-ALE")[1] == "The answer is B. BECAUSE:"


def test_double_spaces_removed_in_one_pass_only():
    text_in, _ = scienceqa_prompt(_problem(question="a   b"), "QCM-A")
    assert "Question: a  b\n" in text_in  # three spaces -> two, as one str.replace pass does


@pytest.mark.parametrize("fmt", ["QCM", "QCM-XYZ", "QMC-A", "QCM-A-E", ""])
def test_unknown_format_lists_valid_formats(fmt):
    with pytest.raises(ConfigError) as err:
        scienceqa_prompt(_problem(), fmt)
    message = str(err.value)
    assert all(f in message for f in INPUT_FORMATS) and all(f in message for f in OUTPUT_FORMATS)


def test_bad_choices_and_answer_name_the_record():
    with pytest.raises(DataError, match="pid 77.*choices"):
        scienceqa_prompt(_problem(pid="77", choices=[], answer=0))
    with pytest.raises(DataError, match="Which is a mammal"):
        scienceqa_prompt(_problem(choices=list("abcdef"), answer=0))
    with pytest.raises(DataError, match="pid 78.*answer.*3 choices.*got 3"):
        scienceqa_prompt(_problem(pid="78", answer=3))
    with pytest.raises(DataError, match="answer"):
        scienceqa_prompt(_problem(answer=-1))


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared reference data not available")
def test_all_lavin_reference_cases_match_exactly():
    cases = json.loads((REFERENCE / "lavin_prompt_cases.json").read_text())["cases"]
    problems = json.loads((REFERENCE / "problems_test_subset.json").read_text())
    captions = json.loads((REFERENCE / "captions_subset.json").read_text())["captions"]
    assert len(cases) == 144
    mismatches = []
    for case in cases:
        got = scienceqa_prompt(
            problems[case["pid"]], case["prompt_format"], case["use_caption"], captions.get(case["pid"], "")
        )
        if got != (case["input"], case["target"]):
            mismatches.append((case["pid"], case["prompt_format"], case["use_caption"]))
    assert mismatches == []
    # The reference does exercise captions and the dangling "BECAUSE:" quirk.
    assert any(c["use_caption"] and captions.get(c["pid"]) for c in cases)
    assert any(c["target"].endswith("BECAUSE:") for c in cases)
