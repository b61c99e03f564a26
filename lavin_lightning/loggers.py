"""Weights & Biases logging that works on a fresh machine: offline unless logged in."""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_credentials_present() -> bool:
    """True when an API key is configured (environment or ~/.netrc written by `wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger; `offline=None` (default) means offline unless a key is set.

    WANDB_MODE from the environment still wins (wandb reads it itself).
    """

    def __init__(self, *args, offline: bool | None = None, **kwargs):
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_present()
        super().__init__(*args, offline=offline, **kwargs)
