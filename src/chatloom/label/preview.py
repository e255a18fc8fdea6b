"""Live token preview for the reply editor: the conversation rendered by the project's protocol and tokenizer, each
token with its text, whether the loss sees it, and the message it belongs to (the same `render` training uses; -1 and
`template_tokens` count template text that belongs to no message, such as BOS or a default system prompt)."""

from __future__ import annotations

import threading
from functools import lru_cache

from ..conversation import Conversation, ValidationError
from ..conversation import Message as ConvMessage
from ..protocols import view

_lock = threading.Lock()
MAX_PREVIEW_CHARS = 60_000


@lru_cache(maxsize=8)
def _protocol(protocol: str, tokenizer_path: str | None):
    from .. import protocols
    from ..tokenizers import load_tokenizer

    return protocols.get(protocol, load_tokenizer(tokenizer_path or None), copy=True)


class PreviewUnavailable(RuntimeError):
    """The project's protocol or tokenizer cannot be loaded (its settings need fixing)."""


def protocol_for_settings(protocol: str, tokenizer_path: str | None):
    with _lock:
        return _protocol(protocol, tokenizer_path)


def protocol_for(project):
    try:
        return protocol_for_settings(project.protocol, project.tokenizer_path)
    except Exception as e:  # a tokenizer stored before settings were checked, or a file that changed since
        raise PreviewUnavailable(f"this project's tokenizer cannot be loaded ({type(e).__name__}); an admin can fix it "
                                 "in the project's settings") from None


def preview(project, messages: list[dict], system: str | None = None) -> dict:
    """Token view of `messages` ([{role, content}]); empty messages (an editor not yet filled) are left out."""
    if sum(len(str(m.get("content", ""))) for m in messages) > MAX_PREVIEW_CHARS:
        raise ValidationError(f"preview is limited to {MAX_PREVIEW_CHARS} characters")
    turns = [ConvMessage(str(m["role"]), str(m["content"])) for m in messages if str(m.get("content", "")).strip()]
    if system:
        turns.insert(0, ConvMessage("system", system))
    if not turns:
        return {"tokens": [], "num_tokens": 0, "num_supervised": 0, "per_message": [], "template_tokens": 0,
                "protocol": project.protocol}
    conv = Conversation(turns).validate()
    proto = protocol_for(project)
    with _lock:
        tv = view.as_json(conv, proto.render(conv), proto)
    per = [{"role": m.role, "tokens": 0, "supervised": 0} for m in conv.messages]
    template_tokens = 0  # message index -1: BOS, a template's default system prompt, the generation prompt
    for mi, sup in zip(tv["message_index"], tv["mask"], strict=True):
        if 0 <= mi < len(per):
            per[mi]["tokens"] += 1
            per[mi]["supervised"] += int(sup)
        else:
            template_tokens += 1
    return {"tokens": [[t, int(s), int(mi)] for t, s, mi in zip(tv["tokens"], tv["mask"], tv["message_index"], strict=True)],
            "num_tokens": tv["num_tokens"], "num_supervised": int(tv["num_supervised"]), "per_message": per,
            "template_tokens": template_tokens,
            "protocol": proto.name, "tokenizer": proto.tokenizer.name}


def warm_up(database) -> None:
    """Load the tokenizers of existing projects (and the bundled one) so the first preview is not slow; run in a thread."""
    from types import SimpleNamespace

    from sqlalchemy import select

    from .models import Project

    with database.session() as s:
        wanted = {(p.protocol, p.tokenizer_path) for p in s.scalars(select(Project))} | {("chatml", None)}
    for protocol, tokenizer_path in wanted:
        try:
            protocol_for(SimpleNamespace(protocol=protocol, tokenizer_path=tokenizer_path))
        except Exception:  # a broken project tokenizer shows its error in the editor, not at startup
            pass
