"""easy-VQA as A-OKVQA and TextVQA, read back by our data modules and scored by our scorers."""

import json

import pytest
from conftest import answer_targets, make_aokvqa, make_textvqa

pytest.importorskip("easy_vqa")

from data_modules.prepare import easy_vqa as builder  # noqa: E402
from data_modules.prepare.easy_vqa import COLORS, SHAPES, TEST_IMAGE_OFFSET, UNDRAWN_SHAPES  # noqa: E402
from data_modules.prepare.textvqa_aokvqa import build_aokvqa_from_easy_vqa, build_textvqa_from_easy_vqa  # noqa: E402
from lavin_lightning.metrics.aokvqa import score_aokvqa  # noqa: E402
from lavin_lightning.metrics.textvqa import score_textvqa  # noqa: E402

SIZES = {"n_train": 12, "n_val": 4, "n_test": 5}
# What the data modules need besides the build folder (the images are easy-VQA's PNGs).
IMAGE_PATTERN = "images/{split}/{image_id}.png"


def easy_vqa_picture(image_id: int) -> tuple[str, tuple[str, str] | None, str]:
    """(easy-VQA split, (shape, colour) when known, PNG file) of the picture behind a layout's image id."""
    import easy_vqa

    source, own = ("train", image_id) if image_id < TEST_IMAGE_OFFSET else ("test", image_id - TEST_IMAGE_OFFSET)
    loaded = builder._load_sources(easy_vqa)
    return source, loaded[source].facts.get(own), loaded[source].image_paths[own]


def read(root, name):
    return json.loads((root / name).read_text())


@pytest.fixture(scope="module")
def aokvqa(tmp_path_factory):
    return build_aokvqa_from_easy_vqa(tmp_path_factory.mktemp("aokvqa") / "data", **SIZES)


@pytest.fixture(scope="module")
def textvqa(tmp_path_factory):
    return build_textvqa_from_easy_vqa(tmp_path_factory.mktemp("textvqa") / "data", **SIZES)


def test_aokvqa_records(aokvqa):
    seen_images = {}
    for split, n in (("train", 12), ("val", 4), ("test", 5)):
        records = read(aokvqa, f"aokvqa_v1p0_{split}.json")
        assert len(records) == n == len({r["question_id"] for r in records})
        for r in records:
            source, facts, png = easy_vqa_picture(r["image_id"])
            assert r["split"] == split and source == ("test" if split == "test" else "train")
            assert (aokvqa / "images" / split / f"{r['image_id']}.png").read_bytes() == open(png, "rb").read()
            seen_images.setdefault(split, set()).add(r["image_id"])
            assert r["question"][0].isupper() and r["question"].endswith("?")
            assert len(r["choices"]) == 4 == len(set(r["choices"])) and r["difficult_direct_answer"] is False
            if split == "test":  # as published: no answers
                assert not {"correct_choice_idx", "direct_answers", "rationales"} & set(r)
                continue
            shape, color = facts
            answer = r["choices"][r["correct_choice_idx"]]
            assert r["direct_answers"] == [answer] * 10 and answer in (shape, color)
            group = SHAPES + UNDRAWN_SHAPES if answer in SHAPES else COLORS
            assert set(r["choices"]) <= set(group)  # four choices of the answer's kind
            assert len(r["rationales"]) == 3 and all(f"{color}" in t and shape in t for t in r["rationales"])
    assert not seen_images["train"] & seen_images["val"]


def test_aokvqa_is_read_and_scored(aokvqa):
    dm = make_aokvqa(aokvqa, image_pattern=IMAGE_PATTERN)
    dm.setup("fit")
    train = {r["question_id"]: r for r in read(aokvqa, "aokvqa_v1p0_train.json")}
    assert answer_targets(dm) == {qid: r["direct_answers"][0] for qid, r in train.items()}
    assert len(answer_targets(dm, "val")) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["has_image"].all() and "labels" in batch
    dm.setup("test")
    assert "labels" not in next(iter(dm.test_dataloader())) and len(dm.datasets["test"]) == 5
    # The PETAL row tests on val; its served records score perfectly against themselves.
    scored = make_aokvqa(aokvqa, image_pattern=IMAGE_PATTERN, splits={"train": "train", "test": "val"})
    scored.setup("test")
    dataset = scored.aokvqa_dataset("test")
    perfect = {r["question_id"]: {"multiple_choice": r["choices"][r["correct_choice_idx"]],
                                  "direct_answer": r["direct_answers"][0]} for r in dataset}
    scores = score_aokvqa(dataset, perfect)
    assert scores["direct_answer"] == scores["multiple_choice"] == 100.0 and scores["counts"]["direct_answer"] == 4


def test_textvqa_records(textvqa):
    ids, images = [], {}
    for split, n in (("train", 12), ("val", 4), ("test", 5)):
        doc = read(textvqa, f"TextVQA_0.5.1_{split}.json")
        assert doc["dataset_name"] == "textvqa" and doc["dataset_type"] == split and len(doc["data"]) == n
        for r in doc["data"]:
            ids.append(r["question_id"])
            source, facts, png = easy_vqa_picture(int(r["image_id"], 16))
            assert len(r["image_id"]) == 16 and source == ("test" if split == "test" else "train")
            assert (textvqa / "images" / split / f"{r['image_id']}.png").read_bytes() == open(png, "rb").read()
            images.setdefault(split, set()).add(r["image_id"])
            assert r["question"] == r["question"].lower() and r["question_tokens"] == r["question"][:-1].split()
            if split == "test":
                assert "answers" not in r
            else:
                assert len(r["answers"]) == 10 == r["answers"].count(r["answers"][0])
                assert r["answers"][0] in SHAPES + COLORS + ("yes", "no")
    assert ids == list(range(1, len(ids) + 1))  # unique over the three files
    assert not images["train"] & images["val"]


def test_textvqa_is_read_and_scored(textvqa):
    dm = make_textvqa(textvqa, image_pattern=IMAGE_PATTERN)
    dm.setup("fit")
    train = read(textvqa, "TextVQA_0.5.1_train.json")["data"]
    assert answer_targets(dm) == {str(r["question_id"]): r["answers"][0] for r in train}
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and "labels" in batch
    dm.setup("test")
    assert "labels" not in next(iter(dm.test_dataloader())) and len(dm.datasets["test"]) == 5
    scored = make_textvqa(textvqa, image_pattern=IMAGE_PATTERN, splits={"train": "train", "test": "val"})
    scored.setup("test")
    data = scored.textvqa_data("test")
    results = [{"question_id": r["question_id"], "answer": r["answers"][0]} for r in data["data"]]
    assert score_textvqa(data, results)["accuracy"] == 100.0
    wrong = [{"question_id": r["question_id"], "answer": "hexagon"} for r in data["data"]]
    assert score_textvqa(data, wrong)["accuracy"] == 0.0
