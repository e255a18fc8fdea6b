"""The loop's collectives put their tensors on the backend's device: CUDA for NCCL (which cannot reduce CPU tensors),
the CPU for gloo. Checked without a GPU: a recording stub stands in for the process group, and tensors the code asks
for on CUDA are made on the CPU and tagged (a TorchFunctionMode), so the stub can tell a CUDA request from a CPU one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from chatloom.conversation import Conversation, save
from chatloom.train import Run, TrainConfig, collectives

TRAIN_SRC = Path(collectives.__file__).parent


class VirtualCuda(TorchFunctionMode):
    """Factory calls and `.to` / `.cuda` asking for a CUDA device make a CPU tensor tagged `_virtual_cuda`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        wants_cuda = False
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs["device"], wants_cuda = "cpu", True
        if func in (torch.Tensor.to, torch.Tensor.cuda):
            moved = [a for a in args[1:] if isinstance(a, (str, torch.device))]
            if func is torch.Tensor.cuda or (moved and torch.device(moved[0]).type == "cuda"):
                args, wants_cuda = (args[0], *[a for a in args[1:] if a not in moved]), True
        out = func(*args, **kwargs)
        if wants_cuda and isinstance(out, torch.Tensor):
            out._virtual_cuda = True
        return out


def on_cuda(t: torch.Tensor) -> bool:
    return getattr(t, "_virtual_cuda", False)


class StubGroup:
    """A 2-process group of `backend` whose peer holds the same values; records every collective's tensor device."""

    def __init__(self, backend: str):
        self.backend, self.calls = backend, []

    def all_reduce(self, t, op=None):
        cuda = on_cuda(t)
        self.calls.append(("all_reduce", "cuda" if cuda else t.device.type))
        if self.backend == "nccl" and not cuda:
            raise RuntimeError("NCCL: Tensors must be CUDA and dense (got a CPU tensor)")
        if self.backend == "gloo" and cuda:
            raise RuntimeError("gloo: this stub expects CPU tensors")
        if op is None or op == torch.distributed.ReduceOp.SUM:
            t.mul_(2)

    def barrier(self, device_ids=None, **kw):
        self.calls.append(("barrier", device_ids))
        if self.backend == "nccl" and device_ids is None:
            raise RuntimeError("barrier under NCCL without a device: it would guess one")


@pytest.fixture(params=["nccl", "gloo"])
def group(request, monkeypatch):
    g = StubGroup(request.param)
    dist = collectives.dist
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: g.backend)
    monkeypatch.setattr(dist, "all_reduce", g.all_reduce)
    monkeypatch.setattr(dist, "barrier", g.barrier)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with VirtualCuda():
        yield g


def test_the_stub_fails_on_a_cpu_tensor_under_nccl(group):
    t = torch.ones(1)
    if group.backend == "nccl":
        with pytest.raises(RuntimeError, match="must be CUDA"):
            torch.distributed.all_reduce(t)
        assert on_cuda(torch.zeros(1, device="cuda")) and on_cuda(t.to("cuda:0")) and not on_cuda(t.to(torch.float64))
    else:
        torch.distributed.all_reduce(t)


def test_helpers_reduce_on_the_backend_device(group):
    assert collectives.all_sum([1.0, 2.5]) == [2.0, 5.0]
    assert collectives.all_max(3.0) == 3.0
    collectives.barrier()
    want = "cuda" if group.backend == "nccl" else "cpu"
    assert group.calls[:2] == [("all_reduce", want)] * 2
    assert group.calls[2] == ("barrier", [0] if group.backend == "nccl" else None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "c.jsonl"
    save([Conversation.of(f"Question {i}?", f"Answer {i}.") for i in range(8)], data)
    return Run(TrainConfig(out=str(tmp_path_factory.mktemp("run")), model="tiny", data=[str(data)], val=[str(data)],
                           seq_len=48, batch_size=2, max_steps=2, precision="fp32", progress=False))


def test_the_loops_collectives_go_through_the_stub_on_the_backend_device(run, group, monkeypatch):
    monkeypatch.setattr(run, "world", 2)  # as rank 0 of 2: the loop's step, validation and clock reduce across processes
    out = run.accumulate(0)
    assert not out["skipped"] and out["supervised_tokens"] > 0
    assert run.validation_loss() > 0
    assert run._elapsed(0.0) > 0
    want = "cuda" if group.backend == "nccl" else "cpu"
    assert len(group.calls) >= 4 and all(call == ("all_reduce", want) for call in group.calls)


def test_no_collective_in_the_training_code_bypasses_the_helpers():
    """Reductions, gathers, broadcasts and barriers are called only in collectives.py, where they pick the device."""
    pattern = re.compile(r"\bdist\.(all_reduce|all_gather\w*|reduce_scatter\w*|broadcast\w*|barrier|reduce|gather|"
                         r"scatter|send|recv)\(")
    offenders = [f"{p.name}:{n}" for p in sorted(TRAIN_SRC.glob("*.py")) if p.name != "collectives.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
