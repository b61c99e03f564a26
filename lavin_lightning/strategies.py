"""`AdapterFSDPStrategy`: a frozen backbone sharded with FSDP2, trainable adapters replicated.

Lightning's `FSDPStrategy` (FSDP1) refuses CPU; this strategy is FSDP2 (`fully_shard`) through
Lightning's `ModelParallelStrategy`, so one code path runs on GPUs (NCCL, one node or several
via `trainer.num_nodes`) and on CPU processes (gloo, the tests).

* Every module of a listed layer class (`LlamaDecoderLayer`, InstructBLIP's ViT and Q-Former
  layers, `T5Block`) is one FSDP group; the LightningModule is the root group (embeddings, heads,
  norms, projections, and the CLIP / timm vision towers) and its four step methods are FSDP
  forwards, so the models need no change. FSDP gathers a group in its forward, on every process
  at once, so a group must run on all processes or none: LaVIN, Excitor and LLaMA-Adapter skip
  their ViT on a batch without images, which one process may have while another has images, so
  those towers (0.6 GB for CLIP ViT-L/14 in bf16) are gathered with the root, at the start of
  every step. Frozen weights are held in `frozen_dtype` (cast once, before sharding).
* validate, test and predict hold the whole frozen model on every device (gathered once, at
  setup): processes decode different numbers of tokens, and per-layer gathers inside decoding
  would not line up across them. Decoding a model too large for one device would need every
  process to step until all are done; the models' decoding loops do not do that.
* Trainable parameters are left out of the shards (`ignored_params`): they stay whole, in their
  own dtype (fp32), on every process, with their optimizer state, and their gradients are
  averaged across processes after the last backward of each optimizer step, with the semantics
  of DDP (a parameter that no process used keeps no gradient). Sharding them with their layers
  also trains here (FSDP2 asks one dtype only of a group's trainable parameters, so fp32 adapters
  can sit in a bf16 layer's group), at the same step time within the noise of a 2-CPU
  measurement; we keep them whole because then checkpoints and the export need no collective
  (rank 0 writes what it holds), the gradients are averaged as DDP averages them, and nothing depends on
  when FSDP gathers a group: an adapter shared by many seams or read as an attribute inside an
  attention function is always there. The price is their size x 16 bytes (weights, gradients, two
  AdamW moments) per device, about 86 MB for LaVIN-13B's 5.4M next to a 3.3 GB shard of its
  frozen weights on 8 devices, and one all-reduce of their gradients per step (22 MB).
* Checkpoints and the adapter export hold only the trainable tensors, which every process holds
  whole: nothing of the frozen backbone is gathered (Lightning checkpoints are one file that rank
  0 writes; resuming reads it on every rank).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from lavin_lightning.errors import ConfigError

# The repeated blocks of the backbones that every training step runs on every process (see the
# module's docstring): not CLIPEncoderLayer or timm's Block, which text-only batches skip.
LAYER_CLASSES = (
    "LlamaDecoderLayer",  # LLaMA / Vicuna / SmolLM2
    "InstructBlipEncoderLayer",  # InstructBLIP's EVA ViT (every InstructBLIP sample has an image)
    "InstructBlipQFormerLayer",  # InstructBLIP's Q-Former
    "T5Block",  # FlanT5 encoder and decoder
)
# Lightning calls these on the LightningModule; as FSDP forwards they gather the root group.
STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class AdapterFSDPStrategy(ModelParallelStrategy):
    """FSDP2 for a frozen backbone with small trainable adapters (GPU or CPU).

    Args:
        layer_classes: classes whose modules become FSDP groups (a class name, or
            `module.QualName`); default: the backbones' blocks that every training step runs on
            every process. A block that some batches skip (a ViT on text-only batches) must not be
            listed: the processes' gathers would no longer line up.
        frozen_dtype: dtype the frozen weights are held in ("bfloat16", "float16", "float32"),
            cast once before sharding; None keeps them as loaded. Trainable parameters keep theirs.
        activation_checkpointing: turn on the model's `activation_checkpointing` (one mechanism for
            every strategy, `PEFTModule.enable_activation_checkpointing`): each backbone block's
            activations are recomputed in backward instead of stored (less memory for longer
            sequences or larger batches, one more forward pass per step). FSDP's hooks stay
            outside the recomputed part, so a block is gathered once for its backward.
        process_group_backend: "nccl" / "gloo"; None picks by device.
    """

    def __init__(self, layer_classes: list[str] | None = None, frozen_dtype: str | None = "bfloat16",
                 activation_checkpointing: bool = False, process_group_backend: str | None = None):
        # One data-parallel mesh dimension over every process (set in setup_environment), no
        # tensor parallelism; checkpoints are single files (the trainable tensors only).
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend)
        if frozen_dtype is not None and frozen_dtype not in DTYPES:
            raise ConfigError(f"frozen_dtype must be one of {sorted(DTYPES)} or null, got {frozen_dtype!r}")
        self.layer_classes = tuple(layer_classes) if layer_classes is not None else LAYER_CLASSES
        self.frozen_dtype = DTYPES[frozen_dtype] if frozen_dtype is not None else None
        self.activation_checkpointing = activation_checkpointing
        self._replicated: list[nn.Parameter] = []

    # -- processes ----------------------------------------------------------------------
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer) -> None:
        self.shard(self.lightning_module)
        super().setup(trainer)
        if trainer.state.fn != TrainerFn.FITTING:
            self.hold_unsharded(self.lightning_module)

    # -- sharding -----------------------------------------------------------------------
    def _is_layer(self, module: nn.Module) -> bool:
        cls = type(module)
        return cls.__name__ in self.layer_classes or f"{cls.__module__}.{cls.__qualname__}" in self.layer_classes

    def shard(self, module: nn.Module) -> None:
        """Shard `module` (the LightningModule, built by `configure_model`) in place; idempotent."""
        from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

        trainable = [p for p in module.parameters() if p.requires_grad]
        self._replicated = trainable
        if isinstance(module, FSDPModule):  # an earlier fit/validate/test in this process did it
            return
        # Bottom-up (FSDP's order): a layer nested in another is grouped first.
        layers = [m for m in module.modules() if self._is_layer(m)][::-1]
        if not layers:
            found = sorted({type(m).__name__ for m in module.modules()})
            raise ConfigError(f"FSDP found no module of the layer classes {list(self.layer_classes)} in "
                              f"{type(module).__name__}; set the strategy's layer_classes (the model has: "
                              f"{found[:40]})")
        if self.activation_checkpointing:
            enable = getattr(module, "enable_activation_checkpointing", None)
            if enable is None:
                raise ConfigError(f"activation_checkpointing: {type(module).__name__} is not a lavin-lightning "
                                  "model (PEFTModule); set it on the model instead")
            enable()  # before sharding: FSDP's subclass of each block keeps the switch
        if self.frozen_dtype is not None:
            for param in module.parameters():
                if not param.requires_grad and param.is_floating_point():
                    param.data = param.data.to(self.frozen_dtype)
        mesh = self.device_mesh["data_parallel"]
        ignored = set(trainable)
        for layer in layers:
            fully_shard(layer, mesh=mesh, ignored_params=ignored)
        fully_shard(module, mesh=mesh, ignored_params=ignored)
        for name in STEP_METHODS:
            register_fsdp_forward_method(module, name)

    @staticmethod
    def hold_unsharded(module: nn.Module) -> None:
        """Gather every group of the sharded `module` now, on every process in the same order, and
        keep them gathered: no collective runs in a forward afterwards (validate, test, predict)."""
        from torch.distributed.fsdp import FSDPModule

        module.set_reshard_after_forward(False)
        for submodule in module.modules():
            if isinstance(submodule, FSDPModule):
                submodule.unshard()

    # -- gradients of the replicated (trainable) parameters --------------------------------
    def optimizer_step(self, optimizer, closure, model=None, **kwargs) -> Any:
        # The closure runs the step's last forward and backward; averaging right after it comes
        # before gradient clipping and the update (earlier micro-batches only accumulate).
        def closure_then_average():
            result = closure()
            self.average_gradients()
            return result

        return super().optimizer_step(optimizer, closure_then_average, model, **kwargs)

    def average_gradients(self) -> None:
        """Average the trainable parameters' gradients over the data-parallel processes, in one
        all-reduce. As DDP: a parameter used by some process gets the mean (zeros where unused);
        one that no process used keeps no gradient."""
        params = self._replicated
        group = self.device_mesh["data_parallel"]
        if not params or group.size() == 1:
            return
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.root_device)
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
        flat = torch.cat([used, *grads])
        dist.all_reduce(flat, group=group.get_group())
        flat /= group.size()
        offset = len(params)
        for param, share in zip(params, flat[: len(params)].tolist()):
            mean = flat[offset: offset + param.numel()].view(param.shape)
            offset += param.numel()
            if share == 0:
                continue
            if param.grad is None:
                param.grad = mean.to(param.dtype)
            else:
                param.grad.copy_(mean)

    # -- checkpoints: the trainable tensors only (whole on every process) -------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        return {name: p.detach() for name, p in self.lightning_module.named_parameters() if p.requires_grad}

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        return Strategy.optimizer_state(self, optimizer)

    @property
    def lightning_restore_optimizer(self) -> bool:
        return True

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        return Strategy.load_checkpoint(self, checkpoint_path, weights_only=weights_only)

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        Strategy.load_model_state_dict(self, checkpoint, strict=strict)

    def load_optimizer_state_dict(self, checkpoint) -> None:
        Strategy.load_optimizer_state_dict(self, checkpoint)
