"""Adapter-only checkpoints: exact keys, exact round trip, refusal of mismatches."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import make_batch, perturb_adapters
from safetensors.torch import load_file, save_file

from lavin_lightning.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, save_adapter
from lavin_lightning.errors import CheckpointError
from lavin_lightning.models.causal_lm import GenerationConfig

ADAPTER_TENSORS = ["down.weight", "down.bias", "up_experts.0.weight", "up_experts.0.bias",
                   "up_experts.1.weight", "up_experts.1.bias", "router.weight", "router.bias"]
EXPECTED_KEYS = (
    {f"llm.model.layers.{i}.input_layernorm.adapter.{t}" for i in (0, 1) for t in ADAPTER_TENSORS}
    | {f"vision.model.encoder.layers.{i}.layer_norm1.adapter.{t}" for i in (0, 1) for t in ADAPTER_TENSORS}
    | {"neck.down.weight", "neck.down.bias", "neck.up.weight", "neck.up.bias", "modality.embedding.weight"}
)


def outputs(module, batch):
    module.eval()
    with torch.no_grad():
        loss = module.model.loss(batch)
    greedy = GenerationConfig(max_new_tokens=6, temperature=0.0)
    prompts = make_batch(module.tokenizer, with_labels=False)
    return loss, module.model.generate(prompts, greedy)


def test_exact_saved_keys_and_sidecar(make_tiny_lavin, tmp_path):
    module = make_tiny_lavin()
    save_adapter(module, tmp_path)
    tensors = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    assert set(tensors) == EXPECTED_KEYS
    meta = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert meta["method"] == "lavin"
    assert meta["trainable_params"] == sum(t.numel() for t in tensors.values())
    assert meta["config"]["temperature"] == 10.0
    assert set(meta["backbone"]) == {"llm", "vision"}
    assert meta["backbone"]["llm"]["weights"] is not None
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_round_trip_on_a_freshly_built_base_is_exact(make_tiny_lavin, tmp_path):
    trained = make_tiny_lavin(seed=0)
    perturb_adapters(trained)
    batch = make_batch(trained.tokenizer)
    expected_loss, expected_tokens = outputs(trained, batch)
    save_adapter(trained, tmp_path)

    fresh = make_tiny_lavin(seed=0)  # same frozen weights, untrained adapters
    fresh_loss, _ = outputs(fresh, batch)
    assert not torch.equal(fresh_loss, expected_loss)  # the check below is not vacuous
    load_adapter(fresh, tmp_path)
    loss, tokens = outputs(fresh, batch)
    assert torch.equal(loss, expected_loss)
    assert tokens == expected_tokens


def test_loading_refuses_mismatches(make_tiny_lavin, tmp_path):
    trained = make_tiny_lavin(seed=0)
    save_adapter(trained, tmp_path)
    with pytest.raises(CheckpointError, match="different weights"):
        load_adapter(make_tiny_lavin(seed=1), tmp_path)  # same architecture, other weights
    with pytest.raises(CheckpointError, match="config.temperature"):
        load_adapter(make_tiny_lavin(seed=0, temperature=5.0), tmp_path)
    with pytest.raises(CheckpointError, match="architecture differs|llm_placement"):
        load_adapter(make_tiny_lavin(seed=0, llm_placement="block"), tmp_path)

    # Keys and shapes are checked before anything is copied.
    target = make_tiny_lavin(seed=0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    tensors = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    tensors["neck.down.weight"] = torch.zeros(3, 3)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / ADAPTER_WEIGHTS))
    with pytest.raises(CheckpointError, match=r"unexpected \['extra.weight'\].*wrong shapes \['neck.down.weight"):
        load_adapter(target, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    (tmp_path / ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_adapter(target, tmp_path)
    (tmp_path / ADAPTER_CONFIG).unlink()
    with pytest.raises(CheckpointError, match="adapter file missing"):
        load_adapter(target, tmp_path)


class _Batches(L.LightningDataModule):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch
        self.global_batch_size = 3

    def train_dataloader(self):
        return torch.utils.data.DataLoader([self.batch] * 4, batch_size=None)


def test_lightning_checkpoint_holds_only_trainable_tensors_and_reloads(make_tiny_lavin, tmp_path):
    module = make_tiny_lavin(seed=0)
    batch = make_batch(module.tokenizer)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last")])
    trainer.fit(module, datamodule=_Batches(batch))
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert set(checkpoint["state_dict"]) == {f"model.{k}" for k in EXPECTED_KEYS}
    assert checkpoint["optimizer_states"] and checkpoint["adapter_meta"]["method"] == "lavin"
    expected_loss, _ = outputs(module, batch)

    torch.manual_seed(0)  # the same frozen base
    reloaded = type(module).load_from_checkpoint(tmp_path / "last.ckpt", weights_only=False)
    loss, _ = outputs(reloaded, batch)
    assert torch.equal(loss, expected_loss)

    checkpoint["state_dict"]["model.llm.lm_head.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "tampered.ckpt")
    with pytest.raises(CheckpointError, match="unexpected"):
        torch.manual_seed(0)
        type(module).load_from_checkpoint(tmp_path / "tampered.ckpt", weights_only=False)


def test_adapter_file_size_is_the_size_of_the_export(make_tiny_lavin, tmp_path):
    """`params` and the cost callback report it without writing the file."""
    from lavin_lightning.checkpoint import adapter_file_size

    module = make_tiny_lavin()
    save_adapter(module, tmp_path)
    assert adapter_file_size(module) == (tmp_path / ADAPTER_WEIGHTS).stat().st_size


def test_settings_added_after_an_export_was_written_are_not_differences(make_tiny_lavin, tmp_path):
    from lavin_lightning.checkpoint import settings_diff

    module = make_tiny_lavin()
    save_adapter(module, tmp_path / "old")
    record = json.loads((tmp_path / "old" / ADAPTER_CONFIG).read_text())
    del record["config"]["vision_routing"]  # as an export written before the setting existed
    (tmp_path / "old" / ADAPTER_CONFIG).write_text(json.dumps(record))
    load_adapter(make_tiny_lavin(), tmp_path / "old")
    # A setting the checkpoint records and the model no longer has, or holds otherwise, still counts.
    assert settings_diff({"generation": {"seed": 0}}, {"generation": {"seed": 0, "streams": "sample"}}) == []
    assert settings_diff({"generation": {"seed": 0}}, {"generation": {"seed": 1}}) == \
        ["generation.seed: checkpoint 0 vs model 1"]
    assert settings_diff({"retired": 1}, {}) == ["retired: checkpoint 1 vs model None"]
