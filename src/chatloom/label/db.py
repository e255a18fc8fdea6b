"""Database access: an engine for a SQLite file or a PostgreSQL URL, Alembic migrations to the newest schema, sessions.

SQLite runs in WAL mode and every writing transaction starts with BEGIN IMMEDIATE, so concurrent writers queue instead of
failing half-way (threads of one process queue on a lock, other processes on SQLite's busy timeout); reading
transactions (`db.session(readonly=True)`: page views, the session lookup, previews, the queue's first look) use a
second pool of `query_only` connections with a plain BEGIN, so they never wait for the writer (WAL readers see the last
commit). PostgreSQL uses its own row locking.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_URL = "sqlite:///label.db"


def normalize_url(url: str) -> str:
    """Accept a bare file path as a SQLite database; `postgresql://` uses psycopg (v3) when it is installed."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        try:
            import psycopg  # noqa: F401
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        except ImportError:
            return url
    return url


def make_engine(url: str = DEFAULT_URL, *, readonly: bool = False) -> Engine:
    """An engine for `url`; with `readonly` (SQLite), connections that can only read and never take the writer lock."""
    url = normalize_url(url)
    if url.startswith("sqlite") and readonly:
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=20,
                               max_overflow=40)

        @event.listens_for(engine, "connect")
        def _sqlite_reader(dbapi_conn, _record):
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only=ON")  # a write on a reading session is an error, never a silent race
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_read_begin(conn):
            conn.exec_driver_sql("BEGIN")

        return engine
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=20,
                               max_overflow=40)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: never corrupt; a power cut may lose the last commit
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        writer = threading.Lock()  # FIFO-ish hand-off in this process instead of SQLite's sleeping busy handler

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            if not writer.acquire(timeout=60):
                raise TimeoutError("database busy for 60 s")
            conn.info["holds_writer"] = True
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                _release(conn)
                raise

        def _release(conn, *_):
            if conn.info.pop("holds_writer", False):
                writer.release()

        event.listen(engine, "commit", _release)
        event.listen(engine, "rollback", _release)

        return engine
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent; safe to run at every start)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to `revision` (each migration's downgrade keeps the rows it can)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        conn.commit()


def head_revision() -> str:
    """The newest schema revision this code knows."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """An engine plus a session factory; `with db.session() as s:` commits on success, rolls back on error."""

    def __init__(self, url: str = DEFAULT_URL, *, run_migrations: bool = True):
        self.url = url
        self.engine = make_engine(url)
        if run_migrations:
            migrate(self.engine)
        self.factory = sessionmaker(self.engine, expire_on_commit=False)
        sqlite = self.engine.url.get_backend_name() == "sqlite"
        self.read_engine = make_engine(url, readonly=True) if sqlite else self.engine
        self.read_factory = sessionmaker(self.read_engine, expire_on_commit=False) if sqlite else self.factory

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error. `readonly`: for work that only reads."""
        s = (self.read_factory if readonly else self.factory)()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
