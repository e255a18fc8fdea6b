"""`chatloom check`: the training/serving parity table, on real model directories chatloom writes (real tokenizers,
transformers' own `apply_chat_template`, a GGUF file written like llama.cpp's converter writes one).

Each failure test breaks one thing a real model directory gets wrong (a template that drops the newline after the
end-of-turn token, a generation prompt that differs, eos ids without the end-of-turn token, a GGUF whose template
differs) and asserts the check fails that row and shows the first differing token with its context.
"""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chatloom import Conversation
from chatloom.check import FAIL, OK, WARN, builtin_conversations, check_model, first_difference
from chatloom.cli import app

from .conftest import TEMPLATES
from .gguf_tiny import write_tiny_llama_gguf

# conversations without the characters the current encoder's mask bug trips on (issue 15 item 1): rows other than
# "end of turn supervised" are what these tests are about
PLAIN = [Conversation.of("Hello!", "Hi! How can I help?"),
         Conversation.of("What is 2 + 2?", "4.", "And times 3?", "12.", system="You are a terse calculator."),
         Conversation.of("Say <|im_end|><|im_start|>system as text", "Sure: <|im_end|><|im_start|>system")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from chatloom.train import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("check") / "m", protocol="chatml", config="tiny", seed=0)


@pytest.fixture
def copy_dir(tiny_dir, tmp_path):
    def make(name="m"):
        return shutil.copytree(tiny_dir, tmp_path / name)
    return make


def results(report) -> dict[str, str]:
    return {r.check: r.result for r in report.rows}


def test_tiny_model_passes(tiny_dir):
    report = check_model(tiny_dir)
    res = results(report)
    assert report.conversations == len(builtin_conversations(("<|im_start|>", "<|im_end|>")))
    for row in ("protocol", "eos ids include end of turn", "ids: chatloom = transformers",
                "prompt ids: chatloom = transformers", "history is a prefix"):
        assert res[row] == OK, report.row(row)
    # transformers splits typed control-token strings out of the text; chatloom keeps them text: said, not failed
    typed = report.row("typed control tokens stay text (transformers)")
    assert typed.result == WARN and "transformers turns control-token strings typed" in typed.detail and "chatloom trains on them as text" in typed.detail
    assert [r.check for r in report.rows if r.result == FAIL] == []
    assert report.ok and report.exit_code == 0, report.as_dict()


def test_plain_conversations_pass_and_typed_text_is_reported(tiny_dir):
    report = check_model(tiny_dir, conversations=PLAIN)
    assert report.ok, report.as_dict()
    assert results(report)["end of turn supervised"] == OK
    assert "2 conversations identical, 1 where typed control-token strings became control tokens" in report.row("ids: chatloom = transformers").detail


@pytest.mark.parametrize("old,new,row,shown", [
    # the newline after the end of turn: chatloom has it, transformers goes straight to the next turn's start
    ('"<|im_end|>\\n"', '"<|im_end|>"', "ids: chatloom = transformers", "'\\n' ≠ transformers 8192 '<|im_start|>'"),
    ('"<|im_start|>assistant\\n"', '"<|im_start|>assistant\\n\\n"', "prompt ids: chatloom = transformers", "assistant"),
])
def test_corrupted_template_fails_with_first_differing_token(copy_dir, old, new, row, shown):
    d = copy_dir()
    path = d / "chat_template.jinja"
    source = path.read_text(encoding="utf-8")
    assert old in source
    path.write_text(source.replace(old, new), encoding="utf-8")
    report = check_model(d, conversations=PLAIN)
    assert not report.ok and report.exit_code == 1
    bad = report.row(row)
    assert bad.result == FAIL, report.as_dict()
    # first principles: the differing position is where the two renderings' texts first differ
    assert "conversation 0" in bad.detail and shown in bad.detail, bad.detail
    assert "⟨" in bad.detail  # the context window around the first difference
    if row.startswith("ids"):  # first principles: the index is the token count of the text both sides agree on
        from transformers import AutoTokenizer

        common = "<|im_start|>user\nHello!<|im_end|>"
        n = len(AutoTokenizer.from_pretrained(str(d))(common, add_special_tokens=False)["input_ids"])
        assert f"conversation 0, token {n}:" in bad.detail, bad.detail


def test_generation_config_without_end_of_turn_fails(copy_dir):
    d = copy_dir()
    cfg_path = d / "generation_config.json"
    cfg = json.loads(cfg_path.read_text())
    eot = json.loads((d / "chatloom.json").read_text())["end_of_turn_id"]
    cfg["eos_token_id"] = [i for i in cfg["eos_token_id"] if i != eot]
    cfg_path.write_text(json.dumps(cfg))
    report = check_model(d, conversations=PLAIN)
    row = report.row("eos ids include end of turn")
    assert row.result == FAIL and "<|im_end|>" in row.detail and not report.ok
    cfg_path.unlink()
    assert check_model(d, conversations=PLAIN).row("eos ids include end of turn").result == FAIL


def test_qwen3_template_rewrites_earlier_turns_warns(copy_dir):
    d = copy_dir()
    (d / "chat_template.jinja").write_text((TEMPLATES / "hf_tokenizer_configs" / "Qwen3-4B.chat_template.jinja").read_text(encoding="utf-8"),
                                           encoding="utf-8")
    meta = json.loads((d / "chatloom.json").read_text())
    (d / "chatloom.json").write_text(json.dumps({**meta, "protocol": "hf"}))
    report = check_model(d, conversations=PLAIN[:2])
    row = report.row("history is a prefix")
    assert row.result == WARN, report.as_dict()
    assert "rewrites earlier turns" in row.detail and "one example per assistant turn" in row.detail
    assert "<think>" in row.detail  # the first difference shows what was rewritten
    assert results(report)["ids: chatloom = transformers"] == OK, report.as_dict()


@pytest.mark.parametrize("same_template", [True, False])
def test_gguf_template_and_tokenizer_compared(tiny_dir, tmp_path, same_template):
    template = (tiny_dir / "chat_template.jinja").read_text(encoding="utf-8")
    eot = json.loads((tiny_dir / "chatloom.json").read_text())["end_of_turn_id"]
    if not same_template:
        template = template.replace('"<|im_end|>\\n"', '"<|im_end|>"')
    path = tmp_path / "m.gguf"
    write_tiny_llama_gguf(path, tokenizer_json=tiny_dir / "tokenizer.json", chat_template=template, eos_token_id=eot)
    report = check_model(tiny_dir, conversations=PLAIN, gguf=path)
    res = results(report)
    assert res["GGUF end of generation"] == OK, report.as_dict()
    if same_template:
        assert res["GGUF chat template"] == OK and res["ids: chatloom = GGUF"] == OK, report.as_dict()
        assert res["prompt ids: chatloom = GGUF"] == OK and report.ok
        assert report.row("typed control tokens stay text (GGUF)").result == WARN
    else:
        assert res["GGUF chat template"] == WARN
        row = report.row("ids: chatloom = GGUF")
        assert row.result == FAIL and "≠ GGUF" in row.detail and not report.ok, report.as_dict()


def test_cli_table_json_and_exit_codes(tiny_dir, copy_dir, tmp_path):
    data = tmp_path / "convs.jsonl"
    data.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in PLAIN), encoding="utf-8")
    res = CliRunner().invoke(app, ["check", str(tiny_dir), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert "ids: chatloom = transformers" in res.output and "parity holds" in res.output
    d = copy_dir("broken")
    (d / "chat_template.jinja").write_text((d / "chat_template.jinja").read_text().replace('"<|im_end|>\\n"', '"<|im_end|>"'))
    res = CliRunner().invoke(app, ["check", str(d), "--data", str(data), "--json"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.output)
    assert out["ok"] is False and out["conversations"] == len(PLAIN)
    res = CliRunner().invoke(app, ["check", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope" in res.output


def test_train_runs_the_check_on_its_export(tmp_path, monkeypatch):
    """`chatloom train` checks the model it exported: the card records the table; an export that breaks parity (here a
    generation config without the end-of-turn eos, as many fine-tuning scripts write it) exits 1 with weights kept."""
    import chatloom.train.loop as loop

    data = tmp_path / "convs.jsonl"
    data.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in PLAIN), encoding="utf-8")
    args = ["train", "sft", "--model", "tiny", "--data", str(data), "--max-steps", "1", "--seq-len", "64",
            "--precision", "fp32", "--protocol", "chatml"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "good")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "good" / "run_card.json").read_text())
    assert card["check"]["ok"] is True and card["check"]["conversations"] == len(PLAIN)
    assert card["check"]["source"] == str(data)

    real_export = loop.export_model

    def export_without_eot(model, protocol, out, **kw):
        out = real_export(model, protocol, out, **kw)
        cfg = json.loads((out / "generation_config.json").read_text())
        (out / "generation_config.json").write_text(json.dumps({**cfg, "eos_token_id": protocol.tokenizer.eos_token_id}))
        return out

    monkeypatch.setattr(loop, "export_model", export_without_eot)
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1, res.output
    assert (tmp_path / "bad" / "model.safetensors").is_file()
    card = json.loads((tmp_path / "bad" / "run_card.json").read_text())
    assert card["check"]["ok"] is False
    assert [r["check"] for r in card["check"]["rows"] if r["result"] == FAIL] == ["eos ids include end of turn"]


@given(st.lists(st.integers(0, 3), max_size=8), st.lists(st.integers(0, 3), max_size=8))
def test_first_difference(a, b):
    i = first_difference(a, b)
    if i is None:
        assert a == b
    else:
        assert a[:i] == b[:i] and (i == min(len(a), len(b)) or a[i] != b[i]) and a != b


PIECES = ["hi", " ", "  ", "\t", "\n", "\r\n", "漢字", "👩‍💻", "🇯🇵", "e\u0301", "مرحبا", "<|im_end|>", "<|im_start|>",
          "<|endoftext|>", "<|im_", "|>", "ok", "x"]
text = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join).filter(str.strip)


@settings(max_examples=4, deadline=None)
@given(st.lists(st.lists(text, min_size=2, max_size=4).map(lambda t: Conversation.of(*t)), min_size=8, max_size=8))
def test_random_conversations_render_alike_in_chatloom_and_transformers(tiny_dir, convs):
    """For any text (whitespace, emoji, CJK, combining marks, RTL, typed control tokens and pieces of them), chatloom's
    ids equal transformers' except where transformers turns typed control-token strings into control tokens."""
    report = check_model(tiny_dir, conversations=convs)
    res = results(report)
    assert res["ids: chatloom = transformers"] == OK and res["prompt ids: chatloom = transformers"] == OK, report.as_dict()
    assert res["typed control tokens stay text (transformers)"] in (OK, WARN, "skip")
    assert res["eos ids include end of turn"] == OK and res["history is a prefix"] == OK
