"""MME's benchmark folder (both release layouts) and the eval tool's results layout: reading, writing, errors."""

from __future__ import annotations

import pytest
from conftest import expect_data_error, write_image, write_text

from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.mme import (
    MMEResult,
    one_line,
    read_mme_benchmark,
    read_mme_results,
    read_mme_results_file,
    read_mme_subtask,
    results_line,
    write_mme_results,
)
from lavin_lightning.formats.records import ReadReport


def write_mme(root):
    """artwork in images/ + questions_answers_YN/, existence with images beside their .txt files."""
    art = root / "artwork"
    write_image(art / "images" / "b.jpg")
    write_image(art / "images" / "a.jpg")
    # A byte-order mark, Windows line ends and a blank last line, all as some release files have.
    write_text(art / "questions_answers_YN" / "a.txt",
               "\ufeffIs this by Monet?  Please answer yes or no.\tYes\r\nIs this by Goya? Please answer yes or no.\tNo"
               "\r\n\r\n")
    write_text(art / "questions_answers_YN" / "b.txt", "Is it a sculpture?\tNo\nIs it a painting?\tYes\n")
    write_image(root / "existence" / "000001.png")
    write_text(root / "existence" / "000001.txt", "Is there a dog?\tyes\nIs there a cat?\tno")
    write_image(root / "eval_tool" / "x.png")  # not a subtask: passed over
    return root


def test_both_layouts_in_the_eval_tools_order(tmp_path):
    benchmark = read_mme_benchmark(write_mme(tmp_path))
    assert list(benchmark) == ["existence", "artwork"]  # the eval tool's order, not the folder's
    (a, b) = benchmark["artwork"]  # sorted by file name
    assert (a.name, a.path, b.name) == ("a.jpg", tmp_path / "artwork" / "images" / "a.jpg", "b.jpg")
    assert [(q.index, q.question, q.answer) for q in a.questions] == [
        (0, "Is this by Monet?  Please answer yes or no.", "Yes"),
        (1, "Is this by Goya? Please answer yes or no.", "No")]
    assert [q.answer for q in b.questions] == ["No", "Yes"]  # the order of the file is kept
    (image,) = benchmark["existence"]
    assert image.path == tmp_path / "existence" / "000001.png"
    assert [q.pid for q in image.questions] == ["existence/000001.png/0", "existence/000001.png/1"]
    assert read_mme_benchmark(tmp_path, ["artwork"]).keys() == {"artwork"}


@pytest.mark.parametrize("content, fragments", [
    ("Is it red?\nIs it blue?\tNo\n", ["line 1 has 1 tab-separated field(s), not 2"]),
    ("Is it red?\tYes\nIs it blue?\tMaybe\n", ["line 2 answers 'Maybe', not Yes or No"]),
    ("Is it red?\tYes\nIs it blue?\tNo\nIs it green?\tNo\n", ["3 question(s), not 2"]),
    ("Is it red?\tYes\n", ["1 question(s), not 2"]),
    ("\tYes\nIs it blue?\tNo\n", ["line 1 has 1 tab-separated field(s)"]),  # no question: stripped, one field
])
def test_question_file_errors_name_file_and_line(tmp_path, content, fragments):
    write_image(tmp_path / "color" / "1.jpg")
    txt = write_text(tmp_path / "color" / "1.txt", content)
    expect_data_error(lambda: read_mme_benchmark(tmp_path), str(txt), *fragments,
                      "expected two lines 'question<TAB>Yes|No'")


def test_unmatched_files_and_folders(tmp_path):
    write_image(tmp_path / "color" / "1.jpg")
    expect_data_error(lambda: read_mme_subtask(tmp_path / "color", "color"), str(tmp_path / "color" / "1.jpg"),
                      "no question file 1.txt")
    write_text(tmp_path / "count" / "2.txt", "a\tYes\nb\tNo\n")
    expect_data_error(lambda: read_mme_subtask(tmp_path / "count", "count"), str(tmp_path / "count" / "2.txt"),
                      "no image 2.jpg or 2.png")
    write_image(tmp_path / "scene" / "images" / "1.jpg")
    expect_data_error(lambda: read_mme_subtask(tmp_path / "scene", "scene"), "has images/ but no questions_answers_YN/")
    write_image(tmp_path / "OCR" / "1.jpg")
    write_image(tmp_path / "OCR" / "1.png")
    expect_data_error(lambda: read_mme_subtask(tmp_path / "OCR", "OCR"), "1.jpg and 1.png share a name")
    (tmp_path / "position").mkdir()
    expect_data_error(lambda: read_mme_subtask(tmp_path / "position", "position"), "holds no images")


def test_benchmark_folder_errors(tmp_path):
    expect_data_error(lambda: read_mme_benchmark(tmp_path / "absent"), "absent not found", "one folder per subtask")
    (tmp_path / "eval_tool").mkdir()
    expect_data_error(lambda: read_mme_benchmark(tmp_path), "holds none of MME's subtask folders")
    expect_data_error(lambda: read_mme_benchmark(write_mme(tmp_path), ["celebrity"]),
                      "no folder for the subtask(s) ['celebrity']")
    with pytest.raises(ConfigError, match="unknown MME subtask"):
        read_mme_benchmark(tmp_path, ["ocr"])  # the subtask is "OCR"


def test_skip_leaves_bad_images_out_and_counts_them(tmp_path):
    write_mme(tmp_path)
    write_text(tmp_path / "artwork" / "questions_answers_YN" / "b.txt", "only one\tYes\n")
    write_image(tmp_path / "existence" / "000002.png")  # no question file
    report = ReadReport("skip")
    benchmark = read_mme_benchmark(tmp_path, report=report)
    assert [i.name for i in benchmark["artwork"]] == ["a.jpg"] and len(benchmark["existence"]) == 1
    assert dict(report.skipped) == {"question_count": 1, "missing_questions": 1}
    assert report.first_skipped.startswith(f"{tmp_path / 'existence' / '000002.png'}: no question file 000002.txt")


# --------------------------------------------------------------------------- results


RESULTS = {
    "existence": [MMEResult("1.jpg", "Is there a dog?", "Yes", " yes\tit is\n"),
                  MMEResult("1.jpg", "Is there a cat?", "No", "No")],
    "code_reasoning": [MMEResult("c.png", "Does it print 3?", "No", "")] * 2,
}


def test_results_round_trip_and_stale_files(tmp_path):
    write_text(tmp_path / "OCR.txt", "stale\tq\tYes\tyes\nstale\tq\tNo\tno\n")  # an earlier run's subtask
    written = write_mme_results(tmp_path, RESULTS)
    assert written == [tmp_path / "existence.txt", tmp_path / "code_reasoning.txt"]
    assert not (tmp_path / "OCR.txt").exists()
    assert (tmp_path / "existence.txt").read_text() == (
        "1.jpg\tIs there a dog?\tYes\tyes it is\n1.jpg\tIs there a cat?\tNo\tNo\n")
    back = read_mme_results(tmp_path)
    assert list(back) == ["existence", "code_reasoning"]
    assert back["existence"][0] == MMEResult("1.jpg", "Is there a dog?", "Yes", "yes it is")
    assert back["code_reasoning"] == RESULTS["code_reasoning"]


def test_one_line():
    assert one_line("  No.\nInstruction: more\r\tx ") == "No. Instruction: more  x"
    assert results_line(MMEResult("i", "q", "Yes", "a\nb")) == "i\tq\tYes\ta b"
    expect_data_error(lambda: results_line(MMEResult("i", "q\tr", "Yes", "a")), "the question 'q\\tr' holds a tab")


@pytest.mark.parametrize("content, fragments", [
    ("1.jpg\tq\tYes\n", ["line 1 has 3 tab-separated field(s), not 4"]),
    ("1.jpg\tq\tYes\ty\n1.jpg\tq\tmaybe\tn\n", ["line 2 has the ground truth 'maybe', not Yes or No"]),
    ("1.jpg\tq\tYes \ty\n1.jpg\tq\tNo\tn\n", ["line 1 has the ground truth 'Yes '"]),  # never stripped, as the tool
    ("1.jpg\tq\tYes\ty\n1.jpg\tq\tNo\tn\n2.jpg\tq\tNo\tn\n", ["3 lines, an odd number"]),
    ("1.jpg\tq\tYes\ty\n2.jpg\tq\tNo\tn\n", ["lines 1 and 2 are about the images '1.jpg' and '2.jpg'"]),
    ("1.jpg\tq\tYes\ty\n\n", ["line 2 has 1 tab-separated field(s)"]),
    ("", ["is empty"]),
])
def test_results_file_errors_name_file_and_line(tmp_path, content, fragments):
    path = write_text(tmp_path / "color.txt", content)
    expect_data_error(lambda: read_mme_results_file(path), str(path), *fragments, "expected one line per question")


def test_results_folder_errors(tmp_path):
    expect_data_error(lambda: read_mme_results(tmp_path / "absent"), "absent not found")
    expect_data_error(lambda: read_mme_results(tmp_path), "holds no <subtask>.txt result file")
    write_text(tmp_path / "colour.txt", "1.jpg\tq\tYes\ty\n1.jpg\tq\tNo\tn\n")
    expect_data_error(lambda: read_mme_results(tmp_path), "colour.txt named after no MME subtask")
    with pytest.raises(ConfigError, match="unknown MME subtask"):
        write_mme_results(tmp_path, {"colour": []})
