"""One converter per public conversation format, each turning a source record into a Conversation dict.

Readers yield `(line, record)` pairs so that every error names `file:line`; converters raise `ValidationError` naming
the field. The import driver (`convert`) validates, counts and writes rejects: nothing is dropped silently.
Formats: openai (messages), sharegpt (from/value), alpaca (instruction/input/output, and self-instruct seed tasks with
`instances`), oasst (see oasst.py), ultrachat ({id, data}), hh ("\\n\\nHuman: ... \\n\\nAssistant: ..."), parquet and
`hf:NAME[:split]` (Hugging Face datasets, when the network allows).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..conversation import Conversation, Rejects, ValidationError, from_parquet_row
from .oasst import oasst_records
from .records import read_records

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system", "tool": "tool"}


def _need(rec: Any, key: str, kind=str, where: str | None = None):
    if not isinstance(rec, dict):
        raise ValidationError(f"expected an object, got {type(rec).__name__}", field=where or "(record)")
    value = rec.get(key)
    if not isinstance(value, kind):
        got = "missing" if value is None else type(value).__name__
        raise ValidationError(f"must be {getattr(kind, '__name__', kind)}, got {got}", field=f"{where + '.' if where else ''}{key}")
    return value


def from_openai(rec: Any) -> list[dict]:
    _need(rec, "messages", list)
    return [rec]


def from_sharegpt(rec: Any) -> list[dict]:
    turns = _need(rec, "conversations", list)
    messages = []
    for i, t in enumerate(turns):
        who = _need(t, "from", str, f"conversations[{i}]")
        role = SHAREGPT_ROLES.get(who.lower())
        if role is None:
            raise ValidationError(f"unknown speaker {who!r}", field=f"conversations[{i}].from")
        messages.append({"role": role, "content": _need(t, "value", str, f"conversations[{i}]")})
    out = {"messages": messages}
    if rec.get("id") is not None:
        out["meta"] = {"original_id": str(rec["id"])}
    return [out]


def from_alpaca(rec: Any) -> list[dict]:
    if isinstance(rec, dict) and "instances" in rec:  # self-instruct seed task: one conversation per instance
        instruction = _need(rec, "instruction", str)
        out = []
        for i, inst in enumerate(_need(rec, "instances", list)):
            given = inst.get("input", "") if isinstance(inst, dict) else None
            if not isinstance(given, str):
                raise ValidationError("must be a string", field=f"instances[{i}].input")
            prompt = instruction + (f"\n\n{given}" if given.strip() else "")
            meta = {"original_id": f"{rec.get('id', '')}#{i}", "tags": [t for t in [rec.get("name")] if t]}
            if "is_classification" in rec:
                meta["is_classification"] = bool(rec["is_classification"])
            out.append({"messages": [{"role": "user", "content": prompt},
                                     {"role": "assistant", "content": _need(inst, "output", str, f"instances[{i}]")}],
                        "meta": meta})
        return out
    instruction = _need(rec, "instruction", str)
    given = rec.get("input") or ""
    if not isinstance(given, str):
        raise ValidationError("must be a string", field="input")
    prompt = instruction + (f"\n\n{given}" if given.strip() else "")
    return [{"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": _need(rec, "output", str)}]}]


def from_ultrachat(rec: Any) -> list[dict]:
    data = _need(rec, "data", list)
    messages = []
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise ValidationError(f"must be a string, got {type(text).__name__}", field=f"data[{i}]")
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    out = {"messages": messages}
    if rec.get("id") is not None:
        out["meta"] = {"original_id": str(rec["id"])}
    return [out]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def from_hh(rec: Any) -> list[dict]:
    """An HH-RLHF transcript (a string, or an object with "chosen" / "text")."""
    text = rec if isinstance(rec, str) else (rec.get("chosen") or rec.get("text")) if isinstance(rec, dict) else None
    if not isinstance(text, str):
        raise ValidationError("expected a transcript string or an object with 'chosen'", field="chosen")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValidationError("transcript must start with '\\n\\nHuman: '", field="chosen")
    messages = [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
                for who, body in zip(parts[1::2], parts[2::2], strict=True)]
    if not messages:
        raise ValidationError("no Human/Assistant turns found", field="chosen")
    return [{"messages": messages}]


def from_parquet_table(rec: Any) -> list[dict]:
    """A row of a Parquet/Arrow table in the Conversation layout (messages as structs or JSON text)."""
    if isinstance(rec, dict) and isinstance(rec.get("messages"), str):
        rec = {**rec, "messages": json.loads(rec["messages"])}
    return [from_parquet_row(rec) if isinstance(rec, dict) else rec]


CONVERTERS: dict[str, Callable[[Any], list[dict]]] = {
    "openai": from_openai, "sharegpt": from_sharegpt, "alpaca": from_alpaca, "selfinstruct": from_alpaca,
    "ultrachat": from_ultrachat, "hh": from_hh, "parquet": from_parquet_table,
}
FORMATS = (*CONVERTERS, "oasst", "hf:NAME[:split]")


@dataclass
class ImportReport:
    read: int = 0
    written: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    per_file: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"read": self.read, "written": self.written, "rejected": self.rejected, "reasons": self.reasons,
                "files": self.per_file}


def convert(fmt: str, path: Path, *, license: str | None = None, on_error: str = "fail",
            rejects: Rejects | None = None, report: ImportReport | None = None, **options) -> Iterator[Conversation]:
    """Conversations from one input in format `fmt`, with provenance in meta; bad records raise or are counted."""
    report = report if report is not None else ImportReport()
    rejects = rejects if rejects is not None else Rejects()
    source = f"{fmt}:{path.name}" if not fmt.startswith("hf:") else fmt
    if fmt == "oasst":
        records: Iterable[tuple[int, Any]] = oasst_records(path, **options)
        converter = from_openai
    elif fmt.startswith("hf:"):
        records = _hf_records(fmt)
        converter = _auto_converter
    else:
        if fmt not in CONVERTERS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        records, converter = read_records(path), CONVERTERS[fmt]
    stats = report.per_file.setdefault(str(path), {"read": 0, "written": 0, "rejected": 0})
    for line, rec in records:
        report.read += 1
        stats["read"] += 1
        try:
            if isinstance(rec, ValidationError):
                raise rec
            for d in converter(rec):
                meta = {**(d.get("meta") or {})}
                meta.setdefault("source", source)
                if license and "license" not in meta:
                    meta["license"] = license
                conv = Conversation.from_dict({**d, "meta": meta})
                report.written += 1
                stats["written"] += 1
                yield conv
        except ValidationError as e:
            e.at(str(path), line)
            if on_error == "fail":
                raise
            report.rejected += 1
            stats["rejected"] += 1
            report.reasons[e.reason] = report.reasons.get(e.reason, 0) + 1
            rejects.add(e, rec if isinstance(rec, dict | str) else repr(rec))


def _auto_converter(rec: Any) -> list[dict]:
    if isinstance(rec, dict):
        if "messages" in rec:
            return from_openai(rec)
        if "conversations" in rec:
            return from_sharegpt(rec)
        if "instruction" in rec:
            return from_alpaca(rec)
        if "data" in rec:
            return from_ultrachat(rec)
        if "chosen" in rec:
            return from_hh(rec)
    raise ValidationError("cannot tell the format of this record (messages, conversations, instruction, data, chosen)")


def _hf_records(spec: str) -> Iterator[tuple[int, Any]]:
    _, _, rest = spec.partition(":")
    name, _, split = rest.partition(":")
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError("hf: imports need the `datasets` package (pip install datasets)") from e
    try:
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, auth: the message says which
        raise RuntimeError(f"{spec}: could not load from the Hugging Face Hub ({e})") from e
    yield from enumerate(ds, 1)
