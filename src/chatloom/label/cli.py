"""`chatloom label ...`: serve the labeling app, add accounts, import seeds, export Conversation records."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from ..cli_error import fail

app = typer.Typer(help="Labeling app: people write and review conversations, with LLM drafts and provenance.",
                  no_args_is_help=True)
user_app = typer.Typer(help="Accounts.", no_args_is_help=True)
app.add_typer(user_app, name="user")
console = Console()
err = Console(stderr=True)
DB_HELP = "Database URL: sqlite:///label.db (a file) or postgresql://user:pass@host/db."


def _progress():
    """A transient progress bar on stderr: count, rate (items/s) and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(show_speed=True), TimeRemainingColumn(), console=err, transient=True)


def _database(url: str):
    from .db import Database

    try:
        return Database(url)
    except Exception as e:  # a bad URL or an unreachable server: say which
        fail(f"cannot open database {url}: {e}")


def server_config(app, host: str, port: int, forwarded_allow_ips: str | None = None, **kw):
    """uvicorn's config for the app: `X-Forwarded-For` is believed only from the proxies the operator names (uvicorn
    would otherwise trust it from 127.0.0.1, and a forged address per try would dodge the login limiter)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, proxy_headers=bool(forwarded_allow_ips),
                          forwarded_allow_ips=forwarded_allow_ips or "", **kw)


@app.command()
def serve(db: str = typer.Option("sqlite:///label.db", "--db", help=DB_HELP),
          host: str = typer.Option("127.0.0.1", "--host"), port: int = typer.Option(8080, "--port"),
          secure_cookies: bool = typer.Option(False, "--secure-cookies", help="Mark cookies Secure (behind HTTPS)."),
          draft_endpoint: list[str] = typer.Option([], "--draft-endpoint", help=(
              "NAME=BASE_URL of an OpenAI-compatible endpoint projects may draft with (repeatable). Its key comes from "
              "$CHATLOOM_LABEL_DRAFT_KEY_<NAME> or --draft-key, and is only ever sent to that URL.")),
          draft_key: list[str] = typer.Option([], "--draft-key", help=(
              "NAME=KEY for a --draft-endpoint (repeatable; prefer the environment variable: a command line is "
              "visible to other users of the machine).")),
          tokenizer_dir: list[Path] = typer.Option([], "--tokenizer-dir", help=(
              "A folder admins may pick project tokenizers from (repeatable); without one, projects use the bundled "
              "tokenizer.")),
          allow_draft_urls: bool = typer.Option(True, "--allow-draft-urls/--no-draft-urls", help=(
              "Whether admins may type draft URLs of their own (never sent a key). --no-draft-urls: only the "
              "--draft-endpoint names, so the server sends nothing where an admin points it.")),
          forwarded_allow_ips: str = typer.Option(None, "--forwarded-allow-ips", help=(
              "Comma-separated proxy addresses whose X-Forwarded-For is believed (default: none; the client is the TCP "
              "peer)."))):
    """Migrate the database to the newest schema and serve the app."""
    import threading

    import uvicorn

    from .app import create_app
    from .drafts import EndpointConfigError, Endpoints
    from .preview import warm_up

    try:
        endpoints = Endpoints.configure(draft_endpoint, draft_key)
    except EndpointConfigError as e:
        fail(str(e))
    for d in tokenizer_dir:
        if not d.is_dir():
            fail(f"--tokenizer-dir {d}: not a folder")
    database = _database(db)
    threading.Thread(target=warm_up, args=(database,), daemon=True).start()
    console.print(f"chatloom label on http://{host}:{port}/login · database {db}"
                  + (f" · draft endpoints: {', '.join(endpoints.names())}" if len(endpoints) else ""))
    app_ = create_app(database, secure_cookies=secure_cookies, draft_endpoints=endpoints, tokenizer_dirs=tokenizer_dir,
                      allow_draft_urls=allow_draft_urls)
    uvicorn.Server(server_config(app_, host, port, forwarded_allow_ips, log_level="info")).run()


@user_app.command("add")
def user_add(name: str = typer.Argument(...), role: str = typer.Option(..., "--role", help="admin | labeler | reviewer"),
             db: str = typer.Option("sqlite:///label.db", "--db", help=DB_HELP),
             password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin.")):
    """Create an account (the password is asked for, or read from stdin)."""
    from . import auth

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    database = _database(db)
    try:
        with database.session() as s:
            user = auth.add_user(s, name, role, password)
            console.print(f"added {user.role} {user.name!r} (id {user.id})")
    except auth.AuthError as e:
        fail(str(e))


@app.command("import")
def import_(file: Path = typer.Argument(..., help="JSONL/JSON/Parquet conversations or {\"prompt\": ...} lines, or .txt"),
            project: str = typer.Option(..., "--project", "-p", help="Project name (created with default settings if new)."),
            db: str = typer.Option("sqlite:///label.db", "--db", help=DB_HELP),
            skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip invalid records (written to FILE.rejects.jsonl).")):
    """Seed prompts (new trees) or conversations to review."""
    from ..conversation import Rejects, ValidationError
    from . import service, transfer

    database = _database(db)
    rejects = Rejects(file.with_suffix(".rejects.jsonl")) if skip_bad else None
    try:
        with database.session() as s:
            try:
                proj = service.project_by_name(s, project)
            except service.NotFound:
                proj = service.create_project(s, project)
                console.print(f"created project {project!r} (protocol {proj.protocol})")
            with _progress() as bar:
                task = bar.add_task(f"importing {file.name}", total=None)
                report = transfer.import_file(s, proj, file, on_error="skip" if skip_bad else "fail", rejects=rejects,
                                              progress=lambda: bar.advance(task))
    except (ValidationError, FileNotFoundError, service.LabelError) as e:
        fail(str(e))
    console.print(f"imported {report.prompts} prompts and {report.conversations} conversations into {project!r}; "
                  f"{report.duplicates} already there, {report.rejected} rejected"
                  + (f" (see {rejects.path})" if report.rejected and rejects else ""))


@app.command()
def export(project: str = typer.Option(..., "--project", "-p"),
           out: Path = typer.Option(..., "-o", "--out", help="Output .jsonl or .parquet"),
           threads: str = typer.Option("best", "--threads", help="best: the top-ranked path per tree; all: every path"),
           db: str = typer.Option("sqlite:///label.db", "--db", help=DB_HELP)):
    """Conversation records with provenance in meta (authors, draft model, edit distance, instruction versions)."""
    from ..conversation import save
    from . import service, transfer

    if threads not in ("best", "all"):
        fail("--threads must be best or all")
    database = _database(db)
    try:
        with database.session() as s:
            with _progress() as bar:
                task = bar.add_task(f"exporting {project}", total=None)

                def step(total: int) -> None:
                    if total:
                        bar.update(task, total=total)
                    else:
                        bar.advance(task)

                convs = transfer.export_project(s, service.project_by_name(s, project), threads, progress=step)
    except service.LabelError as e:
        fail(str(e))
    if not convs:
        with database.session() as s:
            reason = transfer.why_empty(s, service.project_by_name(s, project), threads)
        fail(f"nothing written to {out}: {reason}")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = save(convs, out)
    console.print(f"wrote {n} conversations ({threads} threads) to {out}")
