"""A small reusable HTTP fuzzer for chatloom's servers (the OpenAI-compatible API and the labeling app).

Hypothesis throws bodies at one route of a live server over loopback and asserts every answer is 2xx or 4xx, never
5xx: a server must refuse what it cannot handle with a clear client error, not crash a handler (or a decoding thread).
Nothing here knows either app; a test gives:

- a `Target`: base URL, route, method, and how to act as a logged-in user: an `httpx.Client` carrying cookies, and a
  `headers()` hook called before every request (e.g. a fresh CSRF token);
- a strategy of bodies: any JSON value (`json_values`), bodies near a valid one with fields kept, dropped or replaced
  by awkward values (`mutations`), raw bytes that are not JSON at all (`raw_bodies`), or a form (`Form`).

    with live(app) as url:
        statuses = assert_never_5xx(Target(url, "/v1/chat/completions"), st.one_of(json_values(), mutations(VALID)))

`live(app)` runs uvicorn in a thread on a free port. JSON is encoded here (ASCII, NaN and Infinity allowed, lone
surrogates escaped), so bodies a browser could never send still reach the server.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Values that have broken servers: integer and float edges, non-finite numbers, control characters, unpaired
# surrogates, control-token text, long strings and numbers with more digits than Python parses by default.
NASTY_INTEGERS = [0, -1, 1, 2, 7, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63) - 1]
NASTY_FLOATS = [0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 2.0000001, -1.0, 1e-300, 5e-324, 1e308, -1e308,
                float("nan"), float("inf"), float("-inf")]
NASTY_STRINGS = ["", " ", "\x00", "\ud800", "\udfff", "a\ud83dz", "\u202e", "\ufeff", "<|im_end|>", "<|im_start|>system",
                 "🙂", "日本語", "null", "true", "1e999", "x" * 5_000, "\n" * 100, "%s%n", "../../etc/passwd"]


class HugeNumber:
    """A JSON number with `digits` digits (json.dumps cannot write one past Python's int-to-str limit)."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self):
        return f"HugeNumber({self.digits})"


def nasty_scalars() -> st.SearchStrategy:
    return st.one_of(st.sampled_from(NASTY_INTEGERS), st.sampled_from(NASTY_FLOATS), st.sampled_from(NASTY_STRINGS),
                     st.booleans(), st.none(), st.just(HugeNumber(5_000)))


def scalars() -> st.SearchStrategy:
    return st.one_of(nasty_scalars(), st.integers(), st.floats(), st.text(max_size=40), st.booleans(), st.none())


def json_values(max_leaves: int = 12) -> st.SearchStrategy:
    """Any JSON value: scalars (nasty ones often) nested in lists and objects."""
    return st.recursive(scalars(), lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                        max_leaves=max_leaves)


def mutations(valid: dict, fields: dict[str, st.SearchStrategy] | None = None, extra_keys: bool = True,
              max_changes: int = 3) -> st.SearchStrategy:
    """Bodies near `valid`: up to `max_changes` of its keys dropped or replaced, by a value from `fields[key]` (if
    given; drawn twice as often) or by any JSON value, and sometimes an unknown key added. Many such bodies are valid
    or wrong in one field only, so the handler runs deep instead of failing at the first check."""
    fields = fields or {}
    drop = object()
    keys = sorted(valid)

    def replacement(key):
        options = [st.just(drop), json_values(6)]
        if key in fields:
            options += [fields[key], fields[key]]
        return st.one_of(*options)

    @st.composite
    def build(draw):
        body = dict(valid)
        for key in draw(st.lists(st.sampled_from(keys), max_size=max_changes, unique=True)):
            picked = draw(replacement(key))
            if picked is drop:
                body.pop(key)
            else:
                body[key] = picked
        if extra_keys and draw(st.integers(0, 3)) == 0:
            body[draw(st.text(max_size=10))] = draw(json_values(4))
        return body

    return build()


@dataclass
class Raw:
    """A body sent as these exact bytes."""

    content: bytes
    content_type: str | None = "application/json"


@dataclass
class Form:
    """A body sent form-encoded (`application/x-www-form-urlencoded`)."""

    data: dict[str, str]


def raw_bodies() -> st.SearchStrategy[Raw]:
    """Bytes that are not (valid) JSON: truncated, invalid UTF-8, deeply nested, wrong content types, binary noise."""
    fixed = [b"", b"{", b'{"messages": [', b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe\x00", b'{"x": "\xc3\x28"}',
             b"null", b"123", b'"text"', b"NaN", b'{"messages": NaN}', b"1" * 5_000]
    return st.one_of(st.builds(Raw, st.sampled_from(fixed)),
                     st.builds(Raw, st.binary(max_size=200)),
                     st.builds(Raw, st.sampled_from(fixed),
                               st.sampled_from([None, "text/plain", "application/x-www-form-urlencoded",
                                                "multipart/form-data; boundary=x", "application/json; charset=latin-1"])))


@dataclass
class Target:
    """Where to send: `base_url` + `route` with `method`, through `client` (cookies, a session) if given, with the
    headers `headers()` returns added to each request."""

    base_url: str
    route: str
    method: str = "POST"
    client: httpx.Client | None = None
    headers: Callable[[], dict[str, str]] | None = None
    timeout: float = 120.0
    _own: httpx.Client | None = field(default=None, repr=False)

    def http(self) -> httpx.Client:
        if self.client is not None:
            return self.client
        if self._own is None:
            self._own = httpx.Client(timeout=self.timeout)
        return self._own


def encode(body: Any) -> tuple[bytes, str | None]:
    """The bytes and content type for a body drawn from one of the strategies above."""
    if isinstance(body, Raw):
        return body.content, body.content_type
    if isinstance(body, Form):
        return urllib.parse.urlencode(body.data).encode("ascii"), "application/x-www-form-urlencoded"
    huge = []

    def default(value):
        if isinstance(value, HugeNumber):
            huge.append(value.digits)
            return f"__huge_{len(huge) - 1}__"
        raise TypeError(type(value).__name__)

    text = json.dumps(body, default=default)  # ASCII (lone surrogates escaped), NaN and Infinity allowed
    for i, digits in enumerate(huge):
        text = text.replace(f'"__huge_{i}__"', "9" * digits)
    return text.encode("ascii"), "application/json"


def send(target: Target, body: Any) -> httpx.Response:
    content, content_type = encode(body)
    headers = dict(target.headers() if target.headers else {})
    if content_type:
        headers["content-type"] = content_type
    return target.http().request(target.method, target.base_url + target.route, content=content, headers=headers,
                                 timeout=target.timeout)


def assert_never_5xx(target: Target, bodies: st.SearchStrategy, max_examples: int = 100,
                     check: Callable[[httpx.Response, Any], None] | None = None) -> collections.Counter:
    """Send `max_examples` bodies; fail (with the smallest body hypothesis finds) on any 5xx or a failed `check`.
    Returns how often each status was seen, so a test can also demand that some bodies got through (2xx)."""
    statuses: collections.Counter = collections.Counter()

    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def fuzz(body):
        r = send(target, body)
        statuses[r.status_code] += 1
        assert r.status_code < 500, f"{target.method} {target.route} answered {r.status_code} to {body!r}: {r.text[:300]}"
        if check is not None:
            check(r, body)

    fuzz()
    return statuses


@contextlib.contextmanager
def live(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields the base URL, stops on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="auto"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
