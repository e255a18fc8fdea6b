"""`--to-label`: hand finished synth conversations to the labeling app's review queue.

The labeling app (`chatloom.label`) owns its database; synth only calls its import function,
`chatloom.label.import_conversations(db_url, project, conversations)`, with `db_url=None` meaning the app's default.
"""

from __future__ import annotations

from pathlib import Path

from ..conversation import load


class HandoffError(RuntimeError):
    """The labeling app is missing or refused the conversations."""


def import_function():
    try:
        from .. import label
    except ImportError as e:
        raise HandoffError("--to-label needs the labeling app (chatloom.label), which is not part of this install; "
                           f"the conversations are in the output file, import them later ({e})") from e
    fn = getattr(label, "import_conversations", None)
    if fn is None:
        raise HandoffError("chatloom.label has no import_conversations(db_url, project, conversations); "
                           "the conversations are in the output file, import them later")
    return fn


def to_label(out: str | Path, project: str, db_url: str | None = None) -> int:
    """Import every conversation of `out` into labeling project `project`; returns how many were handed over."""
    fn = import_function()
    conversations = list(load(out))
    result = fn(db_url, project, conversations)
    return result if isinstance(result, int) else len(conversations)
