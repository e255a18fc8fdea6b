"""Log in and out. The limiter slows guessing per address and per account (see `auth.LoginLimiter`); password
hashing runs in `hashing.pool` (bounded, below ordinary requests' CPU priority), never on the event loop, and a login
waiting for its hash holds no request thread."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from .. import auth
from ..web import Form, form_text, local_path, page, redirect, state

router = APIRouter()


@router.get("/healthz")
def healthz():
    return {"ok": True}


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/tasks"):
    return page(request, "login.html", next=local_path(next))


def _stored_hash(db, name: str) -> str | None:
    with db.session(readonly=True) as s:
        user = auth.active_user(s, name)
        return user.password_hash if user is not None else None


def _open_session(db, name: str) -> str | None:
    """A session for `name`, if the account is still active (it may have been deactivated while its hash ran)."""
    with db.session() as s:
        user = auth.active_user(s, name)
        return auth.open_session(s, user) if user is not None else None


@router.post("/login")
async def login(request: Request, form: Form):
    """Async on purpose: the database steps run in the request thread pool, the argon2 check in `hashing.pool`
    (bounded, lower CPU priority), and while it runs this login holds no request thread, so a burst of logins cannot
    make the pages of people already logged in wait for threads or cores."""
    app = state(request)
    name, password = form_text(form, "username").strip()[:200], form_text(form, "password")[:1000]
    target = local_path(form_text(form, "next") or "/tasks")
    address = request.client.host if request.client else "?"
    known_device = auth.device_ok(app.secret, request.cookies.get(auth.DEVICE_COOKIE), name)
    wait = app.limiter.begin(name, address, known_device=known_device)
    if wait > 0:
        return page(request, "login.html", status=429, next=target, username=name,
                    notice=f"Too many failed attempts; try again in {max(1, round(wait))} s.")
    try:
        stored = await run_in_threadpool(_stored_hash, app.db, name)
        ok = await auth.verify_password_async(stored, password)
        token = await run_in_threadpool(_open_session, app.db, name) if ok else None
        if token is None:
            app.limiter.failed(name, address)
        else:
            app.limiter.succeeded(name, address)
    finally:
        app.limiter.end(name, known_device=known_device)
    if token is None:
        return page(request, "login.html", status=401, next=target, username=name,
                    notice="Wrong user name or password.")
    response = redirect(target)
    response.set_cookie(auth.SESSION_COOKIE, token, httponly=True, samesite="lax", secure=app.secure_cookies,
                        path="/", max_age=auth.SESSION_DAYS * 86400)
    response.set_cookie(auth.DEVICE_COOKIE, auth.device_cookie(app.secret, name), httponly=True, samesite="lax",
                        secure=app.secure_cookies, path="/login", max_age=auth.DEVICE_DAYS * 86400)
    response.delete_cookie(auth.ANON_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request):
    with state(request).db.session() as s:
        auth.close_session(s, request.cookies.get(auth.SESSION_COOKIE))
    response = redirect("/login")
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response
