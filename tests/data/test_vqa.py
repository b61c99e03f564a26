"""VQADataModule: the official VQA layout (easy-VQA build, a hand-written VQAv2-style fixture)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from data_modules.vqa import VQADataModule
from lavin_lightning.backbones.tiny import byte_tokenizer
from lavin_lightning.batch import IGNORE_INDEX
from lavin_lightning.errors import DataError
from lavin_lightning.metrics.vqa import score_vqa


@pytest.fixture(scope="module")
def easy_root(tmp_path_factory):
    pytest.importorskip("easy_vqa")
    from data_modules.prepare.easy_vqa import build_vqa_from_easy_vqa

    return build_vqa_from_easy_vqa(tmp_path_factory.mktemp("easy") / "vqa", n_train=20, n_val=5, n_test=10, seed=0)


def make(root, **kwargs):
    kwargs = {"global_batch_size": 4, "image_size": 32, "tokenizer": byte_tokenizer(), **kwargs}
    return VQADataModule(str(root), **kwargs)


def read(path):
    return json.loads(path.read_text())


def test_batch_contract_and_targets(easy_root):
    dm = make(easy_root)
    dm.setup("fit")
    tok = dm.tokenizer
    answers = {a["question_id"]: a["multiple_choice_answer"] for a in read(easy_root / "annotations_train.json")
               ["annotations"]}
    batch = next(iter(dm.train_dataloader()))
    b, t = batch["input_ids"].shape
    assert b == 4 and batch["attention_mask"].shape == (b, t) and batch["labels"].shape == (b, t)
    assert batch["pixel_values"].shape == (b, 3, 32, 32)
    assert batch["has_image"].dtype == torch.bool and batch["has_image"].all()
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    for row, pid in enumerate(batch["pids"]):
        n = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :n].all()  # right padding
        labels = batch["labels"][row]
        target = labels[labels != IGNORE_INDEX].tolist()
        assert target[-1] == tok.eos_token_id
        assert tok.decode(target[:-1]) == " " + answers[int(pid)]
        assert tok.decode(batch["input_ids"][row, :n]).endswith("Short answer:\nResponse: " + answers[int(pid)]
                                                                + tok.eos_token)
    assert len(dm.datasets["train"]) == 20 and len(dm.datasets["val"]) == 5
    assert dm.val_dataloader() is not None


def test_test_rows_official_and_perfect_score(easy_root):
    dm = make(easy_root, eval_batch_size=3)
    dm.setup("test")
    tok = dm.tokenizer
    rows = [r for batch in dm.test_dataloader() for r in zip(batch["pids"], batch["input_ids"],
                                                                batch["attention_mask"], strict=True)]
    batch = next(iter(dm.test_dataloader()))
    assert "labels" not in batch
    for _, ids, mask in rows:
        # The VQA instruction ends the user turn; the lavin template adds its response header.
        assert tok.decode(ids[: int(mask.sum())]).endswith("Short answer:\nResponse:")
    questions, annotations = dm.official("test")
    test_ids = [q["question_id"] for q in read(easy_root / "questions_test.json")["questions"]]
    assert [q["question_id"] for q in questions["questions"]] == test_ids
    assert sorted(pid for pid, _, _ in rows) == sorted(str(q) for q in test_ids)
    results = [{"question_id": a["question_id"], "answer": a["multiple_choice_answer"]}
               for a in annotations["annotations"]]
    assert score_vqa(questions, annotations, results)["overall"] == 100.0
    assert dm.questions_file("test") == easy_root / "questions_test.json"
    assert dm.annotations_file("test") == easy_root / "annotations_test.json"


def test_k_shot_and_limits(easy_root):
    def train_ids(seed):
        dm = make(easy_root, k_shot=5, seed=seed)
        dm.setup("fit")
        assert len(dm.datasets["train"]) == 5
        ids = [q["question_id"] for q in dm.official("train")[0]["questions"]]
        assert sorted(str(i) for i in ids) == sorted(s.pid for s in dm.datasets["train"].samples)
        return ids

    assert train_ids(0) == train_ids(0) != train_ids(1)
    dm = make(easy_root, limit_test=3)
    dm.setup("predict")
    questions, annotations = dm.official("predict")
    assert len(dm.datasets["predict"]) == 3 == len(questions["questions"]) == len(annotations["annotations"])


def test_test_split_without_annotations_predicts(easy_root, tmp_path):
    (tmp_path / "images").symlink_to(easy_root / "images")
    (tmp_path / "questions_test.json").write_text((easy_root / "questions_test.json").read_text())
    dm = make(tmp_path, splits={"test": "test"})
    dm.setup("predict")
    assert dm.annotations_file("test") is None and dm.official("predict")[1] is None
    assert len(dm.datasets["predict"]) == 10


# --------------------------------------------------------------------------- VQAv2-style fixture


def write_vqav2(root, questions, annotations, images=(1, 2)):
    """A VQAv2-named val2014 split; COCO-named JPEG images for ``images``."""
    for image_id in images:
        path = root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (image_id * 40, 0, 0)).save(path)
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(
        json.dumps({"data_subtype": "val2014", "questions": questions}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(
        json.dumps({"data_subtype": "val2014", "annotations": annotations}))


def answers(*texts):
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(texts)]


def annotation(qid, image_id, texts):
    return {"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
            "answers": answers(*texts)}


QUESTIONS = [
    {"question_id": 10, "image_id": 1, "question": "What color is it?"},
    {"question_id": 20, "image_id": 2, "question": "How many dogs?"},
]
ANNOTATIONS = [
    annotation(10, 1, ["red"] * 3 + ["dark red"] * 4 + ["maroon"] * 3),
    # A tie: "two" and "2" both 4 times; the first in order wins.
    annotation(20, 2, ["two"] * 4 + ["2"] * 4 + ["three"] * 2),
]
VQAV2 = {
    "splits": {"train": "val", "val": "val", "test": "val"},
    "questions_pattern": "v2_OpenEnded_mscoco_{split}2014_questions.json",
    "annotations_pattern": "v2_mscoco_{split}2014_annotations.json",
    "image_pattern": "{split}2014/COCO_{split}2014_{image_id:012d}.jpg",
}


def test_vqav2_layout_most_frequent_answer(tmp_path):
    write_vqav2(tmp_path, QUESTIONS, ANNOTATIONS)
    dm = make(tmp_path, global_batch_size=2, **VQAV2)
    dm.setup("fit")
    tok = dm.tokenizer
    targets = {}
    for s in dm.datasets["train"].samples:
        target = [t for t in s.labels if t != IGNORE_INDEX][:-1]
        targets[s.pid] = tok.decode(target)
        assert s.image_path.name.startswith("COCO_val2014_00000000000")
    assert targets == {"10": " dark red", "20": " two"}
    questions, annotations = dm.official("train")
    results = [{"question_id": 10, "answer": "dark red"}, {"question_id": 20, "answer": "two"}]
    assert score_vqa(questions, annotations, results)["overall"] == 100.0


def bad_cases():
    q3 = {"question_id": 30, "image_id": 3, "question": "Is it sunny?"}
    return {
        "question without annotation": (QUESTIONS + [q3], ANNOTATIONS, "questions", 30),
        "unknown question id": (QUESTIONS, ANNOTATIONS + [annotation(99, 1, ["x"] * 10)], "annotations", 99),
        "duplicate question id": (QUESTIONS + [dict(QUESTIONS[0], question="Again?")], ANNOTATIONS,
                                  "questions", 10),
        "non-string answer": (QUESTIONS, [ANNOTATIONS[0], annotation(20, 2, [2] * 10)], "annotations", 20),
        "missing image": (QUESTIONS + [q3], ANNOTATIONS + [annotation(30, 3, ["yes"] * 10)], "questions", 30),
    }


@pytest.mark.parametrize("case", list(bad_cases()))
def test_bad_records(tmp_path, case):
    questions, annotations, file, qid = bad_cases()[case]
    write_vqav2(tmp_path, questions, annotations)
    named = {"questions": "v2_OpenEnded_mscoco_val2014_questions.json",
             "annotations": "v2_mscoco_val2014_annotations.json"}
    with pytest.raises(DataError) as error:
        make(tmp_path, global_batch_size=1, **VQAV2).setup("fit")
    message = str(error.value)
    assert named[file] in message and f"question_id {qid}" in message

    dm = make(tmp_path, global_batch_size=1, on_bad_record="skip", **VQAV2)
    dm.setup("fit")
    kept = {s.pid for s in dm.datasets["train"].samples}
    skipped = dm.report["train"]["skipped"]
    assert sum(skipped.values()) == 1, skipped
    if case == "duplicate question id":
        assert kept == {"10", "20"}  # the first of a repeated id is kept
    else:
        assert str(qid) not in kept and kept and kept <= {"10", "20"}
    assert {str(q["question_id"]) for q in dm.official("train")[0]["questions"]} == kept


def test_scored_annotations_need_what_the_scorer_reads(tmp_path):
    """The test split's annotations are there to be scored: one the scorer cannot read fails in setup, not after
    the whole test run; in training a question or answer type is only checked to be text."""
    untyped = [ANNOTATIONS[0], {k: v for k, v in ANNOTATIONS[1].items() if k != "answer_type"}]
    write_vqav2(tmp_path, QUESTIONS, untyped)
    make(tmp_path, global_batch_size=1, **VQAV2).setup("fit")
    with pytest.raises(DataError, match=r"annotations\.json: question_id 20: field 'answer_type' is missing"):
        make(tmp_path, global_batch_size=1, **VQAV2).setup("test")
    write_vqav2(tmp_path, QUESTIONS, [ANNOTATIONS[0], {**ANNOTATIONS[1], "question_type": ["how", "many"]}])
    with pytest.raises(DataError, match=r"question_id 20: field 'question_type' is a list \(\['how', 'many'\]\)"):
        make(tmp_path, global_batch_size=1, **VQAV2).setup("fit")
    write_vqav2(tmp_path, [QUESTIONS[0], {**QUESTIONS[1], "image_id": " "}], ANNOTATIONS)
    with pytest.raises(DataError, match=r"questions\.json: question_id 20: field 'image_id' is a str \(' '\), "
                                        "expected an integer or a non-empty string"):
        make(tmp_path, global_batch_size=1, **VQAV2).setup("fit")


def test_a_corrupt_image_is_caught_in_setup(tmp_path):
    write_vqav2(tmp_path, QUESTIONS, ANNOTATIONS)
    image = tmp_path / "val2014" / "COCO_val2014_000000000002.jpg"
    image.write_bytes(image.read_bytes()[:200])  # a half-downloaded JPEG
    with pytest.raises(DataError, match=rf"questions\.json: question_id 20: image {image} cannot be decoded"):
        make(tmp_path, global_batch_size=1, **VQAV2).setup("fit")
    dm = make(tmp_path, global_batch_size=1, on_bad_record="skip", **VQAV2)
    dm.setup("fit")
    assert dm.report["train"]["skipped"] == {"bad_image": 1} and [s.pid for s in dm.datasets["train"].samples] == ["10"]
    assert [q["question_id"] for q in dm.official("train")[0]["questions"]] == [10]
