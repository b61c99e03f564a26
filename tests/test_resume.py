"""Resuming: a run stopped mid-epoch or at an epoch's end and resumed from its checkpoint ends with
exactly the adapter tensors of the uninterrupted run, on one process or two; the training orders
are PyTorch's and Lightning's; a checkpoint that is missing, or that does not fit the model or the
settings, is a clear error."""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import pytest
import torch
from conftest import REPO, write_colour_problems
from safetensors.torch import load_file

from data_modules.batching import EpochShuffle, ResumableLoader
from lavin_lightning.callbacks.export import ExportAdapter
from lavin_lightning.cli import main
from lavin_lightning.config import build_module, load_configs
from lavin_lightning.errors import CheckpointError
from lavin_lightning.models.lavin import LaVIN

TINY = REPO / "experiments/tiny/lavin_tiny.yaml"  # dropout 0.1: the RNG streams matter
TRAIN = 12  # samples; global batch 4 in micro batches of 2: 3 optimizer steps, 6 batches an epoch
STEPS = 5  # the runs cross into the second epoch
STOP, EPOCH_END = 2, 3  # a run stops mid-epoch, resumes, stops at the epoch's end and resumes again


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sqa")
    write_colour_problems(root, n_train=TRAIN, n_test=2)
    return root


def tiny_module(**overrides):
    """The tiny LaVIN of experiments/tiny/ (its frozen weights drawn with seed 0), with `overrides`."""
    config = load_configs([str(TINY)])
    for key, value in overrides.items():  # "optim.lr" -> model.init_args.optim.lr
        *path, last = key.split(".")
        section = config["model"]["init_args"]
        for part in path:
            section = section.setdefault(part, {})
        section[last] = value
    L.seed_everything(0, verbose=False)
    module = build_module(config)
    module.configure_model()
    return module


def datamodule(data, module):
    from data_modules.scienceqa import ScienceQADataModule

    return ScienceQADataModule(str(data), prompt_format="QCM-A", global_batch_size=4, micro_batch_size=2,
                               image_size=32, max_seq_len=200, tokenizer=module.tokenizer)


def fit(data, root, module=None, ckpt_path=None, stop_at=None, devices=1):
    """Fit the tiny module for STEPS steps, a checkpoint every step (last.ckpt in root/ckpt);
    `stop_at`: stop after that step, as a killed run would; returns the exported adapter tensors
    (with `devices` > 1 the training processes are forks: the export is what comes back)."""
    module = module or tiny_module()
    L.seed_everything(0, verbose=False)  # as the CLI does before every run

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.global_step == stop_at

    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1,
                                                     save_last=True, save_top_k=-1)]
    callbacks += [ExportAdapter()] + ([Stop()] if stop_at else [])
    strategy = "ddp_fork_find_unused_parameters_true" if devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=STEPS, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=root, callbacks=callbacks)
    # Modules built in code keep dataclass settings in the checkpoint (the CLI's are plain data).
    trainer.fit(module, datamodule=datamodule(data, module), ckpt_path=ckpt_path, weights_only=False)
    return load_file(root / "adapter" / "adapter.safetensors")


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The uninterrupted run; a run stopped after STOP steps (mid-epoch), resumed, stopped again at
    the epoch's end and resumed again, all in one folder as a resumed job does; its checkpoints."""
    initial = {k.removeprefix("model."): p.detach().clone() for k, p in tiny_module()._trainable.items()}
    full = fit(data, tmp_path_factory.mktemp("full"))
    root = tmp_path_factory.mktemp("stopped")
    stopped = fit(data, root, stop_at=STOP)
    checkpoint = root / "ckpt" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    (root / "ckpt" / "resumed-from.ckpt").write_bytes(checkpoint.read_bytes())  # last.ckpt moves on
    fit(data, root, ckpt_path=str(checkpoint), stop_at=EPOCH_END)
    assert torch.load(checkpoint, weights_only=False)["global_step"] == EPOCH_END
    resumed = fit(data, root, ckpt_path=str(checkpoint))
    return {"initial": initial, "full": full, "stopped": stopped, "resumed": resumed,
            "checkpoint": root / "ckpt" / "resumed-from.ckpt", "saved": saved,
            "written": {path.name: torch.load(path, weights_only=False) for path in (root / "ckpt").glob("*.ckpt")}}


def test_resumed_run_ends_with_the_uninterrupted_runs_adapters(runs):
    full, resumed = runs["full"], runs["resumed"]
    assert len(full) == 37 and set(resumed) == set(full)
    # Not vacuous: training moved every tensor, and the stopped run is not where the full one ends.
    assert all(not torch.equal(full[k], runs["initial"][k]) for k in full)
    assert any(not torch.equal(full[k], runs["stopped"][k]) for k in full)
    different = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert different == [], f"{len(different)} of {len(full)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_every_process_resumes_exactly_under_ddp(data, tmp_path):
    """Two CPU processes (DDP over gloo): each resumes its share of the epoch and its own RNG streams."""
    full = fit(data, tmp_path / "full", devices=2)
    stopped = fit(data, tmp_path / "stopped", devices=2, stop_at=STOP)
    assert any(not torch.equal(full[k], stopped[k]) for k in full)  # the comparison below is not vacuous
    checkpoint = tmp_path / "stopped" / "ckpt" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    [loader] = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader["processes"], loader["batches"], loader["seed"]) == (2, STOP, 0)  # the global seed
    assert len(saved["rng_states"]) == 2  # each process's own, by rank
    resumed = fit(data, tmp_path / "stopped", devices=2, ckpt_path=str(checkpoint))
    assert all(torch.equal(full[k], resumed[k]) for k in full) and len(full) == 37


def test_a_mid_epoch_checkpoint_records_where_it_was(runs):
    saved = runs["saved"]
    assert saved["global_step"] == STOP
    # STOP optimizer steps of 2 micro batches each, in epoch 0, in this shuffle and layout.
    [loader] = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader["epoch"] == 0 and loader["batches"] == 2 * STOP
    assert (loader["batch_size"], loader["processes"], loader["samples"]) == (2, 1, TRAIN)
    assert loader["seed"] is None and len(loader["drawn"]) == 2  # ScienceQA's order: drawn from the global RNG
    [rng] = saved["rng_states"]  # one process
    assert set(rng) >= {"torch", "numpy", "python"}
    assert saved["adapter_meta"]["backbone"]["llm"]["weights"] is not None
    assert saved["hyper_parameters"]["optim"].lr == 5e-3
    # The resumed run does not write that step again after its next micro batch (between two optimizer
    # steps, a checkpoint that cannot resume exactly), as Lightning's ModelCheckpoint alone would.
    positions = {name: (ckpt["global_step"], ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"])
                 for name, ckpt in runs["written"].items()}
    assert positions[f"epoch=0-step={STOP}.ckpt"] == (STOP, 2 * STOP)
    assert positions[f"epoch=0-step={EPOCH_END}.ckpt"] == (EPOCH_END, 2 * EPOCH_END)  # the whole epoch
    assert positions[f"epoch=1-step={EPOCH_END + 1}.ckpt"] == (EPOCH_END + 1, 2)  # 2 of epoch 1's micro batches


# ----------------------------------------------------------------------- the training order


def _loader(seed=3, rank=0, processes=1, batch_size=2, samples=10, accumulation=1):
    dataset = list(range(samples))
    sampler = EpochShuffle(dataset, seed, num_replicas=processes, rank=rank)
    return ResumableLoader(dataset, sampler=sampler, accumulation=accumulation, batch_size=batch_size,
                           generator=torch.Generator())


def _epoch(loader, epoch, batches=None):
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch.tolist())
        if batches is not None and len(out) == batches:
            break
    return out


def test_the_orders_are_pytorchs_and_lightnings(monkeypatch):
    def epochs(loader, n=3):
        return [_epoch(loader, e) if isinstance(loader, ResumableLoader) else [b.tolist() for b in loader]
                for e in range(n)]

    dataset = list(range(10))
    seeded = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(3))
    assert epochs(_loader(seed=3)) == epochs(seeded)
    torch.manual_seed(0)
    expected = epochs(torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True))
    expected_rng = torch.get_rng_state()
    torch.manual_seed(0)
    assert epochs(_loader(seed=None)) == expected
    assert torch.equal(torch.get_rng_state(), expected_rng)  # the same draws from the global RNG
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # what seed_everything(5) sets
    for rank in (0, 1):  # under DDP, Lightning's sampler with the global seed
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, seed=5)
        lightning = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            lightning.append([b.tolist() for b in torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler)])
        assert epochs(_loader(rank=rank, processes=2)) == lightning


@pytest.mark.parametrize("seed", [3, None])
def test_a_loader_resumes_mid_epoch_and_the_next_epoch_is_whole(seed):
    torch.manual_seed(0)
    whole = _epoch(_loader(seed=seed), 1)
    torch.manual_seed(0)
    stopped = _loader(seed=seed)
    assert _epoch(stopped, 1, batches=2) == whole[:2]
    state = stopped.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 2)
    resumed = _loader(seed=seed)
    resumed.load_state_dict(state)
    rng = torch.get_rng_state()
    assert _epoch(resumed, 1) == whole[2:]
    assert torch.equal(torch.get_rng_state(), rng)  # the epoch's draws came from the checkpoint
    assert resumed.state_dict()["batches"] == len(whole)  # a later checkpoint counts the left-out ones
    torch.manual_seed(1)
    next_epoch = _epoch(resumed, 2)
    torch.manual_seed(1)
    assert len(next_epoch) == len(whole) and next_epoch == _epoch(_loader(seed=seed), 2)


def test_every_process_resumes_its_share_of_the_epoch():
    shares = []
    for rank in (0, 1):
        whole = _epoch(_loader(rank=rank, processes=2), 1)
        stopped = _loader(rank=rank, processes=2)
        assert _epoch(stopped, 1, batches=2) == whole[:2]
        resumed = _loader(rank=rank, processes=2)
        resumed.load_state_dict(stopped.state_dict())
        assert _epoch(resumed, 1) == whole[2:]
        shares.append(sum(whole, []))
    assert sorted(shares[0] + shares[1]) == list(range(10))  # the two shares are the epoch


def test_a_position_in_another_layout_is_refused():
    state = _loader(batch_size=2).state_dict()
    with pytest.raises(CheckpointError, match=r"batch_size: checkpoint 2, now 5"):
        _loader(batch_size=5).load_state_dict(state)
    with pytest.raises(CheckpointError, match=r"seed: checkpoint 3, now 4"):
        _loader(seed=4).load_state_dict(state)
    with pytest.raises(CheckpointError, match=r"processes: checkpoint 1, now 2"):
        _loader(processes=2).load_state_dict(state)


def test_a_checkpoint_between_optimizer_steps_warns():
    stopped = _loader(accumulation=2)
    _epoch(stopped, 0, batches=3)
    with pytest.warns(UserWarning, match="between two optimizer steps"):
        _loader(accumulation=2).load_state_dict(stopped.state_dict())


# ----------------------------------------------------------------------- checks on loading


def test_a_checkpoint_of_another_backbone_or_method_setting_is_refused(runs):
    L.seed_everything(1, verbose=False)  # other frozen weights, same architecture
    with pytest.raises(CheckpointError, match=r"backbone\.llm: same architecture but different weights"):
        LaVIN.load_from_checkpoint(runs["checkpoint"], weights_only=False)
    L.seed_everything(0, verbose=False)
    adapter = runs["saved"]["hyper_parameters"]["adapter"]
    other = type(adapter)(**{**vars(adapter), "temperature": 5.0})
    with pytest.raises(CheckpointError, match=r"config\.temperature: checkpoint 10\.0 vs model 5\.0"):
        LaVIN.load_from_checkpoint(runs["checkpoint"], weights_only=False, adapter=other)


def test_resuming_with_other_settings_is_refused(data, runs, tmp_path):
    module = tiny_module(**{"optim.lr": 1e-3})
    before = {k: p.detach().clone() for k, p in module._trainable.items()}
    with pytest.raises(CheckpointError, match=r"other settings(.|\n)*optim\.lr: checkpoint 0\.005 vs model 0\.001"):
        fit(data, tmp_path, module=module, ckpt_path=str(runs["checkpoint"]))
    assert all(torch.equal(before[k], p) for k, p in module._trainable.items())  # refused before training


def test_evaluating_a_checkpoint_uses_the_given_settings_and_says_so(data, runs, caplog):
    module = tiny_module(**{"generation.max_new_tokens": 3})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=1)
    with captured(caplog, "lavin_lightning.models.base"):
        trainer.validate(module, datamodule=datamodule(data, module), ckpt_path=runs["checkpoint"],
                         weights_only=False, verbose=False)
    assert module.generation.max_new_tokens == 3
    assert "generation.max_new_tokens: checkpoint 24 vs model 3" in caplog.text
    assert all(torch.equal(p, runs["stopped"][k.removeprefix("model.")]) for k, p in module._trainable.items())


# ----------------------------------------------------------------------- the command line


@contextlib.contextmanager
def captured(caplog, name: str, level=logging.INFO):
    """Records of the logger `name` (the suite's loggers do not propagate once `main` ran)."""
    logger = logging.getLogger(name)
    logger.addHandler(caplog.handler)
    previous, caplog.handler.level = caplog.handler.level, level
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        caplog.handler.level = previous


@pytest.fixture
def cli_fit(data, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])

    def run(root, *args):
        main(["fit", "--config", str(REPO / "experiments/base/trainer_cpu.yaml"), "--config", str(TINY),
              f"--data.init_args.data_root={data}", "--data.init_args.global_batch_size=4",
              "--data.init_args.limit_train=8", f"--trainer.default_root_dir={root}", "--trainer.logger=false",
              "--trainer.callbacks=lightning.pytorch.callbacks.TQDMProgressBar", *args])

    return run


def checkpointing(folder, *more):
    return ["--trainer.enable_checkpointing=true", "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={folder}", *more]


def test_ckpt_path_last_without_checkpointing_is_an_error(cli_fit, tmp_path):
    with pytest.raises(SystemExit, match=rf"ckpt_path 'last': checkpointing is off.*{tmp_path / 'run'}"):
        cli_fit(tmp_path / "run", "--ckpt_path=last")
    assert not (tmp_path / "run" / "adapter").exists()  # nothing trained


def test_a_missing_checkpoint_is_an_error_naming_where_it_was_looked_for(cli_fit, tmp_path):
    folder = tmp_path / "ckpt"
    with pytest.raises(SystemExit, match=rf"no last checkpoint \(last\*\.ckpt\) in {folder}"):
        cli_fit(tmp_path / "run", *checkpointing(folder), "--ckpt_path=last")
    with pytest.raises(SystemExit, match=rf"ckpt_path {tmp_path / 'nowhere.ckpt'}: no such checkpoint file"):
        cli_fit(tmp_path / "run", f"--ckpt_path={tmp_path / 'nowhere.ckpt'}")
    assert not (tmp_path / "run" / "adapter").exists()


def test_command_line_settings_are_not_replaced_by_the_checkpoints(cli_fit, tmp_path, caplog):
    folder = tmp_path / "ckpt"
    cli_fit(tmp_path / "run", "--trainer.max_steps=1", *checkpointing(folder, "--trainer.callbacks.save_last=true"))
    last = folder / "last.ckpt"
    assert last.is_file()
    # LightningCLI alone parses the checkpoint's settings over the command line's: it would train with lr 0.005.
    with pytest.raises(SystemExit, match=r"other settings(.|\n)*optim\.lr: checkpoint 0\.005 vs model 0\.002"):
        cli_fit(tmp_path / "run", "--trainer.max_steps=2", "--model.init_args.optim.lr=0.002", f"--ckpt_path={last}")
    # The same settings resume, and `last` finds the checkpoint.
    with captured(caplog, "lightning.pytorch.utilities.rank_zero"):
        cli_fit(tmp_path / "run", "--trainer.max_steps=2", *checkpointing(folder), "--ckpt_path=last")
    assert f"Restored all states from the checkpoint at {last}" in caplog.text
