"""MMEDataModule over the easy-VQA MME build (and a hand-written fixture), and the builder itself."""

from __future__ import annotations

import pytest
from conftest import expect_data_error, write_image, write_text

from data_modules.mme import MMEDataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.errors import ConfigError
from lavin_lightning.formats.mme import read_mme_benchmark

N_IMAGES = 4
SUBTASKS = ["existence", "count", "color", "commonsense_reasoning"]


@pytest.fixture(scope="module")
def easy_mme(tmp_path_factory):
    pytest.importorskip("easy_vqa")
    from lavin_lightning.cli import main

    out = tmp_path_factory.mktemp("data") / "mme"
    main(["prepare", "mme-easy-vqa", "--out", str(out), "--n-images", str(N_IMAGES)])
    return out


def make(root, **kwargs):
    return MMEDataModule(str(root), **{"eval_batch_size": 3, "image_size": 16, "tokenizer": byte_tokenizer(),
                                       **kwargs})


def test_builder_writes_the_official_layouts_with_true_facts(easy_mme):
    from data_modules.prepare.easy_vqa import _import_easy_vqa, _load_sources

    facts = _load_sources(_import_easy_vqa())["test"].facts
    benchmark = read_mme_benchmark(easy_mme)
    assert list(benchmark) == SUBTASKS
    assert (easy_mme / "color" / "images").is_dir() and (easy_mme / "color" / "questions_answers_YN").is_dir()
    assert not (easy_mme / "existence" / "images").exists()  # images beside their .txt files
    names = [image.name for images in benchmark.values() for image in images]
    assert len(names) == len(set(names)) == 4 * N_IMAGES  # distinct pictures across subtasks
    for subtask, images in benchmark.items():
        for position, image in enumerate(images):
            answers = [q.answer for q in image.questions]
            assert answers == (["Yes", "No"] if position % 2 == 0 else ["No", "Yes"]), (subtask, position)
            assert all(q.question.endswith("? Please answer yes or no.") for q in image.questions)
            shape, color = facts[int(image.path.stem)]
            yes = next(q.question for q in image.questions if q.answer == "Yes")
            no = next(q.question for q in image.questions if q.answer == "No")
            if subtask == "existence":
                assert f"a {shape} " in yes and f"a {shape} " not in no
            if subtask == "color":
                assert yes.startswith(f"Is the {shape} in this image {color}?") and f" {color}?" not in no


def test_builder_command_is_idempotent(easy_mme, capsys):
    from lavin_lightning.cli import main

    before = (easy_mme / "easy_vqa_build.json").stat().st_mtime_ns
    main(["prepare", "mme-easy-vqa", "--out", str(easy_mme), "--n-images", str(N_IMAGES)])
    assert (easy_mme / "easy_vqa_build.json").stat().st_mtime_ns == before  # already built: not rewritten
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == [f"  {s}: {N_IMAGES} images, {2 * N_IMAGES} questions ({layout} layout)"
                           for s, layout in zip(SUBTASKS, ["beside", "beside", "folders", "beside"])]
    with pytest.raises(SystemExit, match="n_images must be an integer >= 1"):
        main(["prepare", "mme-easy-vqa", "--out", str(easy_mme.parent / "other"), "--n-images", "0"])


def test_test_rows_are_lavin_prompts_in_pairs(easy_mme):
    dm = make(easy_mme)
    dm.setup("test")
    tok = dm.tokenizer
    questions = dm.mme_questions("test")
    assert len(questions) == len(dm.datasets["test"]) == 2 * 4 * N_IMAGES
    assert dm.report["test"]["subtasks"] == dict.fromkeys(SUBTASKS, N_IMAGES)
    # The two questions of an image next to each other, subtasks in the eval tool's order.
    assert [q.subtask for q in questions[::2 * N_IMAGES]] == SUBTASKS
    assert all(a.image == b.image and (a.index, b.index) == (0, 1) for a, b in zip(questions[::2], questions[1::2]))
    by_pid = {q.pid: q for q in questions}
    rows = 0
    for batch in dm.test_dataloader():
        assert "labels" not in batch and batch["has_image"].all()
        assert batch["pixel_values"].shape[1:] == (3, 16, 16)
        for pid, ids, mask in zip(batch["pids"], batch["input_ids"], batch["attention_mask"], strict=True):
            prompt = tok.decode(ids[: int(mask.sum())], skip_special_tokens=True)
            assert prompt == f"Instruction: {by_pid[pid].question}\nResponse:"
            rows += 1
    assert rows == len(questions)
    assert dm.image_paths("test")[questions[0].pid].is_file()


def test_limit_subtasks_and_predict(easy_mme):
    dm = make(easy_mme, limit_test=1, subtasks=["commonsense_reasoning", "color"])
    dm.setup("predict")
    questions = dm.mme_questions("predict")
    assert [q.subtask for q in questions] == ["color"] * 2 + ["commonsense_reasoning"] * 2
    assert len(dm.datasets["predict"]) == 4 and dm.predict_dataloader() is not None
    with pytest.raises(ConfigError, match="call setup\\('test'\\) first"):
        dm.mme_questions("test")


def test_zero_shot_only(easy_mme):
    dm = make(easy_mme)
    for stage in ("fit", "validate"):
        with pytest.raises(ConfigError, match=f"test or predict, not {stage}"):
            dm.setup(stage)
    with pytest.raises(ConfigError, match="these options do not apply: limit_train, k_shot"):
        make(easy_mme, k_shot=5, limit_train=2)
    with pytest.raises(ConfigError, match="unknown MME subtask"):
        make(easy_mme, subtasks=["colour"])
    with pytest.raises(ConfigError, match="bad prompt"):
        make(easy_mme, prompt="{query}")


def test_prompt_as_lavin_and_bad_images(tmp_path):
    write_image(tmp_path / "OCR" / "1.png")
    # LaVIN's eval_mme.py removes double spaces once ("?  Please" -> "? Please").
    write_text(tmp_path / "OCR" / "1.txt", "Is it 'STOP'?  Please answer yes or no.\tYes\nIs it 'GO'?\tNo\n")
    write_image(tmp_path / "OCR" / "2.png")
    write_text(tmp_path / "OCR" / "2.txt", "Is it 'STOP'?\tYes\n")  # one question: a bad image
    expect_data_error(lambda: make(tmp_path).setup("test"), f"{tmp_path / 'OCR' / '2.txt'}: 1 question(s), not 2")
    dm = make(tmp_path, on_bad_record="skip", template="alpaca", prompt="{question} Answer:")
    dm.setup("test")
    assert dm.report["test"]["skipped"] == {"question_count": 1} and dm.report["test"]["images"] == 1
    first = dm.datasets["test"].samples[0]
    text = dm.tokenizer.decode(first.input_ids, skip_special_tokens=True)
    assert "### Instruction:\nIs it 'STOP'? Please answer yes or no. Answer:\n\n### Response:" in text
    assert dm.mme_questions()[0].question == "Is it 'STOP'?  Please answer yes or no."  # kept as written

