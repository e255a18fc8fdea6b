"""What the user simulator is asked to write: seeds (topics or questions), personas, phrasing styles and follow-up moves.

UltraChat-style: one model plays a human user with a persona, opens from a seed topic or rephrases a seed question, and
after each assistant answer writes a natural follow-up. The simulator sees the conversation as a transcript and is asked
for the next user message only, so any chat model (or a base model behind a chat template) can play the part.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..conversation import ValidationError

DEFAULT_PERSONAS = (
    "a curious high-school student who asks direct questions",
    "a busy software engineer who wants concise, practical answers",
    "a retired teacher who likes careful explanations and examples",
    "a graduate student who pushes on details and asks for sources of reasoning",
    "a small-business owner with little technical background",
    "a non-native English speaker who writes short, simple sentences",
    "a skeptical journalist who challenges claims",
    "a hobbyist who is excited about the subject and a bit informal",
    "a parent trying to explain something to their child",
    "a professional preparing a presentation for colleagues",
)

OPENING_STYLES = (
    "Ask a direct question.",
    "Describe your situation in one or two sentences, then ask for help.",
    "Ask for an explanation as if you were new to the subject.",
    "Ask for a comparison between two related things.",
    "Ask for step-by-step instructions.",
    "Ask a short, casual question, the way people type in a hurry.",
    "Ask for an example or a concrete case.",
)

FOLLOWUP_MOVES = (
    "Ask for more detail about one specific point in the last answer.",
    "Ask a related question that goes one step further.",
    "Challenge or question one claim in the last answer.",
    "Ask how this applies to your own situation (make up a plausible detail).",
    "Ask for a concrete example.",
    "Ask for a simpler explanation of something that was unclear.",
    "Change the angle: ask about a consequence, a risk or an alternative.",
)

SIMULATOR_RULES = ("Write only the user's next message: no preamble, no quotes, no 'User:' label, no reply from the "
                   "assistant. Do not thank the assistant, do not say goodbye and do not end the conversation.")


@dataclass(frozen=True)
class Seed:
    """A seed topic ("write a question about X") or a seed question ("ask this, in your own words")."""

    kind: str  # "topic" | "question"
    text: str
    allow_refusal: bool = False

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "text": self.text}
        if self.allow_refusal:
            d["allow_refusal"] = True
        return d


def load_seeds(path: str | Path, kind: str) -> list[Seed]:
    """Seeds from a text file (one per line; blank lines and `#` comments skipped) or JSONL (`{"topic"|"question"|"text":
    ..., "allow_refusal": bool}`). A bad line is an error naming file, line and field."""
    path = Path(path)
    seeds: list[Seed] = []
    jsonl = path.suffix in (".jsonl", ".json")
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or (not jsonl and line.startswith("#")):
                continue
            if not jsonl:
                seeds.append(Seed(kind, line))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValidationError(f"invalid JSON ({e.msg})", file=str(path), line=line_no) from e
            if isinstance(record, str):
                record = {"text": record}
            if not isinstance(record, dict):
                raise ValidationError("expected an object or a string", file=str(path), line=line_no)
            key = next((k for k in (kind, "text") if k in record), None)
            text = record.get(key) if key else None
            if not isinstance(text, str) or not text.strip():
                raise ValidationError("needs a non-empty string", field=kind, file=str(path), line=line_no)
            allow = record.get("allow_refusal", False)
            if not isinstance(allow, bool):
                raise ValidationError("must be true or false", field="allow_refusal", file=str(path), line=line_no)
            seeds.append(Seed(kind, text.strip(), allow))
    if not seeds:
        raise ValidationError(f"no {kind}s in the file", file=str(path))
    return seeds


def load_personas(path: str | Path) -> list[str]:
    """Personas, one per line (text) or `{"persona": ...}` per line (JSONL)."""
    path = Path(path)
    personas = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValidationError(f"invalid JSON ({e.msg})", file=str(path), line=line_no) from e
            line = record.get("persona") if isinstance(record, dict) else record
            if not isinstance(line, str) or not line.strip():
                raise ValidationError("needs a non-empty string", field="persona", file=str(path), line=line_no)
        personas.append(line.strip())
    if not personas:
        raise ValidationError("no personas in the file", file=str(path))
    return personas


def _system(persona: str) -> dict:
    return {"role": "system", "content": f"You are role-playing a human user talking to an AI assistant. "
                                         f"You are {persona}. {SIMULATOR_RULES}"}


def opening_request(seed: Seed, persona: str, style: str) -> list[dict]:
    """Messages asking the simulator for the opening user message."""
    if seed.kind == "topic":
        task = f"Write the first message you send to the assistant about this topic: {seed.text}\n{style}"
    else:
        task = (f"You want to ask the assistant this question: {seed.text}\n"
                f"Write it as your first message, in your own words and voice. {style}")
    return [_system(persona), {"role": "user", "content": task}]


def followup_request(seed: Seed, persona: str, move: str, turns: list[dict]) -> list[dict]:
    """Messages asking the simulator for the next user message, given the conversation so far as a transcript."""
    transcript = "\n\n".join(f"[{m['role'].upper()}]\n{m['content']}" for m in turns if m["role"] != "system")
    task = (f"The conversation so far (it started from: {seed.text}):\n\n{transcript}\n\n"
            f"Write your next message as the user. {move}")
    return [_system(persona), {"role": "user", "content": task}]


_LABEL = re.compile(r"^\s*(?:\[user\]|\*\*user:?\*\*:?|user:)\s*", re.IGNORECASE)


def clean_user_text(text: str) -> str:
    """The simulator's reply as a user message: a leading `User:` label and wrapping quotes removed."""
    text = _LABEL.sub("", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    if len(text) >= 2 and text[0] == "“" and text[-1] == "”":
        text = text[1:-1].strip()
    return text
