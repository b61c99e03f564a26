"""`lavin-lightning score mme`: the summary, --json, and errors that name the file and line."""

from __future__ import annotations

import json

import pytest
from conftest import write_text

from lavin_lightning.cli import main


def write_results(folder):
    # color: both right on 1.jpg; 2.jpg's ground truth is no-then-yes, answered right.
    write_text(folder / "color.txt", "1.jpg\tIs it red?\tYes\tYes\n1.jpg\tIs it blue?\tNo\tNo\n"
                                     "2.jpg\tIs it red?\tNo\tNo\n2.jpg\tIs it blue?\tYes\tYes\n")
    return folder


def test_json_and_release_parsing(tmp_path, capsys):
    folder = write_results(tmp_path / "results")
    main(["score", "mme", "--results", str(folder), "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["perception"] == 200.0 and scores["cognition"] is None
    assert scores["subtasks"]["color"]["acc_plus"] == 100.0
    main(["score", "mme", "--results", str(folder), "--parsing", "release"])
    # LaVIN's eval_mme.py expects yes-then-no: 2.jpg's two right answers count as wrong.
    assert capsys.readouterr().out.splitlines() == [
        "MME (release parsing): perception 100.00 (1 of 10 subtasks), cognition - (0 of 4 subtasks)",
        "  color                  acc  50.00  acc+  50.00  score 100.00"]


def test_errors_name_file_and_line(tmp_path):
    folder = write_results(tmp_path / "results")
    write_text(folder / "OCR.txt", "1.jpg\tWhat does it say?\tYes\n")
    with pytest.raises(SystemExit, match=f"error: {folder / 'OCR.txt'}: line 1 has 3 tab-separated field"):
        main(["score", "mme", "--results", str(folder)])
    with pytest.raises(SystemExit, match="not found"):
        main(["score", "mme", "--results", str(tmp_path / "absent")])


def test_prepare_lists_the_mme_builder():
    with pytest.raises(SystemExit, match="mme-easy-vqa   yes/no questions about easy-VQA pictures"):
        main(["prepare"])
