"""What a `pip install chatloom` user gets: the built wheel holds every non-Python file of the package (tokenizer,
templates, embedded data, migrations), so the installed package runs without the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from .conftest import ROOT


def source_files() -> list[str]:
    """The files of a clean checkout's package and build config, as git tracks them (else as on disk, for an sdist)."""
    out = subprocess.run(["git", "ls-files", "src", "pyproject.toml", "README.md"], cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()
    return ["pyproject.toml", "README.md"] + [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*") if p.is_file()
                                              and "__pycache__" not in p.parts and ".egg-info" not in str(p)]


@pytest.mark.slow
def test_wheel_contains_every_non_python_file(tmp_path):
    # Build from a copy of the tracked files only: an egg-info left by an editable install lists the data files and
    # would hide a package-data rule that misses them (as `*.json` once was).
    clean = tmp_path / "src-copy"
    files = source_files()
    for rel in files:
        (clean / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, clean / rel)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(clean)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("chatloom-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = sorted(p.removeprefix("src/") for p in files if p.startswith("src/chatloom/") and not p.endswith(".py"))
    assert any(p.endswith("tokenizer.json") for p in wanted)  # the file that was once left out
    missing = [p for p in wanted if p not in names]
    assert missing == [], f"the wheel lacks {missing}"
