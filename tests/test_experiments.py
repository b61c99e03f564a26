"""Every shipped config parses and instantiates; the paper rows count exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from lavin_lightning.cli import main
from lavin_lightning.commands.params import main as params_main

ROW_CONFIGS = sorted((REPO / "experiments").glob("*/*.yaml"))
# Method recipes; base/ and releases/ hold trainers and overlays, smoke/ the embedded-data overlays
# of smoke runs (tested with the table runner), tables/ the paper-table rows (tests/commands/test_tables.py).
ROW_CONFIGS = [p for p in ROW_CONFIGS if p.parent.name not in ("base", "smoke", "releases")]
TASK_CONFIGS = sorted((REPO / "experiments" / "petal" / "tasks").glob("*.yaml"))
BASE_CONFIGS = sorted((REPO / "experiments" / "base").glob("*.yaml")) + \
    sorted((REPO / "experiments" / "releases").glob("*.yaml"))


def config_stack(path: Path) -> list[str]:
    from lavin_lightning.config import config_stack as stack

    return [str(p) for p in stack(path)]


@pytest.mark.parametrize("path", ROW_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_row_config_instantiates(path, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from lavin_lightning.models.base import PEFTModule

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    args = []
    for config in [str(REPO / "experiments/base/trainer_cpu.yaml")] + config_stack(path):
        args += ["--config", config]
    args += ["--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    cli = LightningCLI(PEFTModule, None, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=args, save_config_callback=None)
    assert isinstance(cli.model, PEFTModule)
    assert cli.datamodule.global_batch_size > 0
    assert cli.trainer.max_epochs >= 1


@pytest.mark.parametrize("task", TASK_CONFIGS, ids=lambda p: p.name)
def test_petal_tasks_stack_on_every_row(task, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    from lavin_lightning.models.base import PEFTModule

    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    for row in sorted((REPO / "experiments" / "petal").glob("*.yaml")):
        args = ["--config", str(REPO / "experiments/base/trainer_cpu.yaml"), "--config", str(row),
                "--config", str(task), "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
        cli = LightningCLI(PEFTModule, None, subclass_mode_model=True, subclass_mode_data=True,
                           run=False, args=args, save_config_callback=None)
        assert cli.trainer.max_epochs == 5 and cli.model.generation.num_beams == 5


@pytest.mark.parametrize("path", BASE_CONFIGS, ids=lambda p: p.name)
def test_base_configs_parse(path):
    from lavin_lightning.config import load_configs

    config = load_configs([str(path)])
    # Base configs stack on a row: a trainer (strategy, logger) or a data section (prompt files).
    section = "trainer" if "trainer" in config else "data"
    assert isinstance(config.get(section), dict)


def param_report(*configs: str, capsys) -> dict:
    args = []
    for config in configs:
        args += ["--config", str(REPO / config)]
    params_main(args + ["--json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "row, trainable",
    [("experiments/lavin/sqa_lavin_7b.yaml", 3_781_296), ("experiments/lavin/sqa_lavin_13b.yaml", 5_390_080)],
)
def test_paper_trainable_parameter_counts_on_meta(row, trainable, capsys):
    report = param_report(row, capsys=capsys)
    assert report["trainable"] == trainable
    groups = report["groups"]
    width = 4096 if "7b" in row else 5120
    layers = 32 if "7b" in row else 40
    # Spec section 5: 20c + 10 per MM-Adapter; 24 ViT-L/14 adapters of width 1024.
    assert groups["llm (trainable)"]["trainable"] == layers * (20 * width + 10)
    assert groups["vision (trainable)"]["trainable"] == 24 * (20 * 1024 + 10) == 491_760
    assert groups["neck (trainable)"]["trainable"] == 131_200 + 128 * width + width
    assert groups["modality (trainable)"]["trainable"] == 2 * width
    llama_total = 6_738_415_616 if "7b" in row else 13_015_864_320
    assert groups["llm (frozen)"]["total"] == llama_total
    assert groups["vision (frozen)"]["total"] == 303_179_776
    # fp32 safetensors export: 4 bytes per parameter plus a small JSON header.
    assert 4 * trainable < report["adapter_file_bytes"] < 4 * trainable + 100_000


def test_params_command_prints_a_table(capsys):
    main(["params", "--config", str(REPO / "experiments/lavin/sqa_lavin_7b.yaml")])
    out = capsys.readouterr().out
    assert "3,781,296" in out and "adapter file" in out


@pytest.mark.parametrize(
    "row, trainable",
    [("experiments/baselines/alpaca_llama_adapter_7b.yaml", 1_229_760),  # LLaMA-Adapter paper: 1.2M
     ("experiments/excitor/alpaca_excitor_7b.yaml", 7_619_520),  # K = 30, r = 16, top 30 layers
     ("experiments/baselines/alpaca_lora_7b.yaml", 4_194_304),
     ("experiments/lavin/chatbot_lavin_7b.yaml", 3_781_296),
     ("experiments/lavin/coco_caption_lavin_13b.yaml", 5_390_080)],  # LaVIN Table 4: 5.4M
)
def test_instruction_tuning_counts_on_meta(row, trainable, capsys):
    report = param_report(row, capsys=capsys)
    assert report["trainable"] == trainable
    llama_total = 13_015_864_320 if "13b" in row else 6_738_415_616
    assert report["groups"]["llm (frozen)"]["total"] == llama_total
