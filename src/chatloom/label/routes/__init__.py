"""The labeling app's routes, one router per area: `login` (sessions), `tasks` (the queue and task pages), `messages`
(threads, edits, reviews picked by hand), `editor` (the reply editor's JSON: drafts, token preview), `admin` (projects,
instructions, accounts, export). Role checks are dependencies (`web.AnyUser`, `web.Admin`); handlers parse the
request, call `service` in one short transaction and render."""

from . import admin, editor, login, messages, tasks

ROUTERS = (login.router, tasks.router, messages.router, editor.router, admin.router)
