"""Shared test fixtures: paths to the real third-party files in tests/fixtures, small tokenizers, and the rule for what
may skip.

Everything a test reads lives in this repository (`tests/fixtures/`, see its README for sources, licences and hashes),
so a clean clone passes on its own. Under CI (`CI` set, as `.ci/run` runs) a test whose requirement is missing
(Chromium, PostgreSQL, an optional package that `.ci/run` installs) FAILS instead of skipping: a green CI means the
important tests ran. Outside CI the same tests skip, with the reason in the summary (`-rs`). A test that may
legitimately skip even in CI (hardware this machine kind never has, e.g. a GPU) says so with `@pytest.mark.allow_skip`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TEMPLATES = FIXTURES / "chat_templates"
GPT2_JSON = TEMPLATES / "tokenizers" / "gpt2.tokenizer.json"
O200K = FIXTURES / "tiktoken" / "o200k_base.tiktoken"
CL100K = FIXTURES / "tiktoken" / "cl100k_base.tiktoken"
CHROMIUM = "/usr/bin/chromium"
IN_CI = bool(os.environ.get("CI"))


def need(path: Path) -> Path:
    """A fixture file: it is part of the repository, so a missing one is a failure, never a skip."""
    assert path.exists(), f"test fixture missing from the repository: {path}"
    return path


def require(available: bool, what: str) -> None:
    """Skip (outside CI) or fail (under CI) when `what` is not available on this machine."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test but {what} (.ci/run installs it)", pytrace=False)
    pytest.skip(f"needs {what}")


def require_chromium() -> str:
    require(bool(shutil.which(CHROMIUM)), f"Debian chromium at {CHROMIUM}")
    return CHROMIUM


def require_pg() -> str:
    """The PostgreSQL URL of the test cluster (`CHATLOOM_TEST_PG`, which `.ci/run` starts)."""
    url = os.environ.get("CHATLOOM_TEST_PG", "")
    require(bool(url), "PostgreSQL (CHATLOOM_TEST_PG=postgresql://...)")
    return url


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_skip(reason): this test may skip even under CI (hardware CI never has)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skip is a failure unless the test is marked allow_skip: importorskip, a missing binary or service
    cannot turn an important test quietly green."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and item.get_closest_marker("allow_skip") is None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (not allowed; mark allow_skip if it must): {reason}"


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
