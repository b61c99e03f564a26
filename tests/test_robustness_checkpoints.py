"""No silent failures: a diverged run stops (or skips its steps when asked to), adapter files are
validated field by field, exports are written as one unit with the umask's permissions, pickled
InstructBLIP weights are refused, and the command line prints our errors as one message."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta

import lightning as L
import pytest
import torch
from conftest import REPO, make_batch, perturb_adapters, write_colour_problems
from safetensors.torch import load_file, save_file

from lavin_lightning.checkpoint import ADAPTER_CONFIG, ADAPTER_WEIGHTS, FORMAT_VERSION, load_adapter, save_adapter
from lavin_lightning.cli import main
from lavin_lightning.errors import CheckpointError, ConfigError
from lavin_lightning.io import atomic_write, write_directory, write_json
from lavin_lightning.models.base import NonFiniteError

# -- adapter records ------------------------------------------------------------------------


@pytest.fixture
def export(make_tiny_lavin, tmp_path):
    """A trained tiny LaVIN's export and a fresh module of the same backbone to load it into."""
    trained = make_tiny_lavin(seed=0)
    perturb_adapters(trained)
    directory = save_adapter(trained, tmp_path / "adapter")
    return directory, make_tiny_lavin(seed=0)


def _edit_record(directory, edit):
    path = directory / ADAPTER_CONFIG
    record = json.loads(path.read_text())
    path.write_text(json.dumps(edit(record)))


def _refused(module, directory, *fragments):
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_adapter(module, directory)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # nothing copied
    return str(info.value)


@pytest.mark.parametrize("edit, fragments", [
    (lambda r: [r], ["top level", "got list"]),
    (lambda r: {**r, "backbone": "config:tiny"}, ["field 'backbone'"]),
    (lambda r: {**r, "backbone": {**r["backbone"], "llm": "x"}}, ["field 'backbone.llm'"]),
    (lambda r: {**r, "format_version": FORMAT_VERSION + 1}, ["field 'format_version'", "newer"]),
    (lambda r: {**r, "format_version": 0}, ["field 'format_version'"]),
    (lambda r: {**r, "format_version": "2"}, ["field 'format_version'"]),
    (lambda r: {k: v for k, v in r.items() if k != "format_version"}, ["'format_version' is missing"]),
    (lambda r: {**r, "method": 3}, ["field 'method'"]),
    (lambda r: {**r, "config": []}, ["field 'config'"]),
    (lambda r: {**r, "targets": "all"}, ["field 'targets'"]),
    (lambda r: {**r, "trainable_params": True}, ["field 'trainable_params'"]),
    (lambda r: {**r, "shapes": {"neck.down.weight": [-1]}}, ["field 'shapes'"]),
    (lambda r: {k: v for k, v in r.items() if k != "shapes"}, ["'shapes' is missing"]),
])
def test_a_malformed_record_is_refused_naming_the_file_and_field(export, edit, fragments):
    directory, fresh = export
    _edit_record(directory, edit)
    _refused(fresh, directory, str(directory / ADAPTER_CONFIG), *fragments)


def test_the_record_must_describe_the_weights_file_and_the_model(export):
    directory, fresh = export
    original = json.loads((directory / ADAPTER_CONFIG).read_text())
    _edit_record(directory, lambda r: {**r, "shapes": {**r["shapes"], "neck.down.weight": [1, 2]}})
    _refused(fresh, directory, "field 'shapes' does not describe", "neck.down.weight: record [1, 2]")
    _edit_record(directory, lambda r: {**original, "trainable_params": r["trainable_params"] + 1})
    message = _refused(fresh, directory, "trainable_params: checkpoint")
    assert f"vs model {fresh.parameter_counts()['trainable']}" in message
    _edit_record(directory, lambda r: original)
    load_adapter(fresh, directory)  # the untouched record loads


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_integer_and_bool_tensors_are_refused(export, dtype):
    directory, fresh = export
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    tensors["neck.down.bias"] = torch.ones_like(tensors["neck.down.bias"], dtype=dtype)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    _refused(fresh, directory, "must be floating point", "neck.down.bias")


def test_non_finite_tensors_are_neither_loaded_nor_exported(export, tmp_path):
    directory, fresh = export
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    tensors["neck.up.weight"][0, 0] = float("nan")
    tensors["neck.down.bias"][1] = float("inf")
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    _refused(fresh, directory, "NaN or inf", "neck.up.weight", "neck.down.bias")

    with torch.no_grad():
        fresh._trainable["model.neck.up.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to export.*\['neck.up.weight'\]"):
        save_adapter(fresh, tmp_path / "nan")
    assert not (tmp_path / "nan").exists() and not list(tmp_path.glob(".nan*"))


def test_backbone_mismatch_advises_the_option_that_allows_it(export, make_tiny_lavin):
    directory, _ = export
    other = make_tiny_lavin(seed=1)  # same architecture, other random weights
    _refused(other, directory, "different weights", "--model.init_args.allow_backbone_mismatch true")

    # As the command line builds it (`--model.init_args.allow_backbone_mismatch true`).
    from lavin_lightning.config import build_module

    allowed = build_module({"model": {"class_path": "lavin_lightning.models.lavin.LaVIN", "init_args": {
        "llm": {"config": "tiny"}, "vision": {"kind": "clip", "config": "tiny", "cls_every": 1},
        "adapter": {"dropout": 0.0}, "adapter_path": str(directory), "allow_backbone_mismatch": True}}})
    torch.manual_seed(1)
    allowed.configure_model()  # builds the backbone, then loads adapter_path
    saved = load_file(str(directory / ADAPTER_WEIGHTS))
    assert torch.equal(allowed._trainable["model.neck.up.weight"], saved["neck.up.weight"])


# -- exports as one unit --------------------------------------------------------------------


def test_the_export_directory_holds_exactly_the_two_files(make_tiny_lavin, tmp_path):
    module = make_tiny_lavin()
    save_adapter(module, tmp_path / "adapter")
    save_adapter(module, tmp_path / "adapter")  # replacing an export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [ADAPTER_WEIGHTS, ADAPTER_CONFIG]


def test_an_interrupted_export_leaves_the_previous_one_and_no_temporary_files(make_tiny_lavin, tmp_path,
                                                                            monkeypatch):
    first = make_tiny_lavin(seed=0)
    target = save_adapter(first, tmp_path / "adapter")
    before = {name: (target / name).read_bytes() for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)}
    second = make_tiny_lavin(seed=0)
    perturb_adapters(second)

    def killed(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("lavin_lightning.checkpoint.save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(second, target)
    assert {name: (target / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_failed_swap_puts_the_previous_export_back(make_tiny_lavin, tmp_path, monkeypatch):
    target = save_adapter(make_tiny_lavin(seed=0), tmp_path / "adapter")
    before = (target / ADAPTER_CONFIG).read_bytes()
    rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old aside done; the new one into place fails
            raise OSError("disk went away")
        rename(src, dst)

    monkeypatch.setattr("lavin_lightning.io.os.rename", second_rename_fails)
    with pytest.raises(OSError, match="disk went away"):
        save_adapter(make_tiny_lavin(seed=0), target)
    assert (target / ADAPTER_CONFIG).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_killed_export_is_cleaned_up_by_the_next(make_tiny_lavin, tmp_path):
    # What a kill leaves: the new export half written, or the old one renamed aside.
    (tmp_path / ".adapter.k1ll3d.tmp").mkdir()
    (tmp_path / ".adapter.k1ll3d.tmp" / ADAPTER_WEIGHTS).write_bytes(b"half")
    (tmp_path / ".adapter.4s1d3.old" / "adapter").mkdir(parents=True)
    (tmp_path / "notes.tmp").write_text("not ours")
    save_adapter(make_tiny_lavin(), tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "notes.tmp"]


def test_a_directory_with_other_files_is_not_replaced(make_tiny_lavin, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"run: it holds \['notes.txt'\]"):
        save_adapter(make_tiny_lavin(), tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "run" / ADAPTER_WEIGHTS).exists()


def test_fit_refuses_such_an_export_target_before_training(make_tiny_lavin, tmp_path):
    from lavin_lightning.callbacks.export import ExportAdapter

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    module = make_tiny_lavin()
    before = _adapters(module)
    with pytest.raises(CheckpointError, match="notes.txt"):
        _fit(module, n_batches=2, callbacks=[ExportAdapter(dirpath=str(tmp_path / "run"))])
    assert all(torch.equal(v, before[k]) for k, v in _adapters(module).items())  # no step was taken


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_written_files_follow_the_umask(make_tiny_lavin, tmp_path, umask_027):
    target = save_adapter(make_tiny_lavin(), tmp_path / "adapter")
    assert target.stat().st_mode & 0o777 == 0o750
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        assert (target / name).stat().st_mode & 0o777 == 0o640, name
    assert write_json(tmp_path / "m.json", {}).stat().st_mode & 0o777 == 0o640
    weights = atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"a": torch.zeros(1)}, tmp))
    assert weights.stat().st_mode & 0o777 == 0o640  # safetensors writes 0o600 files of its own
    os.umask(0o002)
    built = write_directory(tmp_path / "d", lambda tmp: (tmp / "x").write_text("1"))
    assert built.stat().st_mode & 0o777 == 0o775 and (built / "x").stat().st_mode & 0o777 == 0o664


# -- InstructBLIP weights ---------------------------------------------------------------------


def test_instructblip_loads_safetensors_and_refuses_pickles(tmp_path):
    from lavin_lightning.backbones.instructblip import InstructBLIPSpec, load_instructblip

    torch.manual_seed(0)
    model = load_instructblip(InstructBLIPSpec(config="tiny-t5"))
    model.save_pretrained(tmp_path / "safe")
    loaded = load_instructblip(InstructBLIPSpec(path=str(tmp_path / "safe")))
    assert torch.equal(loaded.query_tokens, model.query_tokens)

    model.config.save_pretrained(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"no \*\.safetensors weights in .*pickled.*never loaded"):
        load_instructblip(InstructBLIPSpec(path=str(tmp_path / "pickled")))


# -- training: non-finite losses and gradients, the learning rate -------------------------------


class _Batches(L.LightningDataModule):
    """`n` copies of the tiny batch, each with its own sample ids (`b<i>-<row>`)."""

    def __init__(self, batch, n: int):
        super().__init__()
        self.batches = [{**batch, "pids": [f"b{i}-{row}" for row in range(len(batch["pids"]))]} for i in range(n)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None)


def _nan_loss_on(module, batch_number: int, through_gradients: bool = True):
    """Make the loss of the batch `b<batch_number>` NaN: through the gradients too, or only its value."""
    original = module.training_losses

    def losses(batch):
        out = original(batch)
        if batch["pids"][0].startswith(f"b{batch_number}-"):
            nan = torch.tensor(float("nan"))
            out = {**out, "loss": out["loss"] * nan if through_gradients else out["loss"] + nan}
        return out

    module.training_losses = losses


def _fit(module, n_batches=6, **trainer_kwargs):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=1, **trainer_kwargs)
    trainer.fit(module, datamodule=_Batches(make_batch(module.tokenizer), n_batches))
    return trainer


def _adapters(module):
    return {k: v.detach().clone() for k, v in module._trainable.items()}


def test_a_nan_loss_stops_training_naming_the_step_and_the_batch(make_tiny_lavin):
    module = make_tiny_lavin(seed=0)
    _nan_loss_on(module, 3)  # with 2 micro-batches a step: the second of global step 1

    class Keep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                self.after_step_0 = _adapters(pl_module)

    keep = Keep()
    with pytest.raises(NonFiniteError) as info:
        _fit(module, accumulate_grad_batches=2, callbacks=[keep])
    message = str(info.value)
    assert "global step 1 " in message
    assert "the loss is NaN or inf on batch 3 (sample ids ['b3-0', 'b3-1', 'b3-2'])" in message
    assert "so are the gradients of" in message and "batch 2" not in message
    assert "optim.on_nonfinite: skip" in message
    now = _adapters(module)
    assert all(torch.equal(now[k], keep.after_step_0[k]) for k in now)  # the bad step changed nothing


def test_a_nan_gradient_stops_training_naming_the_tensor_and_the_step_batches(make_tiny_lavin):
    module = make_tiny_lavin(seed=0)
    original, armed = module.training_losses, []

    def losses(batch):
        armed.append(batch["pids"][0].startswith("b3-"))
        return original(batch)

    module.training_losses = losses
    # The loss stays finite; one tensor's gradient of batch 3 does not.
    module._trainable["model.neck.up.weight"].register_hook(lambda g: g * float("nan") if armed[-1] else g)
    with pytest.raises(NonFiniteError) as info:
        _fit(module, accumulate_grad_batches=2)
    message = str(info.value)
    assert "global step 1 " in message and "the loss" not in message
    assert ("the gradients of adapter tensors are NaN or inf (1, e.g. ['model.neck.up.weight']) after "
            "batch 2 (sample ids ['b2-0', 'b2-1', 'b2-2']); batch 3 (sample ids ['b3-0', 'b3-1', 'b3-2'])") in message


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_skip_leaves_the_adapters_for_that_step_and_reports_the_count(make_tiny_lavin):
    module = make_tiny_lavin(seed=0)
    module.optim.on_nonfinite = "skip"
    _nan_loss_on(module, 3)
    before = _adapters(module)
    records = _Records()
    logging.getLogger("lavin_lightning.models.base").addHandler(records)
    try:
        trainer = _fit(module, accumulate_grad_batches=2)
    finally:
        logging.getLogger("lavin_lightning.models.base").removeHandler(records)
    assert module.skipped_steps == [1]
    assert trainer.global_step == 3 and float(trainer.callback_metrics["train/skipped_steps"]) == 1.0
    after = _adapters(module)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in after)  # the other steps trained
    assert any("1 of 3 optimizer steps were skipped" in m and "[1]" in m for m in records.messages)


def test_a_learning_rate_of_zero_trains_nothing_and_a_negative_one_is_refused(make_tiny_lavin):
    module = make_tiny_lavin(seed=0)
    module.optim.lr = 0.0
    module.optim.warmup_epochs = 0.5
    before = _adapters(module)
    _fit(module, n_batches=2)
    assert all(torch.equal(v, before[k]) for k, v in _adapters(module).items())

    module.optim.lr = -1e-3
    with pytest.raises(ConfigError, match=r"optim.lr: -0.001 is not a learning rate"):
        _fit(module, n_batches=2)
    module.optim.lr, module.optim.base_lr, module.global_batch_size = None, float("nan"), 8
    with pytest.raises(ConfigError, match=r"optim.base_lr: nan"):
        _fit(module, n_batches=2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_every_ddp_process_takes_the_same_decision(make_tiny_lavin, tmp_path, mode):
    """Only process 1 sees a NaN loss, and its gradients stay finite. Skipping, both processes skip
    that step (without agreeing, process 0 would step and the replicas would drift apart);
    stopping, the run ends with the message (the launcher ends the other process)."""
    from lightning.pytorch.strategies import DDPStrategy

    module = make_tiny_lavin(seed=0)
    module.optim.on_nonfinite = mode
    original = module.training_losses

    def losses(batch):
        out = original(batch)
        if module.trainer.global_rank == 1 and module.trainer.global_step == 1:
            out = {**out, "loss": out["loss"] + torch.tensor(float("nan"))}
        return out

    module.training_losses = losses

    class Record(L.Callback):  # runs in the worker processes
        def on_train_end(self, trainer, pl_module):
            (tmp_path / f"rank{trainer.global_rank}.json").write_text(json.dumps(pl_module.skipped_steps))

    started = time.monotonic()
    fit = lambda: _fit(module, n_batches=8, devices=2, callbacks=[Record()],  # noqa: E731
                       strategy=DDPStrategy(start_method="fork", timeout=timedelta(seconds=60)))
    if mode == "error":
        with pytest.raises(Exception, match=r"global step 1 \(epoch 0\) on process [01]"):
            fit()
    else:
        fit()
        assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [[1], [1]]
    assert time.monotonic() - started < 50  # no process waited for the collectives' timeout


# -- the command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    write_colour_problems(root, n_train=32, n_test=4)
    return root


def _args(command, data, run, *more):
    return [command, "--config", str(REPO / "experiments/base/trainer_cpu.yaml"),
            "--config", str(REPO / "experiments/tiny/lavin_tiny.yaml"), f"--data.init_args.data_root={data}",
            "--data.init_args.global_batch_size=8", f"--trainer.default_root_dir={run}",
            "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", *more]


def _exit_message(argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert isinstance(info.value.code, str) and info.value.code.startswith("error: "), info.value.code
    assert "Traceback" not in info.value.code
    return info.value.code


@pytest.mark.slow
def test_fit_stops_on_divergence_and_skip_completes(colour_data, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    export = ["--trainer.callbacks+=lavin_lightning.callbacks.export.ExportAdapter", "--trainer.max_steps=4",
              "--model.init_args.optim.lr=1e6", "--model.init_args.optim.warmup_epochs=0",
              "--trainer.log_every_n_steps=1"]
    message = _exit_message(_args("fit", colour_data, tmp_path / "error", *export))
    assert "non-finite training at global step" in message and "sample ids ['" in message
    assert not (tmp_path / "error" / "adapter").exists()  # nothing exported

    main(_args("fit", colour_data, tmp_path / "skip", *export, "--model.init_args.optim.on_nonfinite=skip"))
    adapter = tmp_path / "skip" / "adapter"
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    assert all(torch.isfinite(t).all() for t in tensors.values())
    metrics = next((tmp_path / "skip").glob("lightning_logs/version_*/metrics.csv")).read_text().splitlines()
    column = metrics[0].split(",").index("train/skipped_steps")
    counts = [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]
    assert counts and counts[-1] >= 1

    # What a diverged run used to export (NaN weights) is refused by `test`, naming the tensor.
    tensors["neck.up.weight"][0, 0] = float("nan")
    save_file(tensors, str(adapter / ADAPTER_WEIGHTS))
    message = _exit_message(_args("test", colour_data, tmp_path / "test", f"--model.init_args.adapter_path={adapter}"))
    assert "NaN or inf" in message and "neck.up.weight" in message


@pytest.mark.slow
def test_our_errors_end_the_command_with_their_message_alone(colour_data, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lavin-lightning"])
    # Raised while LightningCLI builds the model (jsonargparse wraps it in a ValueError).
    message = _exit_message(_args("fit", colour_data, tmp_path / "a", "--model.init_args.decode_positions=release",
                                  "--model.init_args.adapter.modality_token=false"))
    assert "decode_positions 'release'" in message
    # Raised inside the Trainer's run: the data module, the adapter loader.
    message = _exit_message(_args("fit", colour_data.parent / "nowhere", tmp_path / "b"))
    assert "problems.json not found" in message
    message = _exit_message(_args("test", colour_data, tmp_path / "c", "--model.init_args.adapter_path=/nonexistent"))
    assert "adapter file missing: /nonexistent" in message
    # --debug, anywhere: the traceback (the error itself) instead.
    with pytest.raises(CheckpointError, match="adapter file missing"):
        main(_args("test", colour_data, tmp_path / "e", "--debug", "--model.init_args.adapter_path=/nonexistent"))


def test_debug_shows_the_traceback_of_a_suite_command():
    message = _exit_message(["params", "--config", "no/such/file.yaml"])
    assert "config file not found" in message
    with pytest.raises(ConfigError, match="config file not found"):
        main(["params", "--debug", "--config", "no/such/file.yaml"])
