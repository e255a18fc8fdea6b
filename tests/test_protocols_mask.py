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


def test_template_injected_text_belongs_to_no_message(builtins):
    """BOS, a template's default system prompt and the generation prompt have message index -1, on the skeleton path
    and on the Jinja path alike; every other token belongs to the message whose turn it is in."""
    from .conftest import TEMPLATES

    qwen = protocols.from_template(need(TEMPLATES / "hf_tokenizer_configs" / "Qwen2.5-1.5B-Instruct.tokenizer_config.json"),
                                   copy_tokenizer(builtins["chatml"].tokenizer))
    conv = Conversation.of("hi", "yo 漢")
    assert qwen.skeleton is not None
    for r in (qwen.render(conv), qwen.encoder.encode([qwen._layout_jinja(conv, False)])[0]):
        text = [qwen.tokenizer.decode([t]) for t in r.ids]
        first_user = r.message_index.index(0)
        assert "".join(text[:first_user]).startswith("<|im_start|>system\nYou are Qwen")  # the default system turn
        assert set(r.message_index[:first_user]) == {-1} and "".join(text[:first_user]).endswith("<|im_end|>\n")
        assert text[first_user] == "<|im_start|>" and -1 not in r.message_index[first_user:]
    llama = builtins["llama3"]
    r = llama.render(conv)
    assert r.message_index[0] == -1 and r.ids[0] == llama.tokenizer.token_id("<|begin_of_text|>")
    assert -1 not in r.message_index[1:]
    prompt = llama.prompt(conv)
    tail = llama.tokenizer.decode(prompt[len(r.ids):])
    assert tail == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert llama.render_batch([conv], add_generation_prompt=True)[0].message_index[len(r.ids):] == [-1] * (len(prompt) - len(r.ids))


def test_views_name_template_tokens(builtins):
    from chatloom.protocols import view

    p = builtins["llama3"]
    conv = Conversation.of("hi", "yo")
    page = view.to_html([(conv, p.render(conv))], p)
    assert "template (BOS, default system, prompt)" in page and "message -1 (template)" in page
