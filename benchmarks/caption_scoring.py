"""Time to score a Karpathy-test-sized caption set (5,000 images), stage by stage.

    python benchmarks/caption_scoring.py [--source auto|shared|synthetic] [--images 5000] [--refs 5] [--json PATH]

* shared: the Karpathy test split from the shared reference data (beside the repository),
  human reference 0 as the candidates against references 1-4 (5,000 images x 4 references);
  the default when the files are present.
* synthetic: deterministic pseudo-captions from a small vocabulary (mixed case and
  punctuation, so the tokenizer has work), ``--refs`` references per image.

Prints the seconds of each stage -- PTB tokenisation (references + candidates, two JVM runs as
in COCO), BLEU, METEOR (including its ~5 s JVM start), ROUGE_L, CIDEr, PETAL's ROUGE-1/L --
the total, and the scores.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lavin_lightning.formats.captions import read_coco_references, read_coco_results  # noqa: E402
from lavin_lightning.metrics.captions import ALL_METRICS, ptb_tokenize, score_tokenized  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import entry, write_json  # noqa: E402

CAPTIONS = REPO.parent / "shared" / "reference-data" / "captions"
LABELS = {"Bleu": "BLEU-1..4", "METEOR": "METEOR", "ROUGE_L": "ROUGE_L", "CIDEr": "CIDEr", "ROUGE_1": "ROUGE-1/L F,R"}

_DET = ["a", "the", "two", "some", "an old", "a small", "a large"]
_ADJ = ["red", "white", "young", "wooden", "busy", "empty", "striped", "furry", "tall", "green"]
_NOUN = ["man", "woman", "dog", "cat", "train", "bus", "plate", "table", "street", "kitchen", "horse",
         "bicycle", "field", "pizza", "kite", "bench", "giraffe", "boat", "skateboard", "clock"]
_VERB = ["sitting", "standing", "riding", "walking", "parked", "flying", "eating", "holding", "looking", "lying"]
_PREP = ["on", "in", "next to", "near", "under", "in front of", "behind", "with"]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_DET)]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJ))
    words += [rng.choice(_NOUN), rng.choice(_VERB), rng.choice(_PREP), rng.choice(_DET)]
    if rng.random() < 0.4:
        words.append(rng.choice(_ADJ))
    words.append(rng.choice(_NOUN))
    text = " ".join(words)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + rng.choice(["", ".", " .", "!", ", outside."])


def synthetic(images: int, refs: int, seed: int = 0) -> tuple[dict, dict]:
    rng = random.Random(seed)
    references = {i: [_sentence(rng) for _ in range(refs)] for i in range(images)}
    results = {i: _sentence(rng) for i in range(images)}
    return references, results


def shared(images: int) -> tuple[dict, dict]:
    references = read_coco_references(CAPTIONS / "karpathy_test_refs1to4_coco_format.json")
    results = dict(list(read_coco_results(CAPTIONS / "karpathy_test_candidates_human_ref0.json").items())[:images])
    return {i: references[i] for i in results}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("auto", "shared", "synthetic"), default="auto")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5, help="references per image (synthetic only)")
    parser.add_argument("--json", default=None, help="also write the results here (for benchmarks/report.py)")
    args = parser.parse_args()

    source = args.source
    if source == "auto":
        source = "shared" if (CAPTIONS / "karpathy_test_refs1to4_coco_format.json").is_file() else "synthetic"
    references, results = shared(args.images) if source == "shared" else synthetic(args.images, args.refs)
    n_refs = sum(map(len, references.values()))
    print(f"source: {source}; {len(results)} images, {n_refs} references, {len(results)} candidates")

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    gts = ptb_tokenize(references)
    res = {i: caps[0] for i, caps in ptb_tokenize({i: [results[i]] for i in gts}).items()}
    seconds["PTB tokenisation"] = time.perf_counter() - start

    scores: dict[str, float] = {}
    for group in ALL_METRICS:
        start = time.perf_counter()
        scores.update(score_tokenized(gts, res, metrics=group))
        seconds[LABELS[group]] = time.perf_counter() - start

    print(f"\n{'stage':<18}{'seconds':>9}")
    for stage, value in seconds.items():
        print(f"{stage:<18}{value:>9.2f}")
    print(f"{'total':<18}{sum(seconds.values()):>9.2f}")
    print("\n" + "  ".join(f"{key} {value:.4f}" for key, value in scores.items()))
    total = sum(seconds.values())
    write_json(args.json, [entry(f"share of scoring time: {stage}", value / total, "fraction")
                           for stage, value in seconds.items()],
               [entry(f"scoring {len(results)} images: {stage}", value, "s") for stage, value in seconds.items()]
               + [entry(f"scoring {len(results)} images: total", total, "s")],
               settings=vars(args), source=source, scores=scores)


if __name__ == "__main__":
    main()
