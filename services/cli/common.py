"""What every command group shares: the consoles, --json output, tables, errors and the store."""

from __future__ import annotations

import functools
import getpass
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.text import has_control, terminal_safe

# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of a table.")


def die(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@functools.cache
def ensure_store() -> None:
    """Upgrade the schema once per process before a command touches the store."""
    from shared.db import migrate

    migrate()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return str(obj)


def emit(doc: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        print(json.dumps(doc, default=_jsonable, indent=2))
    elif table is not None:
        out.print(table)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:  # stored text is shown escaped: neither rich markup nor terminal control codes act
        t.add_row(*["" if v is None else escape(terminal_safe(str(v))) for v in r])
    return t


def fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


MAX_ACTOR = 100  # AuditEvent.actor's column


def actor_or_user(actor: str | None) -> str:
    if actor is not None and (not actor.strip() or len(actor) > MAX_ACTOR or has_control(actor)):
        die(f"--actor must be 1 to {MAX_ACTOR} characters without control characters")
    return actor or f"cli:{getpass.getuser()}"


def printable_reason(reason: str) -> str:
    """An operator's --reason, refused with a clear message if it holds control characters."""
    if has_control(reason):
        die("--reason must not contain NUL or other control characters")
    return reason
