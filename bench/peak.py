"""This CPU's measured matmul peak (FLOP/s, best of before/after) and the trainer's achieved model FLOP/s as a fraction of it. Prints JSON.

Model FLOPs per optimizer step (forward + backward = 3x forward): 6 x non-embedding parameters x row tokens, plus the
output head on supervised positions only (chatloom computes logits there alone), plus attention scores/values
(12 x layers x row length x hidden per token). The CPU is shared with other jobs: numbers are noisy.

    python bench/peak.py [--steps 6] [--rows 4] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

#: square sizes the peak is taken over: the best size differs between CPUs (with AMX, bf16 at 512 reaches about
#: half of what it does at 2048, while the model's own 512 x 576 x 1536 products reach more than 512^3)
PEAK_SIZES = (512, 1024, 2048)


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = PEAK_SIZES, seconds: float = 1.0) -> float:
    """The best FLOP/s of square products `a @ b` over `sizes`, each timed for `seconds` after two warm-up calls."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n ** 3 * count / (time.perf_counter() - t0))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--precision", default="fp32")
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from train import make_conversations

    from chatloom.conversation import save
    from chatloom.train import Run, TrainConfig

    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    work = Path(tempfile.mkdtemp(prefix="chatloom-peak-"))
    save(make_conversations(600), work / "train.jsonl")
    run = Run(TrainConfig(out=str(work / "run"), model="small", data=[str(work / "train.jsonl")], seq_len=a.seq_len,
                          batch_size=a.rows, max_steps=a.steps + 1, precision=a.precision, progress=False))
    model = run.model
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    body = sum(q.numel() for q in model.parameters()) - embed
    head = cfg.hidden_size * cfg.vocab_size
    run.accumulate(0)  # warm-up step (allocator, oneDNN kernels), not timed
    run.optimizer.zero_grad(set_to_none=True)
    flops, t0 = 0.0, time.perf_counter()
    for step in range(1, a.steps + 1):
        out = run.accumulate(step)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        row_tokens = a.rows * a.seq_len
        flops += 6 * body * row_tokens + 6 * head * out["supervised_tokens"] + \
            12 * cfg.num_hidden_layers * a.seq_len * cfg.hidden_size * row_tokens
    seconds = time.perf_counter() - t0
    peak["fp32"] = max(peak["fp32"], matmul_peak(torch.float32))  # again after: the shared CPU's load changes
    achieved = flops / seconds
    ref = peak["bf16" if run.precision == "bf16" else "fp32"]
    print(json.dumps({
        "note": "shared CPU: noisy", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()},
        "trainer": {"model": "small", "params": body + embed, "precision": run.precision, "steps": a.steps,
                    "rows": a.rows, "seq_len": a.seq_len, "seconds": round(seconds, 2),
                    "achieved_gflops": round(achieved / 1e9, 2), "fraction_of_peak": round(achieved / ref, 3)}},
        indent=1))


if __name__ == "__main__":
    main()
