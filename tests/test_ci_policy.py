"""The skip policy of tests/conftest.py, run in a separate pytest: under CI a skip (a missing browser, database or
package, an importorskip) fails unless the test is marked allow_skip; outside CI the same tests skip with a reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .conftest import ROOT

CASES = '''
import pytest

def test_missing_binary():
    from conftest import require
    require(False, "a binary")

def test_importorskip():
    pytest.importorskip("no_such_module_for_chatloom")

@pytest.mark.allow_skip("hardware CI never has")
def test_gpu_only():
    pytest.skip("needs CUDA")
'''


def run(tmp_path, ci: bool) -> str:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    return out.stdout


def test_under_ci_a_skip_fails_unless_allowed(tmp_path):
    out = run(tmp_path, ci=True)
    assert "2 failed, 1 skipped" in out, out
    assert "CI must run this test but a binary" in out and "no_such_module_for_chatloom" in out


def test_outside_ci_the_same_tests_skip_with_reasons(tmp_path):
    out = run(tmp_path, ci=False)
    assert "3 skipped" in out, out
    assert "needs a binary" in out and "needs CUDA" in out
