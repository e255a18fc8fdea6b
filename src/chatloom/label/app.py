"""The labeling web app (FastAPI, server-rendered Jinja2 pages, no CDN): `create_app` wires the routers of `routes/`
(login, tasks, messages, editor JSON, admin) to a database, the operator's draft endpoints and tokenizer folders.

Every POST carries a CSRF token bound to the visitor's session (or pre-login cookie) and is refused with 403 without it;
every route checks the role as a dependency; every handler runs in one short transaction; every bad id or body is a
4xx on the app's error page (or `{"error": ...}` under /api/).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.staticfiles import StaticFiles

from . import auth, drafts
from .db import Database
from .routes import ROUTERS
from .web import HERE, LabelApp, NotLoggedIn, Viewer, csrf_guard, install_error_pages, local_path, make_templates

__all__ = ["create_app", "NotLoggedIn", "Viewer", "local_path"]


def create_app(database: Database | str, *, secure_cookies: bool = False, limiter: auth.LoginLimiter | None = None,
               draft_endpoints: drafts.Endpoints | None = None, tokenizer_dirs: Iterable[str | Path] = (),
               allow_draft_urls: bool = True) -> FastAPI:
    """The app for `database`. `draft_endpoints`: the operator's named endpoints with their keys (default: from the
    environment, see `drafts`); `tokenizer_dirs`: the folders admins may pick project tokenizers from;
    `allow_draft_urls`: whether admins may type draft URLs of their own (sent no key; off: only the named endpoints,
    so the server never sends requests where an admin points it)."""
    db = database if isinstance(database, Database) else Database(database)
    with db.session() as s:
        secret = auth.app_secret(s)
    label = LabelApp(db=db, secret=secret, templates=make_templates(), limiter=limiter or auth.LoginLimiter(),
                     secure_cookies=secure_cookies,
                     draft_endpoints=drafts.Endpoints.configure() if draft_endpoints is None else draft_endpoints,
                     tokenizer_dirs=tuple(Path(d).expanduser().resolve() for d in tokenizer_dirs),
                     allow_draft_urls=allow_draft_urls)

    app = FastAPI(title="chatloom label", dependencies=[Depends(csrf_guard)], docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.label = label
    app.state.db = db
    app.state.limiter = label.limiter
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def anon_cookie_and_headers(request: Request, call_next):
        fresh = None
        if not request.cookies.get(auth.SESSION_COOKIE) and not request.cookies.get(auth.ANON_COOKIE):
            fresh = request.state.anon = secrets.token_urlsafe(24)
        response = await call_next(request)
        if fresh:
            response.set_cookie(auth.ANON_COOKIE, fresh, httponly=True, samesite="lax", secure=secure_cookies, path="/")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
        return response

    install_error_pages(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
