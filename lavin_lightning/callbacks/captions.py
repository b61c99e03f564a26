"""Score caption test generations with the COCO caption metrics, once, on rank 0.

Collects the generated captions of `test_step`, gathers them across processes, scores them
with `metrics.captions.score_captions` against the data module's references (PTB tokenizer,
BLEU-1..4, METEOR, ROUGE-L, CIDEr, plus ROUGE-1/L F1 and recall), writes `results.json`
(COCO results format, which `lavin-lightning score captions` reads) and `metrics.json`, and
logs the scores (`test/<metric>`, CIDEr also as the headline `test/cider`) and a table of
references, outputs and image thumbnails (W&B).
"""

from __future__ import annotations

import logging

from lavin_lightning.callbacks.predictions import TestScoring
from lavin_lightning.callbacks.vqa import generated_answer
from lavin_lightning.errors import ConfigError
from lavin_lightning.io import write_json
from lavin_lightning.metrics.captions import ALL_METRICS, score_captions


class CaptionEvaluation(TestScoring):
    """COCO caption metrics for every test run (COCO Karpathy, Flickr30K, TextCaps; image ids
    may be ints or strings, as TextCaps' hex ids).

    Args:
        output_dir: where results.json and metrics.json go (default: the trainer's
            default_root_dir).
        metrics: which scorers run (Bleu, METEOR, ROUGE_L, CIDEr, ROUGE_1); METEOR takes
            most of the time (about 14 s for 5,000 images).
        table_rows: rows of the predictions table sent to W&B.
    """

    datamodule_attribute = "references"  # caption data modules: reference sentences per role

    def __init__(self, output_dir: str | None = None, metrics: list[str] | None = None, table_rows: int = 200):
        super().__init__(output_dir, table_rows)
        self.metrics_to_run = tuple(metrics) if metrics else ALL_METRICS

    def score(self, trainer, records: list[dict]) -> None:
        references = trainer.datamodule.references("test")
        unreferenced = [image_id for image_id, sentences in references.items() if not sentences]
        if unreferenced:  # e.g. TextCaps' test split, scored on EvalAI
            raise ConfigError(f"test image {unreferenced[0]!r} has no reference captions, so the test split cannot "
                              "be scored; test on a split with captions or use `predict`")
        by_pid = {r["pid"]: generated_answer(r["text"]) for r in records}
        results = {image_id: by_pid[str(image_id)] for image_id in references}
        scores = score_captions(references, results, metrics=self.metrics_to_run)
        out = self.output_path(trainer)
        write_json(out / "results.json", [{"image_id": k, "caption": v} for k, v in results.items()], indent=1)
        write_json(out / "metrics.json", scores)
        self.metrics = scores
        logging.getLogger(__name__).info("captions: %s over %d images; wrote %s",
                                         {k: round(v, 4) for k, v in scores.items()}, len(results), out)
        headline = {"test/cider": scores["CIDEr"]} if "CIDEr" in scores else {}
        self.log_scores(trainer, {**headline, **{f"test/{k}": v for k, v in scores.items()}})
        rows = [(str(image_id), [image_id, " | ".join(references[image_id]), caption])
                for image_id, caption in list(results.items())[: self.table_rows]]
        self.log_table(trainer, "test/captions", ["image_id", "references", "generated"], rows)
