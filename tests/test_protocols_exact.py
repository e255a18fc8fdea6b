"""`render` is exact to the byte, checked from first principles on random conversations full of the characters that
break masks (leading/trailing whitespace, ZWJ emoji and flags, CJK, combining marks, RTL text, `\\r\\n`, control-token
strings), on three byte-level tokenizers (GPT-2, o200k via tiktoken, SmolLM2's real 49k BPE), for every built-in format
and several real Hub templates:

- the ids spell the rendered text: the bytes of the tokens, concatenated, are the text the template renders (the DESIGN
  strings for the built-ins, transformers' `apply_chat_template` for Hub templates), and the ids equal encoding that text
  split at the control tokens the template placed (text typed in a message never becomes a control token);
- the mask is exactly: every token that contains a byte of a trained assistant message's content as the template renders
  it (from the end of its generation prompt when the template writes more than whitespace there, Qwen3's empty
  `<think>` block: that is the model's to write), plus the end-of-turn token that follows it. So the supervised tokens of each assistant message decode to its
  content (plus only the bytes of tokens it shares with the template) followed by the end-of-turn token, no byte of the
  content is left out and nothing else is supervised;
- supervised tokens belong to their assistant message; `parse(render(c)) == c` where the template keeps text as it is;
  `prompt(c)` is `render(c)` plus the generation prompt.

Where each content sits in the rendered text is found by rendering with a marker in its place, not by chatloom.
"""

from __future__ import annotations

import functools
import os
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chatloom import Conversation, Message, load_tokenizer, protocols
from chatloom.protocols.jinja_env import TemplateError
from chatloom.tokenizers import copy_tokenizer

from .conftest import FIXTURES, GPT2_JSON, O200K, TEMPLATES, need

SMOLLM2_JSON = FIXTURES / "smollm2" / "tokenizer.json"

WHITESPACE = [" ", "  ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "\u2028"]
EMOJI = ["🤖", "👨‍👩‍👧", "🏳️‍🌈", "🇳🇴", "🇯🇵🇰🇷", "👍🏽", "❤️", "🫠"]
CJK = ["漢", "漢字", "東京", "한국어", "日本語", "中文，标点。"]
COMBINING = ["e\u0301", "a\u0308\u0323", "n\u0303", "Z\u0351\u0352\u0353"]
RTL = ["שלום", "مرحبا", "\u200fRTL", "עברית 123"]
CONTROL_LIKE = ["<|im_end|>", "<|im_start|>", "<|im_sep|>", "<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|endoftext|>", "<end_of_turn>", "<start_of_turn>", "</s>", "<s>", "<bos>",
                "[INST]", "<|end|>", "<|user|>", "<|assistant|>", "<｜end▁of▁sentence｜>", "<think>", "assistant\n",
                "\U0010fffd", "\U000f0001"]
WORDS = ["x", "ok", "Hello", "2+2 = 4", "don't", "naïve café", "3.14159", "x" * 40, "Ωmega"]

piece = st.one_of(st.sampled_from(WHITESPACE + EMOJI + CJK + COMBINING + RTL + CONTROL_LIKE + WORDS), st.text(max_size=8))
content = st.lists(piece, min_size=1, max_size=6).map("".join).filter(lambda s: s.strip() != "")


@st.composite
def conversations(draw, system: bool = True):
    messages = [Message("system", draw(content))] if system and draw(st.booleans()) else []
    for i in range(draw(st.integers(1, 5))):
        role = ("user", "assistant")[i % 2]
        messages.append(Message(role, draw(content), train=draw(st.sampled_from([True, True, True, False])) if role == "assistant" else True))
    return Conversation(messages)


EXAMPLES = int(os.environ.get("CHATLOOM_EXAMPLES", "25"))  # raise it for a deep run: CHATLOOM_EXAMPLES=500
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@functools.cache
def base_tokenizer(name: str):
    return load_tokenizer(need({"gpt2": GPT2_JSON, "o200k": O200K, "smollm2": SMOLLM2_JSON}[name]))


# ------------------------------------------------------------------------------------------------- the references

FORMATS = {  # DESIGN §2, exact strings: begin, header, footer
    "gpt4o": ("", "<|im_start|>{role}<|im_sep|>", "<|im_end|>"),
    "chatml": ("", "<|im_start|>{role}\n", "<|im_end|>\n"),
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>"),
}


EOT = {"gpt4o": "<|im_end|>", "chatml": "<|im_end|>", "llama3": "<|eot_id|>"}


def builtin_text(name: str, messages: list[dict], gen: bool) -> str:
    begin, header, footer = FORMATS[name]
    out = [begin] + [header.replace("{role}", m["role"]) + m["content"] + footer for m in messages]
    return "".join(out) + (header.replace("{role}", "assistant") if gen else "")


def content_spans(render, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Character range of each message's content in `full`: render with a marker in its place; what is around the
    marker must be what is around the content, and what is in between must be the content (or the content with some
    of its leading/trailing whitespace trimmed, as `| trim` or Qwen3's `lstrip('\\n')` do)."""
    spans = []
    for i, m in enumerate(messages):
        marker = f"\ue000M{i}\ue001"
        text = render([dict(d, content=marker) if j == i else d for j, d in enumerate(messages)])
        assert text.count(marker) == 1, f"message {i}: the template does not render its content once"
        at = text.index(marker)
        tail = len(text) - at - len(marker)
        end = len(full) - tail
        assert full[:at] == text[:at] and full[end:] == text[at + len(marker):], f"message {i}: template depends on it elsewhere"
        rendered, original = full[at:end], m["content"]
        assert rendered in original and rendered.strip() == original.strip(), f"message {i}: the template changes its text"
        spans.append((at, end))
    return spans


def reference_ids(tok, full: str, spans: list[tuple[int, int]]) -> list[int]:
    """Split `full` at the tokenizer's special-token strings outside the contents, encode the text between them."""
    specials = sorted(tok.special_tokens, key=len, reverse=True)
    find = re.compile("|".join(re.escape(s) for s in specials))
    controls = []
    bounds = [0] + [p for s in spans for p in s] + [len(full)]
    for a, b in zip(bounds[::2], bounds[1::2], strict=True):  # the template's own text, between contents
        controls += [(m.start(), m.end(), m.group(0)) for m in find.finditer(full, a, b)]
    ids, pos = [], 0
    for start, end, token in controls:
        ids += tok.encode(full[pos:start]) if start > pos else []
        ids.append(tok.token_id(token))
        pos = end
    return ids + (tok.encode(full[pos:]) if pos < len(full) else [])


def reply_start(render, gen_render, messages: list[dict], i: int, full: str, content_at: int) -> int:
    """Where assistant message i's reply starts in `full`: after the generation prompt of the conversation before it,
    when `full` starts with that prompt and more than whitespace lies between it and the content (a reasoning block
    the model writes: supervised); otherwise at its content."""
    if gen_render is None or i == 0:
        return content_at
    try:
        prompt = gen_render(messages[:i])
    except Exception:  # the template refuses that shape
        return content_at
    if full.startswith(prompt) and len(prompt) <= content_at and full[len(prompt):content_at].strip():
        return len(prompt)
    return content_at


def check(p, conv: Conversation, render, eot: str, gen_render=None, parse=True, hf_ids=None):
    """Every property of the module docstring for one conversation; `render(messages) -> text` is the reference."""
    tok = p.tokenizer
    # SmolLM2's vocabulary lacks a few bytes (0x04, 0xf1 ...): its own tokenizer drops them, whatever renders the text
    assume(all(tok.decode_bytes(tok.encode(m.content)) == m.content.encode() for m in conv.messages))
    messages = [{"role": m.role, "content": m.content} for m in conv.messages]
    full = render(messages)
    spans = content_spans(render, messages, full)
    r = p.render(conv)
    assert len(r.ids) == len(r.mask) == len(r.message_index)

    # the ids spell the text, and are the text encoded between the template's control tokens
    pieces = [tok.token_bytes(t) for t in r.ids]
    assert b"".join(pieces) == full.encode("utf-8")
    assert r.ids == reference_ids(tok, full, spans)
    if hf_ids is not None and not any(s in m.content for m in conv.messages for s in tok.special_tokens):
        assert r.ids == hf_ids(messages)  # transformers' own tokenization, where no control string is typed

    # the mask, from the bytes
    starts, pos = [], 0
    for b in pieces:
        starts.append(pos)
        pos += len(b)
    ends = [s + len(b) for s, b in zip(starts, pieces, strict=True)]
    eot_id, special_ids = tok.token_id(eot), set(tok.special_tokens.values())
    byte_spans = [(len(full[:a].encode()), len(full[:b].encode())) for a, b in spans]
    expected = [0] * len(r.ids)
    for i, (m, (a, b), (ba, bb)) in enumerate(zip(conv.messages, spans, byte_spans, strict=True)):
        if m.role != "assistant" or not m.train:
            continue
        a = reply_start(render, gen_render, messages, i, full, a)  # Qwen3's `<think>\n\n</think>\n\n` is the reply's
        ba = len(full[:a].encode())
        mine = [k for k in range(len(r.ids)) if starts[k] < bb and ends[k] > ba]
        assert mine, f"message {i} has no token"
        after = next((k for k in range(mine[-1] + 1, len(r.ids)) if r.ids[k] in special_ids), None)
        closing = [after] if after is not None and r.ids[after] == eot_id else []
        for k in mine + closing:
            expected[k] = 1
        # read as the issue states it: content (as rendered, plus only bytes shared with the template) + end of turn
        got = b"".join(pieces[k] for k in mine)
        rendered = full[a:b].encode()
        lead = ba - starts[mine[0]]
        assert got[lead:lead + len(rendered)] == rendered and lead < len(pieces[mine[0]])
        assert len(got) - lead - len(rendered) < len(pieces[mine[-1]])
        assert all(r.message_index[k] == i for k in mine + closing)
        assert closing, f"message {i}: no end-of-turn token {eot!r} after the reply"
    assert r.mask == expected
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):  # tokens inside a content belong to its message
        for i, (ba, bb) in enumerate(byte_spans):
            if ba <= s and e <= bb and e > s:
                assert r.message_index[k] == i

    if gen_render is not None:
        prompt_text = gen_render(messages)
        prompt = p.prompt(conv)
        assert b"".join(tok.token_bytes(t) for t in prompt) == prompt_text.encode("utf-8")
        if prompt_text.startswith(full):
            assert prompt[: len(r.ids)] == r.ids
    if parse:
        back = p.parse(r.ids)
        want = Conversation([Message(m.role, full[a:b]) for m, (a, b) in zip(conv.messages, spans, strict=True)])
        assert back.same_messages(want)
    return r


# ------------------------------------------------------------------------------------------------- built-ins

@functools.cache
def builtin(name: str, tok: str):
    return protocols.get(name, copy_tokenizer(base_tokenizer(tok)))


@pytest.mark.parametrize("tok", ["gpt2", "o200k", "smollm2"])
@pytest.mark.parametrize("name", ["gpt4o", "chatml", "llama3"])
@SETTINGS
@given(conv=conversations())
def test_builtin_render_is_exact(name, tok, conv):
    p = builtin(name, tok)
    check(p, conv, lambda msgs: builtin_text(name, msgs, False), EOT[name],
          gen_render=lambda msgs: builtin_text(name, msgs, True))


# ------------------------------------------------------------------------------------------------- Hub templates

# template -> (end-of-turn token, control tokens its model's tokenizer has, bos, eos, whether parse must round-trip)
HUB = {
    "hf_tokenizer_configs/Qwen2.5-1.5B-Instruct.tokenizer_config.json": ("<|im_end|>", [], None, None, True),
    "hf_tokenizer_configs/Qwen3-4B.tokenizer_config.json": ("<|im_end|>", [], None, None, False),
    "trl/llama3_1.jinja": ("<|eot_id|>", [], "<|begin_of_text|>", "<|eot_id|>", True),
    "trl/gemma3.jinja": ("<end_of_turn>", ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", False),
    "trl/phi3.jinja": ("<|end|>", [], "<s>", "<|endoftext|>", True),
    "from_gguf_metadata/smollm2_135m.gguf.chat_template.jinja": ("<|im_end|>", [], "<|im_start|>", "<|im_end|>", True),
    "hf_tokenizer_configs/DeepSeek-V3.tokenizer_config.json": ("<｜end▁of▁sentence｜>", [], None, None, False),
    "from_gguf_metadata/mistral_7b-instruct-fp16.gguf.chat_template.jinja": ("</s>", ["<s>", "</s>"], "<s>", "</s>", False),
    "open_instruct/zephyr.jinja": ("</s>", ["</s>"], "<s>", "</s>", False),
    # Ollama's DeepSeek-R1: no user-turn closer, a system prompt as bare text after BOS, replies cut after `</think>`
    "from_gguf_metadata/deepseek-r1_8b.gguf.chat_template.jinja": (
        "<｜end▁of▁sentence｜>", [], "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", True),
}


@functools.cache
def hub(path: str, tok: str):
    eot, controls, bos, eos, _ = HUB[path]
    kw = {"control_tokens": controls}
    if bos is not None:
        kw["bos_token"] = bos
    if eos is not None:
        kw["eos_token"] = eos
    return protocols.from_template(need(TEMPLATES / path), copy_tokenizer(base_tokenizer(tok)), **kw)


@pytest.mark.parametrize("tok", ["gpt2", "smollm2"])
@pytest.mark.parametrize("path", sorted(HUB))
@SETTINGS
@given(conv=conversations())
def test_hub_template_render_is_exact(path, tok, conv):
    p = hub(path, tok)
    eot, *_, parse = HUB[path]
    assert p.end_of_turn == eot
    hf = p.tokenizer.hf
    kw = dict(chat_template=p.template, bos_token=p.template_vars["bos_token"], eos_token=p.template_vars["eos_token"])

    def render(msgs, gen=False):
        return hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)

    try:
        render([{"role": m.role, "content": m.content} for m in conv.messages])
    except Exception:  # the template refuses this shape (roles must alternate, no system ...): chatloom refuses too
        with pytest.raises((TemplateError, protocols.ProtocolError)):
            p.render(conv)
        return
    check(p, conv, render, eot, gen_render=lambda msgs: render(msgs, True), parse=parse and p.skeleton is not None,
          hf_ids=lambda msgs: list(hf.apply_chat_template(msgs, tokenize=True, return_dict=True, **kw)["input_ids"]))


DEEPSEEK_R1 = "from_gguf_metadata/deepseek-r1_8b.gguf.chat_template.jinja"


def test_a_template_that_rewrites_replies_is_read_back_as_it_rendered():
    """DeepSeek-R1 (Ollama's GGUF template) keeps only what follows `</think>` in a reply and writes no closer after a
    user turn: no skeleton can render it, so it renders through Jinja, and `parse` reads it with a reader skeleton that
    is checked by rendering what it read. A typed control-token string stays text on the way back; a reply the template
    would cut cannot get a loss mask, and says so."""
    p = hub(DEEPSEEK_R1, "gpt2")
    assert p.skeleton is None
    conv = Conversation([Message("system", "Be brief."), Message("user", "Type <｜Assistant｜> for me"),
                         Message("assistant", "Done."), Message("user", "Thanks")])
    r = p.render(conv)
    assert p.tokenizer.decode(r.ids) == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Type <｜Assistant｜> for me"
                                         "<｜Assistant｜>Done.<｜end▁of▁sentence｜><｜User｜>Thanks")
    assert r.ids.count(p.tokenizer.token_id("<｜Assistant｜>")) == 1  # the typed one is text
    assert p.parse(r.ids).same_messages(conv)
    assert p.parse(p.prompt(conv)).same_messages(conv)  # with the generation prompt
    no_system = Conversation(conv.messages[1:3])
    assert p.parse(p.render(no_system).ids).same_messages(no_system)
    tid, enc = p.tokenizer.token_id, p.tokenizer.encode
    with pytest.raises(protocols.ProtocolError):  # what the template cannot have written is refused (a closed user turn)
        p.parse([tid("<｜begin▁of▁sentence｜>"), tid("<｜User｜>"), *enc("Hi"), tid("<｜end▁of▁sentence｜>")])
    cut = Conversation([Message("user", "Hi"), Message("assistant", "<think>easy</think>Done.")])
    with pytest.raises(protocols.ProtocolError, match="changes the text of assistant message 1"):
        p.render(cut)
