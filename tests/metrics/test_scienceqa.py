"""ScienceQA scoring: the official accuracies, coverage checks, real reference predictions, file I/O."""

from __future__ import annotations

import json

import pytest
from conftest import HAND_PREDICTIONS, HAND_PROBLEMS, REFERENCE_DATA, write_json

from lavin_lightning.errors import DataError
from lavin_lightning.formats.scienceqa import read_predictions
from lavin_lightning.metrics import scienceqa
from lavin_lightning.metrics.scienceqa import OFFICIAL_KEYS, score_scienceqa, score_scienceqa_files

SQA_REF = REFERENCE_DATA / "scienceqa"
PRED_FILES = (
    "gpt3_cot_QCM-ALE_official.json",  # indices
    "llava13b_v0_official_letters.json",  # letters
    "llava_lcs558k_vicuna13b_official.json",  # indices
)
needs_reference = pytest.mark.skipif(not SQA_REF.is_dir(), reason=f"{SQA_REF} is absent")


def test_score_hand_computed():
    scores = score_scienceqa(HAND_PROBLEMS, HAND_PREDICTIONS)
    # correct: p1, p2, p3; wrong: p4, p5, p6.
    expected = {
        "acc_natural": "100.00",  # p1 p2: 2/2
        "acc_social": "50.00",  # p3 ok, p4 wrong: 1/2
        "acc_language": "0.00",  # p5 p6 wrong: 0/2
        "acc_has_text": "33.33",  # hint in p1 p4 p6: only p1 -> 1/3 = 33.333
        "acc_has_image": "66.67",  # image in p1 p2 p6: p1 p2 -> 2/3 = 66.666
        "acc_no_context": "50.00",  # p3 p5: p3 -> 1/2
        "acc_grade_1_6": "66.67",  # grade3 p1, grade5 p3, grade1 p6: p1 p3 -> 2/3
        "acc_grade_7_12": "33.33",  # grade8 p2, grade10 p4, grade12 p5: p2 -> 1/3
        "acc_average": "50.00",  # 3/6
        "acc_physics": "33.33",  # p3 p5 p6: p3 -> 1/3
        "acc_writing": "66.67",  # p1 p2 p4: p1 p2 -> 2/3
    }
    assert {k: v for k, v in scores.items() if k != "counts"} == expected
    # Official keys in the official order, then topics sorted, then counts.
    assert list(scores) == [*OFFICIAL_KEYS, "acc_physics", "acc_writing", "counts"]
    counts = scores["counts"]
    assert (counts["total"], counts["correct"], counts["unparsed"]) == (6, 3, 2)
    assert counts["per_category"] == {
        "acc_natural": [2, 2],
        "acc_social": [1, 2],
        "acc_language": [0, 2],
        "acc_has_text": [1, 3],
        "acc_has_image": [2, 3],
        "acc_no_context": [1, 2],
        "acc_grade_1_6": [2, 3],
        "acc_grade_7_12": [1, 3],
        "acc_average": [3, 6],
        "acc_physics": [1, 3],
        "acc_writing": [2, 3],
    }
    assert json.loads(json.dumps(scores)) == scores


def test_score_empty_category_is_none():
    problems = {k: HAND_PROBLEMS[k] for k in ("p1", "p2")}  # natural science only
    scores = score_scienceqa(problems, {"p1": 1, "p2": 1})
    assert scores["acc_social"] is None and scores["acc_language"] is None
    assert scores["acc_no_context"] is None
    assert scores["counts"]["per_category"]["acc_social"] == [0, 0]
    assert scores["acc_natural"] == "50.00"


def test_score_pids_restrict_and_check_coverage():
    preds = {k: HAND_PREDICTIONS[k] for k in ("p1", "p4")}
    scores = score_scienceqa(HAND_PROBLEMS, preds, pids=["p1", "p4"])
    assert scores["acc_average"] == "50.00" and scores["counts"]["total"] == 2
    with pytest.raises(DataError, match=r"1 of 3 .*no prediction.*p2"):
        score_scienceqa(HAND_PROBLEMS, preds, pids=["p1", "p2", "p4"])
    with pytest.raises(DataError, match=r"outside the evaluated set.*p4"):
        score_scienceqa(HAND_PROBLEMS, preds, pids=["p1"])
    with pytest.raises(DataError, match=r"not problems.*zz"):
        score_scienceqa(HAND_PROBLEMS, {"zz": 0})
    with pytest.raises(DataError, match=r"no pids"):
        score_scienceqa(HAND_PROBLEMS, {})
    broken = {"p1": {k: v for k, v in HAND_PROBLEMS["p1"].items() if k != "subject"}}
    with pytest.raises(DataError, match=r"pid p1 lacks the field\(s\) subject"):
        score_scienceqa(broken, {"p1": 1})


def _load_ref(name):
    return json.loads((SQA_REF / name).read_text(encoding="utf-8"))


@needs_reference
@pytest.mark.parametrize("pred_file", PRED_FILES)
def test_real_predictions_against_direct_count(pred_file):
    problems = _load_ref("problems_test_subset.json")
    pids = _load_ref("pid_splits_subset.json")["test"]
    raw = read_predictions(SQA_REF / "preds" / pred_file)
    assert len(pids) == 361 and set(raw) == set(pids)

    scores = score_scienceqa(problems, raw, pids)
    counts = scores["counts"]
    assert counts["unparsed"] == 0 and counts["total"] == 361

    # Independent count: letters via ord(), per subject / grade band / context, from scratch.
    def as_index(v):
        return ord(v) - ord("A") if isinstance(v, str) else v

    right = {pid: as_index(raw[pid]) == problems[pid]["answer"] for pid in pids}
    groups = {
        "acc_natural": [p for p in pids if problems[p]["subject"] == "natural science"],
        "acc_social": [p for p in pids if problems[p]["subject"] == "social science"],
        "acc_language": [p for p in pids if problems[p]["subject"] == "language science"],
        "acc_has_text": [p for p in pids if problems[p]["hint"] != ""],
        "acc_has_image": [p for p in pids if problems[p]["image"] is not None],
        "acc_no_context": [p for p in pids if problems[p]["hint"] == "" and problems[p]["image"] is None],
        "acc_grade_1_6": [p for p in pids if int(problems[p]["grade"][5:]) <= 6],
        "acc_grade_7_12": [p for p in pids if int(problems[p]["grade"][5:]) >= 7],
        "acc_average": list(pids),
    }
    for key, members in groups.items():
        n_right = sum(right[p] for p in members)
        assert counts["per_category"][key] == [n_right, len(members)], key
        assert scores[key] == f"{n_right / len(members) * 100:.2f}", key
    assert counts["correct"] == sum(right.values())
    for topic in {problems[p]["topic"] for p in pids}:
        members = [p for p in pids if problems[p]["topic"] == topic]
        assert counts["per_category"][f"acc_{topic}"] == [sum(right[p] for p in members), len(members)]

    # The categories cover all 361 problems.
    per = counts["per_category"]
    assert per["acc_natural"][1] + per["acc_social"][1] + per["acc_language"][1] == 361
    assert per["acc_grade_1_6"][1] + per["acc_grade_7_12"][1] == 361
    both = sum(1 for p in pids if problems[p]["hint"] and problems[p]["image"])
    assert both > 0  # TXT and IMG really overlap on this data
    assert per["acc_has_text"][1] + per["acc_has_image"][1] - both + per["acc_no_context"][1] == 361
    topic_keys = [k for k in scores if k not in OFFICIAL_KEYS and k != "counts"]
    assert topic_keys == sorted(topic_keys) and len(topic_keys) > 10
    assert list(scores)[: len(OFFICIAL_KEYS)] == list(OFFICIAL_KEYS)
    assert sum(per[k][1] for k in topic_keys) == 361


@needs_reference
def test_real_files_end_to_end(tmp_path):
    # A data root made of links to the reference files (not copies).
    (tmp_path / "problems.json").symlink_to(SQA_REF / "problems_test_subset.json")
    (tmp_path / "pid_splits.json").symlink_to(SQA_REF / "pid_splits_subset.json")
    out = tmp_path / "out" / "scores.json"
    scores = score_scienceqa_files(tmp_path, SQA_REF / "preds" / PRED_FILES[1], output=out)
    assert json.loads(out.read_text(encoding="utf-8")) == scores
    assert scores["counts"]["total"] == 361 and scores["counts"]["unparsed"] == 0
    # minitest is a 32-pid subset: a full test-split file does not fit it.
    with pytest.raises(DataError, match=r"outside the evaluated set"):
        score_scienceqa_files(tmp_path, SQA_REF / "preds" / PRED_FILES[0], split="minitest")


def test_score_files_coverage_errors_and_no_output(tmp_path, scienceqa_root):
    out = tmp_path / "scores.json"
    partial = write_json(tmp_path / "partial.json", {"p1": 1, "p2": 0})
    expected = r"partial\.json \(split 'test'\): 4 of 6 .*no prediction, first: p3, p4, p5, p6"
    with pytest.raises(DataError, match=expected):
        score_scienceqa_files(scienceqa_root, partial, output=out)
    extra = write_json(tmp_path / "extra.json", {**HAND_PREDICTIONS, "p9": 0})
    with pytest.raises(DataError, match=r"extra\.json .*outside the evaluated set, first: p9"):
        score_scienceqa_files(scienceqa_root, extra, output=out)
    broken = write_json(tmp_path / "broken.json", "{")
    with pytest.raises(DataError, match=r"broken\.json is not valid JSON"):
        score_scienceqa_files(scienceqa_root, broken, output=out)
    assert not out.exists()
    assert list(tmp_path.glob(".scores.json.*")) == []


def test_score_files_atomic_write(tmp_path, scienceqa_root, monkeypatch):
    preds = write_json(tmp_path / "preds.json", {"results": HAND_PREDICTIONS})
    out = tmp_path / "scores.json"
    scores = score_scienceqa_files(scienceqa_root, preds, output=out)
    assert json.loads(out.read_text(encoding="utf-8")) == scores
    assert scores["acc_average"] == "50.00"
    assert list(tmp_path.glob(".scores.json.*")) == []

    # A failure at the rename leaves the previous file intact and no temp file behind.
    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(scienceqa.os, "replace", fail_replace)
    mini = write_json(tmp_path / "mini.json", {"p1": 1, "p2": 0})
    target = tmp_path / "mini_scores.json"
    with pytest.raises(OSError, match="disk full"):
        score_scienceqa_files(scienceqa_root, mini, split="minitest", output=target)
    with pytest.raises(OSError, match="disk full"):
        score_scienceqa_files(scienceqa_root, mini, split="minitest", output=out)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert json.loads(out.read_text(encoding="utf-8")) == scores  # previous content intact
