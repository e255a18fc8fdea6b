"""`render_batch`'s speed paths change nothing: encoding on several threads (`workers`), encoding each distinct text of a
batch once, and finding the boundaries of a run that several messages share by byte offsets (a table of token byte
lengths) instead of per-character spans. Each is checked against the plain path on real OpenAssistant threads (big
enough that the threads really run) and on random conversations full of whitespace, emoji and CJK at message edges;
the plain path itself is checked from first principles in test_protocols_exact.py.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatloom import Conversation, Message, load_tokenizer, protocols
from chatloom import tokenizers as T
from chatloom.data.oasst import oasst_records
from chatloom.tokenizers import copy_tokenizer

from .conftest import FIXTURES, GPT2_JSON, O200K, TEMPLATES, need


@functools.cache
def threads() -> tuple[Conversation, ...]:
    path = need(FIXTURES / "conversations" / "oasst" / "en_100_tree.jsonl")
    return tuple(Conversation.from_dict(r) for _, r in oasst_records(path, "all", keep_synthetic=True) if isinstance(r, dict))


@functools.cache
def base(name: str):
    return load_tokenizer(need({"gpt2": GPT2_JSON, "o200k": O200K}[name]))


def make(setup: str):
    tok = copy_tokenizer(base(setup.split("-")[0]))
    if setup.endswith("qwen"):
        template = need(TEMPLATES / "trl" / "qwen2_5_training.jinja").read_text()
        return protocols.from_template(template, tok, eos_token="<|endoftext|>")
    return protocols.get(setup.split("-")[1], tok)


def triples(rendered):
    return [(r.ids, r.mask, r.message_index) for r in rendered]


@pytest.mark.parametrize("setup", ["gpt2-qwen", "gpt2-chatml", "o200k-gpt4o", "o200k-llama3"])
def test_threads_and_batches_give_what_one_conversation_gives(setup):
    convs = list(threads())
    assert sum(len(m.content) for c in convs for m in c.messages) > 4 * T.PARALLEL_MIN_CHARS  # threads really run
    proto = make(setup)
    alone = triples([proto.render(c) for c in convs])
    for workers in (1, 2, 3):
        assert triples(proto.render_batch(convs, workers=workers)) == alone, workers
    assert any(key[1] == 3 for key in T._POOLS)  # the 3-thread batch went through a pool
    assert triples(proto.render_batch(convs[:100] + convs[:100])) == alone[:100] * 2  # repeated texts, encoded once


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=30), st.integers(2, 4))
def test_map_threads_keeps_every_text_in_order(texts, n):
    encode = base("o200k").enc.encode_ordinary
    saved, T.PARALLEL_MIN_CHARS = T.PARALLEL_MIN_CHARS, 0  # split even tiny batches across threads
    try:
        assert T.map_threads(encode, texts, n) == [encode(t) for t in texts]
    finally:
        T.PARALLEL_MIN_CHARS = saved


EDGES = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "🤖", "👨‍👩‍👧", "🇳🇴", "漢字", "e\u0301", "שלום", "```", "*", "- ", "“", "x", "Hi"]
edge = st.lists(st.sampled_from(EDGES) | st.text(max_size=4), min_size=1, max_size=5).map("".join).filter(str.strip)


@st.composite
def conversations(draw):
    messages = []
    for i in range(draw(st.integers(2, 5))):
        messages.append(Message(("user", "assistant")[i % 2], draw(edge)))
    return Conversation(messages)


@functools.cache
def pair(setup: str):
    by_bytes, by_chars = make(setup), make(setup)
    by_chars.tokenizer.byte_lengths = lambda: None  # forces the per-character spans
    return by_bytes, by_chars


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.sampled_from(["gpt2-qwen", "gpt2-chatml", "o200k-llama3"]))
def test_byte_offsets_and_character_spans_agree(conv, setup):
    """Runs shared by a header and a reply (`assistant\\n` + a reply starting with whitespace or an emoji) are cut
    by byte offsets when the tokenizer has a byte-length table; the per-character spans give the same mask and owners."""
    by_bytes, by_chars = pair(setup)
    got = by_bytes.render(conv)
    assert by_bytes.tokenizer.byte_lengths() is not None
    assert triples([got]) == triples([by_chars.render(conv)])


@pytest.mark.parametrize("setup", ["gpt2-chatml", "o200k-llama3"])
def test_a_reply_starting_with_whitespace_is_cut_by_bytes(setup):
    by_bytes, by_chars = pair(setup)
    seen = []
    bounds = by_bytes.encoder._bounds
    by_bytes.encoder._bounds = lambda texts, encoded: seen.extend(b[1] for b in bounds(texts, encoded)) or bounds(texts, encoded)
    try:
        conv = Conversation([Message("user", "Hi"), Message("assistant", "\n\n 🤖 漢字\n")])
        r = by_bytes.render(conv)
    finally:
        del by_bytes.encoder._bounds
    assert seen and all(seen)  # the header and the reply were encoded together and cut by byte offsets
    assert triples([r]) == triples([by_chars.render(conv)])
    eot = by_bytes.tokenizer.token_id(by_bytes.end_of_turn)
    supervised = [i for i, m in zip(r.ids, r.mask, strict=True) if m]
    assert supervised[-1] == eot
    assert "\n\n 🤖 漢字\n" in by_bytes.tokenizer.decode(supervised[:-1])
