"""W&B: offline unless an API key is configured."""

from __future__ import annotations

import pytest

from lavin_lightning.loggers import WandbLogger, wandb_credentials_present


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
