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

from hypothesis import given, settings
from hypothesis import strategies as st

from chatloom import Conversation
from chatloom.tokenizers import TiktokenTokenizer

SRC = Path(__file__).resolve().parents[1] / "src" / "chatloom"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_cli(name: str) -> bool:
    return name in ("chatloom.cli", "chatloom.__main__") or name.endswith(".cli")


def imported_modules(path: Path, top_level: bool = False) -> set[str]:
    """Every module an import statement in this file names (relative imports resolved), at any depth (or only the
    statements at module level: what importing the file runs)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in (tree.body if top_level else ast.walk(tree)):
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


# --- private names across modules ------------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(str.strip)


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 3))
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for _ in range(n):
        messages.append({"role": "user", "content": draw(TEXT)})
        reply = {"role": "assistant", "content": draw(TEXT)}
        if draw(st.booleans()):
            reply["train"] = draw(st.booleans())
        messages.append(reply)
    meta = draw(st.one_of(st.none(), st.fixed_dictionaries({"lang": st.sampled_from(["en", "de"]),
                                                              "tags": st.lists(st.sampled_from(["a", "b"]))})))
    return Conversation.from_dict({"messages": messages, **({"meta": meta} if meta else {})})


@settings(max_examples=60, deadline=None)
@given(conversations())
def test_parquet_rows_read_back_to_the_same_conversation(conv):
    """`from_parquet_row` (public: importers and mix use it) inverts `to_parquet_row`, for every conversation."""
    from chatloom.conversation import from_parquet_row, to_parquet_row

    back = Conversation.from_dict(from_parquet_row(to_parquet_row(conv)))
    assert back.to_dict() == conv.to_dict() and back.id == conv.id


def test_the_tiktoken_internals_chatloom_relies_on(o200k):
    """tiktoken has no public API for an encoding's rank table or split pattern; `tokenizers._mergeable_ranks` and
    `tokenizers._pattern` are the only readers of its private attributes. This pins what they must return (checked
    against tiktoken's public API), so a tiktoken release that renames or changes them fails here."""
    from chatloom.tokenizers import _mergeable_ranks, _pattern

    enc = o200k.enc
    ranks, pattern = _mergeable_ranks(enc), _pattern(enc)
    assert isinstance(ranks, dict) and isinstance(pattern, str) and len(ranks) == 199998
    some = list(ranks.items())[:: len(ranks) // 50]
    assert all(isinstance(token, bytes) and enc.decode_single_token_bytes(rank) == token for token, rank in some)
    assert enc.n_vocab == max([*ranks.values(), *o200k.special_tokens.values()]) + 1
    import tiktoken

    twin = tiktoken.Encoding("twin", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    text = "Hello world! 2+2 = 4 \u00fcn\u00efc\u00f8d\u00e9 \u6f22\u5b57 \U0001f916\n\n  x"
    assert twin.encode_ordinary(text) == enc.encode_ordinary(text)


def test_tiktoken_special_tokens_are_our_own_map():
    """`special_tokens` comes from tiktoken's public API and is chatloom's own dict: changing it, or adding control
    tokens, never changes the encoding another tokenizer object holds."""
    from chatloom import load_tokenizer

    o200k = load_tokenizer(Path(__file__).parent / "fixtures" / "tiktoken" / "o200k_base.tiktoken")
    enc = o200k.enc  # its own: the session's o200k fixture may have control tokens added by another test
    tok = TiktokenTokenizer(enc, "o200k_base")
    assert tok.special_tokens == {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 199999
    tok.special_tokens["<|bogus|>"] = 5
    assert "<|bogus|>" not in enc.special_tokens_set
    tok = TiktokenTokenizer(enc, "o200k_base")
    assert tok.add_special_tokens(["<|im_start|>", "<|im_end|>"]) == ["<|im_start|>", "<|im_end|>"]
    assert tok.token_id("<|im_start|>") == 200264 and tok.token_id("<|im_end|>") == 200265
    assert tok.encode("<|im_start|>") != [200264] and tok.decode([200265]) == "<|im_end|>"
    assert enc.special_tokens_set == {"<|endoftext|>", "<|endofprompt|>"} and o200k.enc is enc
    starts = tok.encode_with_starts(["a<|im_end|>\u00fc"])[0][1]
    assert starts[0] == 0 and len(starts) == len(tok.encode("a<|im_end|>\u00fc"))


def top_level_imports(path: Path) -> set[str]:
    """chatloom modules this file imports when it is imported (module level, not inside functions)."""
    return {m for m in imported_modules(path, top_level=True) if m.startswith("chatloom")}


def test_data_modules_import_each_other_in_one_direction():
    """records <- oasst <- importers: the OASST reader and the importers no longer need a lazy import to break a cycle."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {n: {m for m in top_level_imports(p) if m in modules and m != n} for n, p in modules.items()}
    assert "chatloom.data.oasst" in graph["chatloom.data.importers"]
    assert "chatloom.data.records" in graph["chatloom.data.oasst"]

    def reaches(start: str, goal: str) -> bool:
        todo, seen = [start], set()
        while todo:
            n = todo.pop()
            if n == goal:
                return True
            if n not in seen:
                seen.add(n)
                todo += [m for m in graph.get(n, ()) if not m.endswith("__init__")]
        return False

    for n in [m for m in graph if m.startswith("chatloom.data.") and m != "chatloom.data"]:
        assert not any(reaches(m, n) for m in graph[n] if m != "chatloom.data"), n
    out = subprocess.run([sys.executable, "-c", "import chatloom.data.oasst, chatloom.data.importers as i; "
                          "assert i.oasst_records is chatloom.data.oasst.oasst_records"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- defaults that change what the caller passed in (documented where they happen) --------------------------------


def test_protocols_get_adds_control_tokens_to_the_callers_tokenizer_unless_copy():
    from chatloom import load_tokenizer, protocols

    tok = load_tokenizer(None)
    n = len(tok)
    protocols.get("chatml", tok, copy=True)
    assert len(tok) == n and tok.token_id("<|im_start|>") is None
    proto = protocols.get("chatml", tok)
    assert proto.tokenizer is tok and len(tok) == n + 2 and tok.token_id("<|im_start|>") == n
    assert "Changes the tokenizer it is given" in protocols.get.__doc__


def test_engine_fuses_the_callers_weights_into_views_unless_fast_is_off():
    import torch

    from chatloom import protocols
    from chatloom.engine import Engine, SamplingParams
    from chatloom.train.models import fit_vocab, load_model

    model, tok = load_model("tiny", seed=0)
    proto = protocols.get("chatml", tok)
    fit_vocab(model, len(tok))
    attn = model.model.layers[0].self_attn
    before = [p.detach().clone() for p in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)]
    assert attn.q_proj.weight.untyped_storage().data_ptr() != attn.k_proj.weight.untyped_storage().data_ptr()
    slow = Engine(model, proto, fast=False)
    assert attn.q_proj.weight.untyped_storage().data_ptr() != attn.k_proj.weight.untyped_storage().data_ptr()
    conv = Conversation.from_dict({"messages": [{"role": "user", "content": "What is 2+2?"}]})
    want = slow.generate([conv], SamplingParams(max_tokens=6, temperature=0.0))[0].ids
    fast = Engine(model, proto)
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.k_proj.weight.untyped_storage().data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(before, (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight),
                                                 strict=True))  # same values, now views of one fused tensor
    assert fast.generate([conv], SamplingParams(max_tokens=6, temperature=0.0))[0].ids == want
    assert "changes the model it is given" in Engine.__doc__
