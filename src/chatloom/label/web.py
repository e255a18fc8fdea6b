"""What every page of the labeling app shares: who is looking (`Viewer`) and the role checks as FastAPI dependencies,
the CSRF guard, bounded id parameters, form/JSON body readers, page rendering, and one error page (HTML, or a JSON
`{"error": ...}` under /api/) for every 4xx, so bad ids and bad bodies never reach the database as a 500.

The routers in `routes/` use only these pieces and `service`; `app.create_app` wires them together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import auth, drafts, service
from .db import Database

HERE = Path(__file__).parent
MAX_ID = 2**31 - 1  # ids are INTEGER columns (32-bit on PostgreSQL): a larger id is simply not found
MAX_FORM_BYTES = 1_000_000
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
log = logging.getLogger("chatloom.label")


class NotLoggedIn(Exception):
    pass


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page (a plain copy, usable after the database session has closed). The service functions
    accept it wherever they take a user: they read only `id`, `name` and `role`."""
    id: int
    name: str
    role: str


@dataclass
class LabelApp:
    """Everything a request handler needs, kept on `app.state.label`."""
    db: Database
    secret: str
    templates: Jinja2Templates
    limiter: auth.LoginLimiter
    secure_cookies: bool = False
    draft_endpoints: drafts.Endpoints = field(default_factory=drafts.Endpoints)
    tokenizer_dirs: tuple[Path, ...] = ()
    allow_draft_urls: bool = True

    def settings_policy(self) -> service.SettingsPolicy:
        return service.SettingsPolicy(draft_endpoints=tuple(self.draft_endpoints.names()),
                                      tokenizer_dirs=self.tokenizer_dirs, allow_draft_urls=self.allow_draft_urls)


@lru_cache(maxsize=64)
def render_markdown(text: str) -> Markup:
    """Markdown to HTML with raw HTML disabled (it is shown as text), so instructions cannot inject markup. Cached:
    every task page shows the same few instruction versions, and parsing them was a large part of its cost."""
    return Markup(_markdown.render(text or ""))


def local_path(target: str) -> str:
    """Only redirect within this site after login (no `//host`, `/\\host` or absolute URLs)."""
    ok = target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target
    return target if ok and all(c.isprintable() for c in target) else "/tasks"


def make_templates() -> Jinja2Templates:
    from ..protocols import NAMES as protocol_names

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["markdown"] = render_markdown
    templates.env.globals["kind_titles"] = service.KIND_TITLES
    templates.env.globals["kind_help"] = service.KIND_HELP
    templates.env.globals["protocols"] = protocol_names
    return templates


def state(request: Request) -> LabelApp:
    return request.app.state.label


# -------------------------------------------------------------------------------------------------- request pieces

Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def bound_value(request: Request) -> str | None:
    """What a CSRF token is bound to: the session cookie, else the pre-login cookie."""
    return request.cookies.get(auth.SESSION_COOKIE) or getattr(request.state, "anon", None) \
        or request.cookies.get(auth.ANON_COOKIE)


async def form_data(request: Request) -> FormData:
    """The posted form, read on the event loop so the handler itself can run in the thread pool."""
    if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
        raise service.LabelError(f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        return await request.form()
    except (ValueError, KeyError, AssertionError) as e:  # a malformed multipart or urlencoded body
        raise service.LabelError(f"the form could not be read: {e}") from None
    except HTTPException as e:
        raise service.LabelError(f"the form could not be read: {e.detail}") from None


async def json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise service.LabelError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise service.LabelError("the body must be a JSON object")
    return body


async def csrf_guard(request: Request):
    """Every state-changing request carries the CSRF token of the visitor's session (header or form field)."""
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return
    presented = request.headers.get(auth.CSRF_HEADER)
    if presented is None and "form" in request.headers.get("content-type", ""):
        form = await form_data(request)
        value = form.get(auth.CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    if not auth.csrf_ok(state(request).secret, bound_value(request), presented):
        raise service.Forbidden("missing or wrong CSRF token: reload the page and try again")


def viewer(request: Request) -> Viewer:
    """The logged-in user (a dependency of every page but login); anonymous visitors are sent to the login page."""
    with state(request).db.session(readonly=True) as s:
        user = auth.session_user(s, request.cookies.get(auth.SESSION_COOKIE))
        if user is None:
            raise NotLoggedIn()
        who = Viewer(user.id, user.name, user.role)
    request.state.user = who
    return who


def role(*roles: str):
    def check(who: Viewer = Depends(viewer)) -> Viewer:
        if who.role not in roles:
            raise service.Forbidden(f"this page is for {' or '.join(roles)} accounts")
        return who
    return check


AnyUser = Annotated[Viewer, Depends(viewer)]
Admin = Annotated[Viewer, Depends(role("admin"))]
Form = Annotated[FormData, Depends(form_data)]
JsonBody = Annotated[dict, Depends(json_body)]


def form_text(form: FormData, key: str, default: str = "") -> str:
    """A text field of the form (a file upload where text is expected is refused)."""
    value = form.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise service.LabelError(f"{key} must be text")
    return value


def form_int(form: FormData, key: str, default: int | None = None, what: str | None = None) -> int:
    raw = form_text(form, key).strip()
    if not raw and default is not None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise service.LabelError(f"{what or key.replace('_', ' ')} must be a whole number") from None
    if abs(value) > MAX_ID:
        raise service.LabelError(f"{what or key.replace('_', ' ')} is out of range")
    return value


# ------------------------------------------------------------------------------------------------------- responses


def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    app = state(request)
    context.setdefault("user", getattr(request.state, "user", None))
    context["csrf"] = auth.csrf_token(app.secret, bound_value(request) or "")
    context["csrf_field"] = auth.CSRF_FIELD
    return app.templates.TemplateResponse(request, name, context, status_code=status)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error(request: Request, status: int, message: str) -> Response:
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    return page(request, "error.html", status=status, status_code=status, message=message)


def install_error_pages(app) -> None:
    """One error page for everything that goes wrong with a request, and a logged 500 page for our own bugs."""

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, exc):
        if wants_json(request):
            return JSONResponse({"error": "log in first"}, status_code=401)
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(service.LabelError)
    async def _label_error(request: Request, exc: service.LabelError):
        status = {service.Forbidden: 403, service.Conflict: 409, service.NotFound: 404}.get(type(exc), 400)
        return error(request, status, str(exc))

    @app.exception_handler(drafts.DraftError)
    async def _draft_error(request: Request, exc):
        return error(request, 502, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        where = [p for p in problems if p.get("loc") and p["loc"][0] == "path"]
        if where:  # an id that cannot exist (not a number, 0, past the integer range): nothing by that id
            return error(request, 404, f"no such {where[0]['loc'][-1].removesuffix('_id')}")
        first = problems[0] if problems else {"loc": ("request",), "msg": "invalid"}
        return error(request, 400, f"{'.'.join(str(x) for x in first['loc'][1:]) or first['loc'][0]}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        messages = {404: "no such page", 405: "this address does not take that method"}
        return error(request, exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(request, 500, "something went wrong on our side; it has been logged")
