"""Assistant reasoning (`reasoning_content`) is kept, rendered as the template does, parsed back, supervised unless turned
off, and counted.

Checked from first principles: the rendered text is built here from the documented strings (built-ins:
`<think>\\n{reasoning}\\n</think>\\n\\n{content}`) or by transformers' `apply_chat_template` (Qwen3's template, TRL's
qwen3); the supervised tokens are decoded and compared with the reasoning, the content and the end-of-turn token as
rendered. Ids of conversations without reasoning are the ones main computed before reasoning existed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatloom import Conversation, Message, load_tokenizer, protocols
from chatloom.conversation import ValidationError, load, save
from chatloom.tokenizers import copy_tokenizer

from .conftest import GPT2_JSON, TEMPLATES, need

QWEN3 = TEMPLATES / "hf_tokenizer_configs" / "Qwen3-4B.chat_template.jinja"
TRL_QWEN3 = TEMPLATES / "trl" / "qwen3.jinja"
FORMATS = {  # begin, header, footer, end of turn (DESIGN §2)
    "gpt4o": ("", "<|im_start|>{role}<|im_sep|>", "<|im_end|>", "<|im_end|>"),
    "chatml": ("", "<|im_start|>{role}\n", "<|im_end|>\n", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>", "<|eot_id|>"),
}


def gpt2():
    return copy_tokenizer(load_tokenizer(need(GPT2_JSON)))


def supervised_text(p, r) -> str:
    return p.tokenizer.decode_bytes([i for i, m in zip(r.ids, r.mask, strict=True) if m]).decode("utf-8")


def thinking(reasoning="Let me add: 2+2 is 4.", content="It is 4.") -> Conversation:
    return Conversation([Message("system", "Be brief."), Message("user", "What is 2+2?"),
                         Message("assistant", content, reasoning_content=reasoning)])


# ------------------------------------------------------------------------------------------------ the Conversation


def test_ids_of_conversations_without_reasoning_are_unchanged():
    """The content-hash ids main gave before reasoning existed (computed with main's code at a657074)."""
    assert Conversation.of("What is 2+2?", "It is 4. 🤖", system="Be brief.").id == "c-940ba6be100a6b9c8188a07b"
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "train": False}]}
    assert Conversation.from_dict(record).id == "c-cae6495793054db8c2e51e20"
    # reasoning enters the id when present
    with_r = Conversation.from_dict({"messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "yo", "reasoning_content": "hm"}]})
    without = Conversation.from_dict({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert with_r.id != without.id and with_r.messages[1].reasoning_content == "hm"
    assert not with_r.same_messages(without)


def test_reasoning_is_validated():
    with pytest.raises(ValidationError, match=r"messages\[1\]\.reasoning_content: must be a string"):
        Conversation.from_dict({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo", "reasoning_content": 3}]})
    with pytest.raises(ValidationError, match=r"messages\[0\]\.reasoning_content: only assistant"):
        Conversation.from_dict({"messages": [{"role": "user", "content": "hi", "reasoning_content": "x"}]})


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_file_round_trip_keeps_reasoning(tmp_path: Path, suffix):
    convs = [thinking("思考 🤖\n  spaces  "), Conversation.of("hi", "hello"), thinking("")]
    path = tmp_path / f"c{suffix}"
    assert save(convs, path) == 3
    back = list(load(path))
    assert [c.to_dict() for c in back] == [c.to_dict() for c in convs]
    assert [c.messages[-1].reasoning_content for c in back] == ["思考 🤖\n  spaces  ", None, ""]
    assert [c.id for c in back] == [c.id for c in convs]
    if suffix == ".jsonl":  # a plain line without reasoning has no reasoning key
        assert "reasoning_content" not in path.read_text(encoding="utf-8").splitlines()[1]
    else:
        import pyarrow.parquet as pq

        column = pq.read_table(path).column("messages").to_pylist()
        assert column[1][1]["reasoning_content"] is None  # nullable column


# ------------------------------------------------------------------------------------------------ built-in formats


def builtin_text(name: str, conv: Conversation) -> str:
    begin, header, footer, _ = FORMATS[name]
    out = [begin]
    for m in conv.messages:
        think = f"<think>\n{m.reasoning_content}\n</think>\n\n" if m.reasoning_content is not None else ""
        out.append(header.replace("{role}", m.role) + think + m.content + footer)
    return "".join(out)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_builtin_renders_parses_and_supervises_reasoning(name):
    p = protocols.get(name, gpt2())
    eot = FORMATS[name][3]
    conv = thinking()
    assert p.text(conv) == builtin_text(name, conv)
    r = p.render(conv)
    assert p.tokenizer.decode_bytes(r.ids).decode() == builtin_text(name, conv)
    assert supervised_text(p, r) == "Let me add: 2+2 is 4." + "It is 4." + eot
    assert set(r.message_index[k] for k in range(len(r.ids)) if r.mask[k]) == {2}
    back = p.parse(r.ids)
    assert back.same_messages(conv) and back.messages[2].reasoning_content == conv.messages[2].reasoning_content
    # off: the same ids, only content + end of turn supervised
    p.train_reasoning = False
    off = p.render(conv)
    assert off.ids == r.ids and off.message_index == r.message_index
    assert supervised_text(p, off) == "It is 4." + eot
    # the exported chat template renders the same text (transformers' apply_chat_template)
    hf = p.tokenizer.hf
    assert hf.apply_chat_template([m.to_dict() for m in conv.messages], chat_template=p.chat_template,
                                  tokenize=False) == builtin_text(name, conv)


def test_untrained_reasoning_turn_is_not_supervised():
    p = protocols.get("chatml", gpt2())
    conv = Conversation([Message("user", "q"), Message("assistant", "a", train=False, reasoning_content="r")])
    assert p.render(conv).num_supervised == 0


piece = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", "\r\n", "🤖", "👨‍👩‍👧", "🇳🇴", "漢字", "東京", "中文，标点。",
                         "e\u0301", "שלום", "x", "Hello", "<think>", "</think>", "<|im_end|>", "don't"])
text = st.lists(st.one_of(piece, st.text(max_size=6)), min_size=1, max_size=6).map("".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(reasoning=text, content=text.filter(lambda s: s.strip() != ""), train_reasoning=st.booleans())
def test_chatml_reasoning_mask_from_first_principles(reasoning, content, train_reasoning):
    """For any reasoning text: the ids spell the DESIGN string; a token is supervised iff it contains a byte of the
    reasoning (when trained) or of the content, or is the closing end-of-turn token; no byte of either is left out."""
    p = chatml_gpt2()
    p.train_reasoning = train_reasoning
    conv = Conversation([Message("user", "Q?"), Message("assistant", content, reasoning_content=reasoning)])
    full = builtin_text("chatml", conv)
    r = p.render(conv)
    tok = p.tokenizer
    pieces = [tok.token_bytes(i) for i in r.ids]
    assert b"".join(pieces) == full.encode()
    head = "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    r_start = len(head.encode())
    r_end = r_start + len(reasoning.encode())
    c_start = r_end + len("\n</think>\n\n")
    c_end = c_start + len(content.encode())
    ranges = ([(r_start, r_end)] if train_reasoning else []) + [(c_start, c_end)]
    expected, pos = [], 0
    for b in pieces:
        expected.append(int(any(pos < e and pos + len(b) > s for s, e in ranges if e > s)))
        pos += len(b)
    eot_at = next(k for k in range(len(r.ids)) if sum(map(len, pieces[:k])) >= c_end and r.ids[k] == p.end_of_turn_id)
    expected[eot_at] = 1
    assert r.mask == expected
    assert all(r.message_index[k] == 1 for k in range(len(r.ids)) if r.mask[k])
    back = p.parse(r.ids)
    assert back.messages[1].content == content and back.messages[1].reasoning_content == reasoning


_CHATML = {}


def chatml_gpt2():
    if "p" not in _CHATML:
        _CHATML["p"] = protocols.get("chatml", gpt2())
    return _CHATML["p"]


# ------------------------------------------------------------------------------------------------ Hub templates


def qwen3(path: Path):
    return protocols.from_template(need(path), gpt2(), control_tokens=["<|im_start|>", "<|im_end|>"],
                                   eos_token="<|im_end|>", bos_token="")


def reference(p, conv: Conversation, **kw):
    messages = [m.to_dict() for m in conv.messages]
    for m in messages:
        m.pop("train", None)
    hf = p.tokenizer.hf
    text = hf.apply_chat_template(messages, chat_template=p.template, tokenize=False, **kw)
    ids = hf.apply_chat_template(messages, chat_template=p.template, tokenize=True, return_dict=True, **kw)["input_ids"]
    return text, list(ids)


@pytest.mark.parametrize("path", [QWEN3, TRL_QWEN3], ids=["Qwen3-4B", "trl-qwen3"])
def test_qwen3_template_equals_transformers_with_reasoning(path):
    p = qwen3(path)
    multi = Conversation([Message("user", "What is 2+2?"),
                          Message("assistant", "It is 4.", reasoning_content="Add them: 4."),
                          Message("user", "And 3+3?"),
                          Message("assistant", "It is 6. 🤖", reasoning_content="\n思考: 3+3 = 6\n")])
    for conv in (thinking(), multi):
        text, ids = reference(p, conv)
        assert p.render_text(conv) == text
        r = p.render(conv)
        assert r.ids == ids
        assert "<think>\n" + conv.messages[-1].reasoning_content.strip("\n") + "\n</think>\n\n" in text
        # supervised: each assistant's reasoning as rendered (Qwen3 keeps it only after the last user turn) + content + eot
        want = ""
        for i, m in enumerate(conv.messages):
            if m.role == "assistant":
                rendered_reasoning = m.reasoning_content.strip("\n") if i == len(conv.messages) - 1 else ""
                if rendered_reasoning:
                    assert rendered_reasoning in text
                want += rendered_reasoning + m.content + "<|im_end|>"
        assert supervised_text(p, r) == want
        p.train_reasoning = False
        off = p.render(conv)
        assert off.ids == r.ids
        assert supervised_text(p, off) == "".join(m.content + "<|im_end|>" for m in conv.messages if m.role == "assistant")
        p.train_reasoning = True


# ------------------------------------------------------------------------------------------------ training


def test_train_config_train_reasoning():
    from chatloom.train.config import TrainConfig

    assert TrainConfig().train_reasoning is True
    assert TrainConfig(train_reasoning=False).train_reasoning is False
    with pytest.raises(ValueError, match="train_reasoning"):
        TrainConfig(train_reasoning="no")


@pytest.mark.parametrize("train_reasoning", [True, False])
def test_data_stats_count_reasoning_tokens(train_reasoning):
    from chatloom.train.data import DataStats, conversation_examples

    p = protocols.get("chatml", gpt2())
    p.train_reasoning = train_reasoning
    convs = [thinking("one two three four"), Conversation.of("hi", "hello")]
    stats = DataStats()
    examples = conversation_examples(convs, p, 512, stats)
    n_reasoning = len(p.tokenizer.encode("one two three four"))
    assert stats.reasoning_conversations == 1
    assert stats.reasoning_tokens == n_reasoning
    assert stats.reasoning_supervised_tokens == (n_reasoning if train_reasoning else 0)
    assert stats.as_dict()["reasoning_supervised_tokens"] == stats.reasoning_supervised_tokens
    assert examples[0].num_supervised == len(p.tokenizer.encode("It is 4.")) + 1 + (n_reasoning if train_reasoning else 0)


def test_cli_no_train_reasoning_flag(monkeypatch):
    """`chatloom train sft --no-train-reasoning` reaches TrainConfig (the run itself is stubbed)."""
    from typer.testing import CliRunner

    from chatloom.train import cli, loop

    seen = {}

    class Stub:
        def __init__(self, cfg):
            seen["cfg"] = cfg
            raise ValueError("stub: not training")

    monkeypatch.setattr(loop, "Run", Stub)
    for args, want in ((["--no-train-reasoning"], False), ([], True)):
        result = CliRunner().invoke(cli.app, ["sft", "--data", "x.jsonl", *args])
        assert "stub: not training" in result.output, result.output
        assert seen["cfg"].train_reasoning is want
    assert json.loads(json.dumps(seen["cfg"].to_dict()))["train_reasoning"] is True


hub_text = st.lists(st.one_of(st.sampled_from([" ", "\n", "\n\n", "\t", "🤖", "👨‍👩‍👧", "漢字", "e\u0301", "שלום", "x", "Hello",
                                               "don't", "3.14"]), st.text(alphabet=st.characters(blacklist_categories=["Cs"]),
                                                                        max_size=5)),
                    min_size=1, max_size=5).map("".join).filter(lambda s: "<" not in s and s.strip() != "")
_QWEN = {}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(reasoning=hub_text, content=hub_text)
def test_qwen3_reasoning_property(reasoning, content):
    """Qwen3's own template on random reasoning: ids equal transformers'; the mask is exactly the tokens that contain a
    byte of the reasoning or the reply as the template renders them (`<think>\\n` + reasoning.strip('\\n') + ...), plus
    the end-of-turn token."""
    p = _QWEN.setdefault("p", qwen3(QWEN3))
    conv = Conversation([Message("user", "Q?"), Message("assistant", content, reasoning_content=reasoning)])
    text, ids = reference(p, conv)
    r = p.render(conv)
    assert r.ids == ids
    head = "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    shown_reasoning, shown_content = reasoning.strip("\n"), content.lstrip("\n")
    assert text == head + shown_reasoning + "\n</think>\n\n" + shown_content + "<|im_end|>\n"
    r_start = len(head.encode())
    r_end = r_start + len(shown_reasoning.encode())
    c_start = r_end + len("\n</think>\n\n")
    c_end = c_start + len(shown_content.encode())
    pieces = [p.tokenizer.token_bytes(i) for i in r.ids]
    expected, pos = [], 0
    for b in pieces:
        expected.append(int(any(pos < e and pos + len(b) > s for s, e in ((r_start, r_end), (c_start, c_end)) if e > s)))
        pos += len(b)
    expected[len(r.ids) - 2] = 1  # <|im_end|> before the final newline
    assert r.ids[len(r.ids) - 2] == p.end_of_turn_id
    assert r.mask == expected
