"""Atomic, complete checkpoints: weights, optimizer, scheduler, RNG states and the data position (the step).

Written to a temporary directory and renamed into place, so a run killed mid-write leaves the previous checkpoint
intact; `--resume` loads the newest complete one and continues to the same result as an uninterrupted run. Weights and
optimizer state are full (unsharded) state dicts keyed by parameter name (`sharding.full_model_state`), so a checkpoint
of a one-process, DDP or FSDP run resumes under any of the three.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .sharding import load_full_state


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(out: Path, step: int, model_state: dict, optimizer_state: dict | None, scheduler, extra: dict,
                    keep: int = 2) -> Path:
    """Write step `step`'s checkpoint (rank 0 only: the state dicts are already gathered) and keep the newest `keep`."""
    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {"step": step, "model": model_state, "optimizer": optimizer_state,
             "scheduler": scheduler.state_dict(), "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                                          "numpy": np.random.get_state()}, **extra}
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(p for p in checkpoint_dir(out).glob("step-*") if (p / "state.pt").exists())
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    state = torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
    load_full_state(model, optimizer, state["model"], state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):  # also when no optimizer state was saved
        group["lr"] = lr
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return state
