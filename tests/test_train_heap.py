"""glibc keeps freed memory while a model trains on CPU (train/heap.py): a tensor freed and allocated again is served
from the kept memory (no page faults), blocks of any size in float32 and only those up to 32 MB under autocast, the
kept memory is returned after, and the run card records which."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatloom.conversation import Conversation, save
from chatloom.train import Run, TrainConfig, heap

pytestmark = pytest.mark.skipif(not heap.available(), reason="glibc only")

PROBE = """
import json, resource, torch
from chatloom.train import heap

MB64 = 16 * 1024 * 1024  # float32 elements: 64 MB, above glibc's largest mmap threshold (32 MB)
MB16 = MB64 // 4

def faults_of_reallocating(n=MB64):  # minor page faults of allocating and filling n floats right after n were freed
    torch.ones(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(n)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

out = {"pages": MB64 * 4 // resource.getpagesize(), "default": min(faults_of_reallocating() for _ in range(3))}
# before the heap holds a free block of 64 MB (glibc serves any size from free heap blocks)
with heap.keep_freed_memory(large=False) as applies:
    out["applies_small"] = applies
    out["small_16mb"] = min(faults_of_reallocating(MB16) for _ in range(6))
    out["small_64mb"] = min(faults_of_reallocating() for _ in range(3))
with heap.keep_freed_memory() as applies:
    out["applies"] = applies
    out["kept"] = min(faults_of_reallocating() for _ in range(6))  # the first may still extend the heap
    big = torch.ones(4 * MB64)
    del big
    out["rss_kept"] = rss()
out["rss_after"] = rss()
with heap.keep_freed_memory(enabled=False) as applies:
    out["applies_disabled"] = applies
print(json.dumps(out))
"""


def test_freed_memory_is_reused_inside_and_returned_after():
    """In a fresh process (a known heap): by default each 64 MB tensor is a fresh mapping, every page faulted in;
    inside, the freed block is served again; on leaving, the kept memory goes back to the system."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["applies"] and not got["applies_disabled"]
    assert got["default"] > got["pages"] // 2, got
    assert got["kept"] < got["pages"] // 20, got
    assert got["rss_kept"] - got["rss_after"] > 200e6, got  # the freed 256 MB were kept, then returned
    assert got["applies_small"]  # up to 32 MB: a 16 MB block is served again, a 64 MB one is still a fresh mapping
    assert got["small_16mb"] < got["pages"] // 4 // 20, got
    assert got["small_64mb"] > got["pages"] // 2, got


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_loop_keeps_all_freed_memory_in_float32_and_up_to_32_mb_under_autocast(tmp_path, precision):
    data = tmp_path / "convs.jsonl"
    save([Conversation.of(f"What is {i} + {i}?", f"{2 * i}.") for i in range(4)], data)
    run = Run(TrainConfig(out=str(tmp_path / "run"), model="tiny", data=[str(data)], seq_len=32, batch_size=2,
                          max_steps=1, precision=precision, progress=False))
    kept = "all" if run.precision == "fp32" else "up to 32 MB"  # bf16 where this CPU has it
    assert run.keeps_freed_memory == kept
    run.fit()
    card = json.loads((tmp_path / "run" / "run_card.json").read_text())
    assert card["resolved"]["keep_freed_memory"] == kept
    # above 32 MB the fused loss keeps its own buffers (fused_loss.Workspace)
    assert card["resolved"]["loss_buffers_kept"] == (kept == "up to 32 MB")
