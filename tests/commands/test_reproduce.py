"""`lavin-lightning reproduce`: the plan of a table's runs, the checks before any work, and a
whole smoke run that renders measured values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from lavin_lightning.commands.reproduce import main, plan_table, reproduce, tiny_backbones
from lavin_lightning.commands.tables import TABLES
from lavin_lightning.errors import ConfigError


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def keys(table: str, smoke: bool, runs: Path) -> dict[str, Path]:
    return {u.row: u.run_dir for u in plan_table(TABLES[table], list(TABLES[table].rows), runs, smoke)}


@pytest.mark.parametrize("smoke", [False, True])
def test_rows_that_repeat_another_tables_run_reuse_it(smoke, tmp_path):
    one, three, six = (keys(t, smoke, tmp_path) for t in ("lavin-1", "lavin-3", "lavin-6"))
    assert three["lavin_7b"] == one["lavin_7b"] == six["lavin_7b"]
    assert three["lavin_13b"] == one["lavin_13b_40ep"] and six["lavin_13b"] == one["lavin_13b"]
    assert len({one["lavin_7b"], one["lavin_13b"]}) == 2
    if not smoke:  # 20 and 40 epochs differ; a smoke run trains one epoch for both
        assert one["lavin_13b"] != one["lavin_13b_40ep"]


def test_zero_shot_rows_fit_once_and_evaluate_each_benchmark(tmp_path):
    units = plan_table(TABLES["lavin-5"], ["llama_base", "lavin"], tmp_path, smoke=False)
    steps = {u.row: [s.command for s in u.steps] for u in units}
    assert steps == {"llama_base": ["evaluate"], "lavin": ["fit", "evaluate", "test"]}
    lavin = next(u for u in units if u.row == "lavin")
    fit, evaluate, test = lavin.steps
    assert "--adapter" in evaluate.argv and "--truthfulqa" in evaluate.argv
    assert test.configs[-1] == "experiments/lavin/tasks/mme.yaml"
    assert test.argv[test.argv.index("--model.init_args.adapter_path") + 1] == str(fit.run_dir / "adapter")
    base = next(u for u in units if u.row == "llama_base")
    assert "--adapter" not in base.steps[0].argv  # the frozen LLaMA
    assert base.run_dir != lavin.run_dir  # same config, but one trains: never the same run


def test_petal_rows_train_per_task_with_the_task_under_the_row(tmp_path):
    units = plan_table(TABLES["petal-3"], ["petal_50"], tmp_path, smoke=False)
    assert [u.task.name for u in units] == ["aokvqa", "okvqa", "flickr30k", "textcaps"]
    for unit in units:
        assert unit.configs[-2:] == [f"experiments/petal/tasks/{unit.task.name}.yaml",
                                     "experiments/tables/petal-3/petal_50.yaml"]
        assert [s.command for s in unit.steps] == ["fit", "test"]
    assert len({u.run_dir for u in units}) == 4


def test_smoke_runs_swap_backbones_for_tiny_ones_of_the_same_family():
    petal = {"model": {"init_args": {"backbone": {"path": "w", "config": "instructblip-vicuna-7b"},
                                     "adapter": {"rank": 64}}}}
    assert tiny_backbones(petal)["model"]["init_args"] == {
        "backbone": {"path": None, "config": "tiny-llama", "dtype": "float32"}}
    excitor = {"model": {"init_args": {"llm": {"path": "w"}, "vision": {"config": "clip-vit-l/14"},
                                       "adapter": {"layers": 30}}}}
    out = tiny_backbones(excitor)["model"]["init_args"]
    assert out["llm"]["config"] == "tiny" and out["vision"]["config"] == "tiny" and out["adapter"] == {"layers": None}


def test_missing_weights_data_and_gpu_are_named_at_once_before_any_work(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        reproduce(TABLES["lavin-5"], ["llama_base", "lavin"], runs, smoke=False)
    message = str(err.value)
    for missing in ("weights/llama-7b", "weights/clip-vit-large-patch14", "data/truthfulqa/mc_task.json",
                    "data/alpaca/alpaca_data.json", "data/mme/MME_Benchmark_release_version", "a CUDA GPU"):
        assert missing in message
    assert "nothing was started" in message and not runs.exists()


def test_release_rows_import_the_authors_file_then_test_it_release_exact(tmp_path):
    units = plan_table(TABLES["lavin-release"], ["sqa_7b", "sqa_13b"], tmp_path, smoke=False)
    seven = units[0]
    imported, test = seven.steps
    assert [imported.command, test.command] == ["import", "test"]
    assert imported.argv[:4] == ["import", "lavin-release", "--checkpoint", "weights/releases/lavin/sqa-llama-7b.pth"]
    assert imported.needs == ("weights/releases/lavin/sqa-llama-7b.pth",)
    adapter = str(seven.run_dir / "adapter")
    assert imported.argv[imported.argv.index("--out") + 1] == adapter
    assert test.argv[test.argv.index("--model.init_args.adapter_path") + 1] == adapter
    assert "experiments/releases/lavin_release_exact.yaml" in test.configs
    # Not the run that trains the same model: another key.
    assert seven.run_dir not in keys("lavin-1", False, tmp_path).values()
    with pytest.raises(ConfigError, match="checkpoint"):
        reproduce(TABLES["lavin-release"], ["sqa_7b"], tmp_path / "runs", smoke=False)
    with pytest.raises(ConfigError, match="smoke run cannot"):
        plan_table(TABLES["lavin-release"], ["sqa_7b"], tmp_path, smoke=True)


def test_unknown_rows_are_refused(capsys):
    with pytest.raises(ConfigError, match=r"has no rows \['lavin_70b'\]"):
        main(["lavin-1", "--rows", "lavin_70b"])
    main(["--list"])
    assert "petal-5" in capsys.readouterr().out


@pytest.mark.slow
def test_a_smoke_row_runs_end_to_end_and_renders_measured_values(tmp_path, capsys):
    runs = tmp_path / "runs"
    text = reproduce(TABLES["lavin-6"], ["lavin_7b"], runs, smoke=True)
    assert "**Smoke run**" in text
    cost = json.loads((runs / "lavin-6" / "lavin_7b" / "cost.json").read_text())
    assert cost["trainable_params"] > 0 and cost["adapter_bytes"] == \
        (runs / "lavin-6" / "lavin_7b" / "adapter" / "adapter.safetensors").stat().st_size
    measured = next(line for line in text.splitlines() if line.startswith("| | measured |"))
    assert "| - |" not in measured  # every column measured
    report = json.loads((runs / "lavin-6.json").read_text())
    assert report["smoke"] and report["rows"]["LaVIN-7B"]["values"]["Time"]["measured"] > 0
    # A second run finds the finished steps and does no work.
    reproduce(TABLES["lavin-6"], ["lavin_7b"], runs, smoke=True)
    assert "fit already done" in capsys.readouterr().out


def test_every_smoke_overlay_belongs_to_a_data_module():
    from lavin_lightning.commands.reproduce import SMOKE_DATA, SMOKE_DIR

    named = {overlay for overlay, _ in SMOKE_DATA.values()} | {"flickr30k.yaml"}
    assert named == {p.name for p in SMOKE_DIR.glob("*.yaml")}
