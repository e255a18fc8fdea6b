"""Reasoning through the server: assistant `reasoning_content` is accepted on input and rendered as the protocol does,
and the `<think>` block a model writes comes back as `message.reasoning_content` (streaming: `delta.reasoning_content`),
the rest as `content` (the DeepSeek / vLLM convention).

The splitter is checked from first principles: the text a model writes for a turn is what `render` holds after the
generation prompt and before the end-of-turn token, and splitting it, whole or in any chunks, gives back the turn's
reasoning and content. The server is a real uvicorn over loopback with a scripted copy of the tiny model (the reply's
tokens are known) on both decoding paths.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatloom import Conversation, Message, load_tokenizer, protocols
from chatloom.engine import Engine
from chatloom.protocols.reasoning import ReasoningSplitter, split_reasoning
from chatloom.serve.app import create_app
from chatloom.tokenizers import copy_tokenizer

from .conftest import GPT2_JSON, need
from .fuzz_http import live as running
from .scripted import PATHS, by_prompt, scripted
from .test_engine import make_tiny_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

TAGS = ("<think>\n", "\n</think>\n\n")
piece = st.sampled_from([" ", "\n", "\n\n", "<", "<think", "</", "</think", "think>", "🤖", "漢字", "x", "Hello", "\r\n"])
text = st.lists(st.one_of(piece, st.text(max_size=5)), max_size=6).map("".join).filter(lambda s: "</think>" not in s)


def chunked(s: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(s)) for c in cuts} | {0, len(s)})
    return [s[a:b] for a, b in zip(points, points[1:], strict=False)]


def stream_split(s: str, cuts: list[int]) -> tuple[str | None, str]:
    sp = ReasoningSplitter(TAGS)
    r, c = "", ""
    for part in [*chunked(s, cuts), None]:
        dr, dc = sp.finish() if part is None else sp.push(part)
        r, c = r + dr, c + dc
    assert (sp.reasoning or "") == r and sp.content == c
    return sp.reasoning, c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reasoning=text, content=text, cuts=st.lists(st.integers(0, 80), max_size=8))
def test_split_gives_back_what_the_protocol_rendered(reasoning, content, cuts):
    """The model's text for a turn (render minus the prompt, minus the end-of-turn token) splits into the turn's
    reasoning and content, whole or streamed in any chunks."""
    p = chatml()
    conv = Conversation([Message("user", "Q"), Message("assistant", content, reasoning_content=reasoning)])
    ids, prompt = p.render(conv).ids, p.prompt(Conversation(conv.messages[:1]))
    assert ids[: len(prompt)] == prompt and ids[-2] == p.end_of_turn_id
    written = p.tokenizer.decode_bytes(ids[len(prompt):-2]).decode()
    assert written == "<think>\n" + reasoning + "\n</think>\n\n" + content
    assert split_reasoning(written, p.reasoning_tags) == (reasoning, content)
    assert stream_split(written, cuts) == (reasoning, content)


@settings(max_examples=100, deadline=None)
@given(content=text, cuts=st.lists(st.integers(0, 40), max_size=5))
def test_a_reply_without_a_block_is_all_content(content, cuts):
    if content.startswith("<think>"):
        return
    assert split_reasoning(content, TAGS) == (None, content)
    assert stream_split(content, cuts) == (None, content)
    assert split_reasoning(content, None) == (None, content)


def test_unclosed_block_and_loose_whitespace():
    assert split_reasoning("<think>\nstill thinking", TAGS) == ("still thinking", "")  # cut by max_tokens
    assert split_reasoning("<think>a</think>b", TAGS) == ("a", "b")  # without the template's newlines
    assert split_reasoning("<think>\n\n</think>\n\nHi", TAGS) == ("", "Hi")  # Qwen3's empty block
    assert split_reasoning("<thi", TAGS) == (None, "<thi")


_P = {}


def chatml():
    if "p" not in _P:
        _P["p"] = protocols.get("chatml", copy_tokenizer(load_tokenizer(need(GPT2_JSON))))
    return _P["p"]


# ------------------------------------------------------------------------------------------------ the server

REASONING, CONTENT = "Two and two: 4.\nDouble-check 🤖: yes.", "It is 4."


@pytest.fixture(scope="module")
def engine(tmp_path_factory, bundled_tokenizer_path):
    return Engine.from_pretrained(make_tiny_model_dir(tmp_path_factory.mktemp("tiny-think"), bundled_tokenizer_path))


@pytest.fixture(scope="module", params=PATHS)
def url(request, engine):
    tok, eot = engine.tokenizer, engine.protocol.end_of_turn_id
    table = {"2+2": tok.encode("<think>\n" + REASONING + "\n</think>\n\n" + CONTENT) + [eot],
             "plain": tok.encode(CONTENT) + [eot]}
    e = scripted(engine, by_prompt(tok, table), fast=request.param)
    with running(create_app(e, model_name="scripted")) as base:
        yield base


def post(url, **body):
    return httpx.post(url + "/v1/chat/completions", json={"model": "scripted", "temperature": 0, **body}, timeout=60)


def test_reply_reasoning_is_split_off(url, engine):
    assert engine.protocol.reasoning_tags == TAGS
    r = post(url, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=60)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": CONTENT, "reasoning_content": REASONING}
    plain = post(url, messages=[{"role": "user", "content": "plain"}], max_tokens=60).json()["choices"][0]["message"]
    assert plain == {"role": "assistant", "content": CONTENT}  # no block: no reasoning_content


def test_streamed_reply_reasoning_is_split_off(url):
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 60, "stream": True,
                            "temperature": 0}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == REASONING
    assert "".join(d.get("content", "") for d in deltas) == CONTENT
    assert any("reasoning_content" in d for d in deltas[:3])  # reasoning streams as it comes, before the content
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_input_reasoning_is_rendered_and_validated(url, engine):
    messages = [{"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": CONTENT, "reasoning_content": REASONING},
                {"role": "user", "content": "plain"}]
    view = httpx.post(url + "/v1/tokens", json={"messages": messages}, timeout=60).json()
    text = engine.tokenizer.decode_bytes(view["ids"]).decode()
    assert "<|im_start|>assistant\n<think>\n" + REASONING + "\n</think>\n\n" + CONTENT + "<|im_end|>" in text
    assert post(url, messages=messages, max_tokens=20).status_code == 200
    bad = post(url, messages=[{"role": "user", "content": "hi", "reasoning_content": "no"}])
    assert bad.status_code == 400 and "reasoning_content" in bad.json()["error"]["message"] + str(bad.json()["error"].get("param"))
    typed = post(url, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a", "reasoning_content": 3},
                                {"role": "user", "content": "plain"}])
    assert typed.status_code == 400
