"""The task queue and the task pages: take the next task of a project (a POST), show it, submit or skip it."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .. import service
from ..web import AnyUser, Form, Id, form_int, form_text, page, redirect, state

router = APIRouter()


@router.get("/")
def home():
    return redirect("/tasks")


@router.get("/tasks", response_class=HTMLResponse)
def tasks_page(request: Request, who: AnyUser, message: str | None = None):
    with state(request).db.session(readonly=True) as s:
        return page(request, "tasks.html", notice=message[:500] if message else None, **service.queue_view(s, who))


@router.post("/projects/{project_id}/next")
def take_next(request: Request, project_id: Id, who: AnyUser, form: Form):
    kind = form_text(form, "kind") or None
    db = state(request).db
    with db.session(readonly=True) as s:  # the look over the whole project: no writer lock held for it
        plan = service.plan_next(s, project_id, who, kind)
    task_id, name = plan.existing, plan.project_name
    if task_id is None and plan.slots:
        with db.session() as s:  # the write: re-check the chosen slot alone, take it
            task = service.take_next(s, project_id, who, kind, plan)
            task_id = task.id if task else None
    if task_id is None:
        what = service.KIND_TITLES.get(kind, "work").lower() if kind else "work"
        return redirect(f"/tasks?message={quote(f'Nothing to do right now ({what}) in {name}.')}")
    return redirect(f"/tasks/{task_id}")


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: Id, who: AnyUser):
    with state(request).db.session(readonly=True) as s:
        return page(request, "task.html", **service.open_task_view(s, task_id, who))


@router.post("/tasks/{task_id}")
def submit_task(request: Request, task_id: Id, who: AnyUser, form: Form):
    with state(request).db.session() as s:
        task = service.get_task(s, task_id, who)
        if task.kind in ("prompt", "reply", "followup"):
            text = form_text(form, "text")
            try:
                msg = service.submit_text(s, task, who, text)
            except (service.Conflict, service.Forbidden, service.NotFound):
                raise
            except service.LabelError as e:  # keep what they wrote on the page
                s.rollback()
                return page(request, "task.html", status=400, error=str(e), draft_text=text,
                            **service.task_view(s, service.get_task(s, task_id, who)))
            done = f"Saved message {msg.id}."
        elif task.kind == "review":
            quality = form_int(form, "quality", what="the quality (choose 1 to 5)")
            flags = {k: form_text(form, k) in ("on", "true", "1") for k in service.REVIEW_FLAGS}
            service.submit_review(s, task, who, quality, flags, form_text(form, "comment")[:service.MAX_TEXT])
            done = "Review saved."
        else:
            positions = {m.id: form_int(form, f"rank_{m.id}", what="every position")
                         for m in service.siblings_to_rank(s, task.target_id)}
            service.submit_positions(s, task, who, positions)
            done = "Ranking saved."
    return redirect(f"/tasks?message={quote(done)}")


@router.post("/tasks/{task_id}/skip")
def skip(request: Request, task_id: Id, who: AnyUser):
    with state(request).db.session() as s:
        service.skip_task(s, service.get_task(s, task_id, who), who)
    return redirect("/tasks?message=Task+skipped.")
