"""The training loop's process-group calls, in one place, with their tensors on the backend's device.

NCCL reduces CUDA tensors only (a CPU tensor fails at the first step), gloo reduces CPU tensors. `init_distributed`
binds each process to its GPU (`LOCAL_RANK`) before creating the group, so NCCL's collectives and barriers use that
device; `all_max` / `all_sum` build their tensor on `backend_device()` and read the result back to the host. Every
collective the loop makes goes through this module (the test `test_train_collectives.py` checks it for an `nccl` group
with a recording stub that fails on any CPU tensor, and scans the loop's sources for direct `dist.*` reductions).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, whether we created the process group) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # before the group: NCCL's communicators and barriers use this device
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
        created = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank, created
    return 0, 1, local_rank, False


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def backend_device() -> torch.device:
    """Where this process group's collectives take their tensors: this process's GPU for NCCL, else the CPU."""
    if "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_max(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=backend_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.cpu().item())


def all_sum(values: list[float]) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=backend_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier() -> None:
    if dist.is_initialized():
        if "nccl" in str(dist.get_backend()).lower():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
