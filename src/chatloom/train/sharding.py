"""FSDP (`--fsdp`) for models that do not fit one device, and the full state dicts checkpoints and exports are made of.

Sharding is PyTorch's FSDP2 (`fully_shard`): one unit per decoder layer (the classes in the model's
`_no_split_modules`), then the loss module as root. The root owns the embeddings, the final norm and the output head,
and its forward is the one the loop calls, so the root all-gather wraps exactly the work that needs those weights.
Gradients are reduce-scattered and averaged over processes after every backward, each accumulated micro-batch too
(only gradient shards are kept between micro-batches); the loop scales every micro-batch by world / supervised tokens of
the whole step, as under DDP, so the step's gradient stays the exact mean over its supervised tokens. Parameters,
gradients and optimizer state are DTensors; gradient clipping uses the global norm over all shards.

Checkpoints and the export hold full, unsharded state dicts keyed by parameter name, gathered to CPU on rank 0: the same
files whether a run had one process, DDP or FSDP, so any of them can resume any other.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def check(fsdp: bool, world: int, lora: bool) -> None:
    """Refuse `--fsdp` where it cannot help or does not work, before any model is loaded."""
    if not fsdp:
        return
    if world < 2:
        raise ValueError("--fsdp shards the model across processes, and this run has one: start it with "
                         "`torchrun --nproc_per_node N -m chatloom train ...` (N >= 2), or drop --fsdp")
    if lora:
        raise ValueError("--fsdp with --lora is not supported (the adapters would have to be merged into sharded "
                         "weights); LoRA keeps the base frozen, so train it with DDP: torchrun without --fsdp")


def shard(root: nn.Module, model: nn.Module, device: torch.device) -> nn.Module:
    """Apply FSDP2 in place: each decoder layer of `model`, then `root` (the module whose forward the loop calls)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for layer in [m for m in model.modules() if type(m).__name__ in layer_classes]:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return root


def scalar(value: torch.Tensor) -> float:
    """A float from a tensor that may be a DTensor (the gradient norm under FSDP)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on CPU on rank 0 ({} elsewhere). A collective under FSDP: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """The optimizer's full state keyed by parameter name (rank 0), or None before its first step (reading it then
    would make torch initialise the state with a zero-gradient step, which a run without the checkpoint never takes)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if not optimizer.state:
        return None
    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict | None) -> None:
    """Load full state dicts (every process holds them) into a plain, DDP-wrapped or FSDP-sharded model."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_state, options=_options())
    if optimizer_state is not None:
        kernels = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=_options())
        for group, (fused, foreach) in zip(optimizer.param_groups, kernels, strict=True):  # the kernel is this
            group["fused"], group["foreach"] = fused, foreach  # process's choice (device, sharding), not the saver's
