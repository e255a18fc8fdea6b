"""Offline pretraining text: English prose every machine with Python already has, arithmetic drill sheets, conduct notes.

The quickstart's base model must be trained without a download, so its prose comes from the Python installation
itself: the help topics of `pydoc_data` (the language reference, in prose) and the docstrings of the standard library.
A real base model learns that 7+5 is 12 from the arithmetic on the web (worksheets, tables, homework); the stdlib has
none, so `arithmetic_documents` writes drill sheets of single-digit +, - and * facts as plain text (no questions, no
turns). That is the chapter's division of labour: the facts come from pretraining, SFT only teaches the model to answer
in turns. The SFT held-out set still asks arithmetic questions that SFT training never asks. Likewise a real base
knows which acts hurt people; `conduct.py` writes that as plain notes, one after about every third document.
"""

from __future__ import annotations

import ast
import itertools
import random
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


CORPUS_VERSION = "stdlib-arith4-conduct2"  # part of the base model's cache key: change it when the corpus changes
OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
SHEET_TITLES = ["Practice sheet", "Arithmetic drill", "Homework", "Warm-up exercises", "Mental math", "Quick facts",
                "Fact families"]
CONDUCT_EVERY = 3  # a conduct note after one (prose, sheet) pair in three
# how a worked fact family says that the numbers stay and the operator changes (`6+4 = 10. Change + to -: 6-4 = 2.`)
CHANGES = ["Change {old} to {new}:", "With {new} instead of {old}:", "Now the same numbers with {new}:",
           "Switch {old} for {new}:", "Keep the numbers and use {new}:"]


def fact(a: int, op: str, b: int, spaced: bool = False) -> str:
    return f"{a} {op} {b} = {OPERATORS[op](a, b)}" if spaced else f"{a}{op}{b} = {OPERATORS[op](a, b)}"


def arithmetic_documents(seed: int = 0) -> Iterator[str]:
    """Endless drill sheets in a fixed order, every one of the 300 single-digit facts dozens of times. Three kinds
    take turns: one operator's table of a number (`7+0 = 7` ... `9+7 = 16`), a shuffled mix of facts, one per line,
    and fact families, where a line keeps the two numbers and changes the operator (`6+4 = 10, 6-4 = 2, 6*4 = 24`),
    half of them worked out in words (`6+4 = 10. Change + to -: 6-4 = 2.`): the last is how a reader learns that the
    numbers stay when only the operation changes, also when words stand between the facts."""
    rng = random.Random(f"arithmetic:{seed}")
    facts = [(a, op, b) for op in OPERATORS for a in range(10) for b in range(10)]
    for i in itertools.count():
        spaced = rng.random() < 0.3
        if i % 3 == 2:
            rows = []
            for _ in range(20):
                a, b = rng.randrange(10), rng.randrange(10)
                ops = rng.sample(list(OPERATORS), rng.choice((2, 3)))
                if rng.random() < 0.5:
                    rows.append(", ".join(fact(a, op, b, spaced) for op in ops))
                    continue
                steps = [fact(a, ops[0], b, spaced) + "."]
                for old, new in itertools.pairwise(ops):
                    steps.append(f"{rng.choice(CHANGES).format(old=old, new=new)} {fact(a, new, b, spaced)}.")
                rows.append(" ".join(steps))
            yield f"{SHEET_TITLES[-1]} {i}\n\n" + "\n".join(rows)
            continue
        if i % 3 == 0:
            op, a = rng.choice(list(OPERATORS)), rng.randrange(10)
            chosen = [(a, op, b) for b in range(10)] + [(b, op, a) for b in range(10) if b != a]
            title = f"{rng.choice(SHEET_TITLES[:-1])}: the {op} table of {a}"
        else:
            chosen = rng.sample(facts, 20)
            title = f"{rng.choice(SHEET_TITLES[:-1])} {i}"
        yield title + "\n\n" + "\n".join(fact(a, op, b, spaced) for a, op, b in chosen + rng.sample(chosen, len(chosen) // 2))


def corpus_groups(max_chars: int | None = None) -> Iterator[tuple[str, ...]]:
    """The base model's corpus in groups: each stdlib prose document with an arithmetic sheet after it (about half of
    the tokens: fewer and a small model does not learn the 300 facts within the quickstart's budget) and, in one
    group of `CONDUCT_EVERY` drawn at random (so any stride over the groups keeps the share), a conduct note (about a
    tenth of the tokens); cut after `max_chars` characters of prose (None: all)."""
    from .conduct import conduct_documents

    sheets, notes, rng = arithmetic_documents(), conduct_documents(), random.Random("conduct-placement")
    total = 0
    for doc in stdlib_documents():
        yield (doc, next(sheets)) + ((next(notes),) if rng.randrange(CONDUCT_EVERY) == 0 else ())
        total += len(doc)
        if max_chars and total >= max_chars:
            return


def pretraining_documents(max_chars: int | None = None) -> Iterator[str]:
    """The corpus's documents in order (see `corpus_groups`)."""
    for group in corpus_groups(max_chars):
        yield from group


def write_corpus(path: str | Path, max_chars: int | None = None) -> Path:
    """Write the pretraining corpus to a text file (documents separated by a blank line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc in pretraining_documents(max_chars):
            f.write(doc + "\n\n")
    return path


if __name__ == "__main__":
    print(write_corpus(sys.argv[1]))
