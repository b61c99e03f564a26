"""The running environment is the locked one, for the packages the suite reaches deep into."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
# Packages whose internals our seams touch (forward signatures, attention interfaces, cache
# API, strategies, CLI parsing): a different version is an untested one.
DEEP = ("torch", "transformers", "lightning", "peft", "timm", "tokenizers", "safetensors", "jsonargparse")


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_the_lock_pins_every_deep_package_exactly():
    pins = locked_versions()
    assert not [name for name in DEEP if name not in pins], "make lock should pin every deep package"


@pytest.mark.lock
def test_running_environment_matches_the_lock():
    pins = locked_versions()
    differ = []
    for name in DEEP:
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        # A CUDA build of the locked torch carries a local label (2.14.1+cu128): same release.
        if installed.split("+")[0] != pins[name]:
            differ.append(f"{name} {installed} (lock: {pins[name]})")
    assert not differ, f"installed versions differ from requirements.lock: {differ}; run `make install`"
