"""Two CPU processes (DDP over gloo): global batch split, gathered scoring, rank-0 export."""

from __future__ import annotations

import json

import lightning as L
import pytest
from conftest import REPO, write_colour_problems

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
                                     micro_batch_size=2, image_size=32, max_seq_len=200, tokenizer=module.tokenizer)
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


@pytest.mark.slow
def test_ddp_with_text_only_batches_on_a_multimodal_model(tmp_path):
    """Text-only batches leave the visual maps without gradients: the DDP config's strategy
    (find unused parameters) must train through them."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from data_modules.instruct import AlpacaDataModule
    from lavin_lightning.adapters.excitor import ExcitorConfig
    from lavin_lightning.backbones.llama import LLMSpec
    from lavin_lightning.backbones.vision import VisionSpec
    from lavin_lightning.models.base import OptimConfig
    from lavin_lightning.models.excitor import Excitor

    strategy = yaml.safe_load((REPO / "experiments/base/trainer_ddp.yaml").read_text())["trainer"]["strategy"]
    assert strategy == "ddp_find_unused_parameters_true"
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(16)]))
    torch.manual_seed(0)
    vision = VisionSpec(kind="clip", config="tiny", projection=True, cls_every=1)
    module = Excitor(llm=LLMSpec(config="tiny"), vision=vision,
                     adapter=ExcitorConfig(layers=2, prompt_length=4, rank=4),
                     optim=OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork_find_unused_parameters_true", max_steps=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[ExportAdapter()])
    module.configure_model()  # in this process too: the initial values to compare with
    initial = {k.removeprefix("model."): p.detach().clone() for k, p in module._trainable.items()}
    trainer.fit(module, datamodule=AlpacaDataModule(str(data), global_batch_size=4, max_seq_len=300,
                                                    tokenizer=module.tokenizer))
    trained = load_file(tmp_path / "adapter" / "adapter.safetensors")  # written by rank 0 after training
    prompt = "llm.model.layers.1.self_attn.k_proj.excitor.prompt"
    visual_up = "llm.model.layers.1.self_attn.k_proj.excitor.visual_key.up.weight"
    assert not torch.equal(trained[prompt], initial[prompt])
    assert torch.equal(trained[visual_up], initial[visual_up])  # no image, no gradient: still zero


@pytest.mark.slow
def test_ddp_petal_on_easy_vqa(tmp_path):
    """PETAL (shared factor sets held by every delta) trains under DDP and its test
    generations are gathered and scored once, each question once."""
    pytest.importorskip("easy_vqa")
    import torch

    from data_modules.prepare.easy_vqa import build_vqa_from_easy_vqa
    from data_modules.vqa import VQADataModule
    from lavin_lightning.adapters.petal import PETALConfig
    from lavin_lightning.backbones.instructblip import InstructBLIPSpec
    from lavin_lightning.callbacks.vqa import VQAEvaluation
    from lavin_lightning.models.base import OptimConfig
    from lavin_lightning.models.instructblip import BeamSearchConfig
    from lavin_lightning.models.petal import PETAL

    data = build_vqa_from_easy_vqa(tmp_path / "vqa", n_train=16, n_val=2, n_test=7, seed=0)
    torch.manual_seed(0)
    module = PETAL(InstructBLIPSpec(config="tiny-t5"), PETALConfig(rank=8, expert_rank=8),
                   optim=OptimConfig(lr=1e-2, base_lr=None, warmup_epochs=0.0),
                   generation=BeamSearchConfig(num_beams=2, max_new_tokens=3))
    datamodule = VQADataModule(str(data), template="plain", original_instructions="vqa", image_size=32,
                               global_batch_size=8, micro_batch_size=2, splits={"train": "train", "test": "test"},
                               tokenizer=module.tokenizer, instruction_tokenizer=module.instruction_tokenizer)
    evaluation = VQAEvaluation(output_dir=str(tmp_path / "scores"))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork_find_unused_parameters_true", max_steps=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[ExportAdapter(), evaluation])
    trainer.fit(module, datamodule=datamodule)
    assert (tmp_path / "adapter" / "adapter.safetensors").is_file()
    trainer.test(module, datamodule=datamodule, verbose=False)
    results = json.loads((tmp_path / "scores" / "results.json").read_text())
    assert sorted(r["question_id"] for r in results) == sorted(
        q["question_id"] for q in json.loads((data / "questions_test.json").read_text())["questions"])
