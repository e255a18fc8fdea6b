"""A synth run killed mid-way with SIGKILL (a real process, real HTTP on loopback) and restarted ends with exactly N
unique conversations: none lost, none duplicated, a torn last line cut off and regenerated, and the result identical
to an uninterrupted run (everything about a conversation is seeded by its index)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chatloom.synth import ModelSpec, RetryPolicy, Seed, SynthConfig, run, synth_id

from .synth_fake_api import create_app, serve

ROOT = Path(__file__).resolve().parents[1]
N = 14


def synth_command(url: str, topics: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "chatloom.cli", "synth", "--topics", str(topics), "--user-model", f"sim@{url}",
            "--assistant-model", f"helper@{url}", "--turns", "2-3", "--n", str(N), "-o", str(out),
            "--concurrency", "2", "--seed", "5", "--no-progress", "--timeout", "10", "--backoff", "0.05"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_sigkill_mid_run_then_restart_gives_exactly_n(tmp_path):
    topics = tmp_path / "topics.txt"
    topics.write_text("glaciers\nthe printing press\nhoney bees\n")
    out = tmp_path / "out.jsonl"
    with serve(create_app(delay=0.04)) as url:
        proc = subprocess.Popen(synth_command(url, topics, out), env=env(), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while len(lines(out)) < 4 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        before = lines(out)
        assert 4 <= len(before) < N  # killed mid-run, with conversations already on disk
        with out.open("ab") as f:  # and as if the kill had landed inside the next write
            f.write(b'{"id": "synth-5-13", "messages": [{"role": "user", "content": "half a li')

        done = subprocess.run(synth_command(url, topics, out), env=env(), cwd=tmp_path, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()

    after = lines(out)
    ids = [json.loads(line)["id"] for line in after]
    assert len(after) == N and len(set(ids)) == N
    assert set(ids) == {synth_id(5, i) for i in range(N)}
    assert after[: len(before)] == before  # what was written before the kill is kept as it was
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["complete"] and summary["written"] == N and summary["runs"] >= 2
    assert summary["this_run"]["resumed_with"] == len(before)
    assert summary["this_run"]["generated"] == N - len(before)
    assert summary["this_run"]["torn_line_bytes_truncated"] > 0

    # The same run without a kill gives the same conversations (ids, plans and sampling seeds depend on the index only).
    reference = tmp_path / "reference.jsonl"
    with serve(create_app()) as url2:
        seeds = [Seed("topic", t) for t in ("glaciers", "the printing press", "honey bees")]
        run(SynthConfig(seeds=seeds, user_model=ModelSpec.parse(f"sim@{url2}"),
                        assistant_model=ModelSpec.parse(f"helper@{url2}"), n=N, out=reference, turns=(2, 3),
                        concurrency=4, seed=5, progress=False, retry=RetryPolicy(max_retries=1, timeout=10)))

    def by_id(path):
        return {d["id"]: d["messages"] for d in map(json.loads, lines(path))}

    assert by_id(out) == by_id(reference)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    import fcntl

    import pytest

    from chatloom.synth import OutputBusy

    out = tmp_path / "busy.jsonl"
    with out.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running synth holds on its output
        with pytest.raises(OutputBusy, match="another synth run"):
            run(SynthConfig(seeds=[Seed("topic", "x")], user_model=ModelSpec.parse("a@http://127.0.0.1:9/v1"),
                            assistant_model=ModelSpec.parse("a@http://127.0.0.1:9/v1"), n=1, out=out, progress=False))
