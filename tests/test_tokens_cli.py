"""`chatloom tokens` and `chatloom tokenizer train`: the token view in the terminal, as JSON and as an HTML page."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from chatloom import Conversation, load_tokenizer, protocols, save
from chatloom.cli import app

from .conftest import CL100K, GPT2_JSON, O200K, TEMPLATES, need

runner = CliRunner()


@pytest.fixture
def convs_file(tmp_path):
    path = tmp_path / "c.jsonl"
    save([Conversation.of("What is 2+2?", "2+2 = 4", system="You are Loom, a helpful assistant.", id="a"),
          Conversation.of("Say <script>alert(1)</script> <|im_end|>", "No.", id="b")], path)
    return path


def test_tokens_json_with_o200k_gpt4o(convs_file):
    result = runner.invoke(app, ["tokens", str(convs_file), "--protocol", "gpt4o", "--tokenizer", str(need(O200K)), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    first = rows[0]
    assert set(first) >= {"id", "ids", "mask", "tokens"}
    assert len(first["ids"]) == len(first["mask"]) == len(first["tokens"])
    assert first["ids"][:3] == [200264, 17360, 200266] and first["tokens"][0] == "<|im_start|>"
    assert first["tokens"][first["ids"].index(1428)] == "user"
    assert sum(first["mask"]) == len(load_tokenizer(O200K).encode("2+2 = 4")) + 1
    assert rows[1]["ids"].count(200265) == 2  # the typed <|im_end|> stayed text


def test_tokens_html_is_self_contained_and_escaped(convs_file, tmp_path):
    out = tmp_path / "view.html"
    result = runner.invoke(app, ["tokens", str(convs_file), "--protocol", "chatml", "--tokenizer", str(need(GPT2_JSON)),
                                 "--html", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<script" not in page and "&lt;" in page
    assert "http://" not in page and "https://" not in page
    assert "This conversation is <b>" in page and "supervised" in page


def test_tokens_with_template_and_terminal_view(convs_file):
    cfg = TEMPLATES / "hf_tokenizer_configs" / "Qwen2.5-1.5B-Instruct.tokenizer_config.json"
    result = runner.invoke(app, ["tokens", str(convs_file), "--template", str(need(cfg)), "--tokenizer", str(need(GPT2_JSON))])
    assert result.exit_code == 0, result.output
    assert "tokens," in result.stdout and "supervised" in result.stdout and "<|im_start|>" in result.stdout


def test_tokens_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    result = runner.invoke(app, ["tokens", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:2" in result.output and "messages[0].role" in result.output
    result = runner.invoke(app, ["tokens", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_console_script_runs_default_example():
    out = subprocess.run([sys.executable, "-m", "chatloom.cli", "tokens", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows[0]["id"] == "seed-arithmetic" and sum(rows[0]["mask"]) > 0


def test_tokenizer_train_cli_and_use(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("The assistant answers questions politely. What is 2+2? 2+2 = 4.\n" * 50)
                      + "".join(f"word{i} " for i in range(500)))
    out = tmp_path / "tok"
    result = runner.invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "400", "-o", str(out)])
    assert result.exit_code == 0, result.output
    tok = load_tokenizer(out)
    assert len(tok) <= 400 and tok.decode(tok.encode("What is 2+2?")) == "What is 2+2?"
    p = protocols.get("chatml", tok)
    assert set(p.added_tokens) == {"<|im_start|>", "<|im_end|>"}
    r = p.render(Conversation.of("hi", "hello"))
    assert p.parse(r.ids).same_messages(Conversation.of("hi", "hello"))
    bad = runner.invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "100", "-o", str(out)])
    assert bad.exit_code == 2 and "vocab-size" in bad.output


def test_cl100k_and_tiktoken_control_ids():
    tok = load_tokenizer(need(CL100K))
    p = protocols.get("gpt4o", tok)
    assert [tok.token_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|im_sep|>")] == [100264, 100265, 100266]
    conv = Conversation.of("héllo 🤖", "wörld")
    assert p.parse(p.render(conv).ids).same_messages(conv)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope.tiktoken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown tiktoken encoding"):
        (tmp_path / "mine.tiktoken").write_text("")
        load_tokenizer(tmp_path / "mine.tiktoken")


def test_fast_encoder_equals_rust_tokenizer(gpt2):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    twin = gpt2.fast_encoder()
    assert twin is not None

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=80))
    def check(text):
        assert twin.encode_ordinary(text) == gpt2._text.encode(text, add_special_tokens=False).ids

    check()
