"""Instruction tuning from the command line on the tiny configs: prepare -> fit -> export ->
predict over a prompt file -> chat (streamed, multi-turn) -> evaluate mc (base vs adapted)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import REPO

from lavin_lightning.cli import main
from lavin_lightning.config import build_module, load_configs


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    out = tmp_path_factory.mktemp("instructions")
    main(["prepare", "instructions", "--out", str(out), "--per-family", "8", "--held-out", "6"])
    return out


def configs(method: str) -> list[str]:
    return ["--config", str(REPO / "experiments/base/trainer_cpu.yaml"),
            "--config", str(REPO / f"experiments/tiny/{method}_tiny.yaml")]


def csv_logger(run: Path) -> list[str]:
    return ["--trainer.logger.class_path=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.init_args.save_dir={run}"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["excitor", "llama_adapter", "lora"])
def test_fit_export_and_predict_a_prompt_file(method, instructions, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    run = tmp_path / "run"
    main(["fit", *configs(method), f"--data.init_args.path={instructions / 'train.json'}",
          f"--trainer.default_root_dir={run}", "--trainer.max_steps=2", *csv_logger(run)])
    adapter = run / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["method"] == method and saved["trainable_params"] > 0

    main(["predict", *configs(method), "--config", str(REPO / "experiments/base/predict_prompts.yaml"),
          f"--data.init_args.path={instructions / 'held_out.jsonl'}", f"--model.init_args.adapter_path={adapter}",
          f"--trainer.default_root_dir={run}", *csv_logger(run)])
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    prompts = [json.loads(line) for line in (instructions / "held_out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in prompts]
    assert all(r["instruction"] == p["instruction"] and isinstance(r["response"], str) for r, p in zip(rows, prompts))


@pytest.mark.parametrize("method", ["excitor", "llama_adapter", "lora"])
def test_chat_streams_multi_turn_replies(method):
    from lavin_lightning.commands.chat import ChatSession, run
    from lavin_lightning.models.causal_lm import GenerationConfig

    module = build_module(load_configs([str(REPO / f"experiments/tiny/{method}_tiny.yaml")]))
    module.configure_model()
    session = ChatSession(module.eval(), "alpaca", GenerationConfig(max_new_tokens=8, temperature=0.0))
    pieces: list[str] = []
    first = session.respond("Say hi.", on_text=pieces.append)
    assert "".join(pieces) == first and len(session.history) == 1
    session.respond("Again.")
    assert [user for user, _ in session.history] == ["Say hi.", "Again."]

    out = io.StringIO()
    run(session, io.StringIO("/reset\nhello\n/image missing.png\n/exit\n"), out)
    text = out.getvalue()
    assert "(conversation cleared)" in text and "model> " in text and "no vision encoder" in text


def test_chat_with_an_image_on_a_multimodal_model(tmp_path):
    from PIL import Image

    from lavin_lightning.commands.chat import ChatSession
    from lavin_lightning.models.causal_lm import GenerationConfig

    config = load_configs([str(REPO / "experiments/tiny/excitor_tiny.yaml")])
    config["model"]["init_args"]["vision"] = {"kind": "clip", "config": "tiny", "cls_every": 1, "projection": True}
    module = build_module(config)
    module.configure_model()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "red.png")
    session = ChatSession(module.eval(), "alpaca", GenerationConfig(max_new_tokens=6, temperature=0.0))
    session.set_image(tmp_path / "red.png")
    assert session.batch("What colour?")["has_image"].tolist() == [True]
    assert isinstance(session.respond("What colour?"), str)


def test_evaluate_mc_reports_base_and_adapted(tmp_path, capsys):
    mmlu = tmp_path / "mmlu"
    for split, rows in (("dev", 2), ("test", 3)):
        (mmlu / split).mkdir(parents=True)
        lines = "".join(f"Question {i}?,one,two,three,four,{'ABCD'[i % 4]}\n" for i in range(rows))
        (mmlu / split / f"toy_subject_{split}.csv").write_text(lines)
    truthful = tmp_path / "mc_task.json"
    truthful.write_text(json.dumps([{"question": "Is it?", "mc1_targets": {"Yes.": 1, "No.": 0}, "mc2_targets": {}}]))
    out = tmp_path / "report.json"
    main(["evaluate", "mc", "--config", str(REPO / "experiments/tiny/llama_adapter_tiny.yaml"), "--mmlu", str(mmlu),
          "--truthfulqa", str(truthful), "--k-shot", "1", "--output", str(out)])
    report = json.loads(out.read_text())
    # A fresh LLaMA-Adapter has zero gates: adapted equals base exactly.
    assert report["base"] == report["adapted"]
    assert report["base"]["mmlu"]["subjects"]["toy_subject"]["total"] == 3
    assert report["base"]["truthfulqa_mc1"]["total"] == 1
    assert "toy subject" in capsys.readouterr().out or "toy_subject" in out.read_text()


def test_lavin_chats_about_an_image(make_tiny_lavin, tmp_path):
    from PIL import Image

    from lavin_lightning.commands.chat import ChatSession
    from lavin_lightning.models.causal_lm import GenerationConfig

    module = make_tiny_lavin().eval()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(tmp_path / "green.png")
    session = ChatSession(module, "lavin", GenerationConfig(max_new_tokens=5, temperature=0.0))
    text_only = session.respond("What is this?")
    session.set_image(tmp_path / "green.png")
    assert session.history == [] and session.batch("What is this?")["pixel_values"].shape == (1, 3, 32, 32)
    assert isinstance(session.respond("What is this?"), str) and isinstance(text_only, str)
