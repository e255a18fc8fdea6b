"""Bounded request bodies however they are sent, on a live server over loopback: a chunked body (no Content-Length)
past the limit is refused with 413 as soon as the limit is passed — shown by a client that never finishes its body and
still gets the answer — a 50 MB chunked upload gets 413 (not 200), and a chunked body under the limit is served
normally. The middleware itself (`BodyLimit`) is app-agnostic and tested on a bare ASGI app too."""

from __future__ import annotations

import socket

import httpx
import pytest

from chatloom.engine import Engine
from chatloom.serve.app import create_app
from chatloom.serve.guard import BodyLimit

from .fuzz_http import live
from .test_engine import make_tiny_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

LIMIT = 100_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_tokenizer_path):
    engine = Engine.from_pretrained(make_tiny_model_dir(tmp_path_factory.mktemp("tiny-limits"), bundled_tokenizer_path))
    with live(create_app(engine, model_name="tiny", max_body_bytes=LIMIT)) as url:
        yield url


def chunked_head(path: str, port: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, "the server closed the connection without an answer"
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        more = sock.recv(65536)
        assert more, "the server closed the connection mid-answer"
        body += more
    return int(head.split(b" ", 2)[1]), body


def test_an_unfinished_chunked_body_past_the_limit_gets_413_at_once(server):
    """The client sends a little more than the limit and then nothing: a server that read whole bodies before
    checking would wait forever for the end; this one answers as soon as the limit is passed."""
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(chunked_head("/v1/chat/completions", port))
        chunk = b"x" * 10_000
        for _ in range(LIMIT // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, data = read_response(sock)  # no terminating 0-chunk was ever sent
    assert status == 413 and b"request_too_large" in data


def test_a_50_mb_chunked_upload_gets_413(server):
    def body():
        piece = b"y" * 1_000_000
        for _ in range(50):
            yield piece

    r = httpx.post(server + "/v1/chat/completions", content=body(), headers={"content-type": "application/json"},
                   timeout=120)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "transfer-encoding" not in r.request.headers or r.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.request.headers


def test_a_chunked_body_under_the_limit_is_served(server):
    payload = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}'

    def body():
        for i in range(0, len(payload), 7):
            yield payload[i:i + 7]

    r = httpx.post(server + "/v1/chat/completions", content=body(), headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    assert "content-length" not in r.request.headers
    r = httpx.post(server + "/v1/chat/completions", content=b"z" * (LIMIT + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413  # declared Content-Length over the limit: refused before reading


def test_body_limit_middleware_on_a_bare_app():
    seen = []

    async def echo(scope, receive, send):
        if scope["type"] != "http":
            return  # no lifespan
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        seen.append(len(body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})

    with live(BodyLimit(echo, max_bytes=1_000)) as url:
        ok = httpx.post(url + "/", content=iter([b"a" * 600, b"b" * 400]))
        assert ok.status_code == 200 and ok.text == "1000"
        too_big = httpx.post(url + "/", content=iter([b"a" * 600, b"b" * 401]))
        assert too_big.status_code == 413
    assert seen == [1000]  # the refused request never reached the app
