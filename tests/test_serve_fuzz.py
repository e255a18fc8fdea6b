"""Fuzzing the live OpenAI-compatible server (uvicorn over loopback, a tiny Llama built in code): random JSON shapes and
values, bodies near a valid request with fields replaced by awkward values, and raw bytes that are not JSON, thrown at
`/v1/chat/completions` and `/v1/tokens`. Every answer must be 2xx or 4xx (never 5xx, never an error event inside a
200 stream), no row may fail inside the decoding thread (every bad value is refused at the edge), and a normal request
still gets the engine's own greedy reply afterwards."""

from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import strategies as st

from chatloom.conversation import Conversation
from chatloom.engine import Engine, SamplingParams
from chatloom.serve.app import create_app

from .fuzz_http import (
    NASTY_FLOATS,
    NASTY_INTEGERS,
    NASTY_STRINGS,
    Target,
    assert_never_5xx,
    json_values,
    live,
    mutations,
    raw_bodies,
)
from .test_engine import make_tiny_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

EXAMPLES = int(os.environ.get("CHATLOOM_FUZZ_EXAMPLES", "150"))  # per route; raise it for a longer hunt
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
VALID_CHAT = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "top_k": 20,
              "n": 1, "stop": ["\n\n"], "seed": 3, "stream": False, "repetition_penalty": 1.1,
              "stream_options": {"include_usage": True}, "max_completion_tokens": 4}
VALID_TOKENS = {"messages": MESSAGES + [{"role": "assistant", "content": "Blue."}], "add_generation_prompt": False}

numbers = st.one_of(st.sampled_from(NASTY_INTEGERS), st.sampled_from(NASTY_FLOATS), st.integers(-5, 70),
                    st.floats(-3, 3))
texts = st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=20))
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard", ""]), json_values(2)),
     "content": st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                                 "text": texts}), max_size=3), json_values(3))},
    optional={"name": st.one_of(texts, json_values(2)), "tool_call_id": texts, "tool_calls": json_values(3)})
MESSAGE_LISTS = st.one_of(st.lists(message, max_size=5), st.just(MESSAGES[:1] * 300), json_values(4))
CHAT_FIELDS = {"messages": MESSAGE_LISTS, "max_tokens": numbers, "max_completion_tokens": numbers,
               "temperature": numbers, "top_p": numbers, "top_k": numbers, "n": numbers, "seed": numbers,
               "repetition_penalty": numbers, "stream": st.one_of(st.booleans(), json_values(2)),
               "stop": st.one_of(texts, st.lists(texts, max_size=6), st.just(["x" * 2_000])),
               "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": json_values(2)}), json_values(2)),
               "model": json_values(2)}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, bundled_tokenizer_path):
    full = Engine.from_pretrained(make_tiny_model_dir(tmp_path_factory.mktemp("tiny-fuzz"), bundled_tokenizer_path))
    return Engine(full.model, full.protocol, max_context=64)  # a small window keeps every accepted request short


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, model_name="tiny")
    with live(app) as url:
        yield url, app


def no_error_inside(response: httpx.Response, body) -> None:
    if response.status_code == 200:
        assert "server_error" not in response.text, f"a row failed for {body!r}: {response.text[:300]}"


def test_chat_completions_never_answers_5xx(server, engine):
    url, app = server
    bodies = st.one_of(mutations(VALID_CHAT, CHAT_FIELDS), mutations(VALID_CHAT, CHAT_FIELDS), json_values(), raw_bodies())
    statuses = assert_never_5xx(Target(url, "/v1/chat/completions"), bodies, max_examples=EXAMPLES, check=no_error_inside)
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0, statuses
    health = httpx.get(url + "/health").json()
    assert health["failed"] == 0, health  # nothing the fuzzer sent got past the edge and failed inside the decoder
    _normal_request_still_works(url, engine)


def test_tokens_never_answers_5xx(server, engine):
    url, _ = server
    fields = {"messages": MESSAGE_LISTS, "add_generation_prompt": json_values(2)}
    bodies = st.one_of(mutations(VALID_TOKENS, fields), mutations(VALID_TOKENS, fields), json_values(), raw_bodies())
    statuses = assert_never_5xx(Target(url, "/v1/tokens"), bodies, max_examples=EXAMPLES)
    assert statuses[200] > 0, statuses
    data = httpx.post(url + "/v1/tokens", json=VALID_TOKENS).json()
    assert data["ids"] == engine.protocol.render(Conversation.from_dict({"messages": VALID_TOKENS["messages"]})).ids
    _normal_request_still_works(url, engine)


def _normal_request_still_works(url: str, engine: Engine) -> None:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 8, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200, r.text
    [local] = engine.generate([Conversation.from_dict({"messages": MESSAGES})], SamplingParams(max_tokens=8, temperature=0))
    assert r.json()["choices"][0]["message"]["content"] == local.text
