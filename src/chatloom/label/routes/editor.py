"""The reply editor's JSON endpoints: a draft from the project's draft endpoint (the network call runs outside any
database transaction) and the live token preview. Errors are `{"error": ...}` with a 4xx status (502 when the draft
endpoint fails)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .. import drafts, service
from ..preview import PreviewUnavailable, preview
from ..web import MAX_ID, AnyUser, Id, JsonBody, state

router = APIRouter(prefix="/api")


def task_id_of(body: dict) -> int:
    value = body.get("task_id")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise service.LabelError("task_id must be the id of one of your tasks")
    return value


@router.post("/tasks/{task_id}/draft")
def draft(request: Request, task_id: Id, who: AnyUser):
    app = state(request)
    with app.db.session(readonly=True) as s:
        project, messages = service.draft_request(s, task_id, who)
        endpoint = drafts.endpoint_for(project, app.draft_endpoints)
    if endpoint.name is None and not app.allow_draft_urls:  # a URL typed before the operator turned them off
        raise drafts.DraftError("this server only drafts with the endpoints its operator configured; pick one in the "
                                "project's settings")
    model, text = drafts.draft_reply(endpoint, messages)  # outside any transaction: the network can be slow
    with app.db.session() as s:
        service.store_draft(s, task_id, who, model, text)
    return {"model": model, "text": text}


@router.post("/preview")
def preview_api(request: Request, who: AnyUser, body: JsonBody):
    from ...conversation import ValidationError

    text = body.get("text", "")
    if not isinstance(text, str):
        raise service.LabelError("text must be a string")
    with state(request).db.session(readonly=True) as s:
        task = service.get_task(s, task_id_of(body), who)
        messages, system = service.conversation_for(s, task, text)
        project = service.get_project(s, task.project_id)
    try:
        return preview(project, messages, system)
    except ValidationError as e:
        raise service.LabelError(str(e)) from None
    except PreviewUnavailable as e:
        raise service.Conflict(str(e)) from None
