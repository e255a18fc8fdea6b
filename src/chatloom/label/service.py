"""What the labeling app does, without HTTP: projects and instruction versions, the task queue, submissions with
provenance, reviews and rankings, message edits with optimistic locking. Routes and the CLI call these functions inside
one short database transaction each.

The queue hands out the most needed work first and in the smallest trees first, so trees fill evenly; open tasks reserve
their slot for `TASK_TTL`; nobody is given their own message to review, rank or answer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Row, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from . import editdistance, project_settings
from .models import Instructions, Message, Project, Ranking, Review, Task, Tree, User, now

SettingsPolicy = project_settings.SettingsPolicy
DEFAULT_INSTRUCTIONS = Path(__file__).parent / "instructions" / "default.md"
TASK_TTL = timedelta(hours=1)
MAX_TEXT = 50_000
KIND_ROLES = {
    "prompt": ("admin", "labeler"),
    "reply": ("admin", "labeler"),
    "followup": ("admin", "labeler"),
    "review": ("admin", "labeler", "reviewer"),
    "rank": ("admin", "labeler", "reviewer"),
}
NEXT_ORDER = {
    "admin": ("reply", "followup", "rank", "review", "prompt"),
    "labeler": ("reply", "followup", "rank", "review", "prompt"),
    "reviewer": ("rank", "review"),
}
KIND_TITLES = {"prompt": "Write an initial prompt", "reply": "Write the assistant's reply",
               "followup": "Write the user's follow-up", "review": "Review a message", "rank": "Rank the replies"}
KIND_HELP = {
    "prompt": "start a new conversation: write what a user would ask",
    "reply": "answer a user's message as the ideal assistant (a model draft can get you started)",
    "followup": "continue a conversation as the user, after the assistant's reply",
    "review": "rate one message: quality 1-5 and flags (spam, PII, should have refused ...)",
    "rank": "order the replies to one prompt from best to worst",
}


class LabelError(ValueError):
    """A request that cannot be done as asked (bad input); HTTP 400."""


class Forbidden(LabelError):
    """The user may not do this (role, own message); HTTP 403."""


class Conflict(LabelError):
    """Someone else changed the thing first (or it was already submitted); HTTP 409, nothing is overwritten."""


class NotFound(LabelError):
    """No such row (or not visible to this user); HTTP 404."""


# Reviews and rankings that count: not withdrawn, not superseded by a newer one from the same person.
CURRENT_REVIEW = Review.deleted.is_(False) & Review.superseded.is_(False)
CURRENT_RANKING = Ranking.deleted.is_(False) & Ranking.superseded.is_(False)


# ------------------------------------------------------------------------------------------------------------ projects


def default_instructions() -> str:
    return DEFAULT_INSTRUCTIONS.read_text(encoding="utf-8")


def create_project(db: DbSession, name: str, *, creator: User | None = None, instructions: str | None = None,
                   policy: SettingsPolicy | None = None, **settings) -> Project:
    """A new project with the default instructions (or `instructions`) as version 1. `settings` are the keys of
    `PROJECT_SETTINGS`, checked (against the operator's `policy` when an admin chose them on a page)."""
    name = (name or "").strip()
    if not name or len(name) > 128:
        raise LabelError("project name must be 1-128 characters")
    defaults = {"protocol": "chatml", "replies_per_prompt": 2, "reviews_per_message": 1, "rankings_per_prompt": 1,
                "max_depth": 3}
    try:
        values = {**defaults, **project_settings.clean({**defaults, **settings}, {}, policy)}
    except project_settings.SettingsError as e:
        raise LabelError(str(e)) from None
    if db.scalar(select(Project).where(Project.name == name)) is not None:
        raise Conflict(f"a project named {name!r} already exists")
    project = Project(name=name, created_by=creator.id if creator else None, **values)
    db.add(project)
    db.flush()
    db.add(Instructions(project_id=project.id, version=1, markdown=instructions or default_instructions(),
                        note="initial", created_by=creator.id if creator else None))
    db.flush()
    return project


PROJECT_SETTINGS = project_settings.FIELDS


def update_project(db: DbSession, project_id: int, user: User, *, policy: SettingsPolicy | None = None,
                   **settings) -> Project:
    """Change a project's settings (admin only); trees already written keep the system prompt they were written with."""
    if user.role != "admin":
        raise Forbidden("only admins change projects")
    project = get_project(db, project_id)
    current = {key: getattr(project, key) for key in PROJECT_SETTINGS}
    try:
        values = project_settings.clean(settings, current, policy)
    except project_settings.SettingsError as e:
        raise LabelError(str(e)) from None
    for key, value in values.items():
        setattr(project, key, value)
    db.flush()
    return project


def project_by_name(db: DbSession, name: str) -> Project:
    project = db.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"no project named {name!r}")
    return project


def get_project(db: DbSession, project_id: int) -> Project:
    project = db.get(Project, project_id)
    if project is None:
        raise NotFound(f"no project {project_id}")
    return project


def current_instructions(db: DbSession, project_id: int) -> Instructions:
    return db.scalar(select(Instructions).where(Instructions.project_id == project_id)
                     .order_by(Instructions.version.desc()).limit(1))


def instruction_versions(db: DbSession, project_id: int) -> list[Instructions]:
    return list(db.scalars(select(Instructions).where(Instructions.project_id == project_id)
                           .order_by(Instructions.version.desc())))


def save_instructions(db: DbSession, project_id: int, markdown: str, *, author: User, base_version: int,
                      note: str | None = None) -> Instructions:
    """A new version on top of `base_version`; if someone saved a newer one meanwhile, Conflict (nothing is lost)."""
    if author.role != "admin":
        raise Forbidden("only admins edit instructions")
    if not markdown.strip():
        raise LabelError("instructions cannot be empty")
    current = current_instructions(db, project_id)
    if current.version != base_version:
        raise Conflict(f"version {current.version} was saved meanwhile (you edited version {base_version}); "
                       "your text is kept in the editor: compare, then save again")
    row = Instructions(project_id=project_id, version=current.version + 1, markdown=markdown, note=note or None,
                       created_by=author.id)
    db.add(row)
    db.flush()  # the unique (project, version) constraint turns a simultaneous save into an error, not an overwrite
    return row


# ---------------------------------------------------------------------------------------------------------- the queue


@dataclass
class ProjectState:
    """A snapshot of one project's trees, enough to decide which work is needed most."""
    messages: dict[int, Row]  # id, tree_id, parent_id, role, author_id, depth
    children: dict[int, list[int]]
    tree_size: Counter
    reviewers: dict[int, set[int]]
    rankers: dict[int, set[int]]
    open_tasks: list[Task]
    reserved: Counter = field(default_factory=Counter)
    reserved_by: dict[tuple[str, int], set[int]] = field(default_factory=lambda: defaultdict(set))


def load_state(db: DbSession, project_id: int, only: int | None = None) -> ProjectState:
    """The project's queue state; with `only`, just what decides the slots of that one message (it, its children, its
    reviews, rankings and open tasks), a few rows instead of the whole project."""
    # Open tasks first, messages after: under READ COMMITTED a submission committed in between is then counted twice
    # (safe), never zero times (an overbooked slot).
    tq = select(Task).where(Task.project_id == project_id, Task.status == "open", Task.created_at > now() - TASK_TTL)
    mq = (select(Message.id, Message.tree_id, Message.parent_id, Message.role, Message.author_id, Message.depth)
          .join(Tree, Tree.id == Message.tree_id)
          .where(Tree.project_id == project_id, Message.deleted.is_(False), Tree.deleted.is_(False)))
    rq = (select(Review.message_id, Review.reviewer_id).join(Message, Message.id == Review.message_id)
          .join(Tree, Tree.id == Message.tree_id).where(Tree.project_id == project_id, CURRENT_REVIEW))
    kq = (select(Ranking.parent_id, Ranking.ranker_id).join(Message, Message.id == Ranking.parent_id)
          .join(Tree, Tree.id == Message.tree_id).where(Tree.project_id == project_id, CURRENT_RANKING))
    if only is not None:
        tq = tq.where(Task.target_id == only)
        mq = mq.where((Message.id == only) | (Message.parent_id == only))
        rq = rq.where(Review.message_id == only)
        kq = kq.where(Ranking.parent_id == only)
    open_tasks = list(db.scalars(tq))
    msgs = list(db.execute(mq))
    messages = {m.id: m for m in msgs}
    children: dict[int, list[int]] = defaultdict(list)
    for m in sorted(msgs, key=lambda m: m.id):
        if m.parent_id is not None and (only is None or m.parent_id == only):
            children[m.parent_id].append(m.id)
    reviewers: dict[int, set[int]] = defaultdict(set)
    for mid, uid in db.execute(rq):
        reviewers[mid].add(uid)
    rankers: dict[int, set[int]] = defaultdict(set)
    for pid, uid in db.execute(kq):
        rankers[pid].add(uid)
    state = ProjectState(messages, children, Counter(m.tree_id for m in msgs), reviewers, rankers, open_tasks)
    for t in open_tasks:
        if t.target_id is not None:
            state.reserved[(t.kind, t.target_id)] += 1
            state.reserved_by[(t.kind, t.target_id)].add(t.user_id)
    return state


def _assistant_children(state: ProjectState, mid: int) -> list[int]:
    return [c for c in state.children.get(mid, []) if state.messages[c].role == "assistant"]


def candidates(state: ProjectState, project: Project, user: User, kind: str) -> list[int]:
    """Target message ids for `kind` that `user` may take now, most needed first."""
    msgs, uid = state.messages, user.id
    order = []
    for m in msgs.values():
        busy = uid in state.reserved_by.get((kind, m.id), ())
        if busy:
            continue
        held = state.reserved[(kind, m.id)]
        kids = state.children.get(m.id, [])
        if kind == "review":
            n = len(state.reviewers.get(m.id, ()))
            if m.author_id != uid and uid not in state.reviewers.get(m.id, ()) and n + held < project.reviews_per_message:
                order.append(((n, state.tree_size[m.tree_id], m.id), m.id))
        elif kind == "reply" and m.role == "user":
            replies = _assistant_children(state, m.id)
            if (m.author_id != uid and len(replies) + held < project.replies_per_prompt
                    and all(msgs[c].author_id != uid for c in replies)):
                order.append(((state.tree_size[m.tree_id], m.depth, len(replies), m.id), m.id))
        elif kind == "followup" and m.role == "assistant":
            turn = (m.depth + 1) // 2
            if m.author_id != uid and turn < project.max_depth and len(kids) + held < 1:
                order.append(((state.tree_size[m.tree_id], m.depth, m.id), m.id))
        elif kind == "rank" and m.role == "user":
            replies = _assistant_children(state, m.id)
            n = len(state.rankers.get(m.id, ()))
            if (len(replies) >= max(2, project.replies_per_prompt) and n + held < project.rankings_per_prompt
                    and uid not in state.rankers.get(m.id, ()) and all(msgs[c].author_id != uid for c in replies)):
                order.append(((n, state.tree_size[m.tree_id], m.id), m.id))
    return [mid for _, mid in sorted(order)]


def open_task_for(db: DbSession, project_id: int, user: User, kind: str | None) -> Task | None:
    q = select(Task).where(Task.project_id == project_id, Task.user_id == user.id, Task.status == "open",
                           Task.created_at > now() - TASK_TTL)
    if kind:
        q = q.where(Task.kind == kind)
    return db.scalar(q.order_by(Task.id).limit(1))


def _check_kind(user: User, kind: str | None) -> None:
    if kind is not None and kind not in KIND_ROLES:
        raise LabelError(f"unknown task kind {kind!r}")
    if kind is not None and user.role not in KIND_ROLES[kind]:
        raise Forbidden(f"a {user.role} does not do {kind} tasks")


def next_task(db: DbSession, project: Project, user: User, kind: str | None = None) -> Task | None:
    """The user's open task of this kind if any (a double click does not take two), else new work, else None.
    (`plan_next` + `take_next` in one transaction; the web app runs the look in a reading transaction first.)"""
    plan = plan_next(db, project.id, user, kind)
    if plan.existing is not None:
        return db.get(Task, plan.existing)
    return take_next(db, project.id, user, kind, plan)


def _new_task(db: DbSession, project: Project, user: User, kind: str, target: int | None) -> Task:
    task = Task(project_id=project.id, kind=kind, user_id=user.id, target_id=target,
                instruction_version=current_instructions(db, project.id).version)
    db.add(task)
    db.flush()
    return task


@dataclass
class NextPlan:
    """The queue's first look, made in a reading transaction: the user's open task, or the best few slots."""
    project_name: str
    existing: int | None = None
    slots: list[tuple[str, int | None]] = field(default_factory=list)


def plan_next(db: DbSession, project_id: int, user: User, kind: str | None = None, keep: int = 5) -> NextPlan:
    """Decide what `user` should do next by looking at the whole project, without writing (so on SQLite without
    holding the writer lock, which this look over every message would otherwise hold for its whole length)."""
    _check_kind(user, kind)
    project = get_project(db, project_id)
    plan = NextPlan(project.name)
    existing = open_task_for(db, project_id, user, kind)
    if existing is not None:
        plan.existing = existing.id
        return plan
    kinds = [kind] if kind else [k for k in NEXT_ORDER[user.role]]
    state = load_state(db, project_id) if kinds != ["prompt"] else None
    for k in kinds:
        if k == "prompt":
            plan.slots = [("prompt", None)]
            return plan
        found = candidates(state, project, user, k)
        if found:
            plan.slots = [(k, target) for target in found[:keep]]
            return plan
    return plan


def take_next(db: DbSession, project_id: int, user: User, kind: str | None, plan: NextPlan) -> Task | None:
    """The write after `plan_next`: the first planned slot that is still free, re-checked on that message alone while
    its row is locked; if others took all of them meanwhile, look again in this transaction and try those slots.

    Locks (PostgreSQL; SQLite's writer lock already serializes): the user's row, so one person's double click cannot
    take two tasks, and the target message's row (skipped if someone else holds it), so two people cannot take its
    last slot; different slots are taken in parallel. A submission needs no lock: it closes its task and adds its row in one transaction, and the re-check
    reads open tasks before messages, so a slot in flight is counted twice (safe), never zero times."""
    project = get_project(db, project_id)
    db.execute(select(User.id).where(User.id == user.id).with_for_update())
    existing = open_task_for(db, project_id, user, kind)
    if existing is not None:
        return existing
    for attempt in range(3):
        for k, target in plan.slots:
            if target is None:
                return _new_task(db, project, user, k, None)
            # SKIP LOCKED: a slot someone else is deciding on right now is passed over, never waited for (waiting
            # while holding another slot's lock could deadlock)
            if db.execute(select(Message.id).where(Message.id == target).with_for_update(skip_locked=True)).first() \
                    is None:
                continue
            if target in candidates(load_state(db, project_id, only=target), project, user, k):
                return _new_task(db, project, user, k, target)
        if attempt < 2:
            plan = plan_next(db, project_id, user, kind, keep=20)
            if plan.existing is not None:
                return db.get(Task, plan.existing)
            if not plan.slots:
                return None
    return None


def get_task(db: DbSession, task_id: int, user: User) -> Task:
    task = db.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    if task.user_id != user.id:
        raise Forbidden("this task belongs to someone else")
    return task


def thread(db: DbSession, message_id: int | None) -> list[Message]:
    """The path root -> message (inclusive)."""
    path = []
    while message_id is not None:
        m = db.get(Message, message_id)
        path.append(m)
        message_id = m.parent_id
    return path[::-1]


def siblings_to_rank(db: DbSession, parent_id: int) -> list[Message]:
    return list(db.scalars(select(Message).where(Message.parent_id == parent_id, Message.role == "assistant",
                                                 Message.deleted.is_(False)).order_by(Message.id)))


def _close(db: DbSession, task: Task, user: User, status: str = "done") -> None:
    """Atomically move the task from open to `status`; a second submit of the same task is a Conflict."""
    if task.user_id != user.id:
        raise Forbidden("this task belongs to someone else")
    result = db.execute(update(Task).where(Task.id == task.id, Task.status == "open")
                        .values(status=status, done_at=now()).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise Conflict(f"task {task.id} was already {db.scalar(select(Task.status).where(Task.id == task.id))}; "
                       "nothing was saved twice")


def _elapsed(task: Task) -> float:
    return max(0.0, (now() - task.created_at).total_seconds())


def _clean_text(text: str) -> str:
    text = (text or "").replace("\r\n", "\n")
    if not text.strip():
        raise LabelError("the text is empty")
    if len(text) > MAX_TEXT:
        raise LabelError(f"the text is longer than {MAX_TEXT} characters")
    return text


def submit_text(db: DbSession, task: Task, user: User, text: str) -> Message:
    """Finish a prompt / reply / follow-up task: one new message with its provenance."""
    if task.kind not in ("prompt", "reply", "followup"):
        raise LabelError(f"task {task.id} is a {task.kind} task")
    text = _clean_text(text)
    _close(db, task, user)
    project = db.get(Project, task.project_id)
    if task.kind == "prompt":
        tree = Tree(project_id=task.project_id, system_prompt=project.system_prompt, source=f"task:{task.id}")
        db.add(tree)
        db.flush()
        parent, role, depth = None, "user", 0
    else:
        parent = db.get(Message, task.target_id)
        if parent is None or parent.deleted:
            raise Conflict("the message you answered was withdrawn meanwhile")
        role = "assistant" if task.kind == "reply" else "user"
        tree, depth = db.get(Tree, parent.tree_id), parent.depth + 1
    distance = None
    if task.kind == "reply" and task.draft_text is not None:
        distance = editdistance.levenshtein(task.draft_text, text)
    msg = Message(tree_id=tree.id, parent_id=parent.id if parent else None, role=role, text=text, depth=depth,
                  author_id=user.id, author_label=f"labeler:{user.name}", task_id=task.id, time_spent_s=_elapsed(task),
                  draft_model=task.draft_model if task.kind == "reply" else None,
                  draft_text=task.draft_text if task.kind == "reply" else None, edit_distance=distance,
                  instruction_version=task.instruction_version)
    db.add(msg)
    db.flush()
    return msg


REVIEW_FLAGS = ("helpful", "truthful", "harmless", "spam", "pii", "should_have_refused")


def can_review(user: User, message: Message) -> None:
    if user.role not in KIND_ROLES["review"]:
        raise Forbidden(f"a {user.role} cannot review")
    if message.author_id == user.id:
        raise Forbidden("you cannot review your own message")


def submit_review(db: DbSession, task: Task, user: User, quality: int, flags: dict[str, bool],
                  comment: str | None = None) -> Review:
    if task.kind != "review":
        raise LabelError(f"task {task.id} is a {task.kind} task")
    message = db.get(Message, task.target_id)
    can_review(user, message)
    if not isinstance(quality, int) or not 1 <= quality <= 5:
        raise LabelError("quality must be 1 to 5")
    _refuse_second_review(db, user, message.id)
    _close(db, task, user)
    review = Review(message_id=message.id, reviewer_id=user.id, task_id=task.id, quality=quality,
                    comment=(comment or "").strip() or None, time_spent_s=_elapsed(task),
                    instruction_version=task.instruction_version,
                    **{k: bool(flags.get(k, False)) for k in REVIEW_FLAGS})
    db.add(review)
    _flush_unique(db, f"you have already reviewed message {message.id}")
    return review


def _flush_unique(db: DbSession, message: str) -> None:
    """Flush; a unique index refusing the row (two submissions racing past the check) is a Conflict."""
    try:
        db.flush()
    except IntegrityError:
        db.rollback()
        raise Conflict(f"{message}; nothing was saved twice") from None


def existing_review(db: DbSession, user: User, message_id: int) -> Review | None:
    return db.scalar(select(Review).where(Review.message_id == message_id, Review.reviewer_id == user.id,
                                          CURRENT_REVIEW))


def _refuse_second_review(db: DbSession, user: User, message_id: int) -> None:
    if (done := existing_review(db, user, message_id)) is not None:
        raise Conflict(f"you have already reviewed message {message_id} (review #{done.id}); one review per person "
                       "and message")


def review_task_for(db: DbSession, user: User, message_id: int) -> Task:
    """A review task for a message the user picked by hand (e.g. from a thread); refused for their own message."""
    message = db.get(Message, message_id)
    if message is None or message.deleted:
        raise NotFound(f"no message {message_id}")
    can_review(user, message)
    _refuse_second_review(db, user, message_id)
    project_id = db.get(Tree, message.tree_id).project_id
    task = db.scalar(select(Task).where(Task.user_id == user.id, Task.kind == "review", Task.target_id == message_id,
                                        Task.status == "open"))
    if task is None:
        task = Task(project_id=project_id, kind="review", user_id=user.id, target_id=message_id,
                    instruction_version=current_instructions(db, project_id).version)
        db.add(task)
        db.flush()
    return task


def submit_ranking(db: DbSession, task: Task, user: User, order: list[int]) -> Ranking:
    if task.kind != "rank":
        raise LabelError(f"task {task.id} is a {task.kind} task")
    replies = siblings_to_rank(db, task.target_id)
    ids = {m.id for m in replies}
    if any(m.author_id == user.id for m in replies):
        raise Forbidden("you cannot rank replies you wrote")
    if sorted(order) != sorted(ids) or len(set(order)) != len(order):
        if set(order) < ids:
            raise Conflict("a new reply was added while you were ranking; please rank again")
        raise LabelError("the ranking must order every reply exactly once")
    if (done := db.scalar(select(Ranking).where(Ranking.parent_id == task.target_id, Ranking.ranker_id == user.id,
                                                 CURRENT_RANKING))) is not None:
        raise Conflict(f"you have already ranked the replies to message {task.target_id} (ranking #{done.id})")
    _close(db, task, user)
    ranking = Ranking(parent_id=task.target_id, ranker_id=user.id, task_id=task.id, order=list(order),
                      time_spent_s=_elapsed(task), instruction_version=task.instruction_version)
    db.add(ranking)
    _flush_unique(db, f"you have already ranked the replies to message {task.target_id}")
    return ranking


def skip_task(db: DbSession, task: Task, user: User) -> None:
    _close(db, task, user, status="skipped")


def store_draft(db: DbSession, task_id: int, user: User, model: str, text: str) -> Task:
    task = get_task(db, task_id, user)
    if task.kind != "reply" or task.status != "open":
        raise Conflict("drafts are only for open reply tasks")
    task.draft_model, task.draft_text = model, text
    return task


# -------------------------------------------------------------------------------------------------------------- edits


def edit_message(db: DbSession, message_id: int, user: User, text: str, base_version: int,
                 reasoning: str | None = None) -> Message:
    """The author (or an admin) changes a message, and `reasoning` (when given) the reasoning of an assistant message
    that has one (it may become empty, never absent); if it changed since `base_version`, Conflict and nothing is
    written."""
    text = _clean_text(text)
    msg = db.get(Message, message_id)
    if msg is None or msg.deleted:
        raise NotFound(f"no message {message_id}")
    if msg.author_id != user.id and user.role != "admin":
        raise Forbidden("only the author or an admin can edit a message")
    if reasoning is not None:
        if msg.reasoning_content is None:
            raise LabelError(f"message {message_id} has no reasoning to edit")
        reasoning = reasoning.replace("\r\n", "\n")
        if len(reasoning) > MAX_TEXT:
            raise LabelError(f"the reasoning is longer than {MAX_TEXT} characters")
    if msg.version != base_version:
        raise Conflict(f"this message was changed meanwhile (now version {msg.version}, you edited version "
                       f"{base_version}); your text is kept below: compare and save again")
    values = dict(text=text, updated_at=now(), version=base_version + 1,
                  edit_distance=editdistance.levenshtein(msg.draft_text, text) if msg.draft_text is not None else None)
    if reasoning is not None:
        values["reasoning_content"] = reasoning
    result = db.execute(update(Message).where(Message.id == msg.id, Message.version == base_version)
                        .values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise Conflict("this message was changed meanwhile; reload and try again")
    db.expire(msg)
    return db.get(Message, message_id)


def mark_deleted(db: DbSession, message_id: int, user: User) -> None:
    """Withdraw a message (admin only): it is hidden from queues and exports but stays in the database."""
    if user.role != "admin":
        raise Forbidden("only admins withdraw messages")
    msg = db.get(Message, message_id)
    if msg is None:
        raise NotFound(f"no message {message_id}")
    msg.deleted = True


# -------------------------------------------------------------------------------------------------------------- stats


def labeler_stats(db: DbSession) -> list[dict]:
    """Per person: tasks done, time spent, messages / reviews / rankings, agreement with other reviewers, drafts."""
    users = list(db.scalars(select(User).order_by(User.name)))
    done = Counter({uid: n for uid, n in db.execute(select(Task.user_id, func.count()).where(Task.status == "done")
                                                    .group_by(Task.user_id))})
    reviews = list(db.scalars(select(Review).where(CURRENT_REVIEW)))
    by_message: dict[int, list[Review]] = defaultdict(list)
    for r in reviews:
        by_message[r.message_id].append(r)
    rankings = list(db.scalars(select(Ranking).where(CURRENT_RANKING)))
    by_parent: dict[int, list[Ranking]] = defaultdict(list)
    for r in rankings:
        by_parent[r.parent_id].append(r)
    msgs = list(db.scalars(select(Message).where(Message.deleted.is_(False), Message.author_id.is_not(None))))
    rows = []
    for u in users:
        agree = compared = 0
        for r in (r for r in reviews if r.reviewer_id == u.id):
            others = [o.quality for o in by_message[r.message_id] if o.reviewer_id != u.id]
            if others:
                compared += 1
                agree += abs(r.quality - sum(others) / len(others)) <= 1
        for r in (r for r in rankings if r.ranker_id == u.id):
            others = [o.order[0] for o in by_parent[r.parent_id] if o.ranker_id != u.id and o.order]
            if others and r.order:
                compared += 1
                agree += Counter(others).most_common(1)[0][0] == r.order[0]
        mine = [m for m in msgs if m.author_id == u.id]
        drafted = [m for m in mine if m.draft_text is not None]
        time_s = (sum(m.time_spent_s for m in mine) + sum(r.time_spent_s for r in reviews if r.reviewer_id == u.id)
                  + sum(r.time_spent_s for r in rankings if r.ranker_id == u.id))
        rows.append({"user": u.name, "role": u.role, "tasks": done[u.id], "time_s": round(time_s, 1),
                     "messages": len(mine), "reviews": sum(r.reviewer_id == u.id for r in reviews),
                     "rankings": sum(r.ranker_id == u.id for r in rankings),
                     "agreement": round(agree / compared, 3) if compared else None, "agreement_n": compared,
                     "drafts": len(drafted),
                     "drafts_unchanged": round(sum(m.edit_distance == 0 for m in drafted) / len(drafted), 3)
                     if drafted else None})
    return rows


def project_progress(db: DbSession, project: Project) -> dict:
    state = load_state(db, project.id)
    msgs = state.messages.values()
    user_msgs = [m for m in msgs if m.role == "user"]
    replies_needed = len(user_msgs) * project.replies_per_prompt
    replies_have = sum(min(len(_assistant_children(state, m.id)), project.replies_per_prompt) for m in user_msgs)
    reviews_needed = len(state.messages) * project.reviews_per_message
    reviews_have = sum(min(len(state.reviewers.get(m.id, ())), project.reviews_per_message) for m in msgs)
    rankable = [m for m in user_msgs if len(_assistant_children(state, m.id)) >= 2]
    rank_have = sum(min(len(state.rankers.get(m.id, ())), project.rankings_per_prompt) for m in rankable)

    def pct(a, b):
        return round(100 * a / b, 1) if b else 0.0

    return {"trees": len(state.tree_size), "messages": len(state.messages), "prompts": sum(m.parent_id is None for m in msgs),
            "assistant": sum(m.role == "assistant" for m in msgs), "followups": sum(m.role == "user" and m.parent_id
                                                                                  is not None for m in msgs),
            "reviews": sum(len(v) for v in state.reviewers.values()), "rankings": sum(len(v) for v in state.rankers.values()),
            "open_tasks": len(state.open_tasks), "replies_pct": pct(replies_have, replies_needed),
            "reviews_pct": pct(reviews_have, reviews_needed), "rankings_pct": pct(rank_have, len(rankable) *
                                                                                  project.rankings_per_prompt)}


def latest_trees(db: DbSession, project_id: int, limit: int = 50) -> list[tuple[Message, int]]:
    """The newest trees of a project as (root message, number of messages), for browsing."""
    sizes = {tree_id: n for tree_id, n in db.execute(
        select(Message.tree_id, func.count()).join(Tree, Tree.id == Message.tree_id)
        .where(Tree.project_id == project_id, Message.deleted.is_(False)).group_by(Message.tree_id))}
    roots = db.scalars(select(Message).join(Tree, Tree.id == Message.tree_id)
                       .where(Tree.project_id == project_id, Message.parent_id.is_(None))
                       .order_by(Message.id.desc()).limit(limit))
    return [(r, sizes.get(r.tree_id, 0)) for r in roots]


# -------------------------------------------------------------------------------------------- what the pages show


def projects(db: DbSession) -> list[Project]:
    return list(db.scalars(select(Project).order_by(Project.name)))


def queue_view(db: DbSession, user: User) -> dict:
    """The task queue page: every project with its progress, the task types this user does, their open tasks."""
    shown = projects(db)
    open_tasks = list(db.scalars(select(Task).where(Task.user_id == user.id, Task.status == "open",
                                                    Task.created_at > now() - TASK_TTL)
                                 .order_by(Task.id.desc()).limit(20)))
    kinds = [k for k in KIND_ROLES if user.role in KIND_ROLES[k]]
    return {"projects": shown, "progress": {p.id: project_progress(db, p) for p in shown}, "open_tasks": open_tasks,
            "kinds": kinds}


def task_view(db: DbSession, task: Task) -> dict:
    """Everything the task page shows: the thread so far, the instructions the task was given under, the replies to
    rank."""
    project = db.get(Project, task.project_id)
    instructions = instruction_versions(db, project.id)
    shown = next((i for i in instructions if i.version == task.instruction_version), instructions[0])
    ctx = {"task": task, "project": project, "instructions": shown, "latest_version": instructions[0].version,
           "thread": [], "target": None, "replies": []}
    if task.target_id is not None:
        ctx["target"] = db.get(Message, task.target_id)
        ctx["thread"] = thread(db, task.target_id)
        ctx["system_prompt"] = db.get(Tree, ctx["target"].tree_id).system_prompt
    else:
        ctx["system_prompt"] = project.system_prompt
    if task.kind == "rank":
        ctx["replies"] = siblings_to_rank(db, task.target_id)
    return ctx


def open_task_view(db: DbSession, task_id: int, user: User) -> dict:
    task = get_task(db, task_id, user)
    if task.kind == "review":
        can_review(user, db.get(Message, task.target_id))
    return task_view(db, task)


def submit_positions(db: DbSession, task: Task, user: User, positions: dict[int, int]) -> Ranking:
    """A ranking given as {reply id: position (1 = best)} from the ranking form."""
    replies = siblings_to_rank(db, task.target_id) if task.kind == "rank" else []
    if task.kind != "rank":
        raise LabelError(f"task {task.id} is a {task.kind} task")
    wanted = {m.id for m in replies}
    if set(positions) != wanted:
        if set(positions) < wanted:
            raise Conflict("a new reply was added while you were ranking; please rank again")
        raise LabelError("give every reply a position")
    if sorted(positions.values()) != list(range(1, len(replies) + 1)):
        raise LabelError("each position from 1 to the number of replies must be used exactly once")
    return submit_ranking(db, task, user, [mid for mid, _ in sorted(positions.items(), key=lambda kv: kv[1])])


def conversation_for(db: DbSession, task: Task, text: str) -> tuple[list[dict], str | None]:
    """The conversation a task's text would complete ([{role, content}], system prompt), for previews and drafts."""
    ctx_thread = thread(db, task.target_id) if task.target_id else []
    messages = [{"role": m.role, "content": m.text} for m in ctx_thread]
    if task.kind in ("prompt", "reply", "followup"):
        messages.append({"role": "assistant" if task.kind == "reply" else "user", "content": text})
    system = (db.get(Tree, ctx_thread[0].tree_id).system_prompt if ctx_thread
              else db.get(Project, task.project_id).system_prompt)
    return messages, system


def draft_request(db: DbSession, task_id: int, user: User) -> tuple[Project, list[dict]]:
    """The project and the messages (system first) to send for a draft of an open reply task."""
    task = get_task(db, task_id, user)
    if task.kind != "reply" or task.status != "open":
        raise Conflict("drafts are only for open reply tasks")
    messages, system = conversation_for(db, task, "")
    messages = [m for m in messages if m["content"]]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return db.get(Project, task.project_id), messages


def message_view(db: DbSession, message_id: int) -> dict:
    msg = db.get(Message, message_id)
    if msg is None:
        raise NotFound(f"no message {message_id}")
    return {"message": msg, "thread": thread(db, message_id),
            "children": list(db.scalars(select(Message).where(Message.parent_id == message_id).order_by(Message.id)))}


def editable_message(db: DbSession, message_id: int, user: User) -> Message:
    msg = db.get(Message, message_id)
    if msg is None or msg.deleted:
        raise NotFound(f"no message {message_id}")
    if msg.author_id != user.id and user.role != "admin":
        raise Forbidden("only the author or an admin can edit a message")
    return msg


def instructions_view(db: DbSession, project_id: int, version: int | None) -> dict:
    project = get_project(db, project_id)
    versions = instruction_versions(db, project_id)
    shown = next((v for v in versions if v.version == version), versions[0])
    return {"project": project, "versions": versions, "shown": shown}


def admin_view(db: DbSession) -> dict:
    shown = projects(db)
    return {"projects": shown, "progress": {p.id: project_progress(db, p) for p in shown},
            "stats": labeler_stats(db), "users": list(db.scalars(select(User).order_by(User.name)))}


def project_admin_view(db: DbSession, project_id: int) -> dict:
    project = get_project(db, project_id)
    versions = instruction_versions(db, project_id)
    return {"project": project, "versions": versions, "current": versions[0], "editor_text": versions[0].markdown,
            "progress": project_progress(db, project), "trees": latest_trees(db, project_id)}
