"""Labeling app rules that must hold in the database itself: one current review per reviewer and message, one current
ranking per ranker and prompt (service check + partial unique index), reviews opened by POST only, and migration 0002
keeping reviews that were already duplicated (the newest counts, the earlier are marked superseded; with a downgrade)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from chatloom.label import service, transfer
from chatloom.label.app import create_app
from chatloom.label.db import current_revision, downgrade, head_revision, migrate
from chatloom.label.models import Ranking, Review, Task

from .label_live import PW, database_at, login, post_form, user

pytest_plugins = ["tests.label_live"]  # the database fixtures: db_url, db, people, cheap hashing


def new_project(db, **kw):
    with db.session() as s:
        return service.create_project(s, "p", creator=user(s, "ada"), **kw).id


def write(db, name, pid, kind, text_):
    with db.session() as s:
        u = user(s, name)
        task = service.next_task(s, service.get_project(s, pid), u, kind)
        return service.submit_text(s, task, u, text_).id


def test_a_reviewer_reviews_a_message_once(db, people):
    pid = new_project(db)
    mid = write(db, "lee", pid, "prompt", "What is 2+2?")
    with db.session() as s:
        rev = user(s, "rev")
        task = service.review_task_for(s, rev, mid)
        service.submit_review(s, task, rev, 4, {"helpful": True})
    with db.session() as s, pytest.raises(service.Conflict, match="already reviewed"):
        service.review_task_for(s, user(s, "rev"), mid)
    with db.session() as s:  # a task that slipped through (made before the rule, or forged) cannot save a second review
        rev = user(s, "rev")
        forged = Task(project_id=pid, kind="review", user_id=rev.id, target_id=mid, instruction_version=1)
        s.add(forged)
        s.flush()
        forged_id = forged.id
    with db.session() as s, pytest.raises(service.Conflict, match="already reviewed"):
        service.submit_review(s, s.get(Task, forged_id), user(s, "rev"), 1, {})
    with db.session() as s:
        assert s.get(Task, forged_id).status == "open"  # refused as a whole: the task was not closed either
        service.skip_task(s, s.get(Task, forged_id), user(s, "rev"))
        assert service.next_task(s, service.get_project(s, pid), user(s, "rev"), "review") is None
    # and the database itself refuses a second current row, whatever code writes it
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Review(message_id=mid, reviewer_id=people["rev"], quality=1))
        s.flush()
    with db.session() as s:  # another reviewer still can
        kim = user(s, "kim")
        service.submit_review(s, service.review_task_for(s, kim, mid), kim, 2, {})
        assert len(s.scalars(select(Review)).all()) == 2


def test_a_ranker_ranks_a_prompt_once(db, people):
    pid = new_project(db, rankings_per_prompt=3)
    prompt = write(db, "lee", pid, "prompt", "Name a colour.")
    write(db, "max", pid, "reply", "Blue.")
    write(db, "kim", pid, "reply", "Green.")
    with db.session() as s:
        rev = user(s, "rev")
        task = service.next_task(s, service.get_project(s, pid), rev, "rank")
        order = [m.id for m in service.siblings_to_rank(s, prompt)]
        service.submit_ranking(s, task, rev, order)
        again = service.next_task(s, service.get_project(s, pid), rev, "rank")
        assert again is None  # the queue does not offer it again
        forged = Task(project_id=pid, kind="rank", user_id=rev.id, target_id=prompt, instruction_version=1)
        s.add(forged)
        s.flush()
        forged_id = forged.id
    with db.session() as s, pytest.raises(service.Conflict, match="already ranked"):
        service.submit_ranking(s, s.get(Task, forged_id), user(s, "rev"), order[::-1])
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Ranking(parent_id=prompt, ranker_id=people["rev"], order=order[::-1]))
        s.flush()


def test_opening_a_review_is_a_post_with_csrf(db, people):
    pid = new_project(db)
    mid = write(db, "lee", pid, "prompt", "Tell me a joke.")
    app = create_app(db)
    kim = login(TestClient(app, follow_redirects=False), "kim", PW)
    r = kim.get(f"/messages/{mid}/review")  # an old link: shows the message, opens nothing
    assert r.status_code == 303 and r.headers["location"] == f"/messages/{mid}"
    with db.session() as s:
        assert s.scalars(select(Task).where(Task.kind == "review")).all() == []
    assert kim.post(f"/messages/{mid}/review").status_code == 403  # no CSRF token
    page = kim.get(f"/messages/{mid}")
    assert f'action="/messages/{mid}/review"' in page.text and 'id="review-this"' in page.text
    r = post_form(kim, f"/messages/{mid}", f"/messages/{mid}/review", {})
    assert r.status_code == 303
    task_url = r.headers["location"]
    assert post_form(kim, task_url, task_url, {"quality": "3"}).status_code == 303
    again = post_form(kim, f"/messages/{mid}", f"/messages/{mid}/review", {})
    assert again.status_code == 409 and "already reviewed" in again.text
    with db.session() as s:
        assert len(s.scalars(select(Review)).all()) == 1


def test_migration_keeps_duplicated_reviews_and_the_newest_counts(db_url):
    database = database_at(db_url, "0001", ("user", "assistant", "assistant"))  # the state before the migration under test
    with database.engine.begin() as conn:  # the same review saved 3 times, as before the rule
        rev = conn.execute(text("SELECT id FROM users WHERE name = 'rev'")).scalar()
        kim = conn.execute(text("SELECT id FROM users WHERE name = 'kim'")).scalar()
        for rid, who, quality in ((1, rev, 1), (2, rev, 2), (3, kim, 5), (4, rev, 4)):
            conn.execute(text("INSERT INTO reviews (id, message_id, reviewer_id, quality, helpful, truthful, harmless, "
                              "spam, pii, should_have_refused, time_spent_s, created_at, deleted) VALUES (:id, 2, :u, "
                              ":q, false, false, false, false, false, false, 0, '2026-01-01', false)"),
                         {"id": rid, "u": who, "q": quality})
        for rid, order in ((1, "[2, 3]"), (2, "[3, 2]")):
            conn.execute(text("INSERT INTO rankings (id, parent_id, ranker_id, \"order\", time_spent_s, created_at, "
                              "deleted) VALUES (:id, 1, :u, :o, 0, '2026-01-01', false)"),
                         {"id": rid, "u": rev, "o": order})
    migrate(database.engine)
    assert current_revision(database.engine) == head_revision()
    with database.session() as s:
        flags = dict(s.execute(select(Review.id, Review.superseded)).all())
        assert flags == {1: True, 2: True, 3: False, 4: False}  # all kept, rev's newest (4) and kim's count
        assert dict(s.execute(select(Ranking.id, Ranking.superseded)).all()) == {1: True, 2: False}
        [conv] = transfer.export_project(s, service.get_project(s, 1), "best")
        by_id = {m["id"]: m for m in conv.meta["messages"]}
        assert by_id[3]["rank_score"] == 1.0  # the newer ranking (3 before 2) decides
        assert conv.messages[-1].content == "m3"
        stats = {r["user"]: r for r in service.labeler_stats(s)}
        assert stats["rev"]["reviews"] == 1 and stats["rev"]["rankings"] == 1
        rev_user = user(s, "rev")
        with pytest.raises(service.Conflict):
            service.review_task_for(s, rev_user, 2)
    with database.session() as s:
        full = transfer.export_project(s, service.get_project(s, 1), "all")
        review_of_2 = next(m for c in full for m in c.meta["messages"] if m["id"] == 2)["reviews"]
        assert review_of_2 == {**review_of_2, "n": 2, "quality": 4.5}  # (4 + 5) / 2: the superseded 1 and 2 left out
    downgrade(database.engine, "0001")  # the downgrade drops the rule, keeps the rows
    assert "superseded" not in {c["name"] for c in inspect(database.engine).get_columns("reviews")}
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reviews")).scalar() == 4
    migrate(database.engine)
    with database.session() as s:
        assert dict(s.execute(select(Review.id, Review.superseded)).all()) == {1: True, 2: True, 3: False, 4: False}
    database.dispose()


def test_a_planned_slot_taken_meanwhile_is_rechecked_not_overbooked(db, people):
    """The queue looks over the project in a reading transaction and writes in a second one: a slot planned by two
    people at once goes to the first; the second gets the next free slot (or nothing), never a second reply slot."""
    pid = new_project(db, replies_per_prompt=1)
    first = write(db, "lee", pid, "prompt", "first question")
    second = write(db, "lee", pid, "prompt", "second question")
    with db.session(readonly=True) as s:
        plan_max = service.plan_next(s, pid, user(s, "max"), "reply")
        plan_kim = service.plan_next(s, pid, user(s, "kim"), "reply")
    assert plan_max.slots[0] == plan_kim.slots[0] == ("reply", first)  # both would take the same slot
    with db.session() as s:
        assert service.take_next(s, pid, user(s, "max"), "reply", plan_max).target_id == first
    with db.session() as s:
        assert service.take_next(s, pid, user(s, "kim"), "reply", plan_kim).target_id == second  # re-checked
    with db.session(readonly=True) as s:
        plan_ada = service.plan_next(s, pid, user(s, "ada"), "reply")
        assert plan_ada.slots == []  # both slots are reserved
        again = service.plan_next(s, pid, user(s, "max"), "reply")
        assert again.existing is not None and again.slots == []  # a double click finds the open task
    if db.engine.dialect.name == "sqlite":  # a reading session cannot write (its connections are query_only)
        with pytest.raises(Exception, match="readonly|attempt to write"), db.session(readonly=True) as s:
            s.add(Task(project_id=pid, kind="prompt", user_id=people["ada"], instruction_version=1))
            s.flush()
