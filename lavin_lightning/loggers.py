"""Weights & Biases logging that works on a fresh machine: offline unless logged in.

Every run gets the same metric definitions (the summaries below, all against
`trainer/global_step`), so runs of different methods and tasks line up in one project; a
run launched for a row of a paper table records the paper, table and row on its config.
"""

from __future__ import annotations

import netrc
import os
import re

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lavin_lightning.errors import ConfigError

STEP_METRIC = "trainer/global_step"  # what Lightning's WandbLogger adds to every log call
# The names every dashboard shares and the summary W&B keeps of each. Test scorers log their
# task's headline under `test/accuracy` (accuracy tasks) or `test/cider` (captions), next to
# their task's own keys.
SUMMARIES = {"train/loss": "min", "val/loss": "min", "test/accuracy": "max", "test/cider": "max"}

# Set by the table runner for each row it launches (with WANDB_RUN_GROUP, WANDB_NAME, WANDB_TAGS and
# WANDB_JOB_TYPE, which wandb reads itself): `<paper>-<table>/<row>`, e.g. `lavin-1/sqa_lavin_7b`
# or `excitor-mmlu/alpaca_excitor_7b` (the table id of `lavin-lightning table`, then the row).
TABLE_ROW_VARIABLE = "LAVIN_TABLE_ROW"
_TABLE_ROW = re.compile(r"(?P<paper>[^/-]+)-(?P<table>[^/]+)/(?P<row>.+)")


def wandb_credentials_present() -> bool:
    """True when an API key is configured (environment or ~/.netrc written by `wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def table_row(value: str | None) -> dict[str, str]:
    """`{"paper", "table", "row"}` of a LAVIN_TABLE_ROW value (`lavin-1/sqa_lavin_7b` ->
    lavin, 1, sqa_lavin_7b); {} when unset or empty."""
    if not value:
        return {}
    match = _TABLE_ROW.fullmatch(value)
    if match is None:
        raise ConfigError(f"{TABLE_ROW_VARIABLE}={value!r} is not <paper>-<table>/<row> (e.g. lavin-1/sqa_lavin_7b)")
    return match.groupdict()


def define_summaries(run) -> None:
    """Plot every metric against the trainer's step and keep the summaries of `SUMMARIES`."""
    run.define_metric(STEP_METRIC)
    for name, summary in SUMMARIES.items():
        run.define_metric(name, step_metric=STEP_METRIC, summary=summary)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger; `offline=None` (default) means offline unless a key is set.

    WANDB_MODE from the environment still wins (wandb reads it itself), and so do
    WANDB_RUN_GROUP, WANDB_NAME, WANDB_TAGS and WANDB_JOB_TYPE unless the config sets `group`,
    `name`, `tags` or `job_type` (arguments left None are not passed on).
    LAVIN_TABLE_ROW adds `paper`, `table` and `row` to the run config. A new run defines
    `SUMMARIES`. wandb runs quiet (no colour codes, no banners) and without git metadata
    (run folders are rarely git roots); `lavin-lightning` closes the run itself at the end,
    and wandb then says where an offline run is and how to upload it.
    """

    def __init__(self, *args, offline: bool | None = None, **kwargs):
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_present()
        # LightningCLI passes every argument of wandb.init, None where the config says nothing;
        # dropped, they leave wandb's environment variables and Lightning's defaults in effect.
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if "settings" not in kwargs:
            import wandb

            kwargs["settings"] = wandb.Settings(quiet=True, disable_git=True)
        row = table_row(os.environ.get(TABLE_ROW_VARIABLE))
        if row:
            kwargs["config"] = {**row, **(kwargs.get("config") or {})}
        super().__init__(*args, offline=offline, **kwargs)
        # Lightning passes `anonymous=None` on, which wandb now answers with a deprecation
        # warning on every run; an unset value is what wandb expects.
        init = getattr(self, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)

    @property
    @rank_zero_experiment
    def experiment(self):
        created = self._experiment is None
        run = super().experiment
        if created:
            define_summaries(run)
        return run
