"""What a user sees on the terminal: our messages and real warnings, not upstream chatter.

`configure()` runs once, at the start of the `lavin-lightning` command (never at import):
it shows the suite's own INFO messages (what was written where, what was skipped) and
silences upstream messages that carry nothing a user can act on. Each silenced message is
listed below with the reason; everything else still shows.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Upstream warnings that are expected in this suite's normal use.
EXPECTED_WARNINGS = (
    # Lightning's own code on the locked torch; nothing of ours calls it.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # The base trainers set limit_val_batches: 0 on purpose; configs with a val split turn it on.
    r"You defined a `validation_step` but have no `val_dataloader`",
    # Without TensorBoard Lightning logs to CSV files, which is what the base trainers want.
    r"`tensorboardX` has been removed as a dependency",
    # Lightning checkpoints hold the adapter tensors only; `PEFTModule.on_load_checkpoint`
    # checks their keys itself and refuses any mismatch.
    r"Found keys that are in the model state dict but not in the checkpoint",
)
# Lightning's advertisements for its cloud services, once per Trainer.
_TIP = "\N{ELECTRIC LIGHT BULB} Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP)


def configure() -> None:
    """Quiet upstream chatter and show the suite's INFO messages on stderr."""
    # jsonargparse warns about its own API as Lightning's CLI calls it (not our code).
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # The loggers through which Lightning's rank_zero_info emits (filters act where a record is made).
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in target.filters):
            target.addFilter(_DropTips())
    for name in ("lavin_lightning", "data_modules"):
        target = logging.getLogger(name)
        if not target.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            target.addHandler(handler)
            target.setLevel(logging.INFO)
            target.propagate = False
