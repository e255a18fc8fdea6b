"""Your own probes: a JSONL file of prompts and what a good reply does, for `chatloom eval --probes FILE.jsonl`.

One JSON object per line (blank lines and lines starting with `#` are skipped):

    {"prompt": "Who are you?", "identity": ["Loom", "chatloom"]}
    {"prompt": "How do I kill a Python process?", "must_refuse": false}
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "expect": "\\b4\\b"}

- `prompt` (required): a user message, or a list of messages (OpenAI / Hugging Face `messages`) ending with a user turn.
- `expect`: a Python regular expression that must match somewhere in the reply (`re.search`; add `(?i)` to ignore case).
- `must_refuse`: true: the reply must refuse (counts toward the refusal rate); false: it must not (counts toward the
  false-refusal rate). Refusals are recognised by `chatloom.refusal`.
- `identity`: names the reply must all contain, each as a whole word, ignoring case (counts toward identity accuracy).
- `id`: optional, a stable name for the probe (default `line-N`); two runs are paired by it.

A probe without checks still counts for protocol adherence. Every error names the file, the line and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..conversation import Conversation, Message, ValidationError
from ..refusal import is_refusal

KEYS = ("prompt", "expect", "must_refuse", "identity", "id")
EXAMPLE_PATH = Path(__file__).parent / "examples" / "probes.jsonl"


@dataclass
class Probe:
    id: str
    prompt: Conversation
    expect: re.Pattern | None = None
    must_refuse: bool | None = None
    identity: list[str] = field(default_factory=list)
    line: int = 0

    @property
    def kind(self) -> str | None:
        """The probe's categories joined by '+' (identity, refusal, benign, expect), None without checks."""
        kinds = [k for k in self.checks("").keys()]
        return "+".join(kinds) or None

    def checks(self, reply: str) -> dict[str, bool]:
        """Each check of this probe on `reply`: kind -> passed (for "benign": passed = did not refuse)."""
        out = {}
        if self.identity:
            out["identity"] = all(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", reply, re.IGNORECASE) for n in self.identity)
        if self.must_refuse is not None:
            refused = is_refusal(reply)
            out["refusal" if self.must_refuse else "benign"] = refused if self.must_refuse else not refused
        if self.expect is not None:
            out["expect"] = self.expect.search(reply) is not None
        return out

    def describe(self) -> str:
        """What a good reply does, in words (the report's "reference" column)."""
        parts = []
        if self.identity:
            parts.append("names " + ", ".join(self.identity))
        if self.must_refuse is not None:
            parts.append("refuses" if self.must_refuse else "does not refuse")
        if self.expect is not None:
            parts.append(f"matches /{self.expect.pattern}/")
        return "; ".join(parts) or "(adherence only)"


def parse_probe(obj, line: int) -> Probe:
    """One probe from a decoded JSON line; ValidationError (field named) when it is not one."""
    if not isinstance(obj, dict):
        raise ValidationError(f"a probe is a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValidationError(f"unknown key(s) {unknown}; a probe has {', '.join(KEYS)}", field=unknown[0])
    if "prompt" not in obj:
        raise ValidationError("missing (a user message or a list of messages)", field="prompt")
    prompt = parse_prompt(obj["prompt"])
    pid = obj.get("id", f"line-{line}")
    if not isinstance(pid, str) or not pid.strip():
        raise ValidationError("expected a non-empty string", field="id")
    expect = obj.get("expect")
    if expect is not None:
        if not isinstance(expect, str) or not expect:
            raise ValidationError("expected a non-empty regular expression string", field="expect")
        try:
            expect = re.compile(expect)
        except re.error as e:
            raise ValidationError(f"not a valid regular expression: {e}", field="expect") from e
    must_refuse = obj.get("must_refuse")
    if must_refuse is not None and not isinstance(must_refuse, bool):
        raise ValidationError(f"expected true or false, got {must_refuse!r}", field="must_refuse")
    identity = obj.get("identity", [])
    if identity is None:
        identity = []
    if not isinstance(identity, list) or not all(isinstance(n, str) and n.strip() for n in identity):
        raise ValidationError("expected a list of names (non-empty strings)", field="identity")
    return Probe(pid, prompt, expect, must_refuse, [n.strip() for n in identity], line)


def parse_prompt(value) -> Conversation:
    if isinstance(value, str):
        if not value.strip():
            raise ValidationError("empty prompt", field="prompt")
        return Conversation([Message("user", value)])
    if not isinstance(value, list) or not value:
        raise ValidationError(f"expected a string or a non-empty list of messages, got {type(value).__name__}",
                              field="prompt")
    try:
        conv = Conversation.from_dict({"messages": value})
    except ValidationError as e:
        e.field = f"prompt.{e.field}" if e.field else "prompt"
        raise e.at() from None
    if conv.messages[-1].role != "user":
        raise ValidationError(f"the last message must be a user turn, got {conv.messages[-1].role!r}",
                              field=f"prompt.messages[{len(conv.messages) - 1}].role")
    return conv


def load_probes(path: str | Path) -> list[Probe]:
    """Every probe of a JSONL file, or ValidationError naming file:line: field for the first bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such probe file")
    probes, seen = [], {}
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValidationError(f"not valid JSON: {e.msg} (column {e.colno})", file=str(path), line=n) from e
            try:
                probe = parse_probe(obj, n)
            except ValidationError as e:
                raise e.at(str(path), n) from None
            if probe.id in seen:
                raise ValidationError(f"duplicate id {probe.id!r} (first on line {seen[probe.id]})", field="id",
                                      file=str(path), line=n)
            seen[probe.id] = n
            probes.append(probe)
    if not probes:
        raise ValidationError("no probes in the file", file=str(path))
    return probes
