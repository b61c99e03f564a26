"""What every easy-VQA layout build shares: reproducibility, build once, atomic failure, sizes, the command."""

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("easy_vqa")

from data_modules.prepare import captions, easy_vqa, llava_instruct, multiple_choice, textvqa_aokvqa  # noqa: E402
from lavin_lightning.errors import ConfigError, DataError  # noqa: E402

SPLITS = {"n_train": 6, "n_val": 2, "n_test": 3}
# --layout: (module, builder, tiny sizes, the file that marks the layout, the counts a tiny build reports)
LAYOUTS = {
    "coco-captions": (captions, captions.build_coco_captions_from_easy_vqa, SPLITS, "dataset_coco.json",
                      {"train": {"images": 5, "sentences": 25}, "restval": {"images": 1, "sentences": 5},
                       "val": {"images": 2, "sentences": 10}, "test": {"images": 3, "sentences": 15}}),
    "flickr30k": (captions, captions.build_flickr30k_from_easy_vqa, SPLITS, "dataset_flickr30k.json",
                  {"train": {"images": 6, "sentences": 30}, "val": {"images": 2, "sentences": 10},
                   "test": {"images": 3, "sentences": 15}}),
    "textcaps": (captions, captions.build_textcaps_from_easy_vqa, SPLITS, "TextCaps_0.1_train.json",
                 {"train": {"images": 6, "entries": 30}, "val": {"images": 2, "entries": 10},
                  "test": {"images": 3, "entries": 3}}),
    "aokvqa": (textvqa_aokvqa, textvqa_aokvqa.build_aokvqa_from_easy_vqa, SPLITS, "aokvqa_v1p0_train.json",
               {"train": {"questions": 6, "images": 6}, "val": {"questions": 2, "images": 2},
                "test": {"questions": 3, "images": 3}}),
    "textvqa": (textvqa_aokvqa, textvqa_aokvqa.build_textvqa_from_easy_vqa, SPLITS, "TextVQA_0.5.1_train.json",
                {"train": {"questions": 6, "images": 6}, "val": {"questions": 2, "images": 2},
                 "test": {"questions": 3, "images": 3}}),
    "mmlu": (multiple_choice, multiple_choice.build_mmlu_from_easy_vqa, {"n_val": 2, "n_test": 4},
             "test/shapes_test.csv", {subject: {"dev": 5, "val": 2, "test": 4}
                                      for subject in ("shapes", "colors", "picture_descriptions")}),
    "truthfulqa": (multiple_choice, multiple_choice.build_truthfulqa_from_easy_vqa, {"n_test": 7}, "mc_task.json",
                   {"questions": 7}),
    "llava-instruct": (llava_instruct, llava_instruct.build_llava_instruct_from_easy_vqa, {"n_train": 6},
                       "llava_instruct.json", None),
}
NAMES = list(LAYOUTS)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", NAMES)
def test_same_seed_reproduces_and_other_seed_differs(tmp_path, layout):
    _, build, sizes, main_file, _ = LAYOUTS[layout]
    a, b = files(build(tmp_path / "a", **sizes, seed=3)), files(build(tmp_path / "b", **sizes, seed=3))
    c = files(build(tmp_path / "c", **sizes, seed=4))
    assert a == b and main_file in a
    assert a[main_file] != c[main_file]


@pytest.mark.parametrize("layout", NAMES)
def test_manifest_records_the_layout_parameters_and_counts(tmp_path, layout):
    _, build, sizes, _, counts = LAYOUTS[layout]
    out = build(tmp_path / "d", **sizes, seed=5)
    manifest = json.loads((out / easy_vqa.MANIFEST_NAME).read_text())
    assert manifest["layout"] == layout and manifest["source"].startswith("easy-vqa ")
    assert manifest["params"]["seed"] == 5 and manifest["params"]["layout"] == layout
    assert all(manifest["params"][name] == n for name, n in sizes.items())
    if counts is not None:
        assert manifest["counts"] == counts
    else:  # LLaVA-Instruct: one record per picture, of either kind
        c = manifest["counts"]
        assert c["conversations"] == sizes["n_train"] == c["conversation"] + c["detail"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary leftovers


@pytest.mark.parametrize("layout", NAMES)
def test_second_call_reuses_the_build(tmp_path, monkeypatch, layout):
    _, build, sizes, main_file, _ = LAYOUTS[layout]
    out = build(tmp_path / "d", **sizes)
    before = (out / main_file).stat().st_mtime_ns

    def fail():
        raise AssertionError("rebuilt although the build was complete")

    # Only a build imports easy-vqa: a reused one returns before.
    monkeypatch.setattr(easy_vqa, "_import_easy_vqa", fail)
    assert build(tmp_path / "d", **sizes) == out
    assert (out / main_file).stat().st_mtime_ns == before
    with pytest.raises(AssertionError, match="rebuilt"):
        build(tmp_path / "d", **sizes, overwrite=True)
    with pytest.raises(AssertionError, match="rebuilt"):
        build(tmp_path / "d", **sizes, seed=1)
    # Another layout's build in the same folder is not this one's either.
    other = "truthfulqa" if layout != "truthfulqa" else "mmlu"
    with pytest.raises(AssertionError, match="rebuilt"):
        LAYOUTS[other][1](tmp_path / "d", **LAYOUTS[other][2])


@pytest.mark.parametrize("layout", NAMES)
def test_failure_mid_build_leaves_nothing_behind_and_keeps_the_previous_build(tmp_path, monkeypatch, layout):
    module, build, sizes, main_file, _ = LAYOUTS[layout]
    out = build(tmp_path / "d", **sizes)
    kept = files(out)

    def disk_full(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # The layout's own files, and the manifest that every build writes last.
    monkeypatch.setattr(module, "_write_json", disk_full)
    monkeypatch.setattr(easy_vqa, "_write_json", disk_full)
    with pytest.raises(OSError, match="simulated"):
        build(tmp_path / "d", **sizes, overwrite=True)
    with pytest.raises(OSError, match="simulated"):
        build(tmp_path / "e", **sizes)
    assert files(out) == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize("layout", NAMES)
def test_sizes_must_be_positive_and_available(tmp_path, layout):
    _, build, sizes, _, _ = LAYOUTS[layout]
    name = next(iter(sizes))
    with pytest.raises(ConfigError, match=f"{name} must be an integer >= 1, got 0"):
        build(tmp_path / "d", **{**sizes, name: 0})
    with pytest.raises(DataError, match="ask for fewer"):
        build(tmp_path / "d", **{**sizes, name: 100_000})
    assert not (tmp_path / "d").exists()


def test_foreign_directory_is_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty.*easy_vqa_build.json"):
        captions.build_coco_captions_from_easy_vqa(foreign, **SPLITS, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("layout", NAMES)
def test_command_builds_every_layout(tmp_path, capsys, layout):
    from lavin_lightning.cli import main

    _, _, sizes, main_file, _ = LAYOUTS[layout]
    flags = [arg for name, n in sizes.items() for arg in (f"--{name.replace('_', '-')}", str(n))]
    out = tmp_path / "cli"
    main(["prepare", "easy-vqa", "--layout", layout, "--out", str(out), *flags, "--seed", "2"])
    printed = capsys.readouterr().out
    manifest = json.loads((out / easy_vqa.MANIFEST_NAME).read_text())
    assert re.fullmatch(rf"easy-VQA in the .+ layout: {re.escape(str(out))} (.+)\n", printed)
    assert json.loads(printed.split(f"{out} ", 1)[1]) == manifest["counts"]
    assert (out / main_file).is_file() and manifest["params"]["seed"] == 2


def test_command_refuses_sizes_a_layout_does_not_take(tmp_path):
    with pytest.raises(SystemExit, match="--layout mmlu takes --n-val, --n-test, not --n-train"):
        easy_vqa.main(["--layout", "mmlu", "--out", str(tmp_path / "m"), "--n-train", "5"])
    with pytest.raises(SystemExit, match="error: .*110 distinct questions, 500 requested"):
        easy_vqa.main(["--layout", "truthfulqa", "--out", str(tmp_path / "t"), "--n-test", "500"])
    assert list(tmp_path.iterdir()) == []


def test_scienceqa_captions_for_the_text_only_row(tmp_path, capsys):
    from conftest import COMMON

    from data_modules.scienceqa import ScienceQADataModule
    from lavin_lightning.backbones.tiny import byte_tokenizer

    sizes = {"n_train": 12, "n_val": 4, "n_test": 8}
    plain = easy_vqa.build_scienceqa_from_easy_vqa(tmp_path / "plain", **sizes)
    captioned = easy_vqa.build_scienceqa_from_easy_vqa(tmp_path / "captioned", **sizes, captions=True)
    # The same problems as without captions: only captions.json is added.
    assert files(captioned) == {**files(plain), "captions.json": files(captioned)["captions.json"],
                                easy_vqa.MANIFEST_NAME: files(captioned)[easy_vqa.MANIFEST_NAME]}
    assert not (plain / "captions.json").exists()
    problems = json.loads((captioned / "problems.json").read_text())
    captions = json.loads((captioned / "captions.json").read_text())["captions"]
    assert captions and set(captions) <= {pid for pid, p in problems.items() if p["image"]}
    for pid, caption in captions.items():
        m = re.fullmatch(r"A (\w+) (\w+) on a light background\.", caption)
        assert m and m.group(1) in easy_vqa.COLORS and m.group(2) in easy_vqa.SHAPES
        answer = problems[pid]["choices"][problems[pid]["answer"]]
        if problems[pid]["topic"] in ("shapes", "colors"):
            assert answer in m.groups()  # the caption holds what the picture shows
    manifest = json.loads((captioned / easy_vqa.MANIFEST_NAME).read_text())
    assert manifest["params"]["captions"] is True and manifest["captions"] == len(captions)
    # LaVIN's text-only row reads them in place of the pictures.
    dm = ScienceQADataModule(str(captioned), use_caption=True, use_images=False, tokenizer=byte_tokenizer(),
                             **{**COMMON, "max_seq_len": 512})
    dm.setup("test")
    pid = next(p for p in dm.datasets["test"].samples if p.pid in captions).pid
    sample = next(s for s in dm.datasets["test"].samples if s.pid == pid)
    assert captions[pid] in dm.tokenizer.decode(sample.input_ids) and sample.image_path is None
    # The command line: --captions, for the ScienceQA layout only.
    easy_vqa.main(["--out", str(tmp_path / "cli"), *[a for k, v in sizes.items()
                                                      for a in (f"--{k.replace('_', '-')}", str(v))], "--captions"])
    assert f"images, {len(captions)} captions)" in capsys.readouterr().out
    assert files(tmp_path / "cli") == files(captioned)
    with pytest.raises(SystemExit, match="--captions is for --layout scienceqa, not vqa"):
        easy_vqa.main(["--layout", "vqa", "--out", str(tmp_path / "v"), "--captions"])
