"""What a W&B dashboard shows besides the scorers' metrics: what the run is, and how LaVIN routes.

* On the run config, once per run: the resolved LightningCLI config (`config`), the method
  (`method`) and the parameter counts (`params`: trainable and total, and per component of the
  model: `llm`, `vision`, `neck`, ...).
* During validation and test, the routing weights of every MM-Adapter router (the weight of
  its first expert; the second's is one minus it), as one histogram per router and modality:
  `val/routing/llm.layer00/image`, `test/routing/llm.layer00/text`,
  `test/routing/vision.layer03/image` (the ViT sees the image samples only), and a table of
  their means (`<stage>/routing/means`).

With the LLM's MM-Adapters folded into the frozen weights (test, predict) their routing is
the fold's, per modality, once per sample.

experiments/base/wandb.yaml adds this callback. It works on rank 0 (the routing of rank 0's
share of the samples) and only while a W&B logger is active: otherwise nothing is recorded.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import yaml
from lightning.pytorch import Callback

from lavin_lightning.adapters.mma import RepAdapterRouter
from lavin_lightning.callbacks.predictions import wandb_loggers
from lavin_lightning.models.base import PEFTModule

log = logging.getLogger(__name__)


def parameter_groups(module) -> dict[str, dict[str, int]]:
    """`{component: {"trainable", "total"}}` per top-level component of the method's model."""
    trainable = module.trainable_names
    groups: dict[str, dict[str, int]] = {}
    for name, param in module.named_parameters():
        component = name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
        group = groups.setdefault(component, {"trainable": 0, "total": 0})
        group["total"] += param.numel()
        group["trainable"] += param.numel() if name in trainable else 0
    return groups


def resolved_config(trainer) -> dict | None:
    """The run's config as LightningCLI resolved it (every default filled in); None outside the CLI."""
    from lightning.pytorch.cli import SaveConfigCallback

    saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
    if saver is None:
        return None
    return yaml.safe_load(saver.parser.dump(saver.config, skip_none=False))


def router_labels(names: list[str]) -> dict[str, str]:
    """Short, unique labels of router module names: `llm.layer00`, `vision.layer03`; the seam's
    name is added where a layer has more than one router (`llm.layer00.post_attention_layernorm`)."""
    labels = {}
    for name in names:
        parts = name.split(".")
        backbone = parts[1] if parts[0] == "model" else parts[0]
        numbers = [i for i, part in enumerate(parts) if part.isdigit()]
        labels[name] = f"{backbone}.layer{int(parts[numbers[-1]]):02d}" if numbers else name
    counts = defaultdict(int)
    for label in labels.values():
        counts[label] += 1
    for name, label in labels.items():
        if counts[label] > 1:
            labels[name] = f"{label}.{name.split('.')[-2]}"  # the wrapped norm: `<norm>.adapter`
    return labels


def routing_histogram(values: torch.Tensor):
    """A W&B histogram of routing weights. In float64: the LLM routers' weights depend on the
    modality only, so a layer's values spread over a range float32 cannot cut into 64 bins."""
    import wandb

    return wandb.Histogram(values.double().numpy())


class WandbDashboards(Callback):
    """Run description and MM-Adapter routing histograms for W&B (see the module docstring).

    Args:
        max_routing_values: values kept per histogram (the first ones met), which bounds the
            memory of per-token routers (the ViT's: one value per token).
    """

    def __init__(self, max_routing_values: int = 100_000):
        self.max_routing_values = max_routing_values
        self.loggers: list = []
        self.described = False
        self.routers: dict[str, RepAdapterRouter] = {}  # label -> router, while recording
        self.folded: dict[str, torch.Tensor] = {}  # label -> (modality, expert) weights of a folded LLM router
        self.values: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.has_image: torch.Tensor | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.loggers = wandb_loggers(trainer) if trainer.is_global_zero else []
        self.described = False

    # -- the run config --------------------------------------------------------------
    def describe(self, trainer, pl_module) -> None:
        if self.described or not self.loggers:
            return
        self.described = True
        config: dict = {}
        if isinstance(pl_module, PEFTModule):
            config["method"] = pl_module.method
            config["params"] = {**pl_module.parameter_counts(), "groups": parameter_groups(pl_module)}
        resolved = resolved_config(trainer)
        if resolved is not None:
            config["config"] = resolved
        for logger in self.loggers:
            logger.log_hyperparams(config)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.describe(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.describe(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self.describe(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self.describe(trainer, pl_module)

    # -- routing ---------------------------------------------------------------------
    def start_routing(self, trainer, pl_module) -> None:
        if not self.loggers or trainer.sanity_checking:
            return
        found = {name: m for name, m in pl_module.named_modules() if isinstance(m, RepAdapterRouter)}
        # LLM routers folded into the frozen weights (test, predict) route by modality alone.
        folding = getattr(getattr(pl_module, "model", None), "folding", None)
        folded = {f"model.llm.{name}.adapter": weights for name, weights in
                  (folding.routing.items() if folding is not None else ())}
        labels = router_labels(list(found) + list(folded))
        self.routers = {labels[name]: router for name, router in found.items()}
        self.folded = {labels[name]: weights for name, weights in folded.items()}
        self.values = defaultdict(list)
        for router in self.routers.values():
            router.recorded = []

    def collect_routing(self) -> None:
        """Move what the routers recorded during one batch into the per-modality values."""
        for label, router in self.routers.items():
            for weights in router.recorded:
                first = weights[..., 0].float()
                if label.startswith("vision"):  # the ViT runs on the image samples only
                    self.keep(label, "image", first)
                    continue
                if first.shape[0] != len(self.has_image):
                    raise RuntimeError(f"router {label} gave {first.shape[0]} rows of routing weights for a batch "
                                       f"of {len(self.has_image)} samples")
                self.keep(label, "image", first[self.has_image])
                self.keep(label, "text", first[~self.has_image])
            router.recorded.clear()
        for label, weights in self.folded.items():
            first = weights[self.has_image.long().to(weights.device), 0].float()
            self.keep(label, "image", first[self.has_image])
            self.keep(label, "text", first[~self.has_image])

    def keep(self, label: str, modality: str, values: torch.Tensor) -> None:
        chunks = self.values[(label, modality)]
        room = self.max_routing_values - sum(len(chunk) for chunk in chunks)
        values = values.flatten()
        if len(values) > room:
            if room > 0:
                log.info("routing histogram %s/%s keeps its first %d values", label, modality,
                         self.max_routing_values)
            values = values[: max(room, 0)]
        if len(values):
            chunks.append(values.cpu())

    def log_routing(self, trainer, stage: str) -> None:
        if not self.routers and not self.folded:
            return
        import wandb

        histograms, means = {}, []
        for (label, modality), chunks in sorted(self.values.items()):
            if not chunks:
                continue
            values = torch.cat(chunks)
            histograms[f"{stage}/routing/{label}/{modality}"] = routing_histogram(values)
            means.append([label, modality, len(values), values.mean().item()])
        histograms[f"{stage}/routing/means"] = wandb.Table(columns=["router", "modality", "values", "mean_weight"],
                                                          data=means)
        for logger in self.loggers:
            logger.log_metrics(histograms, step=trainer.global_step)
        self.stop_routing()

    def stop_routing(self) -> None:
        for router in self.routers.values():
            router.recorded = None
        self.routers, self.folded, self.values, self.has_image = {}, {}, {}, None

    def batch_start(self, batch) -> None:
        if self.routers or self.folded:
            has_image = batch.get("has_image")
            self.has_image = (has_image.bool() if has_image is not None
                              else torch.zeros(len(batch["pids"]), dtype=torch.bool))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.start_routing(trainer, pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.start_routing(trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.batch_start(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.batch_start(batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.collect_routing()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.collect_routing()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.log_routing(trainer, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.log_routing(trainer, "test")

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.stop_routing()
