"""Import seed prompts or finished conversations into a project, and export its trees as Conversation records whose
`meta` carries the provenance of every message (authors, times, drafts and how much they were edited, instruction
versions, review summaries, ranking scores). An assistant message's `reasoning_content` is stored on import and written
back on export exactly as it came (and only where there was one).

`--threads best` follows the ranking at every branch (one conversation per tree); `--threads all` writes every path that
ends in an assistant reply.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from ..conversation import Conversation, Rejects, ValidationError
from ..conversation import Message as ConvMessage
from ..data.oasst import threads as oasst_threads
from . import editdistance
from .models import Message, Project, Ranking, Review, Tree
from .service import CURRENT_RANKING, CURRENT_REVIEW, current_instructions


@dataclass
class ImportReport:
    prompts: int = 0
    conversations: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


def _records(path: Path):
    if path.suffix in (".jsonl", ".json") or path.suffix == "":
        with path.open(encoding="utf-8") as f:
            if path.suffix == ".json":
                data = json.load(f)
                yield from ((i + 1, d) for i, d in enumerate(data if isinstance(data, list) else [data]))
                return
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield n, ValidationError(f"invalid JSON: {e.msg}", field="(line)")
    elif path.suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, {"prompt": line.rstrip("\n")}
    else:
        from ..conversation import load
        for n, c in enumerate(load(path), 1):
            yield n, c.to_dict()


def import_file(db: DbSession, project: Project, path: str | Path, *, on_error: str = "fail",
                rejects: Rejects | None = None, progress: Callable[[], None] | None = None) -> ImportReport:
    """Seed prompts (`{"prompt": ...}` lines or one-message conversations, or a .txt with one prompt per line) become new
    trees; longer conversations become a branch whose messages enter the review queue. Re-importing is idempotent."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    report = ImportReport()
    version = current_instructions(db, project.id).version
    known = set(db.scalars(select(Tree.source).where(Tree.project_id == project.id, Tree.source.is_not(None))))
    for line, raw in _records(path):
        if progress is not None:
            progress()
        try:
            if isinstance(raw, ValidationError):
                raise raw
            if isinstance(raw, dict) and "prompt" in raw:
                prompt = raw["prompt"]
                if not isinstance(prompt, str) or not prompt.strip():
                    raise ValidationError("must be a non-empty string", field="prompt")
                conv = Conversation([ConvMessage("user", prompt)])
            else:
                conv = Conversation.from_dict(raw)
            system = conv.messages[0].content if conv.messages[0].role == "system" else None
            turns = conv.messages[1:] if system is not None else conv.messages
            for i, m in enumerate(turns):
                if m.role not in ("user", "assistant") or m.tool_calls:
                    raise ValidationError("the labeling app holds user/assistant turns only", field=f"messages[{i}].role")
                if m.role != ("user", "assistant")[i % 2]:
                    raise ValidationError("turns must start with user and alternate", field=f"messages[{i}].role")
        except ValidationError as e:
            e = e.at(str(path), line)
            if on_error == "fail":
                raise e from None
            report.rejected += 1
            report.errors.append(str(e))
            if rejects is not None:
                rejects.add(e, raw if isinstance(raw, dict) else str(raw))
            continue
        source = f"import:{conv.id}"
        if source in known:
            report.duplicates += 1
            continue
        known.add(source)
        tree = Tree(project_id=project.id, system_prompt=system or project.system_prompt, source=source)
        db.add(tree)
        db.flush()
        label = f"import:{path.name}"
        authors = conv.meta.get("authors") if isinstance(conv.meta.get("authors"), list) else None
        parent = None
        for depth, m in enumerate(turns):
            author = authors[depth] if authors and depth < len(authors) and isinstance(authors[depth], str) else label
            msg = Message(tree_id=tree.id, parent_id=parent.id if parent else None, role=m.role, text=m.content,
                          reasoning_content=m.reasoning_content, depth=depth, author_id=None, author_label=author, instruction_version=version)
            db.add(msg)
            db.flush()
            parent = msg
        if len(turns) == 1:
            report.prompts += 1
        else:
            report.conversations += 1
    return report


# ------------------------------------------------------------------------------------------------------------- export


def _rank_scores(rankings: list[Ranking]) -> dict[int, float]:
    """Mean normalized position (1 = ranked first, 0 = last) over every ranking a reply appears in."""
    totals: dict[int, list[float]] = defaultdict(list)
    for r in rankings:
        n = len(r.order)
        for pos, mid in enumerate(r.order):
            totals[mid].append(1.0 if n == 1 else (n - 1 - pos) / (n - 1))
    return {mid: sum(v) / len(v) for mid, v in totals.items()}


def _review_summary(reviews: list[Review]) -> dict | None:
    if not reviews:
        return None
    out = {"n": len(reviews), "quality": round(sum(r.quality for r in reviews) / len(reviews), 3)}
    for flag in ("helpful", "truthful", "harmless", "spam", "pii", "should_have_refused"):
        out[flag] = round(sum(getattr(r, flag) for r in reviews) / len(reviews), 3)
    return out


def export_project(db: DbSession, project: Project, threads: str = "best",
                   progress: Callable[[int], None] | None = None) -> list[Conversation]:
    """Conversation records of the project's trees; `progress(total)` is called once, then `progress(0)` per tree."""
    if threads not in ("best", "all"):
        raise ValueError("threads must be 'best' or 'all'")
    trees = list(db.scalars(select(Tree).where(Tree.project_id == project.id, Tree.deleted.is_(False)).order_by(Tree.id)))
    tree_ids = [t.id for t in trees]
    if not tree_ids:
        return []
    msgs = list(db.scalars(select(Message).where(Message.tree_id.in_(tree_ids), Message.deleted.is_(False))
                           .order_by(Message.id)))
    by_id = {m.id: m for m in msgs}
    children: dict[int | None, list[int]] = defaultdict(list)
    for m in msgs:
        children[m.parent_id].append(m.id)
    ids = list(by_id)
    reviews: dict[int, list[Review]] = defaultdict(list)
    for r in db.scalars(select(Review).where(Review.message_id.in_(ids), CURRENT_REVIEW)):
        reviews[r.message_id].append(r)
    rankings: dict[int, list[Ranking]] = defaultdict(list)
    for r in db.scalars(select(Ranking).where(Ranking.parent_id.in_(ids), CURRENT_RANKING)):
        rankings[r.parent_id].append(r)
    score: dict[int, float] = {}
    for rs in rankings.values():
        score.update(_rank_scores(rs))

    def goodness(mid: int) -> tuple:
        summary = _review_summary(reviews[mid])
        spam = summary["spam"] > 0.5 if summary else False
        return (not spam, score.get(mid, -1.0), summary["quality"] if summary else 0.0, -mid)

    def has_reply_below(mid: int) -> bool:
        return any(by_id[c].role == "assistant" or has_reply_below(c) for c in children[mid])

    def as_oasst(mid: int) -> dict:
        """The subtree under `mid` in OpenAssistant's nested shape, for the data layer's thread selection: replies
        that lead nowhere (a follow-up nobody answered) are left out, and `rank` 0 is the best reply here."""
        kids = [c for c in children[mid] if by_id[mid].role == "user" or has_reply_below(c)]
        kids.sort(key=goodness, reverse=True)
        return {"message_id": mid, "role": "assistant" if by_id[mid].role == "assistant" else "prompter",
                "replies": [{**as_oasst(c), "rank": i} for i, c in enumerate(kids)]}

    convs = []
    if progress is not None:
        progress(len(trees))
    for tree in trees:
        if progress is not None:
            progress(0)
        for root in children[None]:
            if by_id[root].tree_id != tree.id:
                continue
            for path in oasst_threads(as_oasst(root), threads):  # trimmed to end on an assistant reply
                convs.append(_conversation(project, tree, [by_id[m["message_id"]] for m in path], reviews, score,
                                           threads))
    return convs


def _conversation(project: Project, tree: Tree, path: list[Message], reviews, score, threads: str) -> Conversation:
    messages = ([ConvMessage("system", tree.system_prompt)] if tree.system_prompt else [])
    messages += [ConvMessage(m.role, m.text, reasoning_content=m.reasoning_content) for m in path]  # None: key left out
    provenance, authors = [], []
    for m in path:
        author = f"labeler:{m.author.name}" if m.author is not None else (m.author_label or "unknown")
        if author not in authors:
            authors.append(author)
        entry = {"id": m.id, "role": m.role, "author": author, "created": m.created_at.isoformat() + "Z",
                 "updated": m.updated_at.isoformat() + "Z", "time_spent_s": round(m.time_spent_s, 2),
                 "instruction_version": m.instruction_version}
        if m.draft_text is not None:
            entry["draft"] = {"model": m.draft_model, "edit_distance": round(editdistance.normalized(
                m.draft_text, m.text, m.edit_distance), 4), "edit_chars": m.edit_distance, "text": m.draft_text}
        if (summary := _review_summary(reviews[m.id])) is not None:
            entry["reviews"] = summary
        if m.id in score:
            entry["rank_score"] = round(score[m.id], 4)
        provenance.append(entry)
    meta = {"source": f"labeling:{project.name}", "authors": authors, "tree": tree.id, "leaf": path[-1].id,
            "threads": threads, "protocol": project.protocol,
            "instruction_versions": sorted({m.instruction_version for m in path if m.instruction_version is not None}),
            "messages": provenance}
    drafted = [p["draft"] for p in provenance if "draft" in p]
    if drafted:
        meta["draft"] = {"model": drafted[-1]["model"], "edit_distance": drafted[-1]["edit_distance"],
                         "edit_chars": drafted[-1]["edit_chars"]}
    return Conversation(messages, id=f"label-{project.name}-{tree.id}-{path[-1].id}", meta=meta)


def why_empty(db: DbSession, project: Project, threads: str) -> str:
    """Why an export of `project` has no conversation, in words (an empty file is never the whole answer)."""
    from sqlalchemy import func

    trees = db.scalar(select(func.count()).select_from(Tree).where(Tree.project_id == project.id,
                                                                    Tree.deleted.is_(False))) or 0
    replies = db.scalar(select(func.count()).select_from(Message).join(Tree, Tree.id == Message.tree_id)
                        .where(Tree.project_id == project.id, Message.role == "assistant",
                               Message.deleted.is_(False))) or 0
    if not trees:
        return f"project {project.name!r} has no conversations yet: nothing to export"
    if not replies:
        return (f"project {project.name!r} has {trees} tree(s) but no assistant reply yet: an exported conversation "
                "ends with an assistant reply, so there is nothing to train on until someone writes one")
    return f"no {threads} threads in project {project.name!r} end with an assistant reply yet"
