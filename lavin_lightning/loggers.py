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

    WANDB_MODE from the environment still wins (wandb reads it itself). wandb runs quiet
    (no colour codes, no banners) and without git metadata (run folders are rarely git
    roots); `lavin-lightning` closes the run itself at the end, and wandb then says where an
    offline run is and how to upload it.
    """

    def __init__(self, *args, offline: bool | None = None, **kwargs):
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_present()
        if "settings" not in kwargs:
            import wandb

            kwargs["settings"] = wandb.Settings(quiet=True, disable_git=True)
        super().__init__(*args, offline=offline, **kwargs)
        # Lightning passes `anonymous=None` on, which wandb now answers with a deprecation
        # warning on every run; an unset value is what wandb expects.
        init = getattr(self, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
