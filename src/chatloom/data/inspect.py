"""Look at a conversation file: validate it (every bad record by file:line:field), count it (rows, turns, tokens per
role under a protocol and tokenizer, languages, tags, sources, licences) and show a few conversations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..conversation import Conversation, Rejects, ValidationError, load


def validate(paths: Iterable[Path]) -> tuple[int, list[ValidationError]]:
    """(valid record count, errors) over the files; reading goes on past bad records."""
    errors: list[ValidationError] = []

    class Collect(Rejects):
        def add(self, error, raw):
            super().add(error, raw)
            errors.append(error)

    good = 0
    for path in paths:
        for _ in load(path, on_error="skip", rejects=Collect()):
            good += 1
    return good, errors


def stats(paths: Iterable[Path], protocol=None, batch: int = 512) -> dict:
    rows = 0
    turns: Counter = Counter()
    roles: Counter = Counter()
    tokens: Counter = Counter()
    supervised = 0
    langs: Counter = Counter()
    tags: Counter = Counter()
    sources: Counter = Counter()
    licenses: Counter = Counter()
    pending: list[Conversation] = []

    def flush():
        nonlocal supervised
        if protocol is None or not pending:
            pending.clear()
            return
        for conv, r in zip(pending, protocol.render_batch(pending), strict=True):
            for m in r.message_index:
                tokens[conv.messages[m].role if m >= 0 else "(template)"] += 1
            supervised += r.num_supervised
        pending.clear()

    for path in paths:
        for conv in load(path):
            rows += 1
            turns[len(conv.messages)] += 1
            for m in conv.messages:
                roles[m.role] += 1
            meta = conv.meta
            langs[meta.get("lang") or "(unknown)"] += 1
            for t in meta.get("tags") or []:
                tags[t] += 1
            sources[meta.get("source") or "(unknown)"] += 1
            licenses[meta.get("license") or "(unstated)"] += 1
            pending.append(conv)
            if len(pending) >= batch:
                flush()
    flush()
    out = {"rows": rows, "messages_per_role": dict(roles), "turns": dict(sorted(turns.items())),
           "mean_messages": round(sum(k * v for k, v in turns.items()) / rows, 3) if rows else 0,
           "languages": dict(langs.most_common()), "tags": dict(tags.most_common()), "sources": dict(sources.most_common()),
           "licenses": dict(licenses.most_common())}
    if protocol is not None:
        out.update({"protocol": protocol.name, "tokenizer": protocol.tokenizer.name, "tokens_per_role": dict(tokens),
                    "tokens": sum(tokens.values()), "supervised_tokens": supervised})
    return out
