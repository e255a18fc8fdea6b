"""The labeling app's tables (SQLAlchemy 2 ORM): accounts, projects, versioned instructions, message trees, tasks, reviews
and rankings. The Alembic migrations in `migrations/` create exactly these tables; nothing accepted is ever deleted, rows
are only marked (`deleted`, task `status`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "labeler", "reviewer")
TASK_KINDS = ("prompt", "reply", "followup", "review", "rank")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Setting(Base):
    """Key/value settings shared by every server process (the session-signing secret lives here)."""
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Session(Base):
    """A login: the cookie holds a random token, the table only its SHA-256."""
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    protocol: Mapped[str] = mapped_column(String(32), default="chatml")
    tokenizer_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    draft_endpoint: Mapped[str | None] = mapped_column(String(64), nullable=True)  # an operator endpoint, by name
    draft_base_url: Mapped[str | None] = mapped_column(Text, nullable=True)  # typed by an admin: sent no key
    draft_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    replies_per_prompt: Mapped[int] = mapped_column(Integer, default=2)
    reviews_per_message: Mapped[int] = mapped_column(Integer, default=1)
    rankings_per_prompt: Mapped[int] = mapped_column(Integer, default=1)
    max_depth: Mapped[int] = mapped_column(Integer, default=3)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)


class Instructions(Base):
    """One version of a project's labeling instructions (Markdown). Versions are only ever added."""
    __tablename__ = "instructions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    markdown: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Tree(Base):
    """One conversation tree: a root prompt and every branch grown from it."""
    __tablename__ = "trees"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Message(Base):
    """A message in a tree, with its provenance. `version` is bumped on every edit (optimistic locking)."""
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tree_id: Mapped[int] = mapped_column(ForeignKey("trees.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), nullable=True, index=True)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    reasoning_content: Mapped[str | None] = mapped_column(Text, nullable=True)  # an assistant's reasoning, as imported
    depth: Mapped[int] = mapped_column(Integer, default=0)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    author_label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    task_id: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    time_spent_s: Mapped[float] = mapped_column(Float, default=0.0)
    draft_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    draft_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    edit_distance: Mapped[int | None] = mapped_column(Integer, nullable=True)
    instruction_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)

    author: Mapped[User | None] = relationship(foreign_keys=[author_id], lazy="joined")
    __mapper_args__ = {"version_id_col": version}


class Task(Base):
    """A unit of work handed to one person; `status` goes open -> done | skipped | expired, never back."""
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    target_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    instruction_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    draft_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    draft_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    done_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Review(Base):
    """One reviewer's judgement of one message. A reviewer has at most one current review per message (a partial unique
    index); reviews duplicated before that rule existed are kept, the newest one current, the earlier `superseded`."""
    __tablename__ = "reviews"
    __table_args__ = (Index("uq_reviews_current", "message_id", "reviewer_id", unique=True,
                            sqlite_where=text("NOT superseded"), postgresql_where=text("NOT superseded")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), nullable=True, unique=True)
    quality: Mapped[int] = mapped_column(Integer)
    helpful: Mapped[bool] = mapped_column(Boolean, default=False)
    truthful: Mapped[bool] = mapped_column(Boolean, default=False)
    harmless: Mapped[bool] = mapped_column(Boolean, default=False)
    spam: Mapped[bool] = mapped_column(Boolean, default=False)
    pii: Mapped[bool] = mapped_column(Boolean, default=False)
    should_have_refused: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    time_spent_s: Mapped[float] = mapped_column(Float, default=0.0)
    instruction_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Ranking(Base):
    """An ordering of the assistant replies under one user message, best first (`order` is a list of message ids).
    One current ranking per ranker and prompt, like reviews."""
    __tablename__ = "rankings"
    __table_args__ = (Index("uq_rankings_current", "parent_id", "ranker_id", unique=True,
                            sqlite_where=text("NOT superseded"), postgresql_where=text("NOT superseded")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    ranker_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), nullable=True, unique=True)
    order: Mapped[list] = mapped_column(JSON)
    time_spent_s: Mapped[float] = mapped_column(Float, default=0.0)
    instruction_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
