"""Synth throughput against a loopback OpenAI-compatible server with a fixed simulated latency per request.

The server (tests/synth_fake_api.py) runs in its own process, as a real endpoint would. Prints JSON: conversations per
second at several --concurrency values and the speed-up over concurrency 1 (the reference, measured in the same run;
the machine is shared, so compare ratios, not absolute numbers).
Run: PYTHONPATH=src python bench/synth.py [--latency 0.05] [--n 32]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatloom.synth import ModelSpec, Seed, SynthConfig, run

ROOT = Path(__file__).resolve().parents[1]
SERVER = ("import sys, uvicorn; sys.path.insert(0, {root!r}); from tests.synth_fake_api import create_app; "
          "uvicorn.run(create_app(delay={latency}), host='127.0.0.1', port={port}, log_level='warning')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port: int, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the bench server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the server waits per request")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    args = ap.parse_args()
    import openai  # noqa: F401 - imported before timing (synth imports it lazily, on the first run)

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), latency=args.latency, port=port)])
    results = []
    try:
        wait_until_up(port, server)
        url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            for c in args.concurrency:
                cfg = SynthConfig(seeds=[Seed("topic", "tides"), Seed("topic", "owls")],
                                  user_model=ModelSpec.parse(f"sim@{url}"), assistant_model=ModelSpec.parse(f"helper@{url}"),
                                  n=args.n, out=Path(tmp) / f"c{c}.jsonl", turns=(2, 2), concurrency=c, progress=False)
                start = time.perf_counter()
                result = run(cfg)
                seconds = time.perf_counter() - start
                assert result.complete
                usage = result.summary["usage"]
                requests = usage["user"]["requests"] + usage["assistant"]["requests"]
                results.append({"concurrency": c, "seconds": round(seconds, 3),
                                "conversations_per_second": round(args.n / seconds, 2), "requests": requests,
                                "ms_per_request_ideal": round(1000 * args.latency, 1)})
    finally:
        server.kill()
        server.wait()
    base = results[0]["conversations_per_second"]
    for r in results:
        r["speedup_vs_concurrency_1"] = round(r["conversations_per_second"] / base, 2)
    print(json.dumps({"bench": "synth", "latency_s": args.latency, "n": args.n, "turns": 2, "results": results}, indent=1))


if __name__ == "__main__":
    main()
