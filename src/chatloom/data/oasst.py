"""OpenAssistant message trees -> conversation threads.

Reads the three published shapes: the tree export (`{message_tree_id, tree_state, prompt: {..., replies: [...]}}`),
the nested message export (a root message with `replies`), and the flat message table (rows with `message_id` and
`parent_id`, as on the Hub). Deleted messages are dropped with their subtrees; synthetic and rejected
(`review_result: false`) messages too unless asked to keep them. Threads are chosen by rank:

- `best`: at every branch the reply with the lowest rank (rank 0 = the labelers' favourite);
- `top-k:N`: every path whose assistant replies all rank below N;
- `all`: every root-to-leaf path.

Threads are trimmed to end on an assistant turn; a tree goes wholly to train or to validation (by a hash of its id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..conversation import ValidationError
from .records import read_records

ROLE = {"prompter": "user", "assistant": "assistant"}


def tree_split(tree_id: str, val_fraction: float) -> str:
    h = int(hashlib.sha256(tree_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if h < val_fraction else "train"


def _keep(m: dict, keep_synthetic: bool, keep_rejected: bool) -> bool:
    if m.get("deleted"):
        return False
    if m.get("synthetic") and not keep_synthetic:
        return False
    if m.get("review_result") is False and not keep_rejected:
        return False
    return True


def _rank(m: dict) -> float:
    r = m.get("rank")
    return float(r) if isinstance(r, int | float) else float("inf")


def threads(root: dict, mode: str = "best", keep_synthetic: bool = False, keep_rejected: bool = False) -> list[list[dict]]:
    """Root-to-leaf message paths of one tree, chosen by `mode`, trimmed to end on an assistant message."""
    k = None
    if mode.startswith("top-k:"):
        k = int(mode.split(":", 1)[1])
    elif mode not in ("best", "all"):
        raise ValueError(f"--threads {mode!r}: use best, top-k:N or all")
    paths: list[list[dict]] = []

    def walk(node: dict, path: list[dict]):
        path = [*path, node]
        children = [c for c in node.get("replies") or [] if _keep(c, keep_synthetic, keep_rejected)]
        if mode == "best" and children:
            children = [min(children, key=lambda c: (_rank(c), children.index(c)))]
        elif k is not None:
            children = [c for c in children if c.get("role") != "assistant" or _rank(c) < k]
        if not children:
            paths.append(path)
        for c in children:
            walk(c, path)

    if _keep(root, keep_synthetic, keep_rejected):
        walk(root, [])
    out, seen = [], set()
    for p in paths:
        while p and p[-1].get("role") != "assistant":
            p = p[:-1]
        key = tuple(m.get("message_id") for m in p)
        if p and key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _trees(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, tree dict with `prompt`) for any of the three shapes; the flat table is assembled in memory."""
    flat: dict[str, list[dict]] = {}
    first_line: dict[str, int] = {}
    for line, rec in read_records(path):
        if isinstance(rec, ValidationError) or not isinstance(rec, dict):
            yield line, rec if isinstance(rec, ValidationError) else ValidationError("expected an object", field="(record)")
            continue
        if "prompt" in rec and "message_tree_id" in rec:
            yield line, rec
        elif "replies" in rec and not rec.get("parent_id"):
            yield line, {"message_tree_id": rec.get("message_tree_id") or rec.get("message_id"), "prompt": rec}
        elif "message_id" in rec:
            tree = rec.get("message_tree_id") or rec["message_id"]
            flat.setdefault(tree, []).append(rec)
            first_line.setdefault(tree, line)
        else:
            yield line, ValidationError("not an OpenAssistant tree, nested message or message row", field="(record)")
    for tree_id, rows in flat.items():
        by_id = {r["message_id"]: {**r, "replies": []} for r in rows}
        roots = []
        for r in by_id.values():
            parent = by_id.get(r.get("parent_id"))
            if parent is None:
                roots.append(r)
            else:
                parent["replies"].append(r)
        if len(roots) != 1:
            yield first_line[tree_id], ValidationError(f"tree {tree_id} has {len(roots)} roots", field="parent_id")
            continue
        yield first_line[tree_id], {"message_tree_id": tree_id, "prompt": roots[0]}


def oasst_records(path: Path, threads_mode: str = "best", keep_synthetic: bool = False, keep_rejected: bool = False,
                  val_fraction: float = 0.0, split: str | None = None) -> Iterator[tuple[int, Any]]:
    """(line, conversation dict) per thread; with `split`, only trees of that split."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    for line, tree in _trees(path):
        if isinstance(tree, ValidationError):
            yield line, tree
            continue
        tree_id = str(tree.get("message_tree_id"))
        if split is not None and tree_split(tree_id, val_fraction) != split:
            continue
        root = tree.get("prompt")
        if not isinstance(root, dict):
            yield line, ValidationError("must be an object", field="prompt")
            continue
        for p in threads(root, threads_mode, keep_synthetic, keep_rejected):
            try:
                messages = [{"role": ROLE[m["role"]], "content": m["text"]} for m in p]
            except KeyError as e:
                yield line, ValidationError(f"unknown or missing {e}", field="prompt.role")
                break
            meta = {"original_id": f"{tree_id}/{p[-1].get('message_id')}", "lang": p[0].get("lang"),
                    "authors": ["synthetic:" + m["model_name"] if m.get("synthetic") and m.get("model_name") else "human"
                                for m in p],
                    "oasst": {"tree_id": tree_id, "message_ids": [m.get("message_id") for m in p],
                              "ranks": [m.get("rank") for m in p], "tree_state": tree.get("tree_state")}}
            yield line, {"messages": messages, "meta": {k: v for k, v in meta.items() if v is not None}}

