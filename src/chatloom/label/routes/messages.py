"""Messages: a message with its thread, edits with optimistic locking, opening a review of a message picked by hand
(a POST: a GET never creates anything), and the instructions pages every role may read."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .. import service
from ..web import MAX_ID, AnyUser, Form, Id, form_int, form_text, page, redirect, state

router = APIRouter()


@router.get("/messages/{message_id}", response_class=HTMLResponse)
def message_page(request: Request, message_id: Id, who: AnyUser):
    with state(request).db.session(readonly=True) as s:
        return page(request, "message.html", **service.message_view(s, message_id))


@router.get("/messages/{message_id}/review")
def review_message_link(message_id: Id, who: AnyUser):
    """Old links land on the message page; opening a review task is a POST."""
    return redirect(f"/messages/{message_id}")


@router.post("/messages/{message_id}/review")
def review_message(request: Request, message_id: Id, who: AnyUser):
    with state(request).db.session() as s:
        task_id = service.review_task_for(s, who, message_id).id
    return redirect(f"/tasks/{task_id}")


@router.get("/messages/{message_id}/edit", response_class=HTMLResponse)
def edit_form(request: Request, message_id: Id, who: AnyUser):
    with state(request).db.session(readonly=True) as s:
        msg = service.editable_message(s, message_id, who)
        return page(request, "edit.html", message=msg, text=msg.text, reasoning=msg.reasoning_content,
                    version=msg.version)


@router.post("/messages/{message_id}/edit")
def edit_submit(request: Request, message_id: Id, who: AnyUser, form: Form):
    text = form_text(form, "text")
    reasoning = form_text(form, "reasoning") if "reasoning" in form else None  # absent: the reasoning stays as it is
    base = form_int(form, "version", what="the form's version number (reload the page)")
    with state(request).db.session() as s:
        try:
            service.edit_message(s, message_id, who, text, base, reasoning=reasoning)
        except service.Conflict as e:
            s.rollback()
            msg = service.editable_message(s, message_id, who)
            return page(request, "edit.html", status=409, message=msg, text=text, version=msg.version,
                        reasoning=reasoning if reasoning is not None else msg.reasoning_content,
                        conflict=str(e), theirs=msg.text, theirs_reasoning=msg.reasoning_content)
    return redirect(f"/messages/{message_id}")


@router.get("/projects/{project_id}/instructions", response_class=HTMLResponse)
def instructions_page(request: Request, project_id: Id, who: AnyUser, version: int | None = None):
    if version is not None and not 1 <= version <= MAX_ID:
        version = None
    with state(request).db.session(readonly=True) as s:
        return page(request, "instructions.html", **service.instructions_view(s, project_id, version))
