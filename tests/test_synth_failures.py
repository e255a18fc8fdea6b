"""Endpoint failures against a loopback server of the test's own: 500s and stalled requests (sleeping past the client
timeout) are retried with backoff, then reported per index and reason; completed conversations are kept, and a rerun
against a healthy endpoint fills exactly the missing ones."""

from __future__ import annotations

import json
import time

from chatloom.conversation import load
from chatloom.synth import ModelSpec, RetryPolicy, Seed, SynthConfig, plan, run, synth_id

from .synth_fake_api import create_app, serve

SEEDS = [Seed("topic", "ALWAYS-500 tides"), Seed("topic", "ALWAYS-STALL comets"), Seed("topic", "FLAKY ferns"),
         Seed("topic", "plain lighthouses")]
N = 8  # indices 0,4 always fail with 500; 1,5 always stall; 2,6 fail once per request then work; 3,7 just work


def flaky_server():
    seen: set[str] = set()

    def action(body, number):
        prompt = json.dumps(body["messages"])
        if "ALWAYS-500" in prompt:
            return 500
        if "ALWAYS-STALL" in prompt:
            return "stall"
        if "FLAKY" in prompt:
            key = json.dumps(body, sort_keys=True)
            if key not in seen:
                seen.add(key)
                return 503
        return "ok"

    return create_app(action=action)


def cfg(url, out, **kw):
    return SynthConfig(seeds=SEEDS, user_model=ModelSpec.parse(f"sim@{url}"), assistant_model=ModelSpec.parse(
        f"helper@{url}"), n=N, out=out, turns=(1, 3), concurrency=8, progress=False,
        retry=RetryPolicy(max_retries=2, timeout=0.5, backoff_base=0.02, backoff_max=0.1), **kw)


def test_500s_and_stalls_are_retried_then_reported_and_completed_work_is_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    app = flaky_server()
    with serve(app) as url:
        started = time.time()
        result = run(cfg(url, out))
        elapsed = time.time() - started
    assert elapsed < 10  # bounded: 3 attempts x 0.5 s timeout, conversations in parallel
    s = result.summary
    kept = {c.meta["synth"]["index"] for c in load(out)}
    assert kept == {2, 3, 6, 7} and not result.complete
    assert s["missing"] == [0, 1, 4, 5] and s["written"] == 4
    failed = s["this_run"]["failed_indices"]
    assert set(failed) == {"0", "1", "4", "5"}
    assert "http_500" in failed["0"] and "timeout" in failed["1"] and "gave up after 3 attempts" in failed["0"]
    assert s["this_run"]["failed"] == {"user:http_500": 2, "user:timeout": 2}
    user = s["usage"]["user"]
    config = cfg(url, out)
    flaky_requests = plan(config, 2).turns + plan(config, 6).turns  # every FLAKY user request fails once, then works
    assert user["errors"] == {"http_500": 2 * 3, "timeout": 2 * 3, "http_503": flaky_requests}
    assert user["retries"] == 2 * 2 + 2 * 2 + flaky_requests
    assert s["usage"]["assistant"]["errors"] == {}
    # The server saw exactly the attempts the summary counts (stalled requests included).
    user_requests = [b for _, _, b in app.state.log if b["model"] == "sim"]
    assert len(user_requests) == user["requests"]

    # A rerun against a healthy endpoint generates only what is missing.
    with serve(create_app()) as url:
        again = run(cfg(url, out))
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert again.complete and again.summary["this_run"]["generated"] == 4
    assert sorted(ids) == sorted(synth_id(0, i) for i in range(N))
    assert again.summary["usage"]["user"]["errors"]["http_500"] == 6  # usage accumulates over runs


def test_cli_exits_1_and_says_how_to_continue_when_conversations_are_missing(tmp_path):
    from typer.testing import CliRunner

    from chatloom.cli import app

    seeds = tmp_path / "seeds.txt"
    seeds.write_text("ALWAYS-500 what are tides?\nWhy do ferns uncurl?\n")
    out = tmp_path / "cli.jsonl"
    with serve(flaky_server()) as url:
        r = CliRunner().invoke(app, ["synth", "--seeds", str(seeds), "--user-model", f"sim@{url}", "--assistant-model",
                                     f"helper@{url}", "--turns", "1-2", "--n", "4", "-o", str(out), "--no-progress",
                                     "--max-retries", "1", "--backoff", "0.01", "--timeout", "2"])
    assert r.exit_code == 1, r.output
    assert "2 conversations missing; run the same command again to continue" in r.output
    assert {c.meta["synth"]["index"] for c in load(out)} == {1, 3}
