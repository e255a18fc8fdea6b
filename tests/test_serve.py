"""The OpenAI-compatible server on a real uvicorn over loopback, driven by the official `openai` client and raw HTTP:
streaming and not, n>1, usage, stop, validation errors in OpenAI's shape, bounds, concurrency, API key, a free event loop."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import openai
import pytest

from chatloom.engine import Engine
from chatloom.serve.app import create_app

from .test_engine import make_tiny_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

KEY = "sk-test-123"


@contextlib.contextmanager
def running(app):
    """uvicorn on 127.0.0.1 with a free port, in a thread; yields the base URL and stops by itself."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, bundled_tokenizer_path):
    return Engine.from_pretrained(make_tiny_model_dir(tmp_path_factory.mktemp("tiny-serve"), bundled_tokenizer_path))


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, model_name="tiny")
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something about lists."}]


def test_non_streaming_with_usage(client, engine):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=12, temperature=0)
    [choice] = r.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    prompt_len = len(engine.protocol.prompt(_conv(MSGS)))
    assert r.usage.prompt_tokens == prompt_len
    assert 0 < r.usage.completion_tokens <= 12 and r.usage.total_tokens == prompt_len + r.usage.completion_tokens
    [local] = engine.generate([_conv(MSGS)], _greedy(12))
    assert choice.message.content == local.text and r.usage.completion_tokens == local.completion_tokens


def test_streaming_equals_non_streaming(client):
    full = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    deltas, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                deltas.append(c.delta.content)
            finish = c.finish_reason or finish
    assert "".join(deltas) == full.choices[0].message.content and len(deltas) > 1
    assert finish == full.choices[0].finish_reason and usage.completion_tokens == full.usage.completion_tokens


def test_n_choices_seeds_and_usage(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=1.0, n=3, seed=11)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=1.0, n=3, seed=11)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage.completion_tokens > 10  # three choices counted
    stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=1.0, n=3, seed=11,
                                            stream=True)
    texts = ["", "", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in r.choices]


def test_stop_models_and_health(client, server):
    full = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=20, temperature=0).choices[0].message.content
    stop = full[3:6]
    cut = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == full[:full.find(stop)] and cut.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server[0] + "/health").json()["status"] == "ok"


BAD = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 100}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, "context window"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages[1].role"),
    ({"messages": [{"role": "user", "content": "   "}]}, "empty content"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "last message"),
    ({"messages": [{"role": "user", "content": "x"}] * 300}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 250_000}]}, "characters"),
    ({"messages": [{"role": "user", "content": "word " * 3000}]}, "context window"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
]


@pytest.mark.parametrize("body,needle", BAD)
def test_bad_requests_get_4xx_in_openai_shape(server, body, needle):
    r = httpx.post(server[0] + "/v1/chat/completions", json=body, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and needle in (error["message"] + str(error["param"]))


def test_malformed_and_oversized_bodies(server, client):
    url = server[0] + "/v1/chat/completions"
    r = httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"x" * 2_100_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=MSGS, temperature=9)


def test_eight_simultaneous_requests_all_complete_and_are_batched(server, client):
    results, errors = {}, []

    def one(i):
        try:
            r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"request {i}"}],
                                               max_tokens=24, temperature=0.8, seed=i)
            results[i] = r
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and sorted(results) == list(range(8))
    assert all(r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0 for r in results.values())
    assert server[1].state.scheduler.largest_batch > 1


def test_event_loop_stays_free_during_a_long_generation(engine):
    endless = Engine(engine.model, engine.protocol)
    endless.stop_ids = set()
    with running(create_app(endless, model_name="endless")) as url:
        done = {}

        def long_request():
            done["r"] = httpx.post(url + "/v1/chat/completions", timeout=120,
                                   json={"messages": [{"role": "user", "content": "go"}], "max_tokens": 400})

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(0.3)
        start = time.monotonic()
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        health_seconds = time.monotonic() - start
        still_running = t.is_alive()
        t.join(timeout=120)
    assert done["r"].json()["usage"]["completion_tokens"] == 400
    assert still_running and health_seconds < 1.0


def test_a_client_that_goes_away_frees_its_rows(engine):
    endless = Engine(engine.model, engine.protocol)
    endless.stop_ids = set()
    with running(create_app(endless, model_name="endless")) as url:
        body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 500, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health").json()["cancelled"] < 1:
            assert time.monotonic() < deadline, "the abandoned request kept decoding"
            time.sleep(0.05)
        r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, timeout=60)
        assert r.json()["usage"]["completion_tokens"] == 3


def test_api_key_is_enforced(engine):
    with running(create_app(engine, api_key=KEY, model_name="tiny")) as url:
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
            wrong.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
        r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS})
        assert r.status_code == 401 and "Missing API key" in r.json()["error"]["message"]
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models").json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2).usage.completion_tokens > 0
        assert httpx.get(url + "/health").status_code == 200


def test_token_view_endpoint(server, engine):
    msgs = [{"role": "user", "content": "hi <|im_end|><script>"}, {"role": "assistant", "content": "hello"}]
    data = httpx.post(server[0] + "/v1/tokens", json={"messages": msgs}).json()
    rendered = engine.protocol.render(_conv(msgs))
    assert data["ids"] == rendered.ids and data["num_supervised"] == rendered.num_supervised > 0
    assert data["tokens"].count("<|im_end|>") == 2  # the user's typed "<|im_end|>" stayed text
    prompt = httpx.post(server[0] + "/v1/tokens", json={"messages": msgs[:1], "add_generation_prompt": True}).json()
    assert prompt["ids"] == engine.protocol.prompt(_conv(msgs[:1]))


def _conv(msgs):
    from chatloom.conversation import Conversation

    return Conversation.from_dict({"messages": msgs})


def _greedy(n):
    from chatloom.engine import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0)


@pytest.mark.slow
def test_serve_command_end_to_end(tmp_path, bundled_tokenizer_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    model = make_tiny_model_dir(tmp_path / "m", bundled_tokenizer_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "chatloom.cli", "serve", "--model", str(model), "--port", str(port),
                             "--api-key", KEY, "--name", "cli-model", "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "chatloom serve did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in c.models.list().data] == ["cli-model"]
        assert c.chat.completions.create(model="cli-model", messages=MSGS, max_tokens=3).usage.completion_tokens > 0
        assert "<textarea" in httpx.get(url + "/").text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
