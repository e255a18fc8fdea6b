"""The labeling web app (FastAPI, server-rendered Jinja2 pages, no CDN): login, task queue and task pages, message edits,
admin pages, and two JSON endpoints for the reply editor (LLM draft, live token preview).

Every POST carries a CSRF token bound to the visitor's session (or pre-login cookie) and is refused with 403 without it;
every route checks the role; every handler runs in one short transaction.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup
from sqlalchemy import select
from starlette.datastructures import FormData

from ..protocols import NAMES as protocol_names
from . import auth, drafts, service, transfer
from .db import Database
from .models import ROLES, Message, Project, Task, Tree, User

HERE = Path(__file__).parent
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


class NotLoggedIn(Exception):
    pass


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page (a plain copy, usable after the database session has closed)."""
    id: int
    name: str
    role: str


def render_markdown(text: str) -> Markup:
    """Markdown to HTML with raw HTML disabled (it is shown as text), so instructions cannot inject markup."""
    return Markup(_markdown.render(text or ""))


def local_path(target: str) -> str:
    """Only redirect within this site after login (no `//host`, `/\\host` or absolute URLs)."""
    ok = target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target
    return target if ok and all(c.isprintable() for c in target) else "/tasks"


async def form_data(request: Request) -> FormData:
    """The posted form, read on the event loop so the handler itself can run in the thread pool."""
    return await request.form()


async def json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise service.LabelError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise service.LabelError("the body must be a JSON object")
    return body


def create_app(database: Database | str, *, secure_cookies: bool = False,
               limiter: auth.LoginLimiter | None = None) -> FastAPI:
    db = database if isinstance(database, Database) else Database(database)
    with db.session() as s:
        secret = auth.app_secret(s)
    limiter = limiter or auth.LoginLimiter()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["markdown"] = render_markdown
    templates.env.globals["kind_titles"] = service.KIND_TITLES
    templates.env.globals["protocols"] = protocol_names

    def bound_value(request: Request) -> str | None:
        return request.cookies.get(auth.SESSION_COOKIE) or getattr(request.state, "anon", None) \
            or request.cookies.get(auth.ANON_COOKIE)

    async def csrf_guard(request: Request):
        if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
            return
        presented = request.headers.get(auth.CSRF_HEADER)
        if presented is None and "form" in request.headers.get("content-type", ""):
            form = await request.form()
            presented = form.get(auth.CSRF_FIELD)
        if not auth.csrf_ok(secret, bound_value(request), presented):
            raise service.Forbidden("missing or wrong CSRF token: reload the page and try again")

    app = FastAPI(title="chatloom label", dependencies=[Depends(csrf_guard)], docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.db = db
    app.state.limiter = limiter
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def anon_cookie(request: Request, call_next):
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

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        context.setdefault("user", getattr(request.state, "user", None))
        context["csrf"] = auth.csrf_token(secret, bound_value(request) or "")
        context["csrf_field"] = auth.CSRF_FIELD
        return templates.TemplateResponse(request, name, context, status_code=status)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def error(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", status=status, status_code=status, message=message)

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

    def current_user(s, request: Request, roles: tuple[str, ...] = ROLES) -> User:
        user = auth.session_user(s, request.cookies.get(auth.SESSION_COOKIE))
        if user is None:
            raise NotLoggedIn()
        if user.role not in roles:
            raise service.Forbidden(f"this page is for {' or '.join(roles)} accounts")
        request.state.user = Viewer(user.id, user.name, user.role)
        return user

    # ------------------------------------------------------------------------------------------------------ login

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/tasks"):
        return page(request, "login.html", next=local_path(next))

    @app.post("/login")
    def login(request: Request, form: FormData = Depends(form_data)):
        name, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
        target = local_path(str(form.get("next") or "/tasks"))
        address = request.client.host if request.client else "?"
        if limiter.blocked(name, address):
            return page(request, "login.html", status=429, next=target, username=name,
                        notice="Too many failed attempts; wait a minute and try again.")
        with db.session() as s:
            user = auth.authenticate(s, name, password)
            token = auth.open_session(s, user) if user else None
        if user is None:
            limiter.failed(name, address)
            return page(request, "login.html", status=401, next=target, username=name,
                        notice="Wrong user name or password.")
        limiter.succeeded(name, address)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(auth.SESSION_COOKIE, token, httponly=True, samesite="lax", secure=secure_cookies,
                            path="/", max_age=auth.SESSION_DAYS * 86400)
        response.delete_cookie(auth.ANON_COOKIE, path="/")
        return response

    @app.post("/logout")
    def logout(request: Request):
        with db.session() as s:
            auth.close_session(s, request.cookies.get(auth.SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------------------------------------------ tasks

    @app.get("/")
    def home():
        return RedirectResponse("/tasks", status_code=303)

    @app.get("/tasks", response_class=HTMLResponse)
    def tasks_page(request: Request, message: str | None = None):
        with db.session() as s:
            user = current_user(s, request)
            projects = list(s.scalars(select(Project).order_by(Project.name)))
            open_tasks = list(s.scalars(select(Task).where(Task.user_id == user.id, Task.status == "open")
                                        .order_by(Task.id.desc()).limit(20)))
            kinds = [k for k in service.KIND_ROLES if user.role in service.KIND_ROLES[k]]
            return page(request, "tasks.html", projects=projects, open_tasks=open_tasks, kinds=kinds, notice=message)

    @app.post("/projects/{project_id}/next")
    def take_next(request: Request, project_id: int, form: FormData = Depends(form_data)):
        kind = str(form.get("kind") or "") or None
        with db.session() as s:
            user = current_user(s, request)
            project = service.get_project(s, project_id)
            task = service.next_task(s, project, user, kind)
            task_id = task.id if task else None
        if task_id is None:
            what = service.KIND_TITLES.get(kind, "work").lower() if kind else "work"
            return RedirectResponse(f"/tasks?message={quote(f'Nothing to do right now ({what}) in {project.name}.')}",
                                    status_code=303)
        return RedirectResponse(f"/tasks/{task_id}", status_code=303)

    def task_context(s, task: Task) -> dict:
        project = s.get(Project, task.project_id)
        instructions = service.instruction_versions(s, project.id)
        shown = next((i for i in instructions if i.version == task.instruction_version), instructions[0])
        ctx = {"task": task, "project": project, "instructions": shown, "latest_version": instructions[0].version,
               "thread": [], "target": None, "replies": []}
        if task.target_id is not None:
            ctx["target"] = s.get(Message, task.target_id)
            ctx["thread"] = service.thread(s, task.target_id)
            tree = s.get(Tree, ctx["target"].tree_id)
            ctx["system_prompt"] = tree.system_prompt
        else:
            ctx["system_prompt"] = project.system_prompt
        if task.kind == "rank":
            ctx["replies"] = service.siblings_to_rank(s, task.target_id)
        return ctx

    @app.get("/tasks/{task_id}", response_class=HTMLResponse)
    def task_page(request: Request, task_id: int):
        with db.session() as s:
            user = current_user(s, request)
            task = service.get_task(s, task_id, user)
            if task.kind == "review":
                service.can_review(user, s.get(Message, task.target_id))
            return page(request, "task.html", **task_context(s, task))

    @app.post("/tasks/{task_id}")
    def submit_task(request: Request, task_id: int, form: FormData = Depends(form_data)):
        with db.session() as s:
            user = current_user(s, request)
            task = service.get_task(s, task_id, user)
            if task.kind in ("prompt", "reply", "followup"):
                text = str(form.get("text", ""))
                try:
                    msg = service.submit_text(s, task, user, text)
                except (service.Conflict, service.Forbidden, service.NotFound):
                    raise
                except service.LabelError as e:
                    s.rollback()
                    return page(request, "task.html", status=400, error=str(e), draft_text=text,
                                **task_context(s, task))
                done = f"Saved message {msg.id}."
            elif task.kind == "review":
                try:
                    quality = int(str(form.get("quality", "")))
                except ValueError:
                    raise service.LabelError("choose a quality from 1 to 5") from None
                flags = {k: form.get(k) in ("on", "true", "1") for k in service.REVIEW_FLAGS}
                service.submit_review(s, task, user, quality, flags, str(form.get("comment", "")))
                done = "Review saved."
            else:
                replies = service.siblings_to_rank(s, task.target_id)
                try:
                    positions = {m.id: int(str(form.get(f"rank_{m.id}", ""))) for m in replies}
                except ValueError:
                    raise service.LabelError("give every reply a position") from None
                if sorted(positions.values()) != list(range(1, len(replies) + 1)):
                    raise service.LabelError("each position from 1 to the number of replies must be used exactly once")
                order = [mid for mid, _ in sorted(positions.items(), key=lambda kv: kv[1])]
                service.submit_ranking(s, task, user, order)
                done = "Ranking saved."
            project_id = task.project_id
        if form.get("then") == "next":
            return RedirectResponse(f"/tasks?message={quote(done)}&project={project_id}", status_code=303)
        return RedirectResponse(f"/tasks?message={quote(done)}", status_code=303)

    @app.post("/tasks/{task_id}/skip")
    def skip(request: Request, task_id: int):
        with db.session() as s:
            user = current_user(s, request)
            service.skip_task(s, service.get_task(s, task_id, user), user)
        return RedirectResponse("/tasks?message=Task+skipped.", status_code=303)

    # ------------------------------------------------------------------------------------------- editor JSON APIs

    def conversation_for(s, task: Task, text: str) -> tuple[list[dict], str | None]:
        ctx_thread = service.thread(s, task.target_id) if task.target_id else []
        messages = [{"role": m.role, "content": m.text} for m in ctx_thread]
        role = "assistant" if task.kind == "reply" else "user"
        if task.kind in ("prompt", "reply", "followup"):
            messages.append({"role": role, "content": text})
        system = (s.get(Tree, ctx_thread[0].tree_id).system_prompt if ctx_thread
                  else s.get(Project, task.project_id).system_prompt)
        return messages, system

    @app.post("/api/tasks/{task_id}/draft")
    def draft(request: Request, task_id: int):
        with db.session() as s:
            user = current_user(s, request)
            task = service.get_task(s, task_id, user)
            if task.kind != "reply" or task.status != "open":
                raise service.Conflict("drafts are only for open reply tasks")
            messages, system = conversation_for(s, task, "")
            endpoint = drafts.endpoint_for(s.get(Project, task.project_id))
        messages = [m for m in messages if m["content"]]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        model, text = drafts.draft_reply(endpoint, messages)  # outside any transaction: the network can be slow
        with db.session() as s:
            user = current_user(s, request)
            service.store_draft(s, task_id, user, model, text)
        return {"model": model, "text": text}

    @app.post("/api/preview")
    def preview_api(request: Request, body: dict = Depends(json_body)):
        from ..conversation import ValidationError
        from .preview import preview

        text = str(body.get("text", ""))
        with db.session() as s:
            user = current_user(s, request)
            task = service.get_task(s, int(body.get("task_id", 0)), user)
            messages, system = conversation_for(s, task, text)
            project = s.get(Project, task.project_id)
        try:
            return preview(project, messages, system)
        except ValidationError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    # --------------------------------------------------------------------------------------------------- messages

    @app.get("/messages/{message_id}", response_class=HTMLResponse)
    def message_page(request: Request, message_id: int):
        with db.session() as s:
            current_user(s, request)
            msg = s.get(Message, message_id)
            if msg is None:
                raise service.NotFound(f"no message {message_id}")
            return page(request, "message.html", message=msg, thread=service.thread(s, message_id),
                        children=list(s.scalars(select(Message).where(Message.parent_id == message_id))))

    @app.get("/messages/{message_id}/review")
    def review_message_link(message_id: int):
        """Old links land on the message page; opening a review task is a POST (a GET never changes anything)."""
        return RedirectResponse(f"/messages/{message_id}", status_code=303)

    @app.post("/messages/{message_id}/review")
    def review_message(request: Request, message_id: int):
        with db.session() as s:
            user = current_user(s, request)
            task_id = service.review_task_for(s, user, message_id).id
        return RedirectResponse(f"/tasks/{task_id}", status_code=303)

    @app.get("/messages/{message_id}/edit", response_class=HTMLResponse)
    def edit_form(request: Request, message_id: int):
        with db.session() as s:
            user = current_user(s, request)
            msg = s.get(Message, message_id)
            if msg is None or msg.deleted:
                raise service.NotFound(f"no message {message_id}")
            if msg.author_id != user.id and user.role != "admin":
                raise service.Forbidden("only the author or an admin can edit a message")
            return page(request, "edit.html", message=msg, text=msg.text, version=msg.version)

    @app.post("/messages/{message_id}/edit")
    def edit_submit(request: Request, message_id: int, form: FormData = Depends(form_data)):
        text = str(form.get("text", ""))
        try:
            base = int(str(form.get("version", "")))
        except ValueError:
            raise service.LabelError("the form has no version number; reload the page") from None
        with db.session() as s:
            user = current_user(s, request)
            try:
                service.edit_message(s, message_id, user, text, base)
            except service.Conflict as e:
                s.rollback()
                msg = s.get(Message, message_id)
                return page(request, "edit.html", status=409, message=msg, text=text, version=msg.version,
                            conflict=str(e), theirs=msg.text)
        return RedirectResponse(f"/messages/{message_id}", status_code=303)

    @app.get("/projects/{project_id}/instructions", response_class=HTMLResponse)
    def instructions_page(request: Request, project_id: int, version: int | None = None):
        with db.session() as s:
            current_user(s, request)
            project = service.get_project(s, project_id)
            versions = service.instruction_versions(s, project_id)
            shown = next((v for v in versions if v.version == version), versions[0])
            return page(request, "instructions.html", project=project, versions=versions, shown=shown)

    # ------------------------------------------------------------------------------------------------------ admin

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request, message: str | None = None):
        with db.session() as s:
            current_user(s, request, ("admin",))
            projects = list(s.scalars(select(Project).order_by(Project.name)))
            progress = {p.id: service.project_progress(s, p) for p in projects}
            users = list(s.scalars(select(User).order_by(User.name)))
            return page(request, "admin.html", projects=projects, progress=progress, stats=service.labeler_stats(s),
                        users=users, roles=ROLES, notice=message)

    @app.post("/admin/projects")
    def admin_create_project(request: Request, form: FormData = Depends(form_data)):

        def number(key, default):
            try:
                return int(str(form.get(key) or default))
            except ValueError:
                raise service.LabelError(f"{key} must be a whole number") from None

        with db.session() as s:
            user = current_user(s, request, ("admin",))
            project = service.create_project(
                s, str(form.get("name", "")), creator=user, protocol=str(form.get("protocol") or "chatml"),
                tokenizer_path=str(form.get("tokenizer_path") or "") or None,
                system_prompt=str(form.get("system_prompt") or "") or None,
                draft_base_url=str(form.get("draft_base_url") or "") or None,
                draft_model=str(form.get("draft_model") or "") or None,
                replies_per_prompt=number("replies_per_prompt", 2), reviews_per_message=number("reviews_per_message", 1),
                rankings_per_prompt=number("rankings_per_prompt", 1), max_depth=number("max_depth", 3))
            pid = project.id
        return RedirectResponse(f"/admin/projects/{pid}", status_code=303)

    @app.get("/admin/projects/{project_id}", response_class=HTMLResponse)
    def admin_project(request: Request, project_id: int, message: str | None = None):
        with db.session() as s:
            current_user(s, request, ("admin",))
            project = service.get_project(s, project_id)
            versions = service.instruction_versions(s, project_id)
            return page(request, "admin_project.html", project=project, versions=versions, current=versions[0],
                        editor_text=versions[0].markdown, progress=service.project_progress(s, project), notice=message,
                        trees=service.latest_trees(s, project_id))

    @app.post("/admin/projects/{project_id}/instructions")
    def admin_save_instructions(request: Request, project_id: int, form: FormData = Depends(form_data)):
        text = str(form.get("markdown", ""))
        with db.session() as s:
            user = current_user(s, request, ("admin",))
            project = service.get_project(s, project_id)
            try:
                base = int(str(form.get("base_version", "")))
                row = service.save_instructions(s, project_id, text, author=user, base_version=base,
                                                note=str(form.get("note") or "") or None)
            except (service.Conflict, ValueError) as e:
                s.rollback()
                versions = service.instruction_versions(s, project_id)
                return page(request, "admin_project.html", status=409, project=project, versions=versions,
                            current=versions[0], editor_text=text, conflict=str(e),
                            progress=service.project_progress(s, project))
            version = row.version
        return RedirectResponse(f"/admin/projects/{project_id}?message={quote(f'Saved version {version}.')}",
                                status_code=303)

    @app.post("/admin/projects/{project_id}/settings")
    def admin_project_settings(request: Request, project_id: int, form: FormData = Depends(form_data)):
        settings = {}
        for key in service.PROJECT_SETTINGS:
            if key in form:
                value = str(form.get(key))
                if key in ("replies_per_prompt", "reviews_per_message", "rankings_per_prompt", "max_depth"):
                    try:
                        settings[key] = int(value)
                    except ValueError:
                        raise service.LabelError(f"{key.replace('_', ' ')} must be a whole number") from None
                else:
                    settings[key] = value
        with db.session() as s:
            user = current_user(s, request, ("admin",))
            service.update_project(s, project_id, user, **settings)
        return RedirectResponse(f"/admin/projects/{project_id}?message=Settings+saved.", status_code=303)

    @app.post("/admin/users")
    def admin_add_user(request: Request, form: FormData = Depends(form_data)):
        with db.session() as s:
            current_user(s, request, ("admin",))
            try:
                auth.add_user(s, str(form.get("username", "")), str(form.get("role", "")), str(form.get("password", "")))
            except auth.AuthError as e:
                raise service.LabelError(str(e)) from None
        return RedirectResponse("/admin?message=User+added.", status_code=303)

    @app.post("/admin/messages/{message_id}/withdraw")
    def admin_withdraw(request: Request, message_id: int):
        with db.session() as s:
            user = current_user(s, request, ("admin",))
            service.mark_deleted(s, message_id, user)
        return RedirectResponse(f"/messages/{message_id}", status_code=303)

    @app.get("/admin/projects/{project_id}/export")
    def admin_export(request: Request, project_id: int, threads: str = "best"):
        with db.session() as s:
            current_user(s, request, ("admin",))
            project = service.get_project(s, project_id)
            if threads not in ("best", "all"):
                raise service.LabelError("threads must be best or all")
            convs = transfer.export_project(s, project, threads)
        body = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in convs)
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{project.id}-{threads}.jsonl"'})

    return app
