"""Two CPU processes (DDP over gloo): global batch split, gathered scoring, rank-0 export."""

from __future__ import annotations

import json

import lightning as L
import pytest
from test_learnability import write_colour_problems

from data_modules.scienceqa import ScienceQADataModule
from lavin_lightning.callbacks.export import ExportAdapter
from lavin_lightning.callbacks.scienceqa import ScienceQAEvaluation


@pytest.mark.slow
def test_ddp_fit_and_test_on_two_cpu_processes(tmp_path, make_tiny_lavin):
    data = tmp_path / "data"
    write_colour_problems(data, n_train=32, n_test=13)  # 13: the sampler pads one rank
    module = make_tiny_lavin(seed=0)
    module.generation.max_new_tokens = 4
    datamodule = ScienceQADataModule(str(data), prompt_format="QCM-A", global_batch_size=8,
                                     micro_batch_size=2, image_size=32, max_seq_len=200)
    evaluation = ScienceQAEvaluation(output_dir=str(tmp_path / "scores"))

    class RecordBatching(L.Callback):  # runs in the worker processes
        def on_train_start(self, trainer, pl_module):
            record = [trainer.world_size, datamodule.per_device_batch_size, trainer.accumulate_grad_batches]
            (tmp_path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path,
                        callbacks=[ExportAdapter(), evaluation, RecordBatching()])
    trainer.fit(module, datamodule=datamodule)
    # global 8 = 2 processes x micro 2 x accumulation 2, in every process
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [2, 2, 2]
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file()
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    results = json.loads((tmp_path / "scores" / "predictions.json").read_text())["results"]
    assert metrics["counts"]["total"] == 13 and len(results) == 13  # each pid once, none lost
