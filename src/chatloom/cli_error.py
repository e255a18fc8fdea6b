"""The one way every `chatloom` command reports a user's mistake: `error: <message>` on stderr, then exit code 2.

Never wrapped to the terminal's width (a file path or a `file:line: field` stays one string a user can copy and a
script can match) and never read as rich markup (a message quoting a user's `[bold]` prints it as typed).
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, soft_wrap=True)


def fail(message: object, code: int = 2) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False)
    raise typer.Exit(code)
