"""Admin pages: projects (create, settings checked against what the operator allows), versioned instructions,
accounts, withdrawing messages, export."""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from .. import auth, service, transfer
from ..models import ROLES
from ..web import Admin, Form, Id, form_int, form_text, page, redirect, state

router = APIRouter()
COUNTS = ("replies_per_prompt", "reviews_per_message", "rankings_per_prompt", "max_depth")


def settings_from(form) -> dict:
    out = {}
    for key in service.PROJECT_SETTINGS:
        if key in form:
            out[key] = form_int(form, key) if key in COUNTS else form_text(form, key)
    return out


def admin_context(request: Request) -> dict:
    app = state(request)
    return {"roles": ROLES, "endpoints": app.draft_endpoints.public(), "allow_draft_urls": app.allow_draft_urls,
            "tokenizer_dirs": [str(d) for d in app.tokenizer_dirs]}


@router.get("/admin", response_class=HTMLResponse)
def admin(request: Request, who: Admin, message: str | None = None):
    with state(request).db.session(readonly=True) as s:
        return page(request, "admin.html", notice=message[:500] if message else None, **admin_context(request),
                    **service.admin_view(s))


@router.post("/admin/projects")
def create_project(request: Request, who: Admin, form: Form):
    app = state(request)
    with app.db.session() as s:
        project = service.create_project(s, form_text(form, "name"), creator=who, policy=app.settings_policy(),
                                         **settings_from(form))
        pid = project.id
    return redirect(f"/admin/projects/{pid}")


@router.get("/admin/projects/{project_id}", response_class=HTMLResponse)
def project_page(request: Request, project_id: Id, who: Admin, message: str | None = None):
    with state(request).db.session(readonly=True) as s:
        return page(request, "admin_project.html", notice=message[:500] if message else None,
                    **admin_context(request), **service.project_admin_view(s, project_id))


@router.post("/admin/projects/{project_id}/instructions")
def save_instructions(request: Request, project_id: Id, who: Admin, form: Form):
    text = form_text(form, "markdown")
    base = form_int(form, "base_version", what="the editor's version number (reload the page)")
    with state(request).db.session() as s:
        service.get_project(s, project_id)
        try:
            row = service.save_instructions(s, project_id, text, author=who, base_version=base,
                                            note=form_text(form, "note")[:500] or None)
        except service.Conflict as e:
            s.rollback()
            view = service.project_admin_view(s, project_id)
            return page(request, "admin_project.html", status=409, **admin_context(request),
                        **{**view, "editor_text": text}, conflict=str(e))
        version = row.version
    return redirect(f"/admin/projects/{project_id}?message={quote(f'Saved version {version}.')}")


@router.post("/admin/projects/{project_id}/settings")
def project_settings(request: Request, project_id: Id, who: Admin, form: Form):
    app = state(request)
    settings = settings_from(form)
    with app.db.session() as s:
        try:
            service.update_project(s, project_id, who, policy=app.settings_policy(), **settings)
        except (service.Forbidden, service.NotFound):
            raise
        except service.LabelError as e:  # show the form again, open, with the reason
            s.rollback()
            return page(request, "admin_project.html", status=400, **admin_context(request),
                        **service.project_admin_view(s, project_id), settings_error=str(e), settings_open=True)
    return redirect(f"/admin/projects/{project_id}?message=Settings+saved.")


@router.post("/admin/users")
def add_user(request: Request, who: Admin, form: Form):
    with state(request).db.session() as s:
        try:
            auth.add_user(s, form_text(form, "username"), form_text(form, "role"), form_text(form, "password"))
        except auth.AuthError as e:
            raise service.LabelError(str(e)) from None
    return redirect("/admin?message=User+added.")


@router.post("/admin/messages/{message_id}/withdraw")
def withdraw(request: Request, message_id: Id, who: Admin):
    with state(request).db.session() as s:
        service.mark_deleted(s, message_id, who)
    return redirect(f"/messages/{message_id}")


@router.get("/admin/projects/{project_id}/export")
def export(request: Request, project_id: Id, who: Admin, threads: str = "best"):
    if threads not in ("best", "all"):
        raise service.LabelError("threads must be best or all")
    with state(request).db.session(readonly=True) as s:
        project = service.get_project(s, project_id)
        convs = transfer.export_project(s, project, threads)
        if not convs:
            raise service.Conflict(transfer.why_empty(s, project, threads))
    body = "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in convs)
    return Response(body, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{project_id}-{threads}.jsonl"'})
