"""Two CPU processes over gloo: DDP (global batch split, gathered scoring, rank-0 export) and
FSDP (`lavin_lightning.strategies.AdapterFSDPStrategy`, the config the cluster runs) against one
process and against DDP, for every method family.

Run as a script (`python tests/test_distributed.py`), this file is the driver of the FSDP and
DDP runs: it runs the `lavin-lightning` commands listed in the JSON file named by
$LAVIN_RUN_PLAN one after the other in the same processes (Lightning starts the second process
by running the same command again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
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


# -- FSDP: every method family, against one process and against DDP --------------------------------
#
# Each family trains 2 optimizer steps on a training set of exactly one global batch (so every
# step sees the same samples whatever the sampler's order) whose samples all supervise the same
# number of tokens (so the mean over processes of per-process token means is the one-process
# token mean). The tiny configs warm up from a learning rate of 0, so the one update is computed
# from the initial weights: a later AdamW update normalises each gradient element, and elements at
# float-noise level (a router whose experts have just left zero) then move by up to a step either
# way between any two runs that sum in a different order (measured: 9e-5, 2% of the learning rate,
# between DDP and FSDP after a second update), which no float tolerance covers.

EXPERIMENTS = REPO / "experiments"
FSDP = ["--config", str(EXPERIMENTS / "base/trainer_fsdp.yaml"),
        "--config", str(EXPERIMENTS / "base/trainer_fsdp_cpu.yaml")]
DDP = ["--config", str(EXPERIMENTS / "base/trainer_ddp.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=2",
       "--trainer.precision=32-true"]
SINGLE = ["--config", str(EXPERIMENTS / "base/trainer_cpu.yaml")]
# The families: the tiny config and overrides (LaVIN without its adapters' dropout: one process and
# two draw different masks; PETAL keeps its dropout and is compared with one process at test time
# only), and whether its test split is scored.
FAMILIES = {
    "lavin": (["--config", str(EXPERIMENTS / "tiny/lavin_tiny.yaml"), "--data.init_args.limit_train=null",
               "--model.init_args.adapter.dropout=0.0"], True),
    "excitor": (["--config", str(EXPERIMENTS / "tiny/excitor_tiny.yaml")], False),
    "petal": (["--config", str(EXPERIMENTS / "tiny/petal_tiny.yaml")], True),
}
RUN_TIMEOUT_S = 900


class DistributedProbe(L.Callback):
    """Writes `probe<rank>.json` into the run's folder: how the parameters are held (sharded or
    whole, dtypes), the gradient norm of every optimizer step as the optimizer sees it, and the
    optimizer state's dtypes and step count."""

    def __init__(self):
        self.record: dict = {"grad_norms": []}

    def on_train_start(self, trainer, pl_module):
        from torch.distributed.tensor import DTensor

        frozen = [p for p in pl_module.parameters() if not p.requires_grad]
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        self.record.update(
            frozen_dtypes=sorted({str(p.dtype) for p in frozen}),
            trainable_dtypes=sorted({str(p.dtype) for p in trainable}),
            frozen_sharded=all(isinstance(p, DTensor) for p in frozen),
            trainable_whole=not any(isinstance(p, DTensor) for p in trainable),
            frozen_numel=sum(p.numel() for p in frozen),
            frozen_local_numel=sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in frozen))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.double() for p in pl_module.parameters() if p.requires_grad and p.grad is not None]
        self.record["grad_norms"].append(torch.cat([g.flatten() for g in grads]).norm().item())

    def on_train_end(self, trainer, pl_module):
        states = [v for state in trainer.optimizers[0].state.values() for v in state.values() if torch.is_tensor(v)]
        self.record["optimizer_state_dtypes"] = sorted({str(v.dtype) for v in states if v.dim() > 0})
        self.record["optimizer_steps"] = max(int(state["step"]) for state in trainer.optimizers[0].state.values())

    def on_test_end(self, trainer, pl_module):
        from torch.distributed.tensor import DTensor

        self.record["tested_whole"] = not any(isinstance(p, DTensor) for p in pl_module.parameters())

    def teardown(self, trainer, pl_module, stage):
        (Path(trainer.default_root_dir) / f"probe{trainer.global_rank}.json").write_text(json.dumps(self.record))


class UnevenDecoding(L.Callback):
    """Each process decodes a different number of tokens, as processes whose samples end at
    different lengths do."""

    def on_test_start(self, trainer, pl_module):
        pl_module.generation.max_new_tokens = 2 + 5 * trainer.global_rank


def write_colour_vqa(root: Path, n_train: int, n_test: int) -> Path:
    """The official VQA layout; the answer is the picture's colour, every answer four letters."""
    from PIL import Image

    colours = {"blue": (30, 50, 210), "gold": (220, 180, 30), "lime": (90, 220, 60)}
    for split, n, first_id in (("train", n_train, 1), ("test", n_test, 1001)):
        questions, annotations = [], []
        for i in range(n):
            qid, name = first_id + i, list(colours)[i % len(colours)]
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), colours[name]).save(root / "images" / split / f"{qid}.png")
            questions.append({"question_id": qid, "image_id": qid, "question": "What colour is the picture?"})
            annotations.append({"question_id": qid, "image_id": qid, "question_type": "what color",
                                "answer_type": "other", "multiple_choice_answer": name,
                                "answers": [{"answer": name, "answer_confidence": "yes", "answer_id": k + 1}
                                            for k in range(10)]})
        (root / f"questions_{split}.json").write_text(json.dumps({"questions": questions}))
        (root / f"annotations_{split}.json").write_text(json.dumps({"annotations": annotations}))
    return root


def family_data(root: Path) -> dict[str, list[str]]:
    """Each family's data: one global batch of training samples (lavin 16, excitor 8, petal 16).
    One LaVIN training problem has its picture, the others say the colour in their hint: one
    process's half of the batch has no image, so its ViT does not run while the other's does."""
    write_colour_problems(root / "sqa", n_train=16, n_test=6)
    problems = json.loads((root / "sqa" / "problems.json").read_text())
    for pid in json.loads((root / "sqa" / "pid_splits.json").read_text())["train"][1:]:
        problem = problems[pid]
        problem.update(image=None, hint=f"The picture is {problem['choices'][problem['answer']]}.")
    (root / "sqa" / "problems.json").write_text(json.dumps(problems))
    alpaca = root / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Repeat {i:02d}.", "input": "", "output": f"{i:02d}"}
                                  for i in range(8)]))
    write_colour_vqa(root / "vqa", n_train=16, n_test=6)
    return {"lavin": [f"--data.init_args.data_root={root / 'sqa'}"],
            "excitor": [f"--data.init_args.path={alpaca}"],
            "petal": [f"--data.init_args.root={root / 'vqa'}", "--data.init_args.splits={train: train, test: test}"]}


def run_args(run: Path) -> list[str]:
    return [f"--trainer.default_root_dir={run}", "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={run}",
            "--trainer.callbacks+=test_distributed.DistributedProbe"]


def launch(plan: list[list[str]], folder: Path) -> None:
    """Run the commands of `plan` in two processes (this file as the driver); fail with their log."""
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "LAVIN_RUN_PLAN": str(folder / "plan.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    for leftover in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(leftover, None)  # an earlier in-process run's; the launch picks its own
    with open(folder / "log.txt", "w") as log:
        # A session of its own: a timeout ends both processes (Lightning starts the second one).
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
    if code != 0:
        raise AssertionError(f"the 2-process runs failed ({code}); the end of {folder / 'log.txt'}:\n"
                             + (folder / "log.txt").read_text()[-6000:])


def logged(run: Path) -> dict[str, dict[int, float]]:
    """Metric -> {step: value} from the run's CSV log."""
    import csv

    rows = list(csv.DictReader((run / "lightning_logs" / "version_0" / "metrics.csv").open()))
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if value and key not in ("step", "epoch"):
                out.setdefault(key, {})[int(row["step"])] = float(value)
    return out


def probe(run: Path, rank: int = 0) -> dict:
    return json.loads((run / f"probe{rank}.json").read_text())


def export(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every family: fit under FSDP (2 processes), under DDP (2 processes) and in one process; test
    under FSDP and, with the FSDP export, in one process. LaVIN also: FSDP with activation
    checkpointing (its main run), the GPU config's precision (bf16 frozen weights, bf16-mixed),
    resuming its checkpoint and a test whose processes decode different numbers of tokens."""
    from lavin_lightning.cli import main

    root = tmp_path_factory.mktemp("fsdp")
    data = family_data(root / "data")
    dirs = {(kind, name): root / f"{kind}-{name}" for kind in ("fsdp", "ddp", "single", "test-fsdp", "test-single")
            for name in FAMILIES}
    fsdp_plan, ddp_plan = [], []
    for name, (config, tested) in FAMILIES.items():
        family = [*config, *data[name]]
        extra = ["--trainer.strategy.init_args.activation_checkpointing=true"] if name == "lavin" else []
        fsdp_plan.append(["fit", *FSDP, *family, *run_args(dirs["fsdp", name]), *extra])
        ddp_plan.append(["fit", *DDP, *family, *run_args(dirs["ddp", name])])
        if tested:
            fsdp_plan.append(["test", *FSDP, *family, *run_args(dirs["test-fsdp", name]),
                              f"--model.init_args.adapter_path={dirs['fsdp', name] / 'adapter'}"])
    lavin = [*FAMILIES["lavin"][0], *data["lavin"]]
    dirs["bf16"], dirs["resumed"] = root / "fsdp-lavin-bf16", root / "fsdp-lavin-resumed"
    fsdp_plan.append(["fit", *FSDP, *lavin, *run_args(dirs["bf16"]), "--trainer.precision=bf16-mixed",
                      "--trainer.strategy.init_args.frozen_dtype=bfloat16"])
    checkpoint = dirs["fsdp", "lavin"] / "lightning_logs" / "version_0" / "checkpoints" / "epoch=1-step=2.ckpt"
    fsdp_plan.append(["fit", *FSDP, *lavin, *run_args(dirs["resumed"]), "--trainer.max_epochs=3",
                      f"--ckpt_path={checkpoint}"])
    dirs["uneven"] = root / "test-fsdp-lavin-uneven"
    fsdp_plan.append(["test", *FSDP, *lavin, *run_args(dirs["uneven"]),
                      "--trainer.callbacks+=test_distributed.UnevenDecoding",
                      f"--model.init_args.adapter_path={dirs['fsdp', 'lavin'] / 'adapter'}"])
    launch(fsdp_plan, root / "fsdp-session")
    launch(ddp_plan, root / "ddp-session")

    # One process, in this one; its test loads the FSDP export.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["lavin-lightning"])
        for name, (config, tested) in FAMILIES.items():
            family = [*SINGLE, *config, *data[name]]
            main(["fit", *family, *run_args(dirs["single", name])])
            if tested:
                main(["test", *family, *run_args(dirs["test-single", name]),
                      f"--model.init_args.adapter_path={dirs['fsdp', name] / 'adapter'}"])
    dirs["checkpoint"] = checkpoint
    return dirs


def initial_adapter(name: str) -> dict[str, torch.Tensor]:
    """The family's trainable tensors as built, before any step."""
    from lavin_lightning.checkpoint import adapter_state
    from lavin_lightning.config import build_module, load_configs

    module = build_module(load_configs([FAMILIES[name][0][1]]))
    module.configure_model()
    return {k: v.clone() for k, v in adapter_state(module).items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_fsdp_trains_like_ddp_and_one_process(runs, name):
    fsdp, ddp, single = runs["fsdp", name], runs["ddp", name], runs["single", name]
    # The same steps, learning rates and losses (the mean over processes of each one's part).
    losses = {kind: logged(run) for kind, run in (("fsdp", fsdp), ("ddp", ddp), ("single", single))}
    assert sorted(losses["fsdp"]["train/loss"]) == [0, 1]
    for key in ("train/loss", "lr-AdamW/pg1"):
        assert losses["fsdp"][key] == pytest.approx(losses["ddp"][key], rel=1e-6, abs=1e-9), key
    # PETAL's frozen Q-Former and T5 keep their dropout in training, and its information
    # bottleneck pairs samples within a process's batch: another split of the batch draws other
    # masks and pairs, so only DDP (the same split, the same random streams) trains like it.
    if name != "petal":
        for key in ("train/loss", "lr-AdamW/pg1"):
            assert losses["fsdp"][key] == pytest.approx(losses["single"][key], rel=1e-5, abs=1e-9), key

    # The gradients the optimizer sees: averaged, the same in both processes, as DDP's and as one
    # process's on the whole batch (a sum instead of a mean would double them).
    norms = probe(fsdp)["grad_norms"]
    assert len(norms) == 2 and all(n > 0 for n in norms)
    assert probe(fsdp, rank=1)["grad_norms"] == norms
    assert norms == pytest.approx(probe(ddp)["grad_norms"], rel=1e-6)
    if name != "petal":
        assert norms == pytest.approx(probe(single)["grad_norms"], rel=1e-5)

    # The export: DDP's, to float tolerance, and trained (zero-initialised tensors moved).
    ours, theirs = export(fsdp), export(ddp)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)
    initial = initial_adapter(name)
    assert ours.keys() == initial.keys()
    zero_at_init = [k for k, v in initial.items() if not v.any()]
    assert zero_at_init and any(ours[k].any() for k in zero_at_init)
    fsdp_meta = json.loads((fsdp / "adapter" / "adapter_config.json").read_text())
    assert fsdp_meta["backbone"] == json.loads((single / "adapter" / "adapter_config.json").read_text())["backbone"]

    # Test under FSDP == one process with the FSDP export (generated text and scores).
    if FAMILIES[name][1]:
        results = "predictions.json" if name == "lavin" else "results.json"
        for file in (results, "metrics.json"):
            sharded = json.loads((runs["test-fsdp", name] / file).read_text())
            assert sharded == json.loads((runs["test-single", name] / file).read_text()), file
        answers = json.loads((runs["test-fsdp", name] / results).read_text())
        assert len(answers["results"] if name == "lavin" else answers) == 6  # each question once


@pytest.mark.slow
def test_fsdp_shards_the_frozen_backbone_and_keeps_adapters_whole(runs):
    fsdp = runs["fsdp", "lavin"]
    for rank in (0, 1):
        record = probe(fsdp, rank)
        assert record["frozen_sharded"] and record["trainable_whole"]
        # Each process holds half of the frozen weights (up to the padding of odd first dims).
        assert 0.45 < record["frozen_local_numel"] / record["frozen_numel"] < 0.55
        assert record["frozen_dtypes"] == record["trainable_dtypes"] == record["optimizer_state_dtypes"] == [
            "torch.float32"]
    # The GPU config's precision: bf16 frozen weights; adapters, their optimizer state and the export
    # in fp32. bf16 keeps 8 significant bits: the loss moves, by less than 1% (measured: 0.25%).
    record = probe(runs["bf16"])
    assert record["frozen_dtypes"] == ["torch.bfloat16"] and record["frozen_sharded"]
    assert record["trainable_dtypes"] == record["optimizer_state_dtypes"] == ["torch.float32"]
    assert {v.dtype for v in export(runs["bf16"]).values()} == {torch.float32}
    bf16_loss, fp32_loss = logged(runs["bf16"])["train/loss"][0], logged(fsdp)["train/loss"][0]
    assert bf16_loss != fp32_loss and bf16_loss == pytest.approx(fp32_loss, rel=1e-2)

    # Lightning's checkpoint holds the trainable tensors and their optimizer state, nothing frozen.
    checkpoint = torch.load(runs["checkpoint"], map_location="cpu", weights_only=False)
    trainable = {f"model.{k}" for k in export(fsdp)}
    assert set(checkpoint["state_dict"]) == trainable
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(trainable)
    # Resuming it under FSDP continues from step 2 with the optimizer's state.
    resumed = runs["resumed"]
    assert sorted(logged(resumed)["train/loss"]) == [2]
    assert probe(resumed)["optimizer_steps"] == 3

    # Tests decode with the whole frozen model on every process (gathered once): processes that
    # decode different numbers of tokens would otherwise gather different layers at once.
    for run in (runs["test-fsdp", "lavin"], runs["test-fsdp", "petal"], runs["uneven"]):
        assert probe(run, 0)["tested_whole"] and probe(run, 1)["tested_whole"]
    assert json.loads((runs["uneven"] / "metrics.json").read_text())["counts"]["total"] == 6


if __name__ == "__main__":
    # The driver of the FSDP/DDP runs above (see the module docstring).
    from lavin_lightning.cli import main

    for argv in json.loads(Path(os.environ["LAVIN_RUN_PLAN"]).read_text()):
        main(argv)
