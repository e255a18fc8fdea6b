"""Pure ASGI middleware at the edge of the server (no response wrapping, so streaming and disconnects pass straight
through).

`BodyLimit` bounds request bodies however they are sent: a declared Content-Length over the limit is refused before a
byte is read, and a body without one (`Transfer-Encoding: chunked`) is counted as it arrives and refused with 413 the
moment it passes the limit, so at most `max_bytes` of it are ever held in memory. It knows nothing of chatloom's apps
(the labeling app can use it too). `ApiKey` requires `Authorization: Bearer <key>` on paths under a prefix.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from starlette.responses import JSONResponse, Response


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": {"message": f"the request body is larger than the limit of {limit} bytes",
                                   "type": "invalid_request_error", "param": None, "code": "request_too_large"}},
                        status_code=413)


class BodyLimit:
    """Refuse (413) any HTTP request whose body exceeds `max_bytes`. The body is read here, up to the limit, and handed
    to the app whole; `respond(limit)` builds the refusal (default: OpenAI's error shape)."""

    def __init__(self, app, max_bytes: int, respond: Callable[[int], Response] = _too_large):
        self.app, self.max_bytes, self.respond = app, max_bytes, respond

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _headers(scope).get("content-length", "").strip()
        if length.isdigit() and int(length) > self.max_bytes:
            await self.respond(self.max_bytes)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived: nothing to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:  # refuse now; the server discards whatever the client still sends
                await self.respond(self.max_bytes)(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole, delivered = b"".join(chunks), False
        chunks.clear()

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # afterwards: disconnect notices, as usual

        await self.app(scope, replay, send)


class ApiKey:
    """When `key` is set, requests under `prefix` need `Authorization: Bearer <key>` (401 in OpenAI's shape otherwise)."""

    def __init__(self, app, key: str | None = None, prefix: str = "/v1/"):
        self.app, self.key, self.prefix = app, key, prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.key and scope["path"].startswith(self.prefix):
            given = _headers(scope).get("authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not secrets.compare_digest(token.encode(), self.key.encode()):
                message = "Incorrect API key provided" if token else "Missing API key (Authorization: Bearer ...)"
                await JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                              "code": "invalid_api_key"}}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
