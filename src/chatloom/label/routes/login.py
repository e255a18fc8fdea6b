"""Log in and out. The limiter slows guessing per address and per account (see `auth.LoginLimiter`); password
hashing runs in the thread pool, never on the event loop."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .. import auth
from ..web import Form, form_text, local_path, page, redirect, state

router = APIRouter()


@router.get("/healthz")
def healthz():
    return {"ok": True}


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/tasks"):
    return page(request, "login.html", next=local_path(next))


@router.post("/login")
def login(request: Request, form: Form):
    app = state(request)
    name, password = form_text(form, "username").strip()[:200], form_text(form, "password")[:1000]
    target = local_path(form_text(form, "next") or "/tasks")
    address = request.client.host if request.client else "?"
    known_device = auth.device_ok(app.secret, request.cookies.get(auth.DEVICE_COOKIE), name)
    wait = app.limiter.wait(name, address, known_device=known_device)
    if wait > 0:
        return page(request, "login.html", status=429, next=target, username=name,
                    notice=f"Too many failed attempts; try again in {wait:.0f} s.")
    with app.db.session() as s:
        user = auth.authenticate(s, name, password)
        token = auth.open_session(s, user) if user else None
    if user is None:
        app.limiter.failed(name, address)
        return page(request, "login.html", status=401, next=target, username=name,
                    notice="Wrong user name or password.")
    app.limiter.succeeded(name, address)
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
