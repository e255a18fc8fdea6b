"""glibc keeps freed memory while a float32 CPU model trains (train/heap.py): a large tensor freed and allocated again
is served from the kept memory (no page faults), the kept memory is returned after, and the loop uses it for float32
on CPU only (recorded in the run card)."""

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

def faults_of_reallocating():  # minor page faults of allocating and filling 64 MB right after 64 MB was freed
    torch.ones(MB64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(MB64)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

out = {"pages": MB64 * 4 // resource.getpagesize(), "default": min(faults_of_reallocating() for _ in range(3))}
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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_loop_keeps_freed_memory_for_float32_on_cpu_only(tmp_path, precision):
    data = tmp_path / "convs.jsonl"
    save([Conversation.of(f"What is {i} + {i}?", f"{2 * i}.") for i in range(4)], data)
    run = Run(TrainConfig(out=str(tmp_path / "run"), model="tiny", data=[str(data)], seq_len=32, batch_size=2,
                          max_steps=1, precision=precision, progress=False))
    fp32 = run.precision == "fp32"  # bf16 where this CPU has it
    assert run.keeps_freed_memory is fp32
    run.fit()
    card = json.loads((tmp_path / "run" / "run_card.json").read_text())
    assert card["resolved"]["keep_freed_memory"] is fp32
