"""Caption metrics: hand-computed ROUGE/BLEU/CIDEr, the PTB tokenizer, COCOEvalCap parity, bad input."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
from conftest import REFERENCE_DATA, write_coco_references, write_json

from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.formats.captions import read_coco_references, read_coco_results
from lavin_lightning.metrics.captions import (
    ALL_METRICS,
    OUTPUT_KEYS,
    ptb_tokenize,
    rouge_l_scores,
    rouge_n_scores,
    score_caption_files,
    score_captions,
    score_tokenized,
)

CAPTIONS = REFERENCE_DATA / "captions"
REFS1TO4 = CAPTIONS / "karpathy_test_refs1to4_coco_format.json"
REFS5 = CAPTIONS / "karpathy_test_refs5_coco_format.json"
HUMAN_REF0 = CAPTIONS / "karpathy_test_candidates_human_ref0.json"
FAKECAP = CAPTIONS / "captions_val2014_fakecap_results.json"
needs_reference = pytest.mark.skipif(not CAPTIONS.is_dir(), reason=f"{CAPTIONS} is absent")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed")

NO_METEOR = ("Bleu", "ROUGE_L", "CIDEr", "ROUGE_1")


def approx(value, tol: float = 1e-12):
    return pytest.approx(value, abs=tol)


# --------------------------------------------------------------------------- ROUGE by hand


def test_rouge_1_by_hand():
    # "the cat sat on the mat" vs "the cat is on the mat": 6 unigrams each; in common
    # the x2, cat, on, mat = 5 -> P = R = F = 5/6.
    assert rouge_n_scores("the cat sat on the mat".split(), "the cat is on the mat".split()) == approx((5 / 6,) * 3)
    # Clipping: "the" x4 against "the cat" counts once -> P = 1/4, R = 1/2,
    # F = 2 * 1/4 * 1/2 / (1/4 + 1/2) = (1/4) / (3/4) = 1/3.
    assert rouge_n_scores("the the the the".split(), "the cat".split()) == approx((1 / 4, 1 / 2, 1 / 3))
    # Bigrams: (the cat) (cat sat) (sat on) (on the) (the mat) vs (the cat) (cat is) (is on)
    # (on the) (the mat): 3 of 5 in common -> P = R = F = 3/5.
    assert rouge_n_scores("the cat sat on the mat".split(), "the cat is on the mat".split(), n=2) == approx(
        (0.6, 0.6, 0.6)
    )
    # Nothing to compare: zeros, not a division by zero.
    assert rouge_n_scores([], ["a"]) == (0.0, 0.0, 0.0)
    assert rouge_n_scores(["a"], ["a"], n=2) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        rouge_n_scores(["a"], ["a"], n=0)


def test_rouge_l_by_hand():
    ref = "police killed the gunman".split()
    # LCS("police kill the gunman") = "police the gunman" = 3 -> P = R = F = 3/4.
    assert rouge_l_scores("police kill the gunman".split(), ref) == approx((0.75, 0.75, 0.75))
    # LCS("the gunman kill police") = "the gunman" = 2 -> P = R = F = 2/4 (ROUGE-1 would say 3/4).
    assert rouge_l_scores("the gunman kill police".split(), ref) == approx((0.5, 0.5, 0.5))
    # LCS("a b c d e", "a x c y e z") = "a c e" = 3 -> P = 3/5, R = 3/6,
    # F = 2 * 0.6 * 0.5 / 1.1 = 6/11.
    assert rouge_l_scores("a b c d e".split(), "a x c y e z".split()) == approx((0.6, 0.5, 6 / 11))
    assert rouge_l_scores([], ["a"]) == (0.0, 0.0, 0.0)


def test_lcs_agrees_with_pycocoevalcap():
    from pycocoevalcap.rouge.rouge import my_lcs

    rng = random.Random(0)
    for _ in range(300):
        a = rng.choices("abcde", k=rng.randint(1, 12))
        b = rng.choices("abcde", k=rng.randint(1, 12))
        precision, _, _ = rouge_l_scores(a, b)
        assert round(precision * len(a)) == my_lcs(b, a)


def test_petal_table_keeps_the_best_f1_reference_per_image():
    refs = {
        1: ["a dog", "a dog runs fast"],
        2: ["dog"],
        3: ["dog on grass"],
    }
    results = {1: "a dog runs", 2: "cat", 3: "grass on dog"}
    # Image 1: vs "a dog": P = 2/3, R = 1, F = 0.8; vs "a dog runs fast": P = 1, R = 3/4,
    #   F = 2 * 3/4 / (7/4) = 6/7 > 0.8 -> keep F = 6/7 with ITS recall 3/4 (not the max recall 1).
    #   LCS gives the same numbers (order agrees).
    # Image 2: nothing in common -> 0.
    # Image 3: ROUGE-1 P = R = F = 1; the LCS is a single token -> P = R = F = 1/3.
    scores = score_tokenized(refs, results, metrics="ROUGE_1")
    assert list(scores) == ["ROUGE_1_F", "ROUGE_1_R", "ROUGE_L_F", "ROUGE_L_R"]
    assert scores["ROUGE_1_F"] == approx((6 / 7 + 0 + 1) / 3)
    assert scores["ROUGE_1_R"] == approx((3 / 4 + 0 + 1) / 3)
    assert scores["ROUGE_L_F"] == approx((6 / 7 + 0 + 1 / 3) / 3)
    assert scores["ROUGE_L_R"] == approx((3 / 4 + 0 + 1 / 3) / 3)


# --------------------------------------------------------------------------- BLEU / CIDEr by hand


def test_identical_candidates_score_one_and_cider_ten():
    # Two images, candidate == its single reference, no n-gram shared between the images.
    refs = {1: ["a dog runs on green grass"], 2: ["the cat sleeps in its bed"]}
    results = {1: "a dog runs on green grass", 2: "the cat sleeps in its bed"}
    scores = score_tokenized(refs, results, metrics=("Bleu", "ROUGE_L", "CIDEr", "ROUGE_1"))
    for n in range(1, 5):
        assert scores[f"Bleu_{n}"] == approx(1.0, tol=1e-6)  # pycocoevalcap's 1e-9 smoothing
    # CIDEr-D: every n-gram is in 1 of 2 images -> idf = log 2 everywhere, cosine 1 for each
    # n = 1..4, no length penalty -> mean 1, x10.
    assert scores["CIDEr"] == approx(10.0)
    for key in ("ROUGE_L", "ROUGE_1_F", "ROUGE_1_R", "ROUGE_L_F", "ROUGE_L_R"):
        assert scores[key] == approx(1.0)


def test_bleu_partial_overlap_by_hand():
    refs = {
        1: ["the cat sat on the mat"],  # length 6
        2: ["a big dog", "a big brown dog runs"],  # lengths 3, 5; candidate 2 -> closest 3
        3: ["one two three", "one two three four five"],  # candidate 4: tie 3/5 -> the shorter, 3
    }
    results = {1: "the cat the cat", 2: "a dog", 3: "one two three four"}
    # Unigrams (clipped): 1: the min(2,2) + cat min(2,1) = 3 of 4; 2: a, dog = 2 of 2;
    #   3: 4 of 4 (max counts over refs) -> 9 of 10.
    # Bigrams: 1: (the cat) x2 clipped to 1, (cat the) 0 -> 1 of 3; 2: (a dog) 0 of 1;
    #   3: 3 of 3 -> 4 of 7.
    # Lengths: candidates 4 + 2 + 4 = 10, references 6 + 3 + 3 = 12 -> BP = exp(1 - 12/10).
    bp = math.exp(1 - 12 / 10)
    scores = score_tokenized(refs, results, metrics="Bleu")
    assert scores["Bleu_1"] == approx(9 / 10 * bp, tol=1e-6)
    assert scores["Bleu_2"] == approx(math.sqrt(9 / 10 * 4 / 7) * bp, tol=1e-6)
    # Through the tokenizer too (already lower case, no punctuation: same text).
    if shutil.which("java"):
        assert score_captions(refs, results, metrics="Bleu") == scores


# --------------------------------------------------------------------------- PTB tokenizer


@needs_java
def test_ptb_tokenizer_lowercases_and_drops_punctuation():
    # "-lowerCase" also lowers the bracket tokens, so "-lrb-" escapes pycocoevalcap's
    # punctuation list ("-LRB-"): a COCO quirk, kept.
    assert ptb_tokenize({1: ["A Dog, running!"], 2: ["It's (very) big."]}) == {
        1: ["a dog running"],
        2: ["it 's -lrb- very -rrb- big"],
    }
    # Line breaks Java splits on must not shift later captions onto other images.
    assert ptb_tokenize({1: ["a\rb", "c\u2028d"], 2: ["e\ff", "g"]}) == {1: ["a b", "c d"], 2: ["e f", "g"]}
    refs = {1: ["a dog is running on the grass"], 2: ["two cats sleep on a red sofa"]}
    messy = score_captions(refs, {1: "A Dog, running!", 2: "Two CATS sleep."}, metrics=NO_METEOR)
    clean = score_captions(refs, {1: "a dog running", 2: "two cats sleep"}, metrics=NO_METEOR)
    assert messy == clean
    assert 0 < clean["Bleu_1"] < 1


# --------------------------------------------------------------------------- shared reference data


def _human_subset(tmp_path: Path, n: int = 50) -> Path:
    candidates = json.loads(HUMAN_REF0.read_text(encoding="utf-8"))[:n]
    return write_json(tmp_path / "human_ref0_subset.json", candidates)


# COCOEvalCap.evaluate() on the first 50 human-ref0 captions against refs 1-4 (SPICE stubbed
# out), see test_matches_cocoevalcap_on_human_subset; the fast test pins them.
HUMAN50 = {
    "Bleu_1": 0.5973282442736693,
    "Bleu_2": 0.38233701840748374,
    "Bleu_3": 0.23980723277060292,
    "Bleu_4": 0.15585071653775293,
    "METEOR": 0.21013285944656218,
    "ROUGE_L": 0.41166886644337447,
    "CIDEr": 0.8236644182201448,
}


@needs_reference
@needs_java
def test_human_subset_is_sane_and_deterministic(tmp_path):
    subset = _human_subset(tmp_path)
    out = tmp_path / "scores" / "captions.json"
    first = score_caption_files(REFS1TO4, subset, output=out, metrics=NO_METEOR)
    again = score_caption_files(REFS1TO4, subset, metrics=NO_METEOR)
    assert first == again == json.loads(out.read_text(encoding="utf-8"))
    assert list(first) == [k for k in OUTPUT_KEYS if k != "METEOR"]
    for key, value in first.items():
        assert type(value) is float
        if key in HUMAN50:
            assert value == approx(HUMAN50[key])
    # Human captions against other humans: the usual COCO "human" range.
    assert 0.1 < first["Bleu_4"] < 0.5
    assert 0.3 < first["CIDEr"] < 1.5
    assert 0.3 < first["ROUGE_L"] < 0.6
    assert 0.3 < first["ROUGE_L_F"] <= first["ROUGE_1_F"] < 0.7  # an LCS never beats unigram overlap


@pytest.mark.slow
@needs_reference
@needs_java
def test_matches_cocoevalcap_on_human_subset(tmp_path, monkeypatch):
    """Bit-identical to COCOEvalCap.evaluate() (pycocotools loading, SPICE replaced by a stub)."""
    import pycocoevalcap.eval as coco_eval_module
    from pycocotools.coco import COCO

    class NoSpice:  # SPICE downloads Stanford models: not available offline
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval_module, "Spice", NoSpice)
    subset = _human_subset(tmp_path)
    coco = COCO(str(REFS1TO4))
    coco_result = coco.loadRes(str(subset))
    evaluator = coco_eval_module.COCOEvalCap(coco, coco_result)
    evaluator.params["image_id"] = coco_result.getImgIds()
    evaluator.evaluate()

    ours = score_caption_files(REFS1TO4, subset)
    assert list(ours) == list(OUTPUT_KEYS)
    for key, value in HUMAN50.items():
        assert ours[key] == evaluator.eval[key] == value
    assert 0.1 < ours["METEOR"] < 0.4


@needs_reference
def test_fakecap_results_need_val2014_references():
    # coco-caption's published fakecap scores (BLEU-1 0.697 ... CIDEr 0.834) use all of
    # captions_val2014.json, which the shared data does not hold: only 129 of its 1,000 images
    # are Karpathy test images, so scoring it here must stop on the first image without references.
    results = read_coco_results(FAKECAP)
    assert len(results) == 1000
    references = read_coco_references(REFS5)
    assert len(references) == 5000 and all(len(refs) == 5 for refs in references.values())
    assert sum(image_id in references for image_id in results) == 129
    if shutil.which("java"):
        with pytest.raises(DataError, match=r"captions_val2014_fakecap_results\.json: image id 404464 .*refs5"):
            score_caption_files(REFS5, FAKECAP, metrics="Bleu")


# --------------------------------------------------------------------------- loading and bad input


@pytest.mark.parametrize(
    ("results", "pattern"),
    [
        ([{"image_id": 7, "caption": "a dog"}, {"image_id": 7, "caption": "a cat"}], r"image id 7 .*more than one"),
        ([{"image_id": 7, "caption": None}], r"image id 7\) has a NoneType caption"),
        ([{"image_id": 7, "caption": ["a dog"]}], r"image id 7\) has a list caption"),
        ([{"image_id": 7}], r"image id 7\) has no caption"),
        ([{"image_id": 12, "caption": "a dog"}], r"image id 12 has no reference captions in .*refs\.json"),
        ([{"image_id": "7", "caption": "a dog"}], r"image id '7' has no reference.*numeric ids"),
    ],
)
@needs_java
def test_bad_results_name_the_file_and_image(tmp_path, results, pattern):
    refs = write_coco_references(tmp_path)
    path = write_json(tmp_path / "results.json", results)
    with pytest.raises(DataError, match=r"results\.json.*" + pattern):
        score_caption_files(refs, path, metrics="Bleu")


@needs_java
def test_bad_in_memory_input_names_the_image():
    with pytest.raises(DataError, match=r"results: image id 1 has a int caption"):
        score_captions({1: ["a dog"]}, {1: 5}, metrics="Bleu")
    with pytest.raises(DataError, match=r"references: image id 1 has a bytes reference caption"):
        score_captions({1: [b"a dog"]}, {1: "a dog"}, metrics="Bleu")
    with pytest.raises(DataError, match=r"references: image id 1 has no reference captions"):
        score_captions({1: []}, {1: "a dog"}, metrics="Bleu")


def test_metric_selection():
    assert ALL_METRICS == ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "ROUGE_1")
    # Output order is fixed, whatever order the selection is given in.
    scores = score_tokenized({1: ["a b"], 2: ["c d"]}, {1: "a b", 2: "c d"}, metrics=("ROUGE_1", "Bleu"))
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_1_F", "ROUGE_1_R", "ROUGE_L_F", "ROUGE_L_R"]
    with pytest.raises(DataError, match="image id 2 is only in the references"):
        score_tokenized({1: ["a"], 2: ["b"]}, {1: "a"}, metrics="Bleu")
    for bad in (("SPICE",), (), ("bleu",)):
        with pytest.raises(ConfigError, match="subset of Bleu, METEOR"):
            score_tokenized({1: ["a"]}, {1: "a"}, metrics=bad)


def test_java_missing_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    # Raised before any work: the files are not even read.
    with pytest.raises(ConfigError, match=r"need Java 11\+.*apt install default-jre"):
        score_caption_files(tmp_path / "missing_refs.json", tmp_path / "missing_results.json")
    with pytest.raises(ConfigError, match="Java"):
        score_captions({1: ["a dog"]}, {1: "a dog"}, metrics="Bleu")
    with pytest.raises(ConfigError, match="Java"):
        ptb_tokenize({1: ["a dog"]})
    with pytest.raises(ConfigError, match="Java"):
        score_tokenized({1: ["a dog"]}, {1: "a dog"}, metrics="METEOR")
    # Pre-tokenised text needs no Java for the pure-Python metrics.
    assert score_tokenized({1: ["a dog"]}, {1: "a dog"}, metrics="ROUGE_1")["ROUGE_1_F"] == 1.0


def test_java_that_does_not_start_is_a_config_error(tmp_path, monkeypatch):
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'Unable to locate a Java Runtime.' >&2\nexit 1\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: str(fake))
    with pytest.raises(ConfigError, match=r"does not start.*Unable to locate a Java Runtime.*Java 11\+"):
        score_captions({1: ["a dog"]}, {1: "a dog"}, metrics="Bleu")


@needs_java
def test_meteor_jar_failure_is_a_config_error_not_a_hang(monkeypatch):
    import pycocoevalcap.meteor.meteor as meteor_module

    # The JVM starts but cannot open the jar: METEOR answers nothing, the wrapper must not block.
    monkeypatch.setattr(meteor_module, "METEOR_JAR", "no-such-meteor.jar")
    with pytest.raises(ConfigError, match=r"METEOR .*failed: .*no-such-meteor\.jar"):
        score_tokenized({1: ["a dog"]}, {1: "a dog"}, metrics="METEOR")
