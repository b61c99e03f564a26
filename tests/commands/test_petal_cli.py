"""PETAL and its baselines through the CLI: fit + test on easy-VQA, scoring, parameter counts."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, fit_test_and_rescore_vqa, prepare_easy_vqa

from lavin_lightning.cli import main


@pytest.fixture(scope="module")
def easy_vqa(tmp_path_factory):
    return prepare_easy_vqa(tmp_path_factory.mktemp("data") / "vqa", n_train=24, n_val=4, n_test=12)


@pytest.mark.parametrize("model", [
    [],
    ["--config", str(REPO / "experiments/tiny/bottleneck_tiny.yaml")],
    ["--config", str(REPO / "experiments/tiny/qformer_lora_tiny.yaml"),
     "--model.init_args.adapter.rank=4", "--model.init_args.adapter.target_modules=[query,value]"],
], ids=["petal", "bottleneck", "lora"])
def test_fit_and_test_on_easy_vqa(easy_vqa, tmp_path, monkeypatch, model):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    args = ["--config", str(REPO / "experiments/base/trainer_cpu.yaml"),
            "--config", str(REPO / "experiments/tiny/petal_tiny.yaml"), *model]
    metrics, results, again = fit_test_and_rescore_vqa(args, easy_vqa, tmp_path / "run",
                                                       "--data.init_args.global_batch_size=4")
    assert len(results) == 12 and set(metrics) == {"overall", "perAnswerType", "perQuestionType", "evalQA"}
    assert again == metrics


@pytest.mark.parametrize("config, trainable", [
    ("petal/petal_flant5xxl.yaml", 1_203_905),
    ("petal/petal_vicuna7b.yaml", 1_203_905),
    ("petal/petal_release_flant5xxl.yaml", 1_378_560),
    ("petal/bottleneck_flant5xxl.yaml", 2_388_480),
    ("petal/lora_flant5xxl.yaml", 5_799_936),
    ("petal/head_flant5xxl.yaml", 3_149_824),
    ("petal/full_flant5xxl.yaml", 188_834_560),
    ("petal/maple_flant5xxl.yaml", 9_758_592),
])
def test_params_of_the_paper_configs(config, trainable, capsys):
    main(["params", "--config", str(REPO / "experiments" / config), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["trainable"] == trainable


def test_predict_on_a_prompt_file_with_images(easy_vqa, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    image = sorted((easy_vqa / "images" / "test").glob("*.png"))[0]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "instruction": "Question: What shape is this? Short answer:",
                                   "image": str(image)}) + "\n"
                       + json.dumps({"id": "b", "instruction": "Question: Is there a circle? Short answer:"}) + "\n")
    main(["predict", "--config", str(REPO / "experiments/base/trainer_cpu.yaml"),
          "--config", str(REPO / "experiments/tiny/petal_tiny.yaml"),
          "--config", str(REPO / "experiments/base/predict_prompts.yaml"), f"--data.init_args.path={prompts}",
          "--data.init_args.template=plain", "--data.init_args.image_size=32",
          f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and all(isinstance(r["response"], str) for r in rows)


def test_chat_and_mc_evaluation_refuse_instructblip_methods():
    for command in (["chat"], ["evaluate", "mc", "--mmlu", "x"]):
        with pytest.raises(SystemExit, match="causal LM"):
            main([*command, "--config", str(REPO / "experiments/tiny/petal_tiny.yaml")])
