"""The OpenAI-compatible HTTP API and the web chat page for one Engine.

`POST /v1/chat/completions` (SSE streaming or not; n, max_tokens, temperature, top_p, top_k, stop, seed, usage; see
`completions`), `GET /v1/models`, `GET /health`, `POST /v1/tokens` (the token view of a conversation, for the page) and
the chat page at `/`. Every request field is validated at the edge (`schemas`); bodies are bounded however they are
sent and the API key is checked before a handler runs (`guard`); errors have OpenAI's shape (`errors`). Decoding
happens on the scheduler's thread with continuous batching, never on the event loop.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from ..engine import Engine
from . import errors
from .completions import chat_completions
from .errors import ApiError, error_body
from .guard import ApiKey, BodyLimit
from .scheduler import Scheduler
from .schemas import MAX_BODY_BYTES, MAX_CHARACTERS, MAX_MESSAGES, MAX_N, TokensRequest, to_conversation

__all__ = ["ApiError", "MAX_BODY_BYTES", "MAX_CHARACTERS", "MAX_MESSAGES", "MAX_N", "create_app", "error_body"]


def create_app(engine: Engine, api_key: str | None = None, model_name: str | None = None, max_batch: int = 8,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving `engine` (OpenAI-compatible under /v1, the chat page at /)."""
    scheduler = Scheduler(engine, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(scheduler.stop)

    app = FastAPI(title="chatloom", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.scheduler = engine, scheduler
    app.state.model_name = model_name or getattr(engine, "name", None) or "chatloom"
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(ApiKey, key=api_key)  # added last, so it runs first: no body is read for a wrong key
    app.get("/health")(health)
    app.get("/v1/models")(models)
    app.get("/", response_class=HTMLResponse)(page)
    app.post("/v1/tokens")(tokens)
    app.post("/v1/chat/completions")(chat_completions)
    return app


async def health(request: Request) -> dict:
    s: Scheduler = request.app.state.scheduler
    return {"status": "ok", "model": request.app.state.model_name, "waiting": s.waiting, "running": s.running,
            "batches": s.batches, "joined": s.joined, "cancelled": s.cancelled, "failed": s.failed}


async def models(request: Request) -> dict:
    return {"object": "list", "data": [{"id": request.app.state.model_name, "object": "model",
                                         "created": int(time.time()), "owned_by": "chatloom"}]}


async def page() -> HTMLResponse:
    return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))


async def tokens(body: TokensRequest, request: Request) -> dict:
    """The token view of a conversation (ids, text of each token, supervised mask), optionally with the reply header."""
    from ..protocols import view

    conv = to_conversation(body.messages)
    proto = request.app.state.engine.protocol

    def render():
        rendered = proto.render(conv)
        if body.add_generation_prompt:  # the prompt is the rendered conversation plus the assistant header
            tail = proto.prompt(conv)[len(rendered.ids):]
            rendered.ids, rendered.mask = rendered.ids + tail, rendered.mask + [0] * len(tail)
            rendered.message_index = rendered.message_index + [-1] * len(tail)
        return {**view.as_json(conv, rendered, proto), "protocol": proto.name, "roles": [m.role for m in conv.messages]}

    try:
        return await run_in_threadpool(render)
    except ValueError as e:  # the protocol cannot render this conversation
        raise ApiError(400, str(e), "messages") from None
