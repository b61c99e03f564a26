"""The embedded easy-VQA -> ScienceQA builder: layout, content, reproducibility, safety."""

import json
import os
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("easy_vqa")

from data_modules.prepare import easy_vqa as builder  # noqa: E402
from data_modules.prepare.easy_vqa import COLORS, SHAPES, build_scienceqa_from_easy_vqa, main  # noqa: E402
from lavin_lightning.errors import ConfigError, DataError  # noqa: E402

# Small but large enough that every split deterministically holds every kind, subject and
# grade band: kinds are allotted 1/2, 1/4, 1/4 and image families round-robin, and grades
# cycle over 12 consecutive pids.
SIZES = {"n_train": 60, "n_val": 12, "n_test": 24}
TINY = {"n_train": 20, "n_val": 4, "n_test": 8}
FIELDS = {
    "question": str, "choices": list, "answer": int, "hint": str, "task": str, "grade": str,
    "subject": str, "topic": str, "category": str, "skill": str, "lecture": str,
    "solution": str, "split": str,
}
SUBJECTS = {"natural science", "social science", "language science"}


def _kind(p):
    return "IMG" if p["image"] else ("TXT" if p["hint"] else "NO")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build shared by the read-only tests, recording which easy-VQA file each image copies."""
    copies = {}
    real_copy = builder._copy_image

    def recording_copy(src, dst):
        copies[Path(*Path(dst).parts[-4:])] = Path(src)  # key: images/<split>/<pid>/image.png
        real_copy(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builder, "_copy_image", recording_copy)
        root = build_scienceqa_from_easy_vqa(tmp_path_factory.mktemp("sqa") / "data", **SIZES)
    problems = json.loads((root / "problems.json").read_text())
    splits = json.loads((root / "pid_splits.json").read_text())
    return root, problems, splits, copies


def test_problems_have_all_official_fields(built):
    _, problems, _, _ = built
    assert len(problems) == sum(SIZES.values())
    for pid, p in problems.items():
        assert pid.isdigit(), pid
        for field, kind in FIELDS.items():
            assert isinstance(p[field], kind), (pid, field, p[field])
        assert p["image"] in (None, "image.png")
        assert 2 <= len(p["choices"]) <= 5 and len(set(p["choices"])) == len(p["choices"])
        assert all(isinstance(c, str) and c for c in p["choices"])
        assert not isinstance(p["answer"], bool) and 0 <= p["answer"] < len(p["choices"])
        assert p["task"] == "closed choice"
        assert re.fullmatch(r"grade([1-9]|1[0-2])", p["grade"])
        assert p["subject"] in SUBJECTS
        assert p["split"] in ("train", "val", "test")
        assert p["question"][0].isupper() and p["question"].endswith("?")
        # Text for the ALE prompt formats; the solution names the correct answer.
        assert p["lecture"] and p["solution"]
        assert p["choices"][p["answer"]].lower() in p["solution"].lower(), p


def test_choices_come_from_the_answer_group(built):
    _, problems, _, _ = built
    for p in problems.values():
        correct, choices = p["choices"][p["answer"]], p["choices"]
        if correct in ("yes", "no"):
            assert choices == ["yes", "no"]
        elif p["topic"] == "shapes":
            assert sorted(choices) == sorted(SHAPES)
        elif p["topic"] == "colors":
            assert len(choices) == 4 and set(choices) <= set(COLORS)
        else:  # vocabulary: one word of the asked group among words of the other group
            assert p["image"] is None and p["hint"] == ""
            asked = COLORS if "color" in p["question"] else SHAPES
            assert sum(c in asked for c in choices) == 1 and correct in asked


def test_pid_splits_follow_the_public_layout(built):
    _, problems, splits, _ = built
    assert set(splits) == {"train", "val", "test", "trainval", "minitrain", "minival", "minitest"}
    assert [len(splits[s]) for s in ("train", "val", "test")] == list(SIZES.values())
    main_pids = splits["train"] + splits["val"] + splits["test"]
    assert sorted(main_pids) == sorted(problems) and len(set(main_pids)) == len(main_pids)
    assert splits["trainval"] == splits["train"] + splits["val"]
    for split in ("train", "val", "test"):
        assert all(problems[pid]["split"] == split for pid in splits[split])
        assert splits[f"mini{split}"] == splits[split][: max(1, len(splits[split]) // 10)]


def test_images_exist_exactly_for_image_problems(built):
    root, problems, _, copies = built
    expected = {
        root / "images" / p["split"] / pid / "image.png" for pid, p in problems.items() if p["image"]
    }
    on_disk = {f for f in (root / "images").rglob("*") if f.is_file()}
    assert on_disk == expected and expected
    for path in expected:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 64)
        # A byte copy of easy-VQA's file, not a re-encoding.
        assert path.read_bytes() == copies[path.relative_to(root)].read_bytes()


def test_splits_draw_from_the_right_easy_vqa_images(built):
    root, _, _, copies = built
    sources = {
        split: {src for dst, src in copies.items() if dst.parts[-3] == split} for split in ("train", "val", "test")
    }
    assert all(sources.values())
    assert not sources["train"] & sources["val"]  # val images are held out from train
    assert all(src.parent.parent.name == "test" for src in sources["test"])
    assert all(src.parent.parent.name == "train" for src in sources["train"] | sources["val"])


def test_every_split_mixes_kinds_subjects_and_grade_bands(built):
    _, problems, splits, _ = built
    for split in ("train", "val", "test"):
        ps = [problems[pid] for pid in splits[split]]
        kinds = [_kind(p) for p in ps]
        assert set(kinds) == {"IMG", "TXT", "NO"}, split
        # About 50% IMG, 25% TXT, 25% NO.
        assert kinds.count("IMG") == len(ps) // 2 and kinds.count("TXT") == len(ps) // 4
        assert {p["subject"] for p in ps} == SUBJECTS, split
        grades = {int(p["grade"][len("grade"):]) for p in ps}
        assert min(grades) <= 6 < max(grades), split


def test_txt_hint_states_the_facts_that_answer_the_question(built):
    _, problems, _, _ = built
    txt = [p for p in problems.values() if _kind(p) == "TXT"]
    assert {p["topic"] for p in txt} >= {"shapes", "colors", "vocabulary"}
    for p in txt:
        m = re.fullmatch(r"The image shows a (\w+) (\w+)\.", p["hint"])
        assert m and m.group(1) in COLORS and m.group(2) in SHAPES, p["hint"]
        correct = p["choices"][p["answer"]]
        if p["topic"] in ("shapes", "colors"):
            assert correct == (m.group(2) if p["topic"] == "shapes" else m.group(1)), p
            assert all(c not in p["hint"] for c in p["choices"] if c != correct)
        else:  # yes/no: is the named thing in the hint, negated by "not"/"no"?
            words = re.findall(r"[a-z]+", p["question"].lower())
            (thing,) = [w for w in words if w in SHAPES or w in COLORS]
            present = thing in (m.group(1), m.group(2))
            negated = "not" in words or "no" in words
            assert correct == ("yes" if present != negated else "no"), p


def test_only_txt_problems_have_a_hint(built):
    _, problems, _, _ = built
    for p in problems.values():
        if p["image"]:
            assert p["hint"] == ""
        if p["category"] == "Word groups":  # the vocabulary (NO) questions need no context
            assert p["image"] is None and p["hint"] == ""


def test_official_scoring_covers_every_category(built):
    from lavin_lightning.metrics.scienceqa import score_scienceqa

    _, problems, splits, _ = built
    pids = splits["test"]
    perfect = score_scienceqa(problems, {pid: problems[pid]["answer"] for pid in pids})
    official = ["acc_natural", "acc_social", "acc_language", "acc_has_text", "acc_has_image",
                "acc_no_context", "acc_grade_1_6", "acc_grade_7_12", "acc_average"]
    assert all(perfect[key] == "100.00" for key in official), perfect
    wrong = score_scienceqa(problems, {pid: -1 for pid in pids})
    assert wrong["acc_average"] == "0.00"


def test_same_seed_reproduces_and_other_seed_differs(tmp_path):
    a = build_scienceqa_from_easy_vqa(tmp_path / "a", seed=3, **TINY)
    b = build_scienceqa_from_easy_vqa(tmp_path / "b", seed=3, **TINY)
    c = build_scienceqa_from_easy_vqa(tmp_path / "c", seed=4, **TINY)
    for name in ("problems.json", "pid_splits.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "problems.json").read_bytes() != (c / "problems.json").read_bytes()
    images = sorted(f.relative_to(a) for f in a.rglob("*.png"))
    assert images and images == sorted(f.relative_to(b) for f in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in images)


def test_second_call_reuses_the_build(tmp_path, monkeypatch):
    out = build_scienceqa_from_easy_vqa(tmp_path / "d", **TINY)
    before = (out / "problems.json").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the build was complete")

    monkeypatch.setattr(builder, "_write_build", fail)
    assert build_scienceqa_from_easy_vqa(tmp_path / "d", **TINY) == out
    assert (out / "problems.json").stat().st_mtime_ns == before
    # Other parameters or overwrite=True do rebuild.
    with pytest.raises(AssertionError, match="rebuilt"):
        build_scienceqa_from_easy_vqa(tmp_path / "d", **TINY, overwrite=True)
    with pytest.raises(AssertionError, match="rebuilt"):
        build_scienceqa_from_easy_vqa(tmp_path / "d", **{**TINY, "n_test": 9})


def test_rebuild_with_new_parameters_replaces_the_old_build(tmp_path):
    out = build_scienceqa_from_easy_vqa(tmp_path / "d", **TINY)
    build_scienceqa_from_easy_vqa(out, **{**TINY, "n_test": 12})
    splits = json.loads((out / "pid_splits.json").read_text())
    assert len(splits["test"]) == 12
    manifest = json.loads((out / builder.MANIFEST_NAME).read_text())
    assert manifest["params"]["n_test"] == 12 and sum(manifest["counts"]["test"].values()) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary leftovers


def _failing_copy(monkeypatch, after):
    real_copy, calls = builder._copy_image, []

    def copy(src, dst):
        calls.append(dst)
        if len(calls) > after:
            raise OSError("disk full (simulated)")
        real_copy(src, dst)

    monkeypatch.setattr(builder, "_copy_image", copy)
    return calls


def test_failure_mid_build_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = _failing_copy(monkeypatch, after=3)
    with pytest.raises(OSError, match="simulated"):
        build_scienceqa_from_easy_vqa(tmp_path / "d", **TINY)
    assert len(calls) == 4  # three images were written before the failure
    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_the_previous_build(tmp_path, monkeypatch):
    out = build_scienceqa_from_easy_vqa(tmp_path / "d", **TINY)
    problems = (out / "problems.json").read_bytes()
    _failing_copy(monkeypatch, after=2)
    with pytest.raises(OSError, match="simulated"):
        build_scienceqa_from_easy_vqa(out, **TINY, overwrite=True)
    assert (out / "problems.json").read_bytes() == problems
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_foreign_directory_is_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not empty.*easy_vqa_build.json"):
            build_scienceqa_from_easy_vqa(foreign, **TINY, overwrite=overwrite)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        build_scienceqa_from_easy_vqa(tmp_path / "file", **TINY)
    # An existing empty directory is fine.
    (tmp_path / "empty").mkdir()
    assert (build_scienceqa_from_easy_vqa(tmp_path / "empty", **TINY) / "problems.json").is_file()


def test_missing_easy_vqa_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # makes `import easy_vqa` fail
    with pytest.raises(DataError, match=re.escape("pip install --no-deps easy-vqa==1.0")):
        build_scienceqa_from_easy_vqa(tmp_path / "d", **TINY)
    assert not (tmp_path / "d").exists()


def test_sizes_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="n_val"):
        build_scienceqa_from_easy_vqa(tmp_path / "d", n_train=10, n_val=0, n_test=4)
    with pytest.raises(DataError, match="only .* questions"):
        build_scienceqa_from_easy_vqa(tmp_path / "d", n_train=10, n_val=2, n_test=20_000)
    assert not (tmp_path / "d").exists()


def test_main_prints_where_and_counts(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--n-train", "20", "--n-val", "4", "--n-test", "8", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "train: 20 problems (IMG 10, TXT 5, NO 5)" in printed
    assert "test: 8 problems (IMG 4, TXT 2, NO 2)" in printed
    assert json.loads((out / builder.MANIFEST_NAME).read_text())["params"]["seed"] == 1
    with pytest.raises(SystemExit, match="error: .*not a directory"):
        main(["--out", str(out / "problems.json")])
    assert os.path.isfile(out / "problems.json")
