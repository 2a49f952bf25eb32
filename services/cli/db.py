"""`medqa db`: the database schema."""

from __future__ import annotations

import typer

from services.cli.common import ensure_store, out
from shared.settings import get_settings, redacted_url

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")

@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest migration."""
    ensure_store()
    out.print(f"schema at head on {redacted_url(get_settings().database_url)}")
