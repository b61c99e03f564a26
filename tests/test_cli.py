"""The command line end to end on the tiny config: fit -> export -> test -> score, W&B offline."""

from __future__ import annotations

import json

import pytest
import wandb
import yaml
from conftest import REPO

from lavin_lightning.cli import main
from lavin_lightning.metrics.scienceqa import OFFICIAL_KEYS


@pytest.fixture(scope="module")
def easy_vqa_root(tmp_path_factory):
    pytest.importorskip("easy_vqa")
    from data_modules.prepare.easy_vqa import build_scienceqa_from_easy_vqa

    return build_scienceqa_from_easy_vqa(tmp_path_factory.mktemp("data") / "sqa", n_train=48, n_val=8, n_test=12)


@pytest.mark.slow
def test_fit_export_test_score_and_wandb(easy_vqa_root, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    run = tmp_path / "run"
    logger = tmp_path / "logger.yaml"
    logger.write_text(yaml.safe_dump({"trainer": {"logger": {
        "class_path": "lavin_lightning.loggers.WandbLogger",
        "init_args": {"project": "lavin-lightning-tests", "save_dir": str(run)}}}}))
    common = ["--config", str(REPO / "experiments/base/trainer_cpu.yaml"),
              "--config", str(REPO / "experiments/tiny/lavin_tiny.yaml"), "--config", str(logger),
              f"--data.init_args.data_root={easy_vqa_root}", "--data.init_args.limit_test=null",
              f"--trainer.default_root_dir={run}"]

    main(["fit", *common, "--trainer.max_steps=3", "--trainer.log_every_n_steps=1"])
    wandb.finish()  # what the end of the process does; flushes the offline run
    adapter = run / "adapter"
    assert (adapter / "adapter.safetensors").is_file() and (adapter / "adapter_config.json").is_file()

    main(["test", *common, f"--model.init_args.adapter_path={adapter}"])
    wandb.finish()
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = json.loads((run / "predictions.json").read_text())
    assert set(predictions["results"]) == set(json.loads((easy_vqa_root / "pid_splits.json").read_text())["test"])
    assert metrics["counts"]["total"] == 12
    assert metrics["counts"]["unparsed"] == sum(v is None for v in predictions["results"].values())

    # The standalone scorer reads the test loop's predictions file and agrees with it.
    main(["score", "scienceqa", "--data-root", str(easy_vqa_root), "--predictions",
          str(run / "predictions.json"), "--output", str(tmp_path / "scores.json")])
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert {k: scores[k] for k in OFFICIAL_KEYS} == {k: metrics[k] for k in OFFICIAL_KEYS}

    main(["predict", *common, f"--model.init_args.adapter_path={adapter}"])
    lines = (run / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["pid"] for line in lines] == sorted(predictions["results"], key=int)
    wandb.finish()

    # W&B offline runs: one for fit (loss, lr), one for test (accuracies, predictions table).
    records = b"".join(p.read_bytes() for p in (run / "wandb").glob("offline-run-*/run-*.wandb"))
    for key in (b"train/loss", b"lr-AdamW", b"test/acc_average", b"test/predictions", b"trainable_params"):
        assert key in records, key


def test_params_refuses_a_missing_config(capsys):
    with pytest.raises(SystemExit, match="config file not found"):
        main(["params", "--config", "no/such/file.yaml"])


def test_missing_weights_name_the_path(tmp_path):
    from lavin_lightning.backbones.llama import LLMSpec, load_causal_lm
    from lavin_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=str(tmp_path / "llama-7b") + ".*config.json"):
        load_causal_lm(LLMSpec(path=str(tmp_path / "llama-7b")))
