"""Offline pretraining text: English prose every machine with Python already has.

The quickstart's base model must be trained without a download, so its documents come from the Python installation
itself: the help topics of `pydoc_data` (the language reference, in prose) and the docstrings of the standard library.
Documents are written one per paragraph block, separated by blank lines.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path


def stdlib_documents(min_chars: int = 200) -> Iterator[str]:
    """Help topics first, then module/class/function docstrings of the standard library, in a fixed order."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if len(text) >= min_chars:
            yield text
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo") for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    yield doc.strip()


def write_corpus(path: str | Path, max_chars: int | None = None) -> Path:
    """Write the stdlib corpus to a text file (documents separated by a blank line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with path.open("w", encoding="utf-8") as f:
        for doc in stdlib_documents():
            f.write(doc + "\n\n")
            total += len(doc) + 2
            if max_chars and total >= max_chars:
                break
    return path


if __name__ == "__main__":
    print(write_corpus(sys.argv[1]))
