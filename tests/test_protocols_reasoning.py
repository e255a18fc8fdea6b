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
    # everything after the header is the model's to write: the block's tags, the reasoning, the content, end of turn
    assert supervised_text(p, r) == "<think>\nLet me add: 2+2 is 4.\n</think>\n\n" + "It is 4." + eot
    assert set(r.message_index[k] for k in range(len(r.ids)) if r.mask[k]) == {2}
    back = p.parse(r.ids)
    assert back.same_messages(conv) and back.messages[2].reasoning_content == conv.messages[2].reasoning_content
    # off: the same ids; the reasoning text is not supervised, its tags still are (GPT-2 cuts this one at the tags)
    p.train_reasoning = False
    off = p.render(conv)
    assert off.ids == r.ids and off.message_index == r.message_index
    assert supervised_text(p, off) == "<think>\n\n</think>\n\n" + "It is 4." + eot
    # the exported chat template renders the same text (transformers' apply_chat_template)
    hf = p.tokenizer.hf
    assert hf.apply_chat_template([m.to_dict() for m in conv.messages], chat_template=p.chat_template,
                                  tokenize=False) == builtin_text(name, conv)


def test_untrained_reasoning_turn_is_not_supervised():
    p = protocols.get("chatml", gpt2())
    conv = Conversation([Message("user", "q"), Message("assistant", "a", train=False, reasoning_content="r")])
    assert p.render(conv).num_supervised == 0


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
        # supervised: what each assistant turn holds after `<|im_start|>assistant\n` (Qwen3 keeps the reasoning block
        # only after the last user turn), then the end of turn; off: the same without the reasoning text
        want = off_want = ""
        for i, m in enumerate(conv.messages):
            if m.role == "assistant":
                last = i == len(conv.messages) - 1
                block = "<think>\n" + m.reasoning_content.strip("\n") + "\n</think>\n\n" if last else ""
                assert block in text
                want += block + m.content + "<|im_end|>"
                off_want += ("<think>\n\n</think>\n\n" if last else "") + m.content + "<|im_end|>"
        assert supervised_text(p, r) == want
        p.train_reasoning = False
        off = p.render(conv)
        assert off.ids == r.ids
        assert supervised_text(p, off) == off_want  # GPT-2 cuts these at the tags
        p.train_reasoning = True
        assert p.parse(r.ids).same_messages(Conversation([  # what the text holds: earlier reasoning was dropped
            Message(m.role, m.content, reasoning_content=m.reasoning_content.strip("\n")
                    if m.reasoning_content is not None and i == len(conv.messages) - 1 else None)
            for i, m in enumerate(conv.messages)]))


def test_qwen3_training_template_agrees_with_trl_generation_mask():
    """TRL's Qwen3 training template marks with `{% generation %}` what the model writes: `<think>` block, content,
    `<|im_end|>\\n`. Used as chatloom's template, the ids are transformers' and chatloom's mask is TRL's, but for the
    newline after `<|im_end|>` (template whitespace after the end of turn, never supervised here)."""
    p = qwen3(TEMPLATES / "trl" / "qwen3_training.jinja")
    convs = [thinking(), Conversation([Message("user", "Hi"), Message("assistant", "Hello! 🤖"),
                                       Message("user", "2+2?"), Message("assistant", "4", reasoning_content="add")])]
    for train_reasoning in (True, False):
        p.train_reasoning = train_reasoning
        for conv in convs:
            msgs = [{k: v for k, v in m.to_dict().items() if k != "train"} for m in conv.messages]
            out = p.tokenizer.hf.apply_chat_template(msgs, chat_template=p.template, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True, bos_token="", eos_token="<|im_end|>")
            r = p.render(conv)
            assert r.ids == list(out["input_ids"])
            theirs = list(out["assistant_masks"])
            ours_only = [k for k in range(len(r.ids)) if r.mask[k] and not theirs[k]]
            theirs_only = [p.tokenizer.decode([r.ids[k]]) for k in range(len(r.ids)) if theirs[k] and not r.mask[k]]
            assert ours_only == []
            if train_reasoning:
                assert set(theirs_only) == {"\n"}
            else:  # and the reasoning text, which TRL cannot leave out
                assert "".join(t for t in theirs_only if t != "\n").strip() in ("Let me add: 2+2 is 4.", "add")


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
    # the tags are supervised either way (GPT-2 cuts this text at the tags and the reasoning)
    reply = len(p.tokenizer.encode("<think>\n")) + len(p.tokenizer.encode("\n</think>\n\nIt is 4."))
    assert examples[0].num_supervised == reply + 1 + (n_reasoning if train_reasoning else 0)


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
