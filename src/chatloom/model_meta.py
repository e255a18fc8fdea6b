"""`chatloom.json`: the note chatloom writes next to a model it exports, naming the protocol it was trained with (its
end-of-turn token, its control tokens, run extras).

One home for reading and writing it, because four tools read it (`protocols.for_model`, the training loop's protocol
clash check through `train.models.model_protocol`, the engine's `meta`, the quickstart's cache check) and one writes it
(`train.export`): a change to the file's name or shape is made here, once.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "chatloom.json"


def path(model_dir: str | Path) -> Path:
    return Path(str(model_dir)) / FILE


def read(model_dir: str | Path) -> dict:
    """The meta of a model directory; {} when there is none (a model chatloom did not write, a named config, a Hub id)."""
    meta = path(model_dir)
    if not meta.is_file():
        return {}
    return read_json_object(meta)


def read_json_object(file: Path, error: type[ValueError] = ValueError) -> dict:
    """A JSON file that must hold an object; `error` (a ValueError) names the file, line and what is wrong."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise error(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def protocol(model_dir: str | Path) -> str | None:
    """The protocol name the model was trained with, or None when the directory has no meta."""
    return read(model_dir).get("protocol")


def write(model_dir: str | Path, meta: dict) -> Path:
    target = path(model_dir)
    target.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target
