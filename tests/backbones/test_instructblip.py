"""The frozen InstructBLIP's own settings: the Q-Former's dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lavin_lightning.backbones.instructblip import InstructBLIPSpec, load_instructblip
from lavin_lightning.errors import ConfigError


def qformer_dropouts(model) -> set[float]:
    """Every dropout probability of the Q-Former: its nn.Dropout modules and the attention's."""
    found = {m.p for m in model.qformer.modules() if isinstance(m, nn.Dropout)}
    return found | {m.attention_dropout for m in model.qformer.modules() if hasattr(m, "attention_dropout")}


def test_qformer_dropout_sets_every_dropout_of_the_qformer_only(tmp_path):
    torch.manual_seed(0)
    default = load_instructblip(InstructBLIPSpec(config="tiny-t5"))
    assert qformer_dropouts(default) == {0.1}  # InstructBLIP's, kept by default
    off = load_instructblip(InstructBLIPSpec(config="tiny-t5", qformer_dropout=0.0))
    assert qformer_dropouts(off) == {0.0}
    assert off.config.qformer_config.hidden_dropout_prob == 0.0
    vision_dropouts = {m.p for m in off.vision_model.modules() if isinstance(m, nn.Dropout)}
    assert vision_dropouts == {m.p for m in default.vision_model.modules() if isinstance(m, nn.Dropout)}

    default.save_pretrained(tmp_path / "saved")  # a local directory: its config.json, then the option
    loaded = load_instructblip(InstructBLIPSpec(path=str(tmp_path / "saved"), qformer_dropout=0.25))
    assert qformer_dropouts(loaded) == {0.25} and torch.equal(loaded.query_tokens, default.query_tokens)

    with pytest.raises(ConfigError, match=r"qformer_dropout must be in \[0, 1\), got 1.5"):
        InstructBLIPSpec(config="tiny-t5", qformer_dropout=1.5)
