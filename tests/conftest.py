"""Shared test fixtures: paths to the real third-party files in ../shared/fixtures and small tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("CHATLOOM_FIXTURES", ROOT.parent / "shared" / "fixtures"))
TEMPLATES = FIXTURES / "chat_templates"
GPT2_JSON = TEMPLATES / "tokenizers" / "gpt2.tokenizer.json"
O200K = FIXTURES / "tiktoken" / "o200k_base.tiktoken"
CL100K = FIXTURES / "tiktoken" / "cl100k_base.tiktoken"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"fixture missing: {path}")
    return path


@pytest.fixture(scope="session")
def o200k():
    from chatloom import load_tokenizer

    return load_tokenizer(need(O200K))


@pytest.fixture
def gpt2():
    """A fresh GPT-2 tokenizer (protocols add control tokens to it, so each test gets its own)."""
    from chatloom import load_tokenizer

    return load_tokenizer(need(GPT2_JSON))


@pytest.fixture(scope="session")
def bundled_tokenizer_path():
    return ROOT / "src" / "chatloom" / "assets" / "tokenizer"
