"""Layering: library code never reaches up into the command line, and each shared rule has one home.

- No module but `chatloom.cli`, `chatloom.__main__` and the sub-command `*/cli.py` files imports `chatloom.cli` or typer
  (read from the source with `ast`, lazy imports inside functions included, and checked again in `sys.modules` after
  importing every library module and calling the code paths that used to import the CLI).
- The bundled tokenizer lives in `chatloom.tokenizers` (`load_tokenizer(None)`); protocol resolution in
  `chatloom.protocols.resolve`; the old names stay importable and are the same objects.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from chatloom import Conversation

SRC = Path(__file__).resolve().parents[1] / "src" / "chatloom"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_cli(name: str) -> bool:
    return name in ("chatloom.cli", "chatloom.__main__") or name.endswith(".cli")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in this file names (relative imports resolved), at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def library_modules() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if not is_cli(module_name(p)) and "migrations" not in p.parts]


def test_the_module_walk_sees_the_tree():
    names = {module_name(p) for p in library_modules()}
    assert {"chatloom.data.mix", "chatloom.label.preview", "chatloom.tokenizers", "chatloom.engine"} <= names
    assert not names & {"chatloom.cli", "chatloom.data.cli", "chatloom.__main__"}
    assert "chatloom.cli" in imported_modules(SRC / "__main__.py")  # the reader resolves relative imports ...
    assert "chatloom.conversation" in imported_modules(SRC / "data" / "mix.py")  # ... two levels up too


def test_no_library_module_imports_the_cli_or_typer():
    offenders = {}
    for path in library_modules():
        bad = {m for m in imported_modules(path)
               if m == "chatloom.cli" or m.startswith("chatloom.cli.") or m.split(".")[0] == "typer"}
        if bad:
            offenders[module_name(path)] = sorted(bad)
    assert offenders == {}


def test_importing_and_using_the_library_loads_no_cli():
    names = [module_name(p) for p in library_modules()]
    script = f"""
import importlib, json, sys, tempfile, pathlib
for name in {names!r}:
    importlib.import_module(name)
from chatloom.label.preview import _protocol
from chatloom import protocols
_protocol("chatml", None)
protocols.resolve("gpt4o")
print(json.dumps(sorted(m for m in sys.modules if m == "chatloom.cli" or m.split(".")[0] == "typer")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_bundled_tokenizer_has_one_home_and_the_old_names_still_work(bundled_tokenizer_path):
    from chatloom import cli, load_tokenizer, tokenizers
    from chatloom.train import models

    assert tokenizers.BUNDLED_TOKENIZER == bundled_tokenizer_path.resolve()
    assert cli.DEFAULT_TOKENIZER is tokenizers.BUNDLED_TOKENIZER is models.BUNDLED_TOKENIZER
    a, b = load_tokenizer(None), load_tokenizer(bundled_tokenizer_path)
    assert a is not load_tokenizer(None)  # a fresh object: protocols add control tokens to it
    assert len(a) == len(b) == 8192 and a.encode("What is 2+2?") == b.encode("What is 2+2?")


def test_resolve_gives_what_the_cli_gave(bundled_tokenizer_path):
    """Pinned before the move: `cli.resolve_protocol(name, None, None)` was `get(name, bundled BPE)`, and a template
    meant `hf` with that template."""
    from chatloom import cli, load_tokenizer, protocols

    assert cli.resolve_protocol is protocols.resolve
    conv = Conversation.of("What is 2+2? <|im_end|>", "2+2 = 4")
    for name in ("chatml", "gpt4o", "llama3"):
        want = protocols.get(name, load_tokenizer(bundled_tokenizer_path))
        got = protocols.resolve(name, None, None)
        assert got.name == name and got.render(conv).ids == want.render(conv).ids
        assert got.render(conv).mask == want.render(conv).mask
    template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    hf = protocols.resolve("gpt4o", str(bundled_tokenizer_path), template)
    assert isinstance(hf, protocols.TemplateProtocol)
    assert hf.render_text(conv.to_dict()["messages"]) == \
        "<|im_start|>user\nWhat is 2+2? <|im_end|><|im_end|>\n<|im_start|>assistant\n2+2 = 4<|im_end|>\n"
