"""The OpenAI-compatible HTTP API and the web chat page for one Engine.

`POST /v1/chat/completions` (SSE streaming or not; n, max_tokens, temperature, top_p, stop, seed, usage), `GET /v1/models`,
`GET /health`, `POST /v1/tokens` (the token view of a conversation, for the page) and the chat page at `/`. Bad requests
get OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`) with a 4xx status; decoding happens on the
scheduler's thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..conversation import Conversation, ValidationError
from ..engine import ContextWindowError, Engine, SamplingParams
from .scheduler import Scheduler

MAX_MESSAGES = 256
MAX_CHARACTERS = 200_000
MAX_BODY_BYTES = 2_000_000
MAX_N = 8
DEFAULT_MAX_TOKENS = 512


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class TokensRequest(BaseModel):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    add_generation_prompt: bool = False


def to_conversation(messages: list[ChatMessage]) -> Conversation:
    total = sum(len(m.text()) for m in messages)
    if total > MAX_CHARACTERS:
        raise ApiError(400, f"messages hold {total} characters; the limit is {MAX_CHARACTERS}", "messages", "too_long")
    raw = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
            **({"name": m.name} if m.name else {}), **({"tool_call_id": m.tool_call_id} if m.tool_call_id else {})}
           for m in messages]
    try:
        return Conversation.from_dict({"messages": raw})
    except ValidationError as e:
        raise ApiError(400, str(e), e.field or "messages") from None
    except (TypeError, ValueError) as e:
        raise ApiError(400, str(e), "messages") from None


class Guard:
    """Pure ASGI middleware (no response wrapping, so streaming and disconnects pass straight through): rejects
    oversized bodies and, when an API key is set, /v1 requests without `Authorization: Bearer <key>`."""

    def __init__(self, app, api_key: str | None = None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            length = headers.get("content-length", "")
            refusal = None
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                refusal = JSONResponse(error_body(f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}",
                                                  code="request_too_large"), status_code=413)
            elif self.api_key and scope["path"].startswith("/v1/"):
                given = headers.get("authorization", "")
                token = given[7:].strip() if given[:7].lower() == "bearer " else ""
                if not secrets.compare_digest(token.encode(), self.api_key.encode()):
                    message = "Incorrect API key provided" if token else "Missing API key (Authorization: Bearer ...)"
                    refusal = JSONResponse(error_body(message, code="invalid_api_key"), status_code=401)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(engine: Engine, api_key: str | None = None, model_name: str | None = None, max_batch: int = 8) -> FastAPI:
    """The FastAPI app serving `engine` (OpenAI-compatible under /v1, the chat page at /)."""
    model_name = model_name or getattr(engine, "name", None) or "chatloom"
    scheduler = Scheduler(engine, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(scheduler.stop)

    app = FastAPI(title="chatloom", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.scheduler, app.state.model_name = engine, scheduler, model_name

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else first.get("msg", "invalid request")
        return JSONResponse(error_body(message, param=param, code=first.get("type")), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), status_code=exc.status_code)

    app.add_middleware(Guard, api_key=api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "waiting": scheduler.waiting, "batches": scheduler.batches,
                "cancelled": scheduler.cancelled}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                             "owned_by": "chatloom"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    @app.post("/v1/tokens")
    async def tokens(body: TokensRequest):
        from ..protocols import view

        conv = to_conversation(body.messages)
        proto = engine.protocol

        def render():
            rendered = proto.render(conv)
            if body.add_generation_prompt:  # the prompt is the rendered conversation plus the assistant header
                tail = proto.prompt(conv)[len(rendered.ids):]
                rendered.ids, rendered.mask = rendered.ids + tail, rendered.mask + [0] * len(tail)
                rendered.message_index = rendered.message_index + [-1] * len(tail)
            return {**view.as_json(conv, rendered, proto), "protocol": proto.name, "roles": [m.role for m in conv.messages]}

        return await run_in_threadpool(render)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        conv = to_conversation(body.messages)
        if conv.messages[-1].role == "assistant":
            raise ApiError(400, "the last message is from the assistant; nothing to reply to", "messages")
        max_tokens = body.max_completion_tokens or body.max_tokens or min(DEFAULT_MAX_TOKENS, engine.max_context // 2)
        if max_tokens >= engine.max_context:
            raise ApiError(400, f"max_tokens is {max_tokens}; this model's context window is {engine.max_context} tokens",
                           "max_tokens", "context_length_exceeded")
        try:
            params = [SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                                     repetition_penalty=body.repetition_penalty, stop=body.stop,
                                     seed=None if body.seed is None else body.seed + i) for i in range(body.n)]
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        loop = asyncio.get_running_loop()
        try:
            job = await run_in_threadpool(scheduler.make_job, conv, params, loop)
        except ContextWindowError as e:
            raise ApiError(400, str(e), "messages", "context_length_exceeded") from None
        try:
            scheduler.submit(job)
        except OverflowError as e:
            raise ApiError(429, str(e), code="rate_limit_exceeded", type="rate_limit_error") from None
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        prompt_tokens = len(job.requests[0].prompt_ids)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(sse(job, request, cid, created, prompt_tokens, body.n, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        completions: dict[int, Any] = {}
        watcher = asyncio.create_task(cancel_when_gone(request, job))
        try:
            while len(completions) < body.n:
                kind, i, payload = await job.events.get()
                if kind == "done":
                    completions[i] = payload
                elif kind == "error":
                    raise ApiError(500, payload, type="server_error")
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            watcher.cancel()
        choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                    "logprobs": None} for i, c in sorted(completions.items())]
        completion_tokens = sum(c.completion_tokens for c in completions.values())
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name, "choices": choices,
                "usage": usage(prompt_tokens, completion_tokens),
                "chatloom": {"dropped_messages": job.requests[0].dropped_messages}}

    async def sse(job, request: Request, cid: str, created: int, prompt_tokens: int, n: int, include_usage: bool):
        def chunk(choices, **extra):
            payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                       "choices": choices, **extra}
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        finished, completion_tokens = 0, 0
        watcher = asyncio.create_task(cancel_when_gone(request, job))
        try:
            for i in range(n):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            while finished < n:
                kind, i, payload = await job.events.get()
                if kind == "delta":
                    yield chunk([{"index": i, "delta": {"content": payload}, "finish_reason": None}])
                elif kind == "done":
                    finished += 1
                    completion_tokens += payload.completion_tokens
                    yield chunk([{"index": i, "delta": {}, "finish_reason": payload.finish_reason}])
                else:
                    yield f"data: {json.dumps(error_body(payload, type='server_error'))}\n\n"
                    return
            if include_usage:
                yield chunk([], usage=usage(prompt_tokens, completion_tokens))
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            if finished < n:
                job.cancel()  # the client went away: free its rows at the next decoding step

    return app


async def cancel_when_gone(request: Request, job, every: float = 0.25) -> None:
    """Poll for the client's disconnect (a write to a closed socket is not always noticed) and free its rows."""
    while True:
        await asyncio.sleep(every)
        if await request.is_disconnected():
            job.cancel()
            return


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
