"""Accounts and sessions: argon2id password hashes (computed in `hashing.pool`, off the event loop and below ordinary
requests' priority), random session tokens (only their hash is stored), CSRF tokens bound to the session (HMAC of it),
and a login limiter that slows guessing per client address and per account.

The client address is the TCP peer unless the operator names the proxies whose `X-Forwarded-For` is believed
(`chatloom label serve --forwarded-allow-ips`); a forged header from anyone else changes nothing."""

from __future__ import annotations

import base64
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

from . import hashing
from .models import ROLES, Session, Setting, User, now

SESSION_COOKIE = "chatloom_session"
ANON_COOKIE = "chatloom_anon"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
DEVICE_COOKIE = "chatloom_device"
SESSION_DAYS = 7
DEVICE_DAYS = 90

hasher = PasswordHasher()  # argon2id with the library's defaults (64 MiB per hash); tests swap in cheaper parameters
EQUALIZER = "timing-equalizer"


class AuthError(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise AuthError("password must have at least 8 characters")
    return hashing.pool.run(hasher.hash, password)


def _verify(stored_hash: str | None, password: str) -> bool:
    """On a hashing thread. No stored hash (no such user): hash anyway, so a missing name costs the same time."""
    if stored_hash is None:
        hasher.hash(EQUALIZER)
        return False
    try:
        return hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(stored_hash: str | None, password: str) -> bool:
    return hashing.pool.run(_verify, stored_hash, password)


async def verify_password_async(stored_hash: str | None, password: str) -> bool:
    """`verify_password` for the event loop: awaits the hashing pool, holding neither the loop nor a request thread."""
    return await hashing.pool.call(_verify, stored_hash, password)


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


def active_user(db: DbSession, name: str) -> User | None:
    return db.scalar(select(User).where(User.name == name, User.active.is_(True)))


def authenticate(db: DbSession, name: str, password: str) -> User | None:
    """The user if `password` is theirs (the same hashing work whether or not the name exists)."""
    user = active_user(db, name)
    ok = verify_password(user.password_hash if user is not None else None, password)
    return user if ok and user is not None else None


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


def device_cookie(secret: str, name: str, days: int = DEVICE_DAYS) -> str:
    """A signed "this browser has logged in as `name`" cookie: it exempts its holder from the per-account delay."""
    who = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")
    expires = int(time.time()) + days * 86400
    sig = hmac.new(secret.encode(), f"device:{who}:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{who}.{expires}.{sig}"


def device_ok(secret: str, cookie: str | None, name: str) -> bool:
    if not cookie or cookie.count(".") != 2:
        return False
    who, expires, sig = cookie.split(".")
    good = hmac.new(secret.encode(), f"device:{who}:{expires}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(good, sig) or not expires.isdigit() or int(expires) < time.time():
        return False
    try:
        return base64.urlsafe_b64decode(who + "=" * (-len(who) % 4)).decode() == name
    except (ValueError, UnicodeDecodeError):
        return False


class LoginLimiter:
    """Slows password guessing without handing attackers a way to lock people out.

    - Per client address: at most `attempts` failed logins per (name, address) and `4 * attempts` per address within
      `window` seconds.
    - Per account, from any address: after `free` failures, the next guess must wait `base * 2**k` seconds after the
      previous failure (k = failures beyond `free`), at most `cap` seconds; failures are forgotten after `forget`
      seconds without one, and on a successful login. The wait is bounded (never a lockout), and a browser that has
      logged in to that account before (a signed device cookie) does not wait at all, so the owner is not locked out
      by someone guessing their password.
    - Attempts in flight count too: at most `free` password checks per account run at once (from browsers not known to
      it), so guesses sent all at once cannot all pass before the first of them has failed (`begin` / `end`).
    A refused attempt does not check the password, so it reveals nothing.
    """

    def __init__(self, attempts: int = 5, window: float = 60.0, *, free: int = 3, base: float = 1.0, cap: float = 60.0,
                 forget: float = 900.0, clock=time.monotonic):
        self.attempts, self.window = attempts, window
        self.free, self.base, self.cap, self.forget, self.clock = free, base, cap, forget, clock
        self.failures: dict[str, deque[float]] = defaultdict(deque)
        self.accounts: dict[str, tuple[int, float]] = {}  # name -> (failures, time of the last one)
        self.checking: dict[str, int] = {}  # name -> password checks in flight from unknown browsers
        self.lock = threading.Lock()

    def _recent(self, key: str, t: float) -> deque[float]:
        q = self.failures[key]
        while q and q[0] < t - self.window:
            q.popleft()
        return q

    def account_delay(self, n_failures: int) -> float:
        """How long the account waits after its `n_failures`-th failure (0 for the first `free`)."""
        extra = n_failures - self.free
        return 0.0 if extra < 0 else min(self.cap, self.base * 2.0 ** min(extra, 62))

    def wait(self, name: str, address: str, *, known_device: bool = False) -> float:
        """Seconds until this attempt may be made (0: go ahead)."""
        with self.lock:
            return self._wait(name, address, known_device)

    def begin(self, name: str, address: str, *, known_device: bool = False) -> float:
        """`wait`, and when that is 0 (go ahead) also room for one more check of the account in flight, which this
        attempt then holds until `end`. Returns the seconds to wait (0: go ahead, and call `end` afterwards)."""
        with self.lock:
            waits = self._wait(name, address, known_device)
            if waits > 0 or known_device:
                return waits
            n = self.checking.get(name, 0)
            if n >= max(1, self.free):
                return self.base
            self.checking[name] = n + 1
            return 0.0

    def end(self, name: str, *, known_device: bool = False) -> None:
        if known_device:
            return
        with self.lock:
            n = self.checking.pop(name, 0) - 1
            if n > 0:
                self.checking[name] = n

    def _wait(self, name: str, address: str, known_device: bool) -> float:
        t = self.clock()
        waits = [0.0]
        for key, limit in ((f"u:{name}|{address}", self.attempts), (f"a:{address}", self.attempts * 4)):
            q = self._recent(key, t)
            if len(q) >= limit:
                waits.append(q[-limit] + self.window - t)
        if not known_device and name in self.accounts:
            n, last = self.accounts[name]
            if t - last > self.forget:
                del self.accounts[name]
            else:
                waits.append(last + self.account_delay(n) - t)
        return max(waits)

    def blocked(self, name: str, address: str) -> bool:
        return self.wait(name, address) > 0

    def failed(self, name: str, address: str) -> None:
        t = self.clock()
        with self.lock:
            if len(self.failures) > 50_000:  # many names tried: forget the ones whose window has passed
                for key in [k for k, q in self.failures.items() if not q or q[-1] < t - self.window]:
                    del self.failures[key]
            if len(self.accounts) > 50_000:
                for key in [k for k, (_, last) in self.accounts.items() if t - last > self.forget]:
                    del self.accounts[key]
            self.failures[f"u:{name}|{address}"].append(t)
            self.failures[f"a:{address}"].append(t)
            n, last = self.accounts.get(name, (0, t))
            self.accounts[name] = (1 if t - last > self.forget else n + 1, t)

    def succeeded(self, name: str, address: str) -> None:
        with self.lock:
            self.failures.pop(f"u:{name}|{address}", None)
            self.accounts.pop(name, None)
