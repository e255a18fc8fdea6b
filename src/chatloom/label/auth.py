"""Accounts and sessions: argon2id password hashes, random session tokens (only their hash is stored), CSRF tokens bound
to the session (HMAC of it), and a login rate limit per user name and client address."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from .models import ROLES, Session, Setting, User, now

SESSION_COOKIE = "chatloom_session"
ANON_COOKIE = "chatloom_anon"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_DAYS = 7

hasher = PasswordHasher()  # argon2id with the library's defaults (64 MiB per hash); tests swap in cheaper parameters
hash_slots = threading.BoundedSemaphore(4)  # a burst of logins must not allocate 64 MiB per request thread at once


class AuthError(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise AuthError("password must have at least 8 characters")
    with hash_slots:
        return hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        with hash_slots:
            return hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def add_user(db: DbSession, name: str, role: str, password: str) -> User:
    name = name.strip()
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise AuthError("user name must be 1-64 characters without spaces")
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise AuthError(f"user {name!r} already exists")
    user = User(name=name, role=role, password_hash=hash_password(password))
    db.add(user)
    db.flush()
    return user


def authenticate(db: DbSession, name: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.name == name, User.active.is_(True)))
    if user is None:
        with hash_slots:
            hasher.hash("timing-equalizer")  # same work whether or not the name exists
        return None
    return user if verify_password(user.password_hash, password) else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(db: DbSession, user: User) -> str:
    token = secrets.token_urlsafe(32)
    db.add(Session(token_hash=_digest(token), user_id=user.id, expires_at=now() + timedelta(days=SESSION_DAYS)))
    return token


def session_user(db: DbSession, token: str | None) -> User | None:
    if not token:
        return None
    row = db.get(Session, _digest(token))
    if row is None or row.revoked or row.expires_at < now():
        return None
    user = db.get(User, row.user_id)
    return user if user is not None and user.active else None


def close_session(db: DbSession, token: str | None) -> None:
    if token and (row := db.get(Session, _digest(token))) is not None:
        row.revoked = True


def app_secret(db: DbSession) -> str:
    """The HMAC key for CSRF tokens, created once per database so every server process agrees on it."""
    row = db.get(Setting, "secret_key")
    if row is None:
        row = Setting(key="secret_key", value=secrets.token_hex(32))
        db.add(row)
        db.flush()
    return row.value


def csrf_token(secret: str, bound_to: str) -> str:
    return hmac.new(secret.encode(), b"csrf:" + bound_to.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str, bound_to: str | None, presented: str | None) -> bool:
    if not bound_to or not presented:
        return False
    return hmac.compare_digest(csrf_token(secret, bound_to), presented)


class LoginLimiter:
    """At most `attempts` failed logins per (name, address) and per address within `window` seconds."""

    def __init__(self, attempts: int = 5, window: float = 60.0):
        self.attempts, self.window = attempts, window
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def _recent(self, key: str, t: float) -> deque[float]:
        q = self.failures[key]
        while q and q[0] < t - self.window:
            q.popleft()
        return q

    def blocked(self, name: str, address: str) -> bool:
        t = time.monotonic()
        with self.lock:
            return (len(self._recent(f"u:{name}|{address}", t)) >= self.attempts
                    or len(self._recent(f"a:{address}", t)) >= self.attempts * 4)

    def failed(self, name: str, address: str) -> None:
        t = time.monotonic()
        with self.lock:
            if len(self.failures) > 50_000:  # many names tried: forget the ones whose window has passed
                for key in [k for k, q in self.failures.items() if not q or q[-1] < t - self.window]:
                    del self.failures[key]
            self.failures[f"u:{name}|{address}"].append(t)
            self.failures[f"a:{address}"].append(t)

    def succeeded(self, name: str, address: str) -> None:
        with self.lock:
            self.failures.pop(f"u:{name}|{address}", None)
