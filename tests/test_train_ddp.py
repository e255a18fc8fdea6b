"""DDP on CPU (gloo): two processes with half the global batch each give the gradient of one process with all of it."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from chatloom.conversation import Conversation, save
from chatloom.train import Run, TrainConfig

CONVS = [Conversation.of(f"Question {i}: what is {i} plus {i}?", f"{i} plus {i} is {2 * i}." + " Yes." * (i % 5))
         for i in range(12)]


def _config(data, out, batch_size, grad_accum):
    return TrainConfig(out=str(out), model="tiny", data=[str(data)], seq_len=48, batch_size=batch_size,
                       grad_accum=grad_accum, precision="fp32", progress=False, seed=3)


def _worker(rank, port, data, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run = Run(_config(data, out, batch_size=1, grad_accum=2))
    step = run.accumulate(0)
    grads = {n: p.grad.clone() for n, p in run.model.named_parameters()}
    torch.save({"step": step, "grads": grads}, f"{result_dir}/rank{rank}.pt")
    run._finish()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gradients_equal_one_process(tmp_path):
    data = tmp_path / "convs.jsonl"
    save(CONVS, data)
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(data), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2, join=True)
    single = Run(_config(data, tmp_path / "one", batch_size=1, grad_accum=4))
    assert single.rows_per_step == 4
    ref_step = single.accumulate(0)
    ref = {n: p.grad for n, p in single.model.named_parameters()}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["step"]["supervised_tokens"] == ref_step["supervised_tokens"]
        assert got["step"]["loss"] == pytest.approx(ref_step["loss"], rel=1e-6)
        for name, g in ref.items():
            diff = (got["grads"][name] - g).abs().max().item()
            assert diff <= 1e-5 * g.abs().max().item() + 1e-8, (name, diff)  # fp32 summation order only
