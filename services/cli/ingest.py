"""`medqa ingest`: import PubMed XML files and poll PubMed through E-utilities; cursors and counts."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from sqlmodel import col, func, select

from services.cli.common import JsonOpt, die, emit, ensure_store, err, out, table
from shared.queries import is_live

ingest_app = typer.Typer(no_args_is_help=True, help="Import PubMed XML into the store.")

@ingest_app.command("files")
def ingest_files(path: Path = typer.Argument(..., help="An XML file or a folder of NLM baseline/update XML"),
                 as_json: bool = JsonOpt) -> None:
    """Import PubMed XML files (plain or .gz); one transaction per file. Signals the trainer.

    Under MEDQA_EAGER the training this import starts runs in this process, after the import's
    summary. Ctrl-C keeps every file imported so far; a run it stops resumes with `medqa sweep`."""
    from services.ingest.store import IngestResult, ingest_file, pubmed_files
    from shared.pipeline import held_events, publish_held
    from shared.settings import get_settings

    ensure_store()
    try:
        files = pubmed_files(path)
    except FileNotFoundError as exc:
        die(str(exc))
    from rich.progress import Progress

    eager = get_settings().eager  # with workers, each file's event goes out as it commits
    result = IngestResult()
    holding: AbstractContextManager[list] = held_events() if eager else nullcontext([])
    with holding as held, Progress(console=err, disable=as_json, transient=True) as bar:
        task = bar.add_task("ingesting", total=len(files))
        for done, file in enumerate(files):
            try:
                result.add(ingest_file(file))
            except KeyboardInterrupt:
                bar.stop()
                die(f"interrupted: {done} of {len(files)} files imported and kept; {file.name} was rolled "
                    "back. Run the same command again to go on (imported files are skipped).", code=130)
            bar.advance(task)
    _print_ingest_summary(result, as_json)
    if held:
        err.print("MEDQA_EAGER: the training trigger and the drift check run in this process now (a run they "
                  "start trains here); Ctrl-C stops it, and `medqa sweep` resumes a stopped run from its checkpoint.",
                  highlight=False)
    try:
        publish_held(held)
    except KeyboardInterrupt:
        die("interrupted: the import is kept; a training run it started is queued again and resumes from its "
            "checkpoint with `medqa sweep`.", code=130)
    if result.errors:
        raise typer.Exit(1)


def _print_ingest_summary(result: Any, as_json: bool) -> None:
    emit(vars(result), as_json, table(
        "ingest", ["files", "skipped", "stored", "updated", "duplicates", "filtered", "deleted", "retracted", "mined"],
        [[result.files, result.files_skipped, result.stored, result.updated, result.duplicates, result.filtered,
          result.deleted, result.retracted, result.mined]]))
    for e in result.errors:
        err.print(f"[red]bad file[/] {escape(e)}", highlight=False)


@ingest_app.command("status")
def ingest_status(as_json: bool = JsonOpt) -> None:
    """Watermarks, counts of stored / with abstract / deleted / retracted / skipped, last errors."""
    from shared.db import session_scope
    from shared.tables import Abstract, IngestCursor, MinedQA

    ensure_store()

    def count(*where: Any) -> int:
        return session.exec(select(func.count()).select_from(Abstract).where(*where)).one()

    with session_scope() as session:
        cursors = [c.model_dump() for c in session.exec(select(IngestCursor).order_by(col(IngestCursor.id)))]
        counts = {
            "stored": count(),
            "with_abstract": count(func.length(Abstract.text) > 0),
            "deleted": count(col(Abstract.deleted).is_(True)),
            "retracted": count(col(Abstract.retracted).is_(True)),
            "untrained": count(col(Abstract.train_run_id).is_(None), is_live()),
            "mined_qa": session.exec(select(func.count()).select_from(MinedQA)).one(),
            "duplicates_skipped": sum(c["duplicates"] for c in cursors),
            "filtered": sum(c["filtered"] for c in cursors),
            "bad_documents": sum(c["errors"] for c in cursors),
        }
    errors = [c for c in cursors if c["last_error"]]
    emit({"counts": counts, "cursors": cursors, "last_error": errors[-1]["last_error"] if errors else None},
          as_json, table("ingest cursors", ["source", "query", "watermark", "stored", "dupes", "filtered", "errors",
                                             "last success", "last error"],
                          [[c["source"], c["query"] if c["source"] != "file" else Path(c["query"]).name,
                            (c["watermark"] or "")[:10] if c["source"] != "file" else "imported" if c["watermark"]
                            else "", c["stored"], c["duplicates"], c["filtered"], c["errors"], c["last_success"],
                            (c["last_error"] or "")[:60]] for c in cursors]))
    if not as_json:
        out.print(table("abstracts", list(counts), [list(counts.values())]))


@ingest_app.command("mine")
def ingest_mine(as_json: bool = JsonOpt) -> None:
    """Mine QA items from every stored abstract again (those stored before mining existed, or after a
    rule change); an ingest mines what it stores by itself."""
    from services.ingest.mining import RULE_VERSION, store_mined
    from shared.db import session_scope
    from shared.tables import Abstract

    ensure_store()
    seen = mined = 0
    with session_scope() as session:
        rows = session.exec(select(Abstract.pmid, Abstract.title, Abstract.text, Abstract.content_hash)
                            .order_by(col(Abstract.pmid)).execution_options(yield_per=1000))
        for chunk in rows.partitions(1000):  # bounded memory and IN-lists on a store of any size
            seen += len(chunk)
            mined += store_mined(session, [(r[0], r[1], r[2], r[3]) for r in chunk])
    emit({"abstracts": seen, "mined": mined, "rule_version": RULE_VERSION}, as_json,
         table("mined", ["abstracts", "mined", "rule version"], [[seen, mined, RULE_VERSION]]))


@ingest_app.command("retractions")
def ingest_retractions(
    since: datetime | None = typer.Option(None, formats=["%Y-%m-%d"], help="Start here unless the cursor is later."),
    until: datetime | None = typer.Option(None, formats=["%Y-%m-%d"], help="Last modification date (default today)."),
    as_json: bool = JsonOpt,
) -> None:
    """Poll PubMed for newly retracted publications (by modification date, from their own watermark);
    the versions that learned from one are alerted on. Beat runs it with the abstract poll."""
    from services.ingest.entrez import EntrezError, poll_retractions

    ensure_store()
    try:
        result = poll_retractions(since=since.date() if since else None, until=until.date() if until else None)
    except (EntrezError, ValueError) as exc:
        die(str(exc))
        return
    emit(vars(result), as_json, table("retraction poll", ["retracted", "filtered"],
                                        [[result.retracted, result.filtered]]))


@ingest_app.command("entrez")
def ingest_entrez_cmd(
    since: datetime | None = typer.Option(None, formats=["%Y-%m-%d"], help="Start here unless the cursor is later."),
    until: datetime | None = typer.Option(None, formats=["%Y-%m-%d"], help="Last entrez date (default today)."),
    query: str | None = typer.Option(None, help="PubMed query; default MEDQA_ENTREZ_QUERY + _TERM_FILTER."),
    as_json: bool = JsonOpt,
) -> None:
    """Poll PubMed through E-utilities by entrez-date window from the stored watermark. Signals the trainer."""
    from services.ingest.entrez import EntrezError, ingest_entrez

    ensure_store()
    try:
        result = ingest_entrez(since=since.date() if since else None, until=until.date() if until else None,
                               query=query)
    except (EntrezError, ValueError) as exc:
        die(str(exc))
        return
    emit(vars(result), as_json, table("entrez ingest", ["stored", "updated", "duplicates", "filtered", "deleted"],
                                        [[result.stored, result.updated, result.duplicates, result.filtered,
                                          result.deleted]]))
