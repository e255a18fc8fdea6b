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

Rows pass, in order: validation, filters, exact dedupe (normalised text hash), near-duplicate removal (MinHash LSH over
word shingles of the whole conversation; the first occurrence in recipe order wins), decontamination (a user turn that
shares an n-gram of `n` words with an evaluation file's user turns), then the weight. Kept rows go to a spill file on
disk; memory holds only a small sort key per kept row (plus the MinHash index), so it stays flat as inputs grow. The
final order is a seeded hash of (row id, repeat), so the same recipe and seed give byte-identical shards.
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


def build_mixture(recipe_path: str | Path, out_dir: str | Path, progress: bool = True) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..protocols import get as get_protocol
    from ..tokenizers import load_tokenizer

    recipe = load_recipe(Path(recipe_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(recipe.get("seed", 0))
    protocol = get_protocol(recipe.get("protocol", "chatml"), load_tokenizer(recipe.get("tokenizer") or None))
    global_filters = recipe.get("filters") or {}
    dedupe = recipe.get("dedupe") or {}
    near_cfg = dedupe.get("near") or None
    near = NearDuplicates(near_cfg.get("threshold", 0.85), near_cfg.get("num_perm", 128), near_cfg.get("shingle", 5)) \
        if near_cfg else None
    exact_seen: set[bytes] = set()
    dec = recipe["decontaminate"]
    n_dec = int(dec.get("n", 8))
    contaminated: set[int] = set()
    for f in dec["files"]:
        for c in load(f):
            for m in c.messages:
                if m.role == "user":
                    contaminated |= ngrams(m.content, n_dec)
    val_fraction = float((recipe.get("split") or {}).get("validation", 0.0))
    recipe_hash = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    spill = tempfile.TemporaryFile(mode="w+b", dir=out_dir)
    keys: list[tuple[float, int, int, int, str]] = []  # (order key, offset, length, source index, split)
    ledgers: list[SourceLedger] = []
    rejects = Rejects(out_dir / "rejects.jsonl")
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} rows"),
               TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        for si, src in enumerate(recipe["sources"]):
            weight = {k: src[k] for k in ("fraction", "count", "epochs") if k in src} or {"fraction": 1.0}
            ledger = SourceLedger(src["name"], src["path"], weight)
            ledgers.append(ledger)
            filters = {**global_filters, **(src.get("filters") or {})}
            task = bar.add_task(f"source {src['name']}", total=None, rate="-")
            candidates: list[tuple[float, bytes, int, int]] = []  # for count weights: smallest keys win
            pending: list[Conversation] = []

            def flush(pending=pending):
                rendered = protocol.render_batch(pending)
                for c, r in zip(pending, rendered, strict=True):
                    admit(c, len(r.ids), r.num_supervised)
                pending.clear()

            def admit(c: Conversation, n_tokens: int, n_sup: int, ledger=ledger, filters=filters, weight=weight,
                      si=si, candidates=candidates):
                ledger.lengths_in.append(n_tokens)
                reason = _filter_reason(c, n_tokens, filters)
                if reason is None and n_sup == 0:
                    reason = "no_supervised_tokens"
                if reason is None and dedupe.get("exact", True):
                    h = hashlib.blake2b(normalise(conversation_text(c)).encode(), digest_size=16).digest()
                    if h in exact_seen:
                        reason = "exact_duplicate"
                    else:
                        exact_seen.add(h)
                if reason is None and near is not None and near.seen(conversation_text(c)):
                    reason = "near_duplicate"
                if reason is None and contaminated and any(
                        ngrams(m.content, n_dec) & contaminated for m in c.messages if m.role == "user"):
                    reason = "contaminated"
                if reason is not None:
                    ledger.dropped[reason] += 1
                    return
                u = seeded_unit(seed, "keep", c.id)
                if "fraction" in weight and u >= float(weight["fraction"]):
                    ledger.dropped["sampled_out"] += 1
                    return
                row = json.dumps(to_parquet_row(c), ensure_ascii=False).encode()
                if "count" in weight:
                    heapq.heappush(candidates, (-u, row, n_tokens, n_sup))
                    if len(candidates) > int(weight["count"]):
                        heapq.heappop(candidates)
                        ledger.dropped["sampled_out"] += 1
                    return
                epochs = float(weight.get("epochs", 1.0))
                copies = int(epochs) + (1 if seeded_unit(seed, "epoch", c.id) < epochs - int(epochs) else 0)
                for k in range(copies):
                    keep(row, c, n_tokens, n_sup, k)

            def keep(row: bytes, c: Conversation | None, n_tokens: int, n_sup: int, repeat: int, ledger=ledger, si=si):
                cid = json.loads(row)["id"]
                offset = spill.seek(0, 2)
                spill.write(row)
                split = "validation" if seeded_unit(seed, "split", cid) < val_fraction else "train"
                keys.append((seeded_unit(seed, "order", cid, repeat), offset, len(row), si, split))
                ledger.rows_out += 1
                ledger.tokens_out += n_tokens
                ledger.supervised_tokens_out += n_sup
                ledger.lengths_out.append(n_tokens)
                if c is not None:
                    ledger.turns_out[len(c.messages)] += 1
                    ledger.licenses[c.meta.get("license") or "(unstated)"] += 1

            t0 = time.perf_counter()
            for path in src["path"]:
                for c in load(path, on_error="skip", rejects=rejects):
                    ledger.rows_in += 1
                    pending.append(c)
                    if len(pending) >= 256:
                        flush()
                        bar.update(task, completed=ledger.rows_in,
                                   rate=f"{ledger.rows_in / max(time.perf_counter() - t0, 1e-9):,.0f}")
            if pending:
                flush()
            bar.update(task, completed=ledger.rows_in, rate=f"{ledger.rows_in / max(time.perf_counter() - t0, 1e-9):,.0f}")
            for _, row, n_tokens, n_sup in sorted(candidates, reverse=True):
                c = Conversation.from_dict(_row_to_dict(row))
                keep(row, c, n_tokens, n_sup, 0)
    keys.sort()
    shard_rows = int(recipe.get("shard_rows", 50_000))
    written = {"train": [], "validation": []}
    for split in ("train", "validation"):
        rows = [k for k in keys if k[4] == split]
        for start in range(0, len(rows), shard_rows):
            shard = out_dir / f"{split}-{start // shard_rows:05d}.parquet"
            _write_shard(shard, spill, rows[start:start + shard_rows])
            written[split].append(shard.name)
    spill.close()
    ledger = {"recipe": str(recipe_path), "recipe_hash": recipe_hash, "seed": seed, "protocol": protocol.name,
              "tokenizer": protocol.tokenizer.name,
              "rows": {s: sum(1 for k in keys if k[4] == s) for s in ("train", "validation")},
              "shards": written, "rejected_records": rejects.count, "sources": [lg.to_dict() for lg in ledgers]}
    (out_dir / "mixture.json").write_text(json.dumps(ledger, indent=2, ensure_ascii=False), encoding="utf-8")
    from .report import write_report

    write_report(out_dir / "report.html", ledger, ledgers)
    return ledger


def _row_to_dict(row: bytes) -> dict:
    from ..conversation import from_parquet_row

    return from_parquet_row(json.loads(row))


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
