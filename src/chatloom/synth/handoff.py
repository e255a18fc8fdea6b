"""`--to-label`: hand finished synth conversations to the labeling app's review queue.

The labeling app (`chatloom.label`) owns its database; synth only calls into it. Preferred entry point:
`chatloom.label.import_conversations(db_url, project, conversations)`. Without it, the app's own file import is used
(`chatloom.label.transfer.import_file`, the code behind `chatloom label import`), which is idempotent by conversation
id, so handing the same output over twice adds nothing. If the labeling app is not installed the error says so and the
conversations stay in the output file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..conversation import load

DEFAULT_LABEL_DB = "sqlite:///label.db"  # the labeling app's own default (`chatloom label serve --db`)


class HandoffError(RuntimeError):
    """The labeling app is missing or refused the conversations."""


def _label_package():
    try:
        label = importlib.import_module("chatloom.label")
    except ImportError as e:
        raise HandoffError("--to-label needs the labeling app (chatloom.label), which is not part of this install; "
                           f"the conversations are in the output file, import them later ({e})") from e
    return label


def to_label(out: str | Path, project: str, db_url: str | None = None) -> int:
    """Put every conversation of `out` into labeling project `project` (created if new); returns how many were new."""
    label = _label_package()
    db_url = db_url or DEFAULT_LABEL_DB
    if hasattr(label, "import_conversations"):
        try:
            result = label.import_conversations(db_url, project, list(load(out)))
        except Exception as e:  # the labeling app's own error, reported as such
            raise HandoffError(f"the labeling app refused the conversations: {e}") from e
        return result if isinstance(result, int) else getattr(result, "conversations", 0)
    try:
        from ..label import service, transfer
        from ..label.db import Database
    except ImportError as e:
        raise HandoffError(f"chatloom.label offers no import entry point synth knows ({e}); "
                           "the conversations are in the output file, import them with `chatloom label import`") from e
    try:
        with Database(db_url).session() as session:
            try:
                proj = service.project_by_name(session, project)
            except service.NotFound:
                proj = service.create_project(session, project)
            report = transfer.import_file(session, proj, Path(out))
    except Exception as e:  # the labeling app's own error, reported as such
        raise HandoffError(f"the labeling app refused the conversations: {e}") from e
    return report.conversations
