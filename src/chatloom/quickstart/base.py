"""The quickstart's base model without a download: a small chatloom Llama pretrained on the Python stdlib's own prose.

`ensure_base` writes the corpus (`corpus.py`: stdlib prose, arithmetic drill sheets, conduct notes) as JSONL documents, pretrains
with `chatloom.train` for the number of steps the caller sized to its time budget, and caches the result under `~/.cache/chatloom/base-<key>` (`CHATLOOM_CACHE`
overrides the root), so a second quickstart skips it. The key depends on the config, the protocol, the Python version
(the corpus), the seed and chatloom's version, not on the step count measured for this machine, so a rerun always hits the cache.
`bring_base` instead takes any model directory or `.gguf` file and writes it as a plain model directory with the
protocol's control tokens, so it can be evaluated before SFT exactly like the built-in base.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import model_meta
from .corpus import CORPUS_VERSION, corpus_groups, pretraining_documents


def cache_root() -> Path:
    return Path(os.environ.get("CHATLOOM_CACHE") or Path.home() / ".cache" / "chatloom")


def cache_key(config: str, protocol: str, seq_len: int, tag: str = "", seed: int = 0) -> str:
    from .. import __version__

    parts = [config, protocol, seq_len, tag, sys.version_info[:2], __version__, CORPUS_VERSION] + ([seed] if seed else [])
    text = json.dumps(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_documents_jsonl(path: Path, docs: Iterable[str]) -> tuple[Path, int]:
    """`docs` as one {"text": document} per line, written atomically; returns (path, number of documents)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part, n = path.with_suffix(".partial"), 0
    with part.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            n += 1
    part.rename(path)
    return path, n


def write_corpus_jsonl(path: Path, max_chars: int | None = None) -> tuple[Path, int]:
    """The pretraining corpus, one {"text": document} per line; returns (path, number of documents)."""
    return write_documents_jsonl(path, pretraining_documents(max_chars))


def replay_documents(every: int = 6) -> Iterator[str]:
    """Every `every`-th group of the base's corpus (a prose document, its arithmetic sheet, and a conduct note when the
    group has one), so the replay keeps the corpus's mix (a stride over single documents would pick prose only)."""
    for group in itertools.islice(corpus_groups(), 0, None, every):
        yield from group


def replay_corpus(every: int = 6) -> Path:
    """The replay documents as JSONL, mixed into SFT so the base does not forget what it learned in pretraining
    (cached next to the corpus)."""
    name = f"replay2-{CORPUS_VERSION}-{every}-py{sys.version_info[0]}{sys.version_info[1]}.jsonl"
    path = cache_root() / "corpus" / name
    if not path.is_file():
        write_documents_jsonl(path, replay_documents(every))
    return path


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and model_meta.path(path).is_file()


def ensure_base(config: str, steps: int, *, protocol: str = "chatml", seq_len: int = 256, batch_size: int = 16,
                lr: float = 2e-3, tag: str = "", corpus_chars: int | None = None, max_seconds: float = 0.0,
                seed: int = 0, log=print) -> tuple[Path, bool]:
    """(model dir, reused): the cached pretrained base, trained now (for `steps` steps or `max_seconds`, whichever
    ends first) if missing."""
    from ..train import TrainConfig, train

    out = cache_root() / f"base-{cache_key(config, protocol, seq_len, tag, seed)}"
    if is_model_dir(out):
        log(f"base model: reusing the cached {out}")
        return out, True
    name = f"{CORPUS_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}{f'-{corpus_chars}' if corpus_chars else ''}.jsonl"
    corpus, n = write_corpus_jsonl(cache_root() / "corpus" / name, max_chars=corpus_chars)
    limit = f" (at most {max_seconds:.0f} s)" if max_seconds else ""
    log(f"base model: pretraining config {config!r} for {steps} steps{limit} on {n} documents: stdlib prose, "
        f"arithmetic sheets and conduct notes ({corpus})")
    work = out.parent / f"{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    train(TrainConfig(out=str(work), mode="pretrain", model=config, text=[str(corpus)], protocol=protocol,
                      max_steps=steps, max_seconds=max_seconds, seq_len=seq_len, batch_size=batch_size, lr=lr,
                      warmup_steps=max(1, steps // 20), seed=seed))
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return out, False


def bring_base(source: str, out_dir: Path, protocol: str = "chatml") -> Path:
    """A user's model (HF directory or .gguf) as a plain model directory with `protocol`'s control tokens."""
    from .. import protocols
    from ..train.export import export_model
    from ..train.models import end_of_turn_like, fit_vocab, load_model

    model, tok = load_model(source)
    proto = protocols.get(protocol, tok)
    fit_vocab(model, len(tok), end_of_turn_like(proto, model))
    return export_model(model, proto, out_dir, extra={"base_model": str(source)})
