"""Distributed training on CPU (gloo). DDP and FSDP: two processes with half the global batch each give the gradient of
one process with all of it; a two-process FSDP run (checkpointed, killed, resumed by two processes and by one) ends
with the weights of a one-process run; and the real thing: `torchrun --nproc_per_node=2 -m chatloom train sft` in a
subprocess, with and without --fsdp."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import chatloom
from chatloom.conversation import Conversation, save
from chatloom.train import Run, TrainConfig, train
from chatloom.train.sharding import check

CONVS = [Conversation.of(f"Question {i}: what is {i} plus {i}?", f"{i} plus {i} is {2 * i}." + " Yes." * (i % 5))
         for i in range(12)]
VAL = [Conversation.of(f"Check {i}: is {i} smaller than {i + 1}?", f"Yes, {i} is smaller than {i + 1}.")
       for i in range(3)]  # 3 rows of 48 tokens: rank 0 validates two, rank 1 one (FSDP must still match collectives)


def _config(data, out, batch_size, grad_accum, **kw):
    return TrainConfig(out=str(out), model="tiny", data=[str(data)], seq_len=48, batch_size=batch_size,
                       grad_accum=grad_accum, precision="fp32", progress=False, seed=3, **kw)


def _join(rank, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP: gather the DTensor shards (a collective)


def _grad_worker(rank, port, data, out, result_dir, fsdp):
    _join(rank, port)
    run = Run(_config(data, out, batch_size=1, grad_accum=2, fsdp=fsdp))
    step = run.accumulate(0)
    params = dict(run.model.named_parameters())
    local = sum(p.grad.to_local().numel() if hasattr(p.grad, "to_local") else p.grad.numel() for p in params.values())
    grads = {n: _full(p.grad).clone() for n, p in params.items()}
    torch.save({"step": step, "grads": grads, "local_numel": local}, f"{result_dir}/rank{rank}.pt")
    run._finish()


def _train_worker(rank, port, data, out, kw):
    _join(rank, port)
    train(_config(data, out, batch_size=1, grad_accum=2, **kw))


def _free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+ on Linux), so that no outgoing connection (gloo opens
    several per process while the workers start) can be handed it between this check and rank 0's bind."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _spawn(fn, *args):
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(_free_port(), *args), nprocs=2, join=True)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_process_gradients_equal_one_process(tmp_path, fsdp):
    data = tmp_path / "convs.jsonl"
    save(CONVS, data)
    _spawn(_grad_worker, str(data), str(tmp_path / "dist"), str(tmp_path), fsdp)
    single = Run(_config(data, tmp_path / "one", batch_size=1, grad_accum=4))
    assert single.rows_per_step == 4
    ref_step = single.accumulate(0)
    ref = {n: p.grad for n, p in single.model.named_parameters()}
    total = sum(g.numel() for g in ref.values())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        share = got["local_numel"] / total
        assert 0.45 < share < 0.55 if fsdp else share == 1, share  # FSDP: each process holds half of the gradients
        assert got["step"]["supervised_tokens"] == ref_step["supervised_tokens"]
        assert got["step"]["loss"] == pytest.approx(ref_step["loss"], rel=1e-6)
        for name, g in ref.items():
            diff = (got["grads"][name] - g).abs().max().item()
            assert diff <= 1e-5 * g.abs().max().item() + 1e-8, (name, diff)  # fp32 summation order only


@pytest.mark.slow
def test_fsdp_run_checkpoints_resumes_and_exports_the_one_process_weights(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    data, val = tmp_path / "convs.jsonl", tmp_path / "val.jsonl"
    save(CONVS, data)
    save(VAL, val)
    common = dict(max_steps=4, lr=2e-3, warmup_steps=1, save_every=2, val=[str(val)], eval_every=2)
    out = tmp_path / "fsdp"
    _spawn(_train_worker, str(data), str(out), dict(fsdp=True, interrupt_after=2, **common))
    state = torch.load(out / "checkpoints" / "step-00000002" / "state.pt", weights_only=False)
    assert not (out / "model.safetensors").exists()
    _spawn(_train_worker, str(data), str(out), dict(fsdp=True, resume=True, **common))

    cross = tmp_path / "cross"  # the same FSDP checkpoint, resumed by one process without --fsdp
    shutil.copytree(out / "checkpoints", cross / "checkpoints")
    train(_config(data, cross, batch_size=1, grad_accum=4, resume=True, **common))

    ref = train(_config(data, tmp_path / "one", batch_size=1, grad_accum=4, **common))
    want = load_file(tmp_path / "one" / "model.safetensors")
    for name, w in want.items():  # the checkpoint holds full tensors gathered from the shards
        assert state["model"][name].shape == w.shape and type(state["model"][name]) is torch.Tensor, name
    # What FSDP must preserve is the training update. Element-wise, weights cannot be compared tightly: Adam divides
    # each gradient by its own running RMS, so an element whose gradient is ~0 moves by about +-lr whatever its sign,
    # and fp32 reduction order (which differs between 1 and 2 processes) decides that sign. So: per tensor, the
    # difference from the one-process run must be tiny relative to how far training moved the tensor (the update),
    # and no element may differ by more than Adam can move one in these steps.
    init = Run(_config(data, tmp_path / "init", batch_size=1, grad_accum=4)).model.state_dict()
    max_move = 2 * common["lr"] * common["max_steps"]
    for run_dir in (out, cross):
        got = AutoModelForCausalLM.from_pretrained(run_dir).state_dict()
        assert set(got) == set(want)
        for name, w in want.items():
            update = (w - init[name]).norm().item()
            assert update > 0, name
            assert (got[name] - w).norm().item() <= 1e-3 * update, (run_dir, name, (got[name] - w).norm().item(), update)
            assert (got[name] - w).abs().max().item() <= max_move, (run_dir, name)
    card = json.loads((out / "run_card.json").read_text())
    assert card["world_size"] == 2 and card["config"]["fsdp"] and card["steps"] == 4
    assert card["final"]["val_loss"] == pytest.approx(ref.final["val_loss"], rel=1e-4)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for r, q in zip(rows, ref_rows):
        for key, rel in (("loss", 1e-5), ("val_loss", 1e-5), ("grad_norm", 1e-3)):  # torch's fp32 norm of ~1M
            if key in q:                                                        # gradients is good to ~1e-4 only
                assert r[key] == pytest.approx(q[key], rel=rel), (key, r, q)


def test_fsdp_is_refused_where_it_cannot_work(tmp_path):
    data = tmp_path / "convs.jsonl"
    save(CONVS[:2], data)
    with pytest.raises(ValueError, match="torchrun"):
        Run(_config(data, tmp_path / "r", batch_size=1, grad_accum=1, fsdp=True))  # one process: nothing to shard
    with pytest.raises(ValueError, match="--lora is not supported"):
        check(fsdp=True, world=2, lora=True)
    check(fsdp=False, world=1, lora=True)  # no --fsdp: nothing to refuse
    from typer.testing import CliRunner

    from chatloom.cli import app

    res = CliRunner().invoke(app, ["train", "pretrain", "--model", "tiny", "--text", str(data), "--fsdp",
                                   "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "torchrun" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_torchrun_two_processes(tmp_path, fsdp):
    from transformers import AutoModelForCausalLM

    data = tmp_path / "convs.jsonl"
    save(CONVS, data)
    out = tmp_path / "run"
    src = str(Path(chatloom.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "chatloom", "train", "sft", "--model", "tiny", "--data", str(data), "--out", str(out),
           "--max-steps", "3", "--seq-len", "48", "--batch-size", "2", "--precision", "fp32",
           *(["--fsdp"] if fsdp else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0 prints the result once
    assert result["steps"] == 3 and result["out_dir"] == str(out)
    card = json.loads((out / "run_card.json").read_text())
    assert card["world_size"] == 2 and card["resolved"]["rows_per_step"] == 4 and card["config"]["fsdp"] is fsdp
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == card["resolved"]["vocab_size"]
    assert (out / "chat_template.jinja").is_file() and not list(out.parent.glob(".run.export-*"))
