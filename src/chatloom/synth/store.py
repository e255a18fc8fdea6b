"""The append-only output of a synth run and the files next to it (rejects, run summary).

Each finished conversation is one JSONL line written with a single `write` on an O_APPEND descriptor, so a killed run
leaves at most one torn last line. On restart `recover` truncates that line (its index is simply generated again) and
returns the indices already done; anything else that is not a valid synth record of this run is an error naming the
line, never skipped silently.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..conversation import Conversation, ValidationError


def synth_id(run_seed: int, index: int) -> str:
    """The deterministic id of conversation `index` of the run seeded with `run_seed`."""
    return f"synth-{run_seed}-{index}"


def sidecar(out: Path, kind: str) -> Path:
    """`out.jsonl` -> `out.<kind>.json(l)` in the same directory (kind: summary or rejects)."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.{kind}.{'json' if kind == 'summary' else 'jsonl'}")


@dataclass
class Recovered:
    done: set[int] = field(default_factory=set)
    torn_bytes: int = 0  # bytes of a torn last line that were cut off


def recover(out: Path, run_seed: int) -> Recovered:
    """Indices already written to `out` by a run with `run_seed`; a torn last line (a kill mid-write) is truncated."""
    result = Recovered()
    if not out.exists():
        return result
    good_end = 0
    with out.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):  # an unfinished write: cut it off below, its index is generated again
                result.torn_bytes = len(raw)
                break
            good_end += len(raw)
            if raw.strip():
                result.done.add(_index_of(raw, out, line_no, run_seed, result.done))
    if result.torn_bytes:
        os.truncate(out, good_end)
    return result


def _index_of(raw: bytes, out: Path, line_no: int, run_seed: int, done: set[int]) -> int:
    try:
        conv = Conversation.from_dict(json.loads(raw))
    except json.JSONDecodeError as e:
        raise ValidationError(f"invalid JSON ({e.msg})", file=str(out), line=line_no) from e
    except ValidationError as e:
        raise e.at(str(out), line_no) from None
    info = conv.meta.get("synth")
    index = info.get("index") if isinstance(info, dict) else None
    if not isinstance(index, int) or conv.id != synth_id(info.get("run_seed"), index):
        raise ValidationError("not a chatloom synth record (meta.synth.index / id)", field="meta.synth",
                              file=str(out), line=line_no)
    if info.get("run_seed") != run_seed:
        raise ValidationError(f"written by a run with --seed {info.get('run_seed')}, this run has --seed {run_seed}; "
                              "use the same seed to continue or another output file", field="meta.synth.run_seed",
                              file=str(out), line=line_no)
    if index in done:
        raise ValidationError(f"index {index} appears twice", field="id", file=str(out), line=line_no)
    return index


class OutputBusy(RuntimeError):
    """Another process is writing the same output file."""


class AppendOnlyJsonl:
    """A JSONL file that only grows, one complete line per `write` call. With `exclusive`, holds an advisory lock for
    its lifetime (released by the OS even on SIGKILL), so two runs can never append to the same output."""

    def __init__(self, path: Path, *, exclusive: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if exclusive:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise OutputBusy(f"{path}: another synth run is writing this file; wait for it or stop it") from None

    def write(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        os.close(self.fd)


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
