"""Properties that must hold for every conversation (hypothesis): parse(render(c)) == c, control-looking text never
becomes a control token, and the fast paths give the same ids as encoding the whole rendered text."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatloom import Conversation, Message, load_tokenizer, protocols
from chatloom.tokenizers import copy_tokenizer

from .conftest import GPT2_JSON, O200K, TEMPLATES, need

CONTROL_LIKE = ["<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<end_of_turn>", "\n", " ",
                "assistant\n", "\U0010fffd", "\U000f0001"]

text_piece = st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(CONTROL_LIKE),
                       st.text(alphabet="ab \n\t.,!?😀é漢", min_size=1, max_size=20))
content = st.lists(text_piece, min_size=1, max_size=5).map("".join).filter(lambda s: s.strip() != "")
plain_content = content.filter(lambda s: not any(c in s for c in CONTROL_LIKE[:12]) and "\U0010fffd" not in s)


def conversations(text=content, trim=False):
    @st.composite
    def build(draw):
        n = draw(st.integers(1, 6))
        messages = []
        if draw(st.booleans()):
            messages.append(Message("system", draw(text)))
        for i in range(n):
            t = draw(text)
            messages.append(Message("user" if i % 2 == 0 else "assistant", t.strip() if trim else t))
        if trim and any(not m.content for m in messages):
            messages = [Message(m.role, m.content or "x") for m in messages]
        return Conversation(messages)
    return build()


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@functools.cache
def builtin(name: str, tok: str):
    path = need(GPT2_JSON if tok == "gpt2" else O200K)
    return protocols.get(name, copy_tokenizer(load_tokenizer(path)))


@pytest.mark.parametrize("name, tok", [("gpt4o", "o200k"), ("gpt4o", "gpt2"), ("chatml", "gpt2"), ("llama3", "gpt2"),
                                       ("chatml", "o200k")])
@SETTINGS
@given(conv=conversations())
def test_parse_render_round_trip(name, tok, conv):
    p = builtin(name, tok)
    r = p.render(conv)
    assert len(r.ids) == len(r.mask) == len(r.message_index)
    assert p.parse(r.ids).same_messages(conv)
    clean = p.render(Conversation([Message(m.role, "x") for m in conv.messages]))
    controls = set(p.tokenizer.special_tokens.values())
    assert sum(t in controls for t in r.ids) == sum(t in controls for t in clean.ids)
    assert p.prompt(conv)[: len(r.ids)] == r.ids


@pytest.mark.parametrize("name", ["gpt4o", "chatml", "llama3"])
@SETTINGS
@given(conv=conversations(plain_content))
def test_builtin_ids_equal_whole_text_encoding(name, conv):
    """Per-segment encoding == tokenizing the whole rendered string (special tokens parsed) when no text is injected."""
    p = builtin(name, "gpt2")
    whole = p.tokenizer.hf(p.text(conv), add_special_tokens=False)["input_ids"]
    assert p.render(conv).ids == list(whole)


SKELETON_TEMPLATES = ["hf_tokenizer_configs/Qwen2.5-1.5B-Instruct.tokenizer_config.json", "trl/phi3.jinja",
                      "trl/llama3_1.jinja", "from_gguf_metadata/smollm2_135m.gguf.chat_template.jinja",
                      "hf_tokenizer_configs/DeepSeek-V3.chat_template.jinja"]


@functools.cache
def template_protocol(path: str):
    p = protocols.from_template(TEMPLATES / path, copy_tokenizer(load_tokenizer(need(GPT2_JSON))),
                                bos_token="<|begin_of_text|>" if "llama" in path else None)
    assert p.skeleton is not None, f"{path}: expected the fast path to apply"
    return p


@pytest.mark.parametrize("path", SKELETON_TEMPLATES)
@SETTINGS
@given(conv=conversations(), gen=st.booleans())
def test_template_fast_path_equals_jinja(path, conv, gen):
    p = template_protocol(path)
    skeleton = p.encoder.encode([p.skeleton.layout(conv, gen)])[0]
    slow = p.encoder.encode([p._layout_jinja(conv, gen)])[0]
    assert skeleton.ids == slow.ids
    assert skeleton.mask == slow.mask
    assert skeleton.message_index == slow.message_index
    if p.skeleton.trim:
        conv = Conversation([Message(m.role, m.content.strip() or "x") for m in conv.messages])
    assert p.parse(p.render(conv).ids).same_messages(conv)


@pytest.mark.parametrize("path", SKELETON_TEMPLATES[:3])
@SETTINGS
@given(conv=conversations(plain_content))
def test_template_ids_equal_apply_chat_template(path, conv):
    p = template_protocol(path)
    msgs = [m.to_dict() for m in conv.messages]
    ref = p.tokenizer.hf.apply_chat_template(msgs, chat_template=p.template, tokenize=True, return_dict=True,
                                             bos_token=p.template_vars["bos_token"], eos_token=p.template_vars["eos_token"])
    assert p.render(conv).ids == list(ref["input_ids"])
