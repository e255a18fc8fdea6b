"""A small OpenAI-compatible chat server for the synth tests: real HTTP on 127.0.0.1 (uvicorn in a thread, free port),
deterministic replies, optional per-request delay, and a hook that can answer 500 or stall a request."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

WORDS = ("river", "lamp", "orbit", "maple", "signal", "copper", "meadow", "vector", "harbor", "prism", "ember", "quartz")


def deterministic_reply(body: dict) -> str:
    """A reply that depends only on the request (model, messages, seed): a user-simulator question (models named sim*)
    or an assistant answer, each of ~12 pseudo-random words."""
    model = body["model"]
    digest = hashlib.sha256(json.dumps([model, body["messages"], body.get("seed")], sort_keys=True).encode()).digest()
    words = " ".join(WORDS[b % len(WORDS)] for b in digest[:12])
    if model.startswith("sim"):
        return f"User: How does the {words} idea work in practice?"
    return f"The short answer: {words}. It depends on the details you care about."


def create_app(*, delay: float = 0.0, action: Callable[[dict, int], str] | None = None,
               reply: Callable[[dict], str] = deterministic_reply, api_key: str | None = None,
               reasoning: Callable[[dict], str | None] | None = None) -> FastAPI:
    """`action(body, request_number)` -> "ok" | "stall" | an HTTP error status decides each request's fate (default:
    always ok). With `api_key`, requests without `Authorization: Bearer <api_key>` get a 401. `reasoning(body)`: a
    `reasoning_content` to return beside the content (a reasoning model), None for none."""
    app = FastAPI()
    app.state.requests = 0
    app.state.log = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests += 1
        number = app.state.requests
        fate = action(body, number) if action else "ok"
        sent = request.headers.get("authorization", "")
        if api_key is not None and sent != f"Bearer {api_key}":  # like real APIs, echo (part of) the key sent
            app.state.log.append((number, 401, body))
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {sent.removeprefix('Bearer ')}",
                                           "type": "invalid_request_error"}}, status_code=401)
        app.state.log.append((number, fate, body))
        if delay:
            await asyncio.sleep(delay)
        if isinstance(fate, int):
            return JSONResponse({"error": {"message": f"injected {fate}", "type": "server_error"}}, status_code=fate)
        if fate == "stall":
            await asyncio.sleep(30)  # far past the client's timeout; shutting the test server down cancels it
        text = reply(body)
        message = {"role": "assistant", "content": text}
        if reasoning is not None and (thought := reasoning(body)) is not None:
            message["reasoning_content"] = thought
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        return {"id": f"chatcmpl-{number}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                          "total_tokens": prompt_tokens + len(text.split())}}

    return app


@contextmanager
def serve(app: FastAPI):
    """Run `app` on 127.0.0.1 at a free port for the duration of the block; yields the base URL (`.../v1`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True  # graceful first (stalled requests are cancelled after 1 s), then forced
        thread.join(timeout=3)
        server.force_exit = True
        thread.join(timeout=5)
        sock.close()
