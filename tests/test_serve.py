"""The OpenAI-compatible server on a real uvicorn over loopback, driven by the official `openai` client and raw HTTP:
streaming and not, n>1, usage, stop, validation errors in OpenAI's shape, bounds, concurrency, API key, a free event loop.
Finish reasons and token counts are checked exactly against a scripted copy of the tiny model (tests/scripted.py) on
both decoding paths (lean Llama decoder, transformers forward), and the random model against the engine run in-process."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from chatloom.engine import Engine
from chatloom.serve.app import create_app

from .fuzz_http import live as running  # uvicorn on a free loopback port in a thread
from .scripted import PATHS, by_prompt, scripted
from .test_engine import make_tiny_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

KEY = "sk-test-123"


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
LISTS = "Lists keep their items in order, and [1, 2] != [2, 1]."
STOPPED = "Sure. The answer is 4.\nUser: and more"
STOP_MSGS = [{"role": "user", "content": "What is 2+2?"}]
WORDS = [" the", " and", " file", " list", " value", " data", " name", " return"]  # one token each, all different


def replies(tok, eot):
    """What the scripted model answers: LISTS for MSGS, STOPPED for STOP_MSGS, and for "request i" the i-th word
    repeated 3+i times then the end of turn (even i) or forever (odd i)."""
    table = {"about lists": tok.encode(LISTS) + [eot], "What is 2+2?": tok.encode(STOPPED) + [eot]}
    for i, w in enumerate(WORDS):
        [word] = tok.encode(w)
        table[f"request {i}"] = [word] * (3 + i) + [eot] if i % 2 == 0 else [word] * 100
    return by_prompt(tok, table)


@pytest.fixture(scope="module", params=PATHS)
def scripted_server(request, engine):
    """A server over a scripted copy of the tiny model, on the lean decoder and on the transformers forward."""
    e = scripted(engine, replies(engine.tokenizer, engine.protocol.end_of_turn_id), fast=request.param)
    app = create_app(e, model_name="scripted")
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def scripted_client(scripted_server):
    return openai.OpenAI(base_url=scripted_server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def read_stream(stream):
    """(text per choice, finish_reason per choice, usage, the content deltas) of a streamed response."""
    texts, finish, usage, deltas = {}, {}, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.delta.content:
                deltas.append(c.delta.content)
            if c.finish_reason:
                assert c.index not in finish, "two finish reasons for one choice"
                finish[c.index] = c.finish_reason
    return texts, finish, usage, deltas


def test_non_streaming_stop_length_and_usage(scripted_client, engine):
    tok = engine.tokenizer
    ids = tok.encode(LISTS)
    prompt_len = len(engine.protocol.prompt(_conv(MSGS)))
    r = scripted_client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=40, temperature=0)
    [choice] = r.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", LISTS, "stop")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        prompt_len, len(ids) + 1, prompt_len + len(ids) + 1)  # the reply's tokens and the end-of-turn token
    cut = scripted_client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=len(ids), temperature=0.7)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == (LISTS, "length")  # no room for the end
    assert cut.usage.completion_tokens == len(ids)
    short = scripted_client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=3)
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == (tok.decode(ids[:3]), "length")
    assert short.usage.completion_tokens == 3


def test_streaming_stop_and_length(scripted_client, engine):
    ids = engine.tokenizer.encode(LISTS)
    for max_tokens, reason, count in ((40, "stop", len(ids) + 1), (5, "length", 5)):
        stream = scripted_client.chat.completions.create(model="scripted", messages=MSGS, max_tokens=max_tokens,
                                                         temperature=0, stream=True, stream_options={"include_usage": True})
        texts, finish, usage, deltas = read_stream(stream)
        assert texts == {0: engine.tokenizer.decode(ids[:count])} and finish == {0: reason}
        assert len(deltas) > 1 and usage.completion_tokens == count


def test_stop_string_streaming_and_not(scripted_client, engine):
    tok = engine.tokenizer
    ids = tok.encode(STOPPED)
    k = next(k for k in range(1, len(ids) + 1) if "\nUser:" in tok.decode(ids[:k]))  # tokens until the stop completes
    cut = scripted_client.chat.completions.create(model="scripted", messages=STOP_MSGS, max_tokens=50, temperature=0,
                                                  stop=["\nUser:", "never"])
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Sure. The answer is 4.", "stop")
    assert cut.usage.completion_tokens == k
    stream = scripted_client.chat.completions.create(model="scripted", messages=STOP_MSGS, max_tokens=50, stream=True,
                                                     stop="\nUser:", n=2, stream_options={"include_usage": True})
    texts, finish, usage, deltas = read_stream(stream)
    assert texts == {0: "Sure. The answer is 4.", 1: "Sure. The answer is 4."} and finish == {0: "stop", 1: "stop"}
    assert not any("\n" in d or "User" in d for d in deltas) and usage.completion_tokens == 2 * k
    plain = scripted_client.chat.completions.create(model="scripted", messages=STOP_MSGS, max_tokens=50, stop="never")
    assert (plain.choices[0].message.content, plain.choices[0].finish_reason) == (STOPPED, "stop")
    assert plain.usage.completion_tokens == len(ids) + 1


def test_eight_simultaneous_requests_get_their_own_outcome(scripted_server, scripted_client, engine):
    results, errors = {}, []

    def one(i):
        try:
            results[i] = scripted_client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": f"request {i}"}], max_tokens=5 + i,
                temperature=0.8, seed=i)
        except Exception as e:  # reported below
            errors.append(e)

    scheduler = scripted_server[1].state.scheduler
    scheduler.largest_batch = 0
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and sorted(results) == list(range(8))
    assert scheduler.largest_batch > 1  # requests were decoded together, and each row still got its own reply
    for i, r in results.items():
        [choice] = r.choices
        if i % 2 == 0:  # 3+i words then the end of turn, within 5+i tokens
            assert (choice.message.content, choice.finish_reason, r.usage.completion_tokens) == (WORDS[i] * (3 + i), "stop", 4 + i)
        else:  # never ends its turn: cut at max_tokens
            assert (choice.message.content, choice.finish_reason, r.usage.completion_tokens) == (WORDS[i] * (5 + i), "length", 5 + i)


def test_random_model_answers_like_the_engine_itself(client, engine):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=12, temperature=0)
    [local] = engine.generate([_conv(MSGS)], _greedy(12))
    [choice] = r.choices
    assert (choice.message.content, choice.finish_reason) == (local.text, local.finish_reason)
    assert r.usage.completion_tokens == len(local.ids) and r.usage.prompt_tokens == len(engine.protocol.prompt(_conv(MSGS)))
    stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    texts, finish, usage, _ = read_stream(stream)
    [local] = engine.generate([_conv(MSGS)], _greedy(20))
    assert (texts, finish, usage.completion_tokens) == ({0: local.text}, {0: local.finish_reason}, len(local.ids))


def test_n_choices_seeds_and_usage(client, engine):
    from chatloom.engine import SamplingParams

    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=1.0, n=3, seed=11)
    assert [c.index for c in r.choices] == [0, 1, 2]
    local = engine.generate([_conv(MSGS)] * 3, [SamplingParams(max_tokens=10, temperature=1.0, seed=11 + i) for i in range(3)])
    assert [c.message.content for c in r.choices] == [c.text for c in local]  # choice i samples with seed + i
    assert [c.finish_reason for c in r.choices] == [c.finish_reason for c in local]
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage.completion_tokens == sum(len(c.ids) for c in local)  # all three choices counted
    stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=1.0, n=3, seed=11,
                                            stream=True)
    texts, finish, _, _ = read_stream(stream)
    assert texts == dict(enumerate(c.message.content for c in r.choices))
    assert finish == dict(enumerate(c.finish_reason for c in r.choices))


def test_models_and_health(client, server):
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


def test_event_loop_stays_free_during_a_long_generation(engine):
    """/health answers while a generation is mid-way. The decoding thread is held after its 10th step until the check
    is done (a sleep-based version raced: on a fast CPU the tiny model's 400 tokens were done before /health was
    asked); a generation running on the event loop would hold the loop too, and /health would time out."""
    endless = Engine(engine.model, engine.protocol)
    endless.stop_ids = set()
    midway, checked = threading.Event(), threading.Event()
    make_batch = endless.batch

    def held_batch():
        batch, steps = make_batch(), [0]
        step = batch.step

        def held_step():
            steps[0] += 1
            if steps[0] == 10:
                midway.set()
                checked.wait(60)
            return step()
        batch.step = held_step
        return batch

    endless.batch = held_batch
    with running(create_app(endless, model_name="endless")) as url:
        done = {}

        def long_request():
            done["r"] = httpx.post(url + "/v1/chat/completions", timeout=120,
                                   json={"messages": [{"role": "user", "content": "go"}], "max_tokens": 400})

        t = threading.Thread(target=long_request)
        t.start()
        assert midway.wait(60)
        start = time.monotonic()
        try:
            assert httpx.get(url + "/health", timeout=10).status_code == 200
        finally:
            health_seconds = time.monotonic() - start
            still_running = t.is_alive()
            checked.set()
        t.join(timeout=120)
    assert done["r"].json()["usage"]["completion_tokens"] == 400
    assert still_running and health_seconds < 1.0, (still_running, health_seconds)


@pytest.mark.parametrize("fast", PATHS)
def test_a_client_that_goes_away_frees_its_rows(engine, fast):
    endless = Engine(engine.model, engine.protocol, fast=fast)
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
    e = scripted(engine, replies(engine.tokenizer, engine.protocol.end_of_turn_id))
    with running(create_app(e, api_key=KEY, model_name="tiny")) as url:
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
            wrong.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
        r = httpx.post(url + "/v1/chat/completions", json={"messages": MSGS})
        assert r.status_code == 401 and "Missing API key" in r.json()["error"]["message"]
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models").json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        r = good.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
        assert r.choices[0].message.content == engine.tokenizer.decode(engine.tokenizer.encode(LISTS)[:2])
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
        r = c.chat.completions.create(model="cli-model", messages=MSGS, max_tokens=3, temperature=0)
        from chatloom.serve.cli import SERVE_QUANTIZE  # serve's default precision

        [local] = Engine.from_pretrained(model, quantize=SERVE_QUANTIZE).generate([_conv(MSGS)], _greedy(3))  # in-process
        assert (r.choices[0].message.content, r.usage.completion_tokens) == (local.text, len(local.ids))
        assert "<textarea" in httpx.get(url + "/").text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
