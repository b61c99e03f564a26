"""W&B: offline unless an API key is configured; the paper-table row and the summaries of a run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lavin_lightning.errors import ConfigError
from lavin_lightning.loggers import STEP_METRIC, SUMMARIES, WandbLogger, table_row, wandb_credentials_present


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    return tmp_path


def test_offline_without_credentials_online_with_them(no_credentials, monkeypatch):
    assert not wandb_credentials_present()
    assert WandbLogger(save_dir=str(no_credentials))._offline is True
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password KEY\n")
    (no_credentials / ".netrc").chmod(0o600)
    assert wandb_credentials_present()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_credentials_present()
    assert WandbLogger(save_dir=str(no_credentials))._offline is False
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment still wins
    assert WandbLogger(save_dir=str(no_credentials))._offline is True


def test_table_row_names_paper_table_and_row():
    assert table_row("lavin-1/sqa_lavin_7b") == {"paper": "lavin", "table": "1", "row": "sqa_lavin_7b"}
    # The paper ends at the first dash, as in the table ids (`excitor-mmlu`).
    assert table_row("excitor-mmlu/alpaca_excitor_7b") == {"paper": "excitor", "table": "mmlu",
                                                           "row": "alpaca_excitor_7b"}
    assert table_row(None) == table_row("") == {}
    for bad in ("lavin/sqa_lavin_7b", "lavin-1", "lavin-1/", "-1/row"):
        with pytest.raises(ConfigError, match="LAVIN_TABLE_ROW"):
            table_row(bad)


def test_table_row_on_the_config_and_unset_arguments_left_to_wandb(no_credentials, monkeypatch):
    monkeypatch.setenv("LAVIN_TABLE_ROW", "lavin-1/sqa_lavin_7b")
    # LightningCLI passes every wandb.init argument, None when the config says nothing.
    logger = WandbLogger(save_dir=str(no_credentials), group=None, job_type=None, tags=None, config=None,
                         settings=None, resume=None)
    init = logger._wandb_init
    assert init["config"] == {"paper": "lavin", "table": "1", "row": "sqa_lavin_7b"}
    assert not {"group", "job_type", "tags"} & set(init)  # so WANDB_RUN_GROUP, ... take effect
    assert init["resume"] == "allow" and init["settings"].quiet  # Lightning's and our defaults stay
    logger = WandbLogger(save_dir=str(no_credentials), config={"seed": 1}, group="mine")
    assert logger._wandb_init["config"] == {"paper": "lavin", "table": "1", "row": "sqa_lavin_7b", "seed": 1}
    assert logger._wandb_init["group"] == "mine"  # the config still wins over the environment
    monkeypatch.setenv("LAVIN_TABLE_ROW", "not a row")
    with pytest.raises(ConfigError, match="not a row"):
        WandbLogger(save_dir=str(no_credentials))


def test_a_new_run_defines_the_summaries(no_credentials, monkeypatch):
    import wandb

    defined = []
    run = SimpleNamespace(define_metric=lambda name, **options: defined.append((name, options)))
    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    logger = WandbLogger(save_dir=str(no_credentials))
    assert logger.experiment is run and logger.experiment is run
    assert defined == [(STEP_METRIC, {})] + [(name, {"step_metric": STEP_METRIC, "summary": summary})
                                             for name, summary in SUMMARIES.items()]  # once per run
    assert SUMMARIES == {"train/loss": "min", "val/loss": "min", "test/accuracy": "max", "test/cider": "max"}
