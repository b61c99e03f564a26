"""W&B dashboards: the run description, LaVIN's routing histograms, the scorers' charts and
tables, and one real offline fit -> test run of a paper-table row read back from its records."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import wandb
from conftest import REPO, FakeWandb, make_batch, perturb_adapters, write_colour_problems

from lavin_lightning.adapters.mma import RepAdapterRouter
from lavin_lightning.callbacks.wandb_dashboards import WandbDashboards, router_labels


def fake_trainer(loggers, global_step=3):
    return SimpleNamespace(loggers=list(loggers), is_global_zero=True, global_step=global_step, sanity_checking=False,
                           callbacks=[])


def run_test_batch(callback, module, trainer, batch) -> None:
    """One test epoch of one batch, as Lightning drives the callback around `test_step`."""
    callback.setup(trainer, module, "test")
    callback.on_test_start(trainer, module)
    callback.on_test_epoch_start(trainer, module)
    callback.on_test_batch_start(trainer, module, batch, 0)
    outputs = module.test_step(batch, 0)
    callback.on_test_batch_end(trainer, module, outputs, batch, 0)
    callback.on_test_epoch_end(trainer, module)


@pytest.fixture
def lavin(make_tiny_lavin):
    module = make_tiny_lavin()
    perturb_adapters(module)  # routers away from their initial weights
    module.generation.max_new_tokens = 3
    module.eval()
    return module


def routers(module) -> dict[str, RepAdapterRouter]:
    return {name: m for name, m in module.named_modules() if isinstance(m, RepAdapterRouter)}


def test_router_labels_name_backbone_and_layer():
    names = ["model.llm.model.layers.0.input_layernorm.adapter", "model.llm.model.layers.1.input_layernorm.adapter",
             "model.vision.model.encoder.layers.11.layer_norm1.adapter"]
    assert list(router_labels(names).values()) == ["llm.layer00", "llm.layer01", "vision.layer11"]
    # Two routers in one layer (llm_placement "block"): the seam tells them apart.
    block = ["model.llm.model.layers.0.input_layernorm.adapter",
             "model.llm.model.layers.0.post_attention_layernorm.adapter"]
    assert list(router_labels(block).values()) == ["llm.layer00.input_layernorm",
                                                   "llm.layer00.post_attention_layernorm"]


def test_routing_histograms_per_router_and_modality(lavin):
    # The routers' own softmax, recomputed independently from each adapter's input and its
    # `router` layer (per sample: row 0; per token: every row), when it computes a routing.
    expected: dict[str, list[torch.Tensor]] = {}

    def recompute(router, args, name):
        if router._cache_on and router._cached_weights is not None:
            return  # decoding reuses the prefill's routing
        source = args[0][:, :1] if router.routing == "sample" else args[0]
        with torch.no_grad():
            expected.setdefault(name, []).append(torch.softmax(router.router(source) / router.temperature, -1)[..., 0])

    for name, router in routers(lavin).items():
        router.register_forward_pre_hook(lambda m, args, name=name: recompute(m, args, name))
    batch = make_batch(lavin.tokenizer, has_image=(True, False, True), with_labels=False)
    logger = FakeWandb()
    run_test_batch(WandbDashboards(), lavin, fake_trainer([logger]), batch)

    (logged,) = [m for m in logger.metrics if "test/routing/means" in m]
    labels = router_labels(list(routers(lavin)))
    means = {(row[0], row[1]): row[2:] for row in logged["test/routing/means"].data}
    image = batch["has_image"]
    for name, label in labels.items():
        (weights,) = expected[name]  # one routing per generation: prefill computes, decoding reuses
        if label.startswith("llm"):
            parts = {"image": weights[image].flatten(), "text": weights[~image].flatten()}
        else:
            parts = {"image": weights.flatten()}  # the ViT sees the two image samples only
        for modality, values in parts.items():
            histogram = logged[f"test/routing/{label}/{modality}"]
            assert isinstance(histogram, wandb.Histogram)
            assert sum(histogram.histogram) == len(values)
            count, mean = means[(label, modality)]
            assert count == len(values) and mean == pytest.approx(values.mean().item(), abs=1e-6)
    assert len(means) == 2 * 2 + 2  # two LLM layers x two modalities, two ViT layers
    assert all(router.recorded is None for router in routers(lavin).values())  # recording stops


def test_routing_histograms_are_bounded(lavin):
    batch = make_batch(lavin.tokenizer, has_image=(True, False, True), with_labels=False)
    logger = FakeWandb()
    run_test_batch(WandbDashboards(max_routing_values=5), lavin, fake_trainer([logger]), batch)
    (logged,) = [m for m in logger.metrics if "test/routing/means" in m]
    vision = [row for row in logged["test/routing/means"].data if row[0].startswith("vision")]
    assert vision and all(row[2] == 5 for row in vision)  # per-token routers: many more values than 5


def test_nothing_is_recorded_without_a_wandb_logger(lavin, monkeypatch):
    other = SimpleNamespace(metrics=[], log_metrics=lambda metrics, step=None: other.metrics.append(metrics),
                            log_hyperparams=lambda params: other.metrics.append(params))
    seen = []
    original = RepAdapterRouter.routing_weights

    def routing_weights(self, x):
        seen.append(self.recorded)
        return original(self, x)

    monkeypatch.setattr(RepAdapterRouter, "routing_weights", routing_weights)
    callback = WandbDashboards()
    run_test_batch(callback, lavin, fake_trainer([other]), make_batch(lavin.tokenizer, with_labels=False))
    assert seen and all(recorded is None for recorded in seen)
    assert other.metrics == [] and callback.routers == {}


def test_run_description_has_parameter_counts_per_component(lavin):
    logger = FakeWandb()
    callback = WandbDashboards()
    trainer = fake_trainer([logger])
    callback.setup(trainer, lavin, "test")
    callback.on_test_start(trainer, lavin)
    callback.on_test_start(trainer, lavin)  # once per run
    (config,) = logger.hyperparams
    counts = lavin.parameter_counts()
    assert config["method"] == "lavin" and "config" not in config  # no LightningCLI here
    params = config["params"]
    assert (params["trainable"], params["total"]) == (counts["trainable"], counts["total"])
    groups = params["groups"]
    assert set(groups) == {"llm", "vision", "neck", "modality"}
    assert sum(g["trainable"] for g in groups.values()) == counts["trainable"]
    assert sum(g["total"] for g in groups.values()) == counts["total"]
    assert groups["neck"]["trainable"] == groups["neck"]["total"] > 0  # all adapter
    assert 0 < groups["llm"]["trainable"] < groups["llm"]["total"]  # frozen LLM, MM-Adapters in it


# --------------------------------------------------------------------------- scorers


def test_scienceqa_headline_category_chart_and_table_with_images(tmp_path, monkeypatch):
    from conftest import run_test_epoch

    from data_modules.scienceqa import ScienceQADataModule
    from lavin_lightning.backbones.tiny import byte_tokenizer
    from lavin_lightning.callbacks.scienceqa import ScienceQAEvaluation

    write_colour_problems(tmp_path, n_train=4, n_test=3)  # answers red, green, blue; all grade 3 with an image
    dm = ScienceQADataModule(str(tmp_path), tokenizer=byte_tokenizer(), global_batch_size=2, image_size=16,
                             max_seq_len=256)
    dm.setup("test")
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    logger = FakeWandb()
    callback = ScienceQAEvaluation(table_rows=2)
    run_test_epoch(callback, dm, tmp_path, {"5": "The answer is B.", "6": "The answer is B.", "7": "no idea"},
                   [logger])
    scores, chart = logger.metrics
    assert scores["test/accuracy"] == scores["test/acc_average"] == pytest.approx(100 / 3, abs=0.01)
    assert scores["test/acc_natural"] == pytest.approx(33.33)
    assert isinstance(chart["test/scienceqa_categories"], wandb.plot.CustomChart)
    table = chart["test/scienceqa_categories"].table
    assert table.columns == ["category", "accuracy", "correct", "total"]
    assert table.data == [["NAT", 33.33, 1, 3], ["IMG", 33.33, 1, 3], ["G1-6", 33.33, 1, 3], ["Avg", 33.33, 1, 3]]
    ((key, columns, rows),) = logger.tables
    assert key == "test/predictions"
    assert columns == ["image", "pid", "question", "choices", "generated", "prediction", "answer", "correct"]
    assert rows == [  # table_rows=2 of the 3
        [("wandb.Image", (32, 32)), "5", "What colour is the picture?", "(A) red (B) green (C) blue",
         "The answer is B.", "B", "B", True],
        [("wandb.Image", (32, 32)), "6", "What colour is the picture?", "(A) red (B) green (C) blue",
         "The answer is B.", "B", "C", False],
    ]


def test_vqa_headline_and_answer_type_chart(tmp_path, monkeypatch):
    from conftest import COMMON, run_test_epoch, write_official_vqa

    from data_modules.vqa import VQADataModule
    from lavin_lightning.backbones.tiny import byte_tokenizer
    from lavin_lightning.callbacks.vqa import VQAEvaluation

    dm = VQADataModule(str(write_official_vqa(tmp_path / "vqa")), splits={"test": "val"},
                       tokenizer=byte_tokenizer(), **COMMON)
    dm.setup("test")
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    logger = FakeWandb()
    run_test_epoch(VQAEvaluation(), dm, tmp_path, {"7": "no"}, [logger])  # all 10 humans said yes
    scores, chart = logger.metrics
    assert scores == {"test/accuracy": 0.0, "test/vqa_overall": 0.0, "test/vqa_yes/no": 0.0}
    table = chart["test/vqa_answer_types"].table
    assert table.columns == ["answer_type", "accuracy"] and table.data == [["yes/no", 0.0]]


def test_caption_headline_is_cider(textcaps_root, tmp_path, monkeypatch):
    import shutil

    from conftest import make_textcaps, run_test_epoch

    from lavin_lightning.callbacks.captions import CaptionEvaluation

    if shutil.which("java") is None:
        pytest.skip("the caption metrics need Java")
    dm = make_textcaps(textcaps_root, test_split="val")
    dm.setup("test")
    monkeypatch.setattr("wandb.Image", lambda picture: ("wandb.Image", picture.size))
    texts = {"dd04": "a red bus", "ee05": "a blue sign"}
    logger = FakeWandb()
    callback = CaptionEvaluation(metrics=["CIDEr"])
    run_test_epoch(callback, dm, tmp_path, texts, [logger])
    assert logger.metrics == [{"test/cider": callback.metrics["CIDEr"], "test/CIDEr": callback.metrics["CIDEr"]}]
    assert callback.metrics["CIDEr"] > 0
    logger = FakeWandb()
    run_test_epoch(CaptionEvaluation(metrics=["Bleu"]), dm, tmp_path, texts, [logger])
    assert "test/cider" not in logger.metrics[0] and "test/Bleu_4" in logger.metrics[0]  # no CIDEr, no headline


# --------------------------------------------------------------------------- a real offline run


@pytest.fixture
def fresh_wandb():
    """wandb reads its environment (group, name, tags, job type) once per process setup."""
    wandb.finish()
    wandb.teardown()
    yield
    wandb.finish()
    wandb.teardown()


@pytest.mark.slow
def test_offline_table_row_fit_and_test(tmp_path, monkeypatch, fresh_wandb):
    from conftest import wandb_run_contents

    from lavin_lightning.cli import main

    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    # What the table runner sets for each row.
    monkeypatch.setenv("WANDB_RUN_GROUP", "lavin-table1")
    monkeypatch.setenv("WANDB_NAME", "sqa_lavin_7b")
    monkeypatch.setenv("WANDB_TAGS", "lavin,table1,smoke")
    monkeypatch.setenv("LAVIN_TABLE_ROW", "lavin-1/sqa_lavin_7b")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where offline tables stage their images
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    write_colour_problems(data, n_train=16, n_test=4)
    common = ["--config", str(REPO / "experiments/base/trainer_cpu.yaml"),
              "--config", str(REPO / "experiments/base/wandb.yaml"),
              "--config", str(REPO / "experiments/tiny/lavin_tiny.yaml"),
              f"--data.init_args.data_root={data}", "--data.init_args.global_batch_size=4",
              f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}"]

    monkeypatch.setenv("WANDB_JOB_TYPE", "fit")
    main(["fit", *common, "--trainer.max_steps=2", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1"])
    wandb.teardown()  # the next run reads the environment again
    monkeypatch.setenv("WANDB_JOB_TYPE", "test")
    main(["test", *common, f"--model.init_args.adapter_path={run / 'adapter'}"])
    wandb.teardown()  # as the end of the process does: waits until wandb has written the run file

    fit, test = (wandb_run_contents(d) for d in sorted((run / "wandb").glob("offline-run-*")))
    metrics = json.loads((run / "metrics.json").read_text())
    for contents, job in ((fit, "fit"), (test, "test")):
        # Grouped by table, named by row, tagged; the row on the config.
        assert contents.run.run_group == "lavin-table1" and contents.run.display_name == "sqa_lavin_7b"
        assert list(contents.run.tags) == ["lavin", "table1", "smoke"] and contents.run.job_type == job
        config = contents.config
        assert {k: config[k] for k in ("paper", "table", "row")} == {"paper": "lavin", "table": "1",
                                                                     "row": "sqa_lavin_7b"}
        # The resolved config and the parameter counts.
        assert config["config"]["model"]["class_path"] == "lavin_lightning.models.lavin.LaVIN"
        assert config["config"]["data"]["init_args"]["data_root"] == str(data)
        params = config["params"]
        assert config["method"] == "lavin" and 0 < params["trainable"] < params["total"]
        assert sum(g["trainable"] for g in params["groups"].values()) == params["trainable"]
        # The summaries, against the trainer's step.
        defined = contents.metrics
        for name, summary in (("train/loss", "min"), ("val/loss", "min"), ("test/accuracy", "max"),
                              ("test/cider", "max")):
            assert getattr(defined[name].summary, summary) and defined[name].step_metric == "trainer/global_step"
    assert fit.config["trainable_params"] == fit.config["params"]["trainable"]

    # fit: losses with their summaries, the validation loop's routing.
    assert set(fit.summary["train/loss"]) == {"min"} and set(fit.summary["val/loss"]) == {"min"}
    logged = {key for row in fit.history for key in row}
    assert {"val/routing/llm.layer00/image/_type", "val/routing/vision.layer01/image/_type"} <= logged

    # test: the headline's best value, the category chart, the predictions table with images, the routing.
    assert test.summary["test/accuracy"] == {"max": float(metrics["acc_average"])}
    assert test.summary["test/acc_average"] == float(metrics["acc_average"])
    chart = test.config["_wandb"]["visualize"]["test/scienceqa_categories"]
    assert chart["panel_config"]["panelDefId"] == "wandb/bar/v0"
    (test_dir,) = [d for d in (run / "wandb").glob("offline-run-*") if d.name.endswith(test.run.run_id)]
    (categories,) = (test_dir / "files" / "media" / "table" / "test").glob("scienceqa_categories_table_*.json")
    assert [row[:2] for row in json.loads(categories.read_text())["data"]] == [
        [label, float(metrics[key])] for key, label in (("acc_natural", "NAT"), ("acc_has_image", "IMG"),
                                                        ("acc_grade_1_6", "G1-6"), ("acc_average", "Avg"))]
    # A table with images is an artifact (what `wandb sync` uploads): the table and its thumbnails.
    (files,) = [files for files in test.artifacts.values() if "test/predictions.table.json" in files]
    table = json.loads(Path(files["test/predictions.table.json"]).read_text())
    assert table["columns"][:3] == ["image", "pid", "question"] and len(table["data"]) == 4
    images = {row[0]["path"] for row in table["data"]}
    assert len(images) == 4 and images <= set(files)
    (routing,) = [row for row in test.history if "test/routing/llm.layer00/image/_type" in row]
    assert routing["test/routing/llm.layer00/image/_type"] == "histogram"
    assert sum(routing["test/routing/llm.layer00/image/values"]) == 4  # one routing per test sample
    assert sum(routing["test/routing/vision.layer00/image/values"]) % 4 == 0  # one per token of each image


def test_routing_histogram_of_nearly_constant_weights():
    """The LLM routers' weights depend on the modality only: float32 values a few ulps apart
    (numpy cannot cut their range into 64 bins in float32)."""
    import numpy as np
    import torch

    from lavin_lightning.callbacks.wandb_dashboards import routing_histogram

    values = torch.tensor([0.5, 0.5 + 6e-8, 0.5 + 1.2e-7], dtype=torch.float32)
    with pytest.raises(ValueError):
        np.histogram(values.numpy(), bins=64)
    histogram = routing_histogram(values)
    assert sum(histogram.histogram) == 3
