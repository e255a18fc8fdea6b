"""The one data type: a Conversation, its validation and its files (JSONL and Parquet).

Every stage of chatloom reads and writes this type, so each stage can be used alone. A plain OpenAI / Hugging Face
`{"messages": [...]}` line is already a valid record; `id` and `meta` are added when missing (the id is a content hash,
so re-importing the same data gives the same ids). Errors name the file, the line and the field; nothing is dropped
without being counted and written to a rejects file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "train", "tool_calls", "tool_call_id", "name", "reasoning_content"}


class ValidationError(ValueError):
    """A record that is not a valid Conversation; says where (file, line) and what (field)."""

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None, line: int | None = None):
        self.reason, self.field, self.file, self.line = message, field, file, line
        super().__init__(self._text())

    def _text(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        what = f"{self.field}: " if self.field else ""
        return f"{where + ': ' if where else ''}{what}{self.reason}"

    def at(self, file: str | None = None, line: int | None = None) -> ValidationError:
        self.file, self.line = file if file is not None else self.file, line if line is not None else self.line
        self.args = (self._text(),)
        return self


@dataclass
class Message:
    role: str
    content: str
    train: bool = True
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None  # an assistant's reasoning (rendered as the template does, e.g. <think>)

    @classmethod
    def from_dict(cls, d: Any, index: int = 0) -> Message:
        where = f"messages[{index}]"
        if not isinstance(d, dict):
            raise ValidationError(f"expected an object, got {type(d).__name__}", field=where)
        unknown = set(d) - MESSAGE_KEYS
        if unknown:
            raise ValidationError(f"unknown key(s) {sorted(unknown)}", field=where)
        role = d.get("role")
        if role not in ROLES:
            raise ValidationError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})", field=f"{where}.role")
        content = d.get("content")
        if content is None and d.get("tool_calls"):
            content = ""
        if isinstance(content, list):  # OpenAI content parts: only text parts are supported
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ValidationError("only text content parts are supported", field=f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ValidationError(f"must be a string, got {type(content).__name__}", field=f"{where}.content")
        train = d.get("train", True)
        if not isinstance(train, bool):
            raise ValidationError(f"must be true or false, got {train!r}", field=f"{where}.train")
        if "train" in d and role != "assistant":
            raise ValidationError("only assistant messages can set train", field=f"{where}.train")
        tool_calls = d.get("tool_calls")
        if tool_calls is not None:
            if role != "assistant" or not isinstance(tool_calls, list):
                raise ValidationError("must be a list on an assistant message", field=f"{where}.tool_calls")
            for j, call in enumerate(tool_calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ValidationError("needs function.name", field=f"{where}.tool_calls[{j}]")
        if not content.strip() and not tool_calls:
            raise ValidationError("empty content", field=f"{where}.content")
        for key in ("tool_call_id", "name"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ValidationError("must be a string", field=f"{where}.{key}")
        reasoning = d.get("reasoning_content")
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise ValidationError(f"must be a string, got {type(reasoning).__name__}", field=f"{where}.reasoning_content")
            if role != "assistant":
                raise ValidationError("only assistant messages have reasoning", field=f"{where}.reasoning_content")
        return cls(role, content, train, tool_calls or None, d.get("tool_call_id"), d.get("name"), reasoning)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if not self.train:
            d["train"] = False
        for key in ("tool_calls", "tool_call_id", "name", "reasoning_content"):  # absent keys stay absent: ids unchanged
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    def same_text(self, other: Message) -> bool:
        """Equal as the protocol sees it (role, content, tool calls, reasoning); `train` lives in the mask."""
        return ((self.role, self.content, self.tool_calls, self.reasoning_content)
                == (other.role, other.content, other.tool_calls, other.reasoning_content))


def content_id(messages: list[Message]) -> str:
    """Stable id from the content: the same messages always give the same id."""
    canon = json.dumps([m.to_dict() for m in messages], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "c-" + hashlib.sha256(canon.encode("utf-8")).hexdigest()[:24]


@dataclass
class Conversation:
    messages: list[Message]
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict] | None = None

    def __post_init__(self):
        if not self.id:
            self.id = content_id(self.messages)

    @classmethod
    def from_dict(cls, d: Any, *, require_assistant_end: bool = False) -> Conversation:
        if not isinstance(d, dict):
            raise ValidationError(f"a conversation is a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"id", "messages", "meta", "tools"}
        if unknown:
            raise ValidationError(f"unknown key(s) {sorted(unknown)}", field="(record)")
        raw = d.get("messages")
        if not isinstance(raw, list) or not raw:
            raise ValidationError("must be a non-empty list", field="messages")
        messages = [Message.from_dict(m, i) for i, m in enumerate(raw)]
        meta = d.get("meta")
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise ValidationError("must be an object", field="meta")
        cid = d.get("id") or ""
        if not isinstance(cid, str | int):
            raise ValidationError("must be a string", field="id")
        tools = d.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise ValidationError("must be a list", field="tools")
        conv = cls(messages, str(cid), meta, tools)
        conv.validate(require_assistant_end=require_assistant_end)
        return conv

    def validate(self, *, require_assistant_end: bool = False) -> Conversation:
        """Check the structure: system only first, turns alternate, tool results follow tool calls."""
        for i, m in enumerate(self.messages):
            if m.role == "system" and i != 0:
                raise ValidationError("system message must be the first message", field=f"messages[{i}].role")
            if i == 0 or m.role == "system":
                continue
            prev = self.messages[i - 1].role
            if m.role == "user" and prev == "user":
                raise ValidationError("two user messages in a row", field=f"messages[{i}].role")
            if m.role == "assistant" and prev == "assistant" and not self.messages[i - 1].tool_calls:
                raise ValidationError("two assistant messages in a row", field=f"messages[{i}].role")
            if m.role == "tool" and prev not in ("assistant", "tool"):
                raise ValidationError("tool result must follow an assistant tool call", field=f"messages[{i}].role")
        if not any(m.role != "system" for m in self.messages):
            raise ValidationError("only a system message", field="messages")
        if require_assistant_end and self.messages[-1].role != "assistant":
            raise ValidationError("must end with an assistant turn to be trained on", field=f"messages[{len(self.messages) - 1}].role")
        return self

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "messages": [m.to_dict() for m in self.messages]}
        if self.meta:
            d["meta"] = self.meta
        if self.tools:
            d["tools"] = self.tools
        return d

    def same_messages(self, other: Conversation) -> bool:
        return len(self.messages) == len(other.messages) and all(
            a.same_text(b) for a, b in zip(self.messages, other.messages, strict=True)
        )

    @classmethod
    def of(cls, *turns: tuple[str, str] | str, system: str | None = None, **kw) -> Conversation:
        """Shorthand for code and tests: `Conversation.of("hi", "hello!", system="...")` alternates user/assistant."""
        messages = [Message("system", system)] if system else []
        for i, t in enumerate(turns):
            role, content = t if isinstance(t, tuple) else (("user", "assistant")[i % 2], t)
            messages.append(Message(role, content))
        return cls(messages, **kw)


# ---------------------------------------------------------------------------------------------------------------- files


@dataclass
class Rejects:
    """Bad records met while reading: counted, with their reason, and written out when a path is given."""

    path: Path | None = None
    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, error: ValidationError, raw: str | dict) -> None:
        self.count += 1
        self.reasons[error.reason] = self.reasons.get(error.reason, 0) + 1
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                record = {"error": str(error), "file": error.file, "line": error.line, "field": error.field,
                          "record": raw if isinstance(raw, dict) else None, "raw": raw if isinstance(raw, str) else None}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _checked(path: Path, rows, *, on_error: str, rejects: Rejects | None,
             require_assistant_end: bool) -> Iterator[Conversation]:
    """Validate (line, record or JSON text, raw) rows into Conversations; bad ones raise or go to `rejects`."""
    for lineno, record, raw in rows:
        try:
            if isinstance(record, str):
                try:
                    record = json.loads(record)
                except json.JSONDecodeError as e:
                    raise ValidationError(f"not valid JSON ({e.msg} at column {e.colno})", field="(line)") from None
            yield Conversation.from_dict(record, require_assistant_end=require_assistant_end)
        except ValidationError as e:
            e.at(str(path), lineno)
            if on_error == "fail":
                raise
            if rejects is not None:
                rejects.add(e, raw)


def iter_jsonl(path: str | Path, *, on_error: str = "fail", rejects: Rejects | None = None,
               require_assistant_end: bool = False) -> Iterator[Conversation]:
    """Stream Conversations from a JSONL file; `on_error="skip"` counts bad lines in `rejects` instead of raising."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        rows = ((n, line, line.rstrip("\n")) for n, line in enumerate(f, 1) if line.strip())
        yield from _checked(path, rows, on_error=on_error, rejects=rejects, require_assistant_end=require_assistant_end)


def iter_parquet(path: str | Path, *, on_error: str = "fail", rejects: Rejects | None = None,
                 require_assistant_end: bool = False) -> Iterator[Conversation]:
    import pyarrow.parquet as pq

    path = Path(path)
    batches = pq.ParquetFile(path).iter_batches(batch_size=2048)
    rows = ((n, from_parquet_row(d), d) for n, d in enumerate((d for b in batches for d in b.to_pylist()), 1))
    yield from _checked(path, rows, on_error=on_error, rejects=rejects, require_assistant_end=require_assistant_end)


def load(path: str | Path, **kw) -> Iterator[Conversation]:
    """Conversations from a `.jsonl`/`.json` (list) or `.parquet` file, or a directory of Parquet shards."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"{path}: directory has no .parquet shards")
        return (c for s in shards for c in iter_parquet(s, **kw))
    if path.suffix == ".parquet":
        return iter_parquet(path, **kw)
    if path.suffix == ".json":
        return _iter_json_list(path, **kw)
    return iter_jsonl(path, **kw)


def _iter_json_list(path: Path, *, on_error="fail", rejects=None, require_assistant_end=False):
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = ((n, d, d) for n, d in enumerate(data if isinstance(data, list) else [data], 1))
    yield from _checked(path, rows, on_error=on_error, rejects=rejects, require_assistant_end=require_assistant_end)


def save(conversations: Iterable[Conversation], path: str | Path) -> int:
    """Write Conversations as JSONL or Parquet (by suffix); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        return write_parquet(conversations, path)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for c in conversations:
            f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


PARQUET_SCHEMA = None


def parquet_schema():
    import pyarrow as pa

    global PARQUET_SCHEMA
    if PARQUET_SCHEMA is None:
        message = pa.struct([("role", pa.string()), ("content", pa.string()), ("train", pa.bool_()),
                             ("tool_calls", pa.string()), ("tool_call_id", pa.string()), ("name", pa.string()),
                             ("reasoning_content", pa.string())])
        PARQUET_SCHEMA = pa.schema([("id", pa.string()), ("messages", pa.list_(message)), ("meta", pa.string()),
                                    ("tools", pa.string())])
    return PARQUET_SCHEMA


def to_parquet_row(c: Conversation) -> dict:
    """Parquet columns: id, messages (list of structs; `reasoning_content` nullable), meta and tools as JSON text (free-form)."""
    return {
        "id": c.id,
        "messages": [{"role": m.role, "content": m.content, "train": m.train,
                      "tool_calls": json.dumps(m.tool_calls, ensure_ascii=False) if m.tool_calls else None,
                      "tool_call_id": m.tool_call_id, "name": m.name, "reasoning_content": m.reasoning_content}
                     for m in c.messages],
        "meta": json.dumps(c.meta, ensure_ascii=False, sort_keys=True) if c.meta else None,
        "tools": json.dumps(c.tools, ensure_ascii=False) if c.tools else None,
    }


def from_parquet_row(d: dict) -> dict:
    """A Parquet row (`to_parquet_row`'s columns, or any table in that layout) back to a Conversation dict: null fields
    dropped, JSON text columns parsed, `train` kept only where it says something (a non-default on an assistant turn)."""
    messages = []
    for m in d.get("messages") or []:
        m = {k: v for k, v in m.items() if v is not None}
        if isinstance(m.get("tool_calls"), str):
            m["tool_calls"] = json.loads(m["tool_calls"])
        if m.get("train", True) is True or m.get("role") != "assistant":
            m.pop("train", None)
        messages.append(m)
    out = {"id": d.get("id"), "messages": messages}
    for key in ("meta", "tools"):
        v = d.get(key)
        if v is not None:
            out[key] = json.loads(v) if isinstance(v, str) else v
    return out


_from_parquet_row = from_parquet_row  # the old private name, for code written against it


def write_parquet(conversations: Iterable[Conversation], path: str | Path, batch_size: int = 4096) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, rows = 0, []
    with pq.ParquetWriter(str(path), parquet_schema()) as writer:
        for c in conversations:
            rows.append(to_parquet_row(c))
            if len(rows) >= batch_size:
                writer.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()))
                n, rows = n + len(rows), []
        if rows or n == 0:
            writer.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()))
            n += len(rows)
    return n
