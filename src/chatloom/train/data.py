"""Training examples and packing: conversations (with loss masks) or documents (every token supervised) -> fixed rows.

One example = one conversation or one document chunk, as `ids` plus `targets` (the next token where it is supervised,
-100 elsewhere), computed before packing so no target ever crosses into a neighbour. Examples are packed best-fit over
the whole shard into rows of `seq_len`; each row keeps per-token position ids (reset per example) and segment ids, from
which the block-diagonal causal mask is built, so no token attends across examples and packed loss == unpacked loss.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

IGNORE = -100


class DataError(ValueError):
    """Training data that cannot train anything (no supervised tokens, no files, ...), raised before training starts."""


@dataclass
class Example:
    ids: list[int]
    targets: list[int]

    @property
    def num_supervised(self) -> int:
        return sum(1 for t in self.targets if t != IGNORE)


@dataclass
class DataStats:
    """What happened to the input: counts people read in the run card (nothing dropped silently)."""

    examples: int = 0
    skipped_no_supervised: int = 0
    truncated: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    rows: int = 0
    row_tokens: int = 0
    reasoning_conversations: int = 0  # examples with assistant reasoning_content
    reasoning_tokens: int = 0  # tokens of trained assistant reasoning (in the ids whether supervised or not)
    reasoning_supervised_tokens: int = 0  # of those, supervised (0 with train_reasoning off)
    skipped_ids: list = field(default_factory=list)

    @property
    def padding_waste(self) -> float:
        return 1 - self.tokens / self.row_tokens if self.row_tokens else 0.0

    @property
    def supervised_fraction(self) -> float:
        return self.supervised_tokens / self.row_tokens if self.row_tokens else 0.0

    def as_dict(self) -> dict:
        return {"examples": self.examples, "skipped_no_supervised": self.skipped_no_supervised,
                "truncated": self.truncated, "tokens": self.tokens, "supervised_tokens": self.supervised_tokens,
                "rows": self.rows, "padding_waste": round(self.padding_waste, 4),
                "supervised_fraction": round(self.supervised_fraction, 4),
                "reasoning_conversations": self.reasoning_conversations, "reasoning_tokens": self.reasoning_tokens,
                "reasoning_supervised_tokens": self.reasoning_supervised_tokens, "skipped_ids": self.skipped_ids[:20]}


def shift_targets(ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    """targets[t] = ids[t+1] when token t+1 is supervised, else IGNORE."""
    return [i if m else IGNORE for i, m in zip(ids[1:], mask[1:], strict=True)] + [IGNORE]


def truncate(ids: list[int], mask: Sequence[int], seq_len: int) -> tuple[list[int], Sequence[int]]:
    """Cut to `seq_len` tokens, but never inside a supervised run (assistant content + end-of-turn): a run that would
    lose its end is dropped whole, so the model is never taught to continue where it should stop."""
    if len(ids) <= seq_len:
        return ids, mask
    cut = seq_len
    if mask[cut] and mask[cut - 1]:
        while cut > 0 and mask[cut - 1]:
            cut -= 1
    return ids[:cut], mask[:cut]


def conversation_examples(convs: Sequence, protocol, seq_len: int, stats: DataStats | None = None) -> list[Example]:
    """Render with the protocol (batched) and turn each conversation into one example; zero-supervised ones are counted
    in `stats.skipped_no_supervised` (with their ids) and left out."""
    stats = stats if stats is not None else DataStats()
    out = []
    reasoning_masks = _reasoning_masks(convs, protocol)
    for k, (conv, r) in enumerate(zip(convs, protocol.render_batch(convs), strict=True)):
        ids, mask = truncate(r.ids, r.mask_bytes, seq_len)
        if len(ids) < len(r.ids):
            stats.truncated += 1
        ex = Example(ids, shift_targets(ids, mask))
        n = ex.num_supervised
        if n == 0:
            stats.skipped_no_supervised += 1
            stats.skipped_ids.append(getattr(conv, "id", None))
            continue
        stats.examples += 1
        stats.tokens += len(ids)
        stats.supervised_tokens += n
        if k in reasoning_masks:  # reasoning tokens: the ones whose supervision follows train_reasoning
            other = reasoning_masks[k]
            n_r = sum(1 for a, b in zip(mask, other[: len(mask)], strict=False) if a != b)
            stats.reasoning_conversations += 1
            stats.reasoning_tokens += n_r
            stats.reasoning_supervised_tokens += n_r if getattr(protocol, "train_reasoning", True) else 0
        out.append(ex)
    return out


def _reasoning_masks(convs: Sequence, protocol) -> dict[int, bytes]:
    """For conversations with reasoning: their mask rendered with `train_reasoning` flipped (to count reasoning tokens
    from the one encoder, without a second definition of where reasoning is)."""
    todo = [k for k, c in enumerate(convs) if any(getattr(m, "reasoning_content", None) for m in c.messages)]
    if not todo or not hasattr(protocol, "train_reasoning"):
        return {}
    flag = protocol.train_reasoning
    protocol.train_reasoning = not flag
    try:
        rendered = protocol.render_batch([convs[k] for k in todo])
    finally:
        protocol.train_reasoning = flag
    return {k: r.mask_bytes for k, r in zip(todo, rendered, strict=True)}


def document_examples(texts: Iterable[str], tokenizer, seq_len: int, stats: DataStats | None = None) -> list[Example]:
    """Pretraining: each document -> tokens + EOS, cut into chunks of at most `seq_len`; every next token is a target."""
    stats = stats if stats is not None else DataStats()
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer.encode_batch(list(texts)):
        if eos is not None:
            ids = ids + [eos]
        for start in range(0, len(ids), seq_len):
            chunk = ids[start:start + seq_len]
            if len(chunk) < 2:
                continue
            ex = Example(chunk, list(chunk[1:]) + [IGNORE])
            stats.examples += 1
            stats.tokens += len(chunk)
            stats.supervised_tokens += len(chunk) - 1
            out.append(ex)
    return out


def read_documents(paths: Sequence[str | Path]) -> list[str]:
    """Plain-text files, one document each; `.jsonl` files give one document per line's "text" field."""
    import json

    docs = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DataError(f"{p}: no such text file")
        if p.suffix == ".jsonl":
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(json.loads(line)["text"])
                    except (ValueError, KeyError, TypeError) as e:
                        raise DataError(f"{p}:{n}: field 'text': expected an object with a text string ({e})") from e
        else:
            docs.append(p.read_text(encoding="utf-8"))
    return docs


#: a trimmed batch keeps a multiple of this many columns (aligned shapes for GPU kernels; few distinct shapes for
#: `torch.compile`)
TRIM_MULTIPLE = 64


def best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing over the whole shard: each example (longest first) goes into the open row with the least room
    that still fits it. Returns rows as lists of example indices (in a deterministic order)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens > row length {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
            if room - n > 0:
                bisect.insort(free, (room - n, r))
        else:
            rows.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(rows) - 1))
    return rows


@dataclass
class PackedShard:
    """Rows of `seq_len` tokens as arrays: ids, targets, position ids (reset per example), segment ids (-1 = padding)."""

    ids: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    segments: np.ndarray

    def __len__(self) -> int:
        return self.ids.shape[0]

    def supervised(self, rows: Sequence[int]) -> int:
        return int((self.targets[list(rows)] != IGNORE).sum())

    def batch(self, rows: Sequence[int], device="cpu") -> dict:
        """The rows as tensors, cut after the last column (rounded up to `TRIM_MULTIPLE`) that holds a real token in any
        of them: padding no real token attends to or is supervised by is never computed (a shard's last rows are
        often mostly padding: the last of 27 rows of 16,384 tokens held 4,096)."""
        rows = list(rows)
        segments = self.segments[rows]
        real = np.flatnonzero((segments >= 0).any(axis=0))
        width = self.ids.shape[1]
        if len(real):
            width = min(width, -(-(int(real[-1]) + 1) // TRIM_MULTIPLE) * TRIM_MULTIPLE)
        arrays = {"ids": self.ids[rows], "targets": self.targets[rows], "positions": self.positions[rows],
                  "segments": segments}
        return {k: torch.from_numpy(np.ascontiguousarray(a[:, :width])).long().to(device) for k, a in arrays.items()}

    def digest(self) -> str:
        return hashlib.sha256(self.ids.tobytes() + self.targets.tobytes()).hexdigest()[:16]


def pack(examples: Sequence[Example], seq_len: int, pad_id: int, stats: DataStats | None = None) -> PackedShard:
    rows = best_fit([len(e.ids) for e in examples], seq_len)
    n = len(rows)
    ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    targets = np.full((n, seq_len), IGNORE, dtype=np.int64)
    positions = np.zeros((n, seq_len), dtype=np.int64)
    segments = np.full((n, seq_len), -1, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for s, i in enumerate(members):
            e = examples[i]
            k = len(e.ids)
            ids[r, at:at + k] = e.ids
            targets[r, at:at + k] = e.targets
            positions[r, at:at + k] = np.arange(k)
            segments[r, at:at + k] = s
            at += k
        positions[r, at:] = np.arange(seq_len - at)  # padding: its own causal segment, never a NaN row
    if stats is not None:
        stats.rows += n
        stats.row_tokens += n * seq_len
    return PackedShard(ids, targets, positions, segments)


def attention_mask(segments: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 1, L, L) mask: token q sees token k iff k <= q and both are in the same example (or both padding).
    Boolean, or additive (0 / most negative) in `dtype`: on CPU, SDPA's backward is ~2x faster with an additive mask."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    allowed = ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill_(~allowed, torch.finfo(dtype).min)
