"""SFT mixtures from a YAML recipe: weighted sources, filters, dedupe, decontamination, seeded shuffle and split.

Recipe (every key but `sources` optional):

```yaml
seed: 0
protocol: chatml                 # token counts and token filters use this protocol ...
tokenizer: path/or/model/dir     # ... and tokenizer (default: chatloom's bundled BPE)
filters: {min_turns: 2, max_turns: 20, min_tokens: 8, max_tokens: 2048, languages: [en],
          tags_any: [...], tags_none: [...], licenses: [Apache-2.0, CC-BY-4.0]}
dedupe: {exact: true, near: {threshold: 0.85, num_perm: 128, shingle: 5}}
decontaminate: {files: [heldout.jsonl], n: 8}
split: {validation: 0.05}
shard_rows: 50000
sources:
  - {name: oasst, path: oasst.jsonl, fraction: 0.5}   # keep a seeded half
  - {name: alpaca, path: [a.jsonl, b.jsonl], count: 1000}  # exactly 1000 rows (fewer if fewer survive)
  - {name: identity, path: id.jsonl, epochs: 3, filters: {max_tokens: 512}}
```

`build_mixture` runs named steps, source by source in recipe order: `read_source` (validation; bad records to
`rejects.jsonl`; token counts), `filtered` (filters, no supervised token, decontamination: a user turn that shares an
n-gram of `n` words with an evaluation file's user turns), `weighted` (the source's fraction / count / epochs, seeded),
`Deduplicator` (exact: normalised text hash; near: MinHash LSH over word shingles of the whole conversation) on the rows
the weight kept, so the first *kept* occurrence in recipe order wins and a row sampled out never removes its twin
(a `count` source samples first, then dedupes: it can end with fewer rows, and its ledger says what dedupe removed),
then `Kept` (split and write). Kept rows go to a spill file on disk; memory holds only a small sort key per kept row
(plus the MinHash index and a `count` source's candidates), so it stays flat as inputs grow. The final order is a seeded
hash of (row id, repeat), so the same recipe and seed give byte-identical shards.
Outputs: `train-*.parquet`, `validation-*.parquet`, `mixture.json` (the ledger) and `report.html` (pictures inline).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..conversation import Conversation, Rejects, load, to_parquet_row

WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    return " ".join(WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def seeded_unit(seed: int, *parts) -> float:
    h = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def conversation_text(c: Conversation) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in c.messages)


@dataclass
class SourceLedger:
    name: str
    files: list[str]
    weight: dict
    rows_in: int = 0
    rows_out: int = 0
    tokens_out: int = 0
    supervised_tokens_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    licenses: Counter = field(default_factory=Counter)
    lengths_in: list[int] = field(default_factory=list)
    lengths_out: list[int] = field(default_factory=list)
    turns_out: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"name": self.name, "files": self.files, "weight": self.weight, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "tokens_out": self.tokens_out, "supervised_tokens_out": self.supervised_tokens_out,
                "dropped": dict(self.dropped), "licenses": dict(self.licenses)}


class RecipeError(ValueError):
    pass


def load_recipe(path: Path) -> dict:
    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(recipe, dict) or not isinstance(recipe.get("sources"), list) or not recipe["sources"]:
        raise RecipeError(f"{path}: sources: a non-empty list is required")
    base = Path(path).parent
    for i, s in enumerate(recipe["sources"]):
        if not isinstance(s, dict) or "path" not in s:
            raise RecipeError(f"{path}: sources[{i}].path: required")
        weights = [k for k in ("fraction", "count", "epochs") if k in s]
        if len(weights) > 1:
            raise RecipeError(f"{path}: sources[{i}]: give one of fraction, count, epochs (got {weights})")
        paths = s["path"] if isinstance(s["path"], list) else [s["path"]]
        s["path"] = [str(p if Path(p).is_absolute() else base / p) for p in paths]
        s.setdefault("name", Path(s["path"][0]).stem)
    dec = recipe.get("decontaminate") or {}
    dec["files"] = [str(p if Path(p).is_absolute() else base / p) for p in dec.get("files", [])]
    recipe["decontaminate"] = dec
    return recipe


def _filter_reason(c: Conversation, n_tokens: int, f: dict) -> str | None:
    n = len(c.messages)
    if "min_turns" in f and n < f["min_turns"]:
        return "too_few_turns"
    if "max_turns" in f and n > f["max_turns"]:
        return "too_many_turns"
    if "min_tokens" in f and n_tokens < f["min_tokens"]:
        return "too_few_tokens"
    if "max_tokens" in f and n_tokens > f["max_tokens"]:
        return "too_many_tokens"
    if f.get("languages") and (c.meta.get("lang") or "") not in f["languages"]:
        return "language"
    tags = set(c.meta.get("tags") or [])
    if f.get("tags_any") and not tags & set(f["tags_any"]):
        return "tags"
    if f.get("tags_none") and tags & set(f["tags_none"]):
        return "tags"
    if f.get("licenses") and (c.meta.get("license") or "") not in f["licenses"]:
        return "license"
    if c.messages[-1].role != "assistant":
        return "no_final_assistant_turn"
    return None


class NearDuplicates:
    def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 5):
        from datasketch import MinHash, MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm, self.shingle, self.count = num_perm, shingle, 0
        template = MinHash(num_perm=num_perm, seed=1)
        self.permutations, self.scheme = template.permutations, template.scheme  # drawn once, shared by every row

    def seen(self, text: str) -> bool:
        """True if a near-duplicate was already added; otherwise adds this text."""
        from datasketch import MinHash

        words = normalise(text).split()
        grams = {" ".join(words[i:i + self.shingle]) for i in range(max(1, len(words) - self.shingle + 1))}
        mh = MinHash(num_perm=self.num_perm, seed=1, permutations=self.permutations, scheme=self.scheme)
        mh.update_batch([g.encode() for g in grams])
        if self.lsh.query(mh):
            return True
        self.lsh.insert(str(self.count), mh)
        self.count += 1
        return False


def ngrams(text: str, n: int) -> set[int]:
    words = normalise(text).split()
    return {hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)}


# ---------------------------------------------------------------------------------------------------- the steps
@dataclass
class Row:
    """A valid conversation of one source with its token counts under the recipe's protocol."""
    conv: Conversation
    n_tokens: int
    n_sup: int


def read_source(src: dict, protocol, rejects: Rejects, ledger: SourceLedger, progress=None) -> Iterator[Row]:
    """Step 1, read: every valid record of a source's files (bad ones go to `rejects`), rendered 256 at a time to count
    its tokens and supervised tokens. `progress()` is called after each batch."""
    def measured(batch: list[Conversation]) -> Iterator[Row]:
        for c, r in zip(batch, protocol.render_batch(batch), strict=True):
            ledger.lengths_in.append(len(r.ids))
            yield Row(c, len(r.ids), r.num_supervised)

    batch: list[Conversation] = []
    for path in src["path"]:
        for c in load(path, on_error="skip", rejects=rejects):
            ledger.rows_in += 1
            batch.append(c)
            if len(batch) >= 256:
                yield from measured(batch)
                batch = []
                if progress:
                    progress()
    yield from measured(batch)
    if progress:
        progress()


class Contamination:
    """The n-grams (of `n` words) of every user turn in the evaluation files; a row whose user turns share one is out."""

    def __init__(self, files: list[str], n: int = 8):
        self.n, self.grams = n, set()
        for f in files:
            for c in load(f):
                for m in c.messages:
                    if m.role == "user":
                        self.grams |= ngrams(m.content, n)

    def hits(self, c: Conversation) -> bool:
        return bool(self.grams) and any(ngrams(m.content, self.n) & self.grams for m in c.messages if m.role == "user")


def filtered(rows: Iterable[Row], filters: dict, contamination: Contamination, ledger: SourceLedger) -> Iterator[Row]:
    """Step 2, filter: the rows that pass the filters, have a supervised token and are not contaminated (the reason
    for every other row is counted in the ledger)."""
    for row in rows:
        reason = _filter_reason(row.conv, row.n_tokens, filters)
        if reason is None and row.n_sup == 0:
            reason = "no_supervised_tokens"
        if reason is None and contamination.hits(row.conv):
            reason = "contaminated"
        if reason is None:
            yield row
        else:
            ledger.dropped[reason] += 1


def source_weight(src: dict) -> dict:
    return {k: src[k] for k in ("fraction", "count", "epochs") if k in src} or {"fraction": 1.0}


def weighted(rows: Iterable[Row], weight: dict, seed: int, ledger: SourceLedger) -> Iterator[tuple[Row, int]]:
    """Step 3, weight: (row, copies) for the rows the source's weight keeps, in input order. `fraction`: a seeded
    share of rows; `count`: the `count` rows with the smallest seeded keys (held until the source ends); `epochs`:
    every row `int(epochs)` times plus once more for a seeded share of the fraction. Rows left out count as sampled_out."""
    if "count" in weight:
        heap: list[tuple[float, int, Row]] = []
        for seq, row in enumerate(rows):
            heapq.heappush(heap, (-seeded_unit(seed, "keep", row.conv.id), -seq, row))
            if len(heap) > int(weight["count"]):
                heapq.heappop(heap)
                ledger.dropped["sampled_out"] += 1
        for _, _, row in sorted(heap, key=lambda e: -e[1]):
            yield row, 1
        return
    fraction = float(weight.get("fraction", 1.0))
    epochs = float(weight.get("epochs", 1.0))
    for row in rows:
        if seeded_unit(seed, "keep", row.conv.id) >= fraction:
            ledger.dropped["sampled_out"] += 1
            continue
        copies = int(epochs) + (1 if seeded_unit(seed, "epoch", row.conv.id) < epochs - int(epochs) else 0)
        if copies == 0:
            ledger.dropped["sampled_out"] += 1
            continue
        yield row, copies


class Deduplicator:
    """Step 4, dedupe: exact (hash of the normalised text) and near (MinHash LSH) duplicates of rows already kept.
    Only rows that survived their weight are offered, so the first *kept* occurrence in recipe order wins."""

    def __init__(self, config: dict):
        self.exact = config.get("exact", True)
        self.seen: set[bytes] = set()
        near = config.get("near") or None
        self.near = NearDuplicates(near.get("threshold", 0.85), near.get("num_perm", 128), near.get("shingle", 5)) \
            if near else None

    def duplicate(self, c: Conversation) -> str | None:
        """The reason this row is a duplicate of a kept row, or None (then it is recorded as kept)."""
        text = conversation_text(c)
        h = hashlib.blake2b(normalise(text).encode(), digest_size=16).digest() if self.exact else None
        if h is not None and h in self.seen:
            return "exact_duplicate"
        if self.near is not None and self.near.seen(text):
            return "near_duplicate"
        if h is not None:
            self.seen.add(h)
        return None


class Kept:
    """Steps 5 and 6, split and write: kept rows go to a spill file on disk, memory holds one small sort key per copy
    (a seeded hash of (row id, repeat), its split by a seeded hash of the id); `write` sorts the keys and writes the
    Parquet shards of each split."""

    def __init__(self, out_dir: Path, seed: int, val_fraction: float):
        self.spill = tempfile.TemporaryFile(mode="w+b", dir=out_dir)
        self.seed, self.val_fraction = seed, val_fraction
        self.keys: list[tuple[float, int, int, int, str]] = []  # (order key, offset, length, source index, split)

    def add(self, row: Row, copies: int, source_index: int, ledger: SourceLedger) -> None:
        c = row.conv
        data = json.dumps(to_parquet_row(c), ensure_ascii=False).encode()
        split = "validation" if seeded_unit(self.seed, "split", c.id) < self.val_fraction else "train"
        for repeat in range(copies):
            offset = self.spill.seek(0, 2)
            self.spill.write(data)
            self.keys.append((seeded_unit(self.seed, "order", c.id, repeat), offset, len(data), source_index, split))
            ledger.rows_out += 1
            ledger.tokens_out += row.n_tokens
            ledger.supervised_tokens_out += row.n_sup
            ledger.lengths_out.append(row.n_tokens)
            ledger.turns_out[len(c.messages)] += 1
            ledger.licenses[c.meta.get("license") or "(unstated)"] += 1

    def rows(self, split: str) -> int:
        return sum(1 for k in self.keys if k[4] == split)

    def write(self, out_dir: Path, shard_rows: int) -> dict[str, list[str]]:
        self.keys.sort()
        written: dict[str, list[str]] = {"train": [], "validation": []}
        for split in ("train", "validation"):
            rows = [k for k in self.keys if k[4] == split]
            for start in range(0, len(rows), shard_rows):
                shard = out_dir / f"{split}-{start // shard_rows:05d}.parquet"
                _write_shard(shard, self.spill, rows[start:start + shard_rows])
                written[split].append(shard.name)
        self.spill.close()
        return written


def build_mixture(recipe_path: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    """Build the mixture a recipe describes into `out_dir`: shards, `mixture.json` (returned) and `report.html`."""
    from ..protocols import get as get_protocol
    from ..tokenizers import load_tokenizer
    from .report import write_report

    recipe = load_recipe(Path(recipe_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(recipe.get("seed", 0))
    protocol = get_protocol(recipe.get("protocol", "chatml"), load_tokenizer(recipe.get("tokenizer") or None))
    global_filters = recipe.get("filters") or {}
    contamination = Contamination(recipe["decontaminate"]["files"], int(recipe["decontaminate"].get("n", 8)))
    dedupe = Deduplicator(recipe.get("dedupe") or {})
    kept = Kept(out_dir, seed, float((recipe.get("split") or {}).get("validation", 0.0)))
    rejects = Rejects(out_dir / "rejects.jsonl")
    ledgers: list[SourceLedger] = []
    with _progress_bar(progress) as bar:
        for si, src in enumerate(recipe["sources"]):
            ledger = SourceLedger(src["name"], src["path"], source_weight(src))
            ledgers.append(ledger)
            rows = read_source(src, protocol, rejects, ledger, _progress_of(bar, f"source {src['name']}", ledger))
            rows = filtered(rows, {**global_filters, **(src.get("filters") or {})}, contamination, ledger)
            for row, copies in weighted(rows, ledger.weight, seed, ledger):
                reason = dedupe.duplicate(row.conv)
                if reason is None:
                    kept.add(row, copies, si, ledger)
                else:
                    ledger.dropped[reason] += 1
    written = kept.write(out_dir, int(recipe.get("shard_rows", 50_000)))
    result = {"recipe": str(recipe_path), "recipe_hash": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16],
              "seed": seed, "protocol": protocol.name, "tokenizer": protocol.tokenizer.name,
              "rows": {s: kept.rows(s) for s in ("train", "validation")},
              "shards": written, "rejected_records": rejects.count, "sources": [lg.to_dict() for lg in ledgers]}
    (out_dir / "mixture.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    write_report(out_dir / "report.html", result, ledgers)
    return result


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} rows"),
               TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, disable=not enabled, transient=False)


def _progress_of(bar, description: str, ledger: SourceLedger):
    task = bar.add_task(description, total=None, rate="-")
    t0 = time.perf_counter()

    def update():
        bar.update(task, completed=ledger.rows_in, rate=f"{ledger.rows_in / max(time.perf_counter() - t0, 1e-9):,.0f}")
    return update


def _write_shard(path: Path, spill, rows) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..conversation import parquet_schema

    with pq.ParquetWriter(str(path), parquet_schema()) as writer:
        for start in range(0, len(rows), 4096):
            batch = []
            for _, offset, length, _, _ in rows[start:start + 4096]:
                spill.seek(offset)
                batch.append(json.loads(spill.read(length)))
            writer.write_table(pa.Table.from_pylist(batch, schema=parquet_schema()))
        if not rows:
            writer.write_table(pa.Table.from_pylist([], schema=parquet_schema()))
