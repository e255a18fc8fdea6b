"""The loss mask, checked from first principles: decode the supervised tokens and compare with the reply.

Rule (see chatloom.protocols.base): a token is supervised iff it contains a byte of a supervised character. A reply whose
characters are split into several byte tokens (CJK, emoji) must keep every one of those tokens, the last byte included.
"""

from __future__ import annotations

import pytest

from chatloom import Conversation, load_tokenizer, protocols
from chatloom.tokenizers import copy_tokenizer

from .conftest import GPT2_JSON, need

REPLIES = [" x 漢", " ok 🤖", "x 漢", "漢", "🤖", " 👨‍👩‍👧", "🇳🇴 flag", "e\u0301", "tab\there 字", "\u05e9\u05dc\u05d5\u05dd 🤖"]


@pytest.fixture(scope="module")
def builtins():
    base = load_tokenizer(need(GPT2_JSON))
    return {name: protocols.get(name, copy_tokenizer(base)) for name in ("gpt4o", "chatml", "llama3")}


@pytest.mark.parametrize("name", ["gpt4o", "chatml", "llama3"])
@pytest.mark.parametrize("reply", REPLIES)
def test_split_characters_stay_supervised(name, reply, builtins):
    p = builtins[name]
    for conv in (Conversation.of("hi", reply), Conversation.of("hi", reply, "more", reply + " " + reply)):
        r = p.render(conv)
        sup = [t for t, m in zip(r.ids, r.mask, strict=True) if m]
        replies = [m.content for m in conv.messages if m.role == "assistant"]
        expected = b"".join(c.encode() + p.end_of_turn.encode() for c in replies)
        assert p.tokenizer.decode_bytes(sup) == expected
