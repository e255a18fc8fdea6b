"""`chatloom chat` as a user runs it: a subprocess fed through stdin (multi-turn, /system, /tokens, /save, /reset)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatloom.conversation import load

from .test_engine import make_tiny_model_dir

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.slow
def test_chat_repl_multi_turn_commands_and_save(tmp_path, bundled_tokenizer_path):
    model = make_tiny_model_dir(tmp_path / "model", bundled_tokenizer_path)
    saved = tmp_path / "out" / "chat.jsonl"
    script = "\n".join(["/system You are Loom.", "hello there", "and a second ünï 🙂 question", "/tokens",
                        f"/save {saved}", "/reset", "/tokens", "/bogus", "/quit", "never sent"]) + "\n"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "120", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "chatloom.cli", "chat", "--model", str(model), "--max-tokens", "8",
                          "--seed", "3"], input=script, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.count("assistant> ") == 2 and "system message set" in out
    assert "chatml:" in out and "supervised" in out  # the token view panel
    assert "<|im_start|>" in out and "You are Loom." in out.replace("\u200b", "")
    assert f"saved 5 messages to {saved}" in out and "conversation reset" in out and "no messages yet" in out
    assert "unknown command /bogus" in out
    [conv] = list(load(saved))
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.messages[0].content == "You are Loom." and conv.messages[3].content == "and a second ünï 🙂 question"
    assert all(m.content.strip() for m in conv.messages)
    replies = [line.split("assistant> ", 1)[1] for line in out.splitlines() if line.startswith("assistant> ")]
    assert replies == [conv.messages[2].content, conv.messages[4].content]
