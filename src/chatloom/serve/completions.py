"""`POST /v1/chat/completions` over the scheduler: validate, tokenize off the event loop, submit one job of `n` rows, then
either collect the rows into one JSON answer or stream them as server-sent events.

Reasoning: for a model whose protocol renders reasoning (`protocol.reasoning_tags`), the `<think>` block the model
writes is returned as `message.reasoning_content` (streaming: `delta.reasoning_content`) and the rest as `content`, the
DeepSeek / vLLM convention (protocols/reasoning.py); a reply without a block has no `reasoning_content`.

A row that fails while decoding fails its own request only: the non-streaming answer is a 500 in OpenAI's error shape,
a stream gets an error event and ends; either way the request's other rows are cancelled and its batch-mates decode
on. A client that goes away frees its rows at the next decoding step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..engine import ContextWindowError
from ..protocols.reasoning import ReasoningSplitter, split_reasoning
from .errors import ApiError, error_body
from .scheduler import Job
from .schemas import ChatCompletionRequest, to_conversation


@dataclass
class Reply:
    """What every chunk or answer of one completion shares."""

    job: Job
    model: str
    prompt_tokens: int
    n: int
    reasoning_tags: tuple[str, str] | None = None  # the protocol's: split replies into reasoning and content
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    conv = to_conversation(body.messages)
    if conv.messages[-1].role == "assistant":
        raise ApiError(400, "the last message is from the assistant; nothing to reply to", "messages")
    params = body.sampling(state.engine.max_context)
    try:
        job = await run_in_threadpool(state.scheduler.make_job, conv, params, asyncio.get_running_loop())
    except ContextWindowError as e:
        raise ApiError(400, str(e), "messages", "context_length_exceeded") from None
    except ValueError as e:  # the protocol cannot render this conversation (e.g. its template refuses it)
        raise ApiError(400, str(e), "messages") from None
    try:
        state.scheduler.submit(job)
    except OverflowError as e:
        raise ApiError(429, str(e), code="rate_limit_exceeded", type="rate_limit_error") from None
    reply = Reply(job, state.model_name, len(job.requests[0].prompt_ids), body.n,
                  getattr(state.engine.protocol, "reasoning_tags", None))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream(reply, request, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await collect(reply, request)


async def collect(reply: Reply, request: Request) -> dict:
    """Wait for every row; the whole answer in one JSON object (or a 500 if a row failed)."""
    job, done = reply.job, {}
    watcher = asyncio.create_task(cancel_when_gone(request, job))
    try:
        while len(done) < reply.n:
            kind, i, payload = await job.events.get()
            if kind == "done":
                done[i] = payload
            elif kind == "error":
                raise ApiError(500, f"choice {i} failed while decoding: {payload}", type="server_error")
    finally:
        watcher.cancel()
        if len(done) < reply.n:
            job.cancel()  # an error, or the client went away: free the other rows
    choices = [{"index": i, "message": message(c.text, reply.reasoning_tags), "finish_reason": c.finish_reason,
                "logprobs": None} for i, c in sorted(done.items())]
    return {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
            "choices": choices, "usage": usage(reply.prompt_tokens, sum(c.completion_tokens for c in done.values())),
            "chatloom": {"dropped_messages": job.requests[0].dropped_messages}}


def message(text: str, tags: tuple[str, str] | None) -> dict:
    reasoning, content = split_reasoning(text, tags)
    out = {"role": "assistant", "content": content}
    if reasoning is not None:
        out["reasoning_content"] = reasoning
    return out


def delta(parts: tuple[str, str]) -> dict:
    reasoning, content = parts
    return {**({"reasoning_content": reasoning} if reasoning else {}), **({"content": content} if content else {})}


async def stream(reply: Reply, request: Request, include_usage: bool):
    """Server-sent events: a role chunk per choice, text deltas, a finish chunk per choice, usage, `[DONE]`."""
    def chunk(choices, **extra):
        payload = {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created, "model": reply.model,
                   "choices": choices, **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    job, finished, completion_tokens = reply.job, 0, 0
    splitters = [ReasoningSplitter(reply.reasoning_tags) if reply.reasoning_tags else None for _ in range(reply.n)]
    watcher = asyncio.create_task(cancel_when_gone(request, job))
    try:
        for i in range(reply.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        while finished < reply.n:
            kind, i, payload = await job.events.get()
            if kind == "delta":
                d = delta(splitters[i].push(payload)) if splitters[i] else {"content": payload}
                if d:
                    yield chunk([{"index": i, "delta": d, "finish_reason": None}])
            elif kind == "done":
                finished += 1
                completion_tokens += payload.completion_tokens
                if splitters[i] and (d := delta(splitters[i].finish())):
                    yield chunk([{"index": i, "delta": d, "finish_reason": None}])
                yield chunk([{"index": i, "delta": {}, "finish_reason": payload.finish_reason}])
            else:
                body = error_body(f"choice {i} failed while decoding: {payload}", type="server_error")
                yield f"data: {json.dumps(body)}\n\n"
                return
        if include_usage:
            yield chunk([], usage=usage(reply.prompt_tokens, completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        if finished < reply.n:
            job.cancel()  # an error, or the client went away: free its rows at the next decoding step


async def cancel_when_gone(request: Request, job: Job, every: float = 0.25) -> None:
    """Poll for the client's disconnect (a write to a closed socket is not always noticed) and free its rows."""
    while True:
        await asyncio.sleep(every)
        if await request.is_disconnected():
            job.cancel()
            return


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
