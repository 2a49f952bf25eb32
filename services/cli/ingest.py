"""`medqa ingest`: import PubMed XML files and poll PubMed through E-utilities; cursors and counts."""

from __future__ import annotations

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
                 queue_only: bool = typer.Option(False, "--queue-only", help="With workers: queue one task per "
                                                 "file and return; `medqa ingest status` shows their progress."),
                 as_json: bool = JsonOpt) -> None:
    """Import PubMed XML files (plain or .gz); one transaction per file. Signals the trainer.

    With workers, one `ingest.file` task per file is queued (a file is recorded by its sha256; one
    imported already is skipped), so N ingest workers import N files at once; this command imports
    alongside them, taking the files no worker holds, and sums up when every file is in. Under
    MEDQA_EAGER it imports them here one after another, and the training the import starts runs in this
    process after the summary. Ctrl-C keeps every file imported so far; a run it stops resumes with
    `medqa sweep`."""
    from services.ingest.store import IngestResult, ingest_file, pubmed_files
    from shared.pipeline import held_events, publish_held
    from shared.settings import get_settings

    ensure_store()
    try:
        files = pubmed_files(path)
    except FileNotFoundError as exc:
        die(str(exc))
    from rich.progress import Progress

    if not get_settings().eager:  # with workers, each file's event goes out as it commits
        _fan_out(files, queue_only, as_json)
        return
    result = IngestResult()
    with held_events() as held, Progress(console=err, disable=as_json, transient=True) as bar:
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


def _fan_out(files: list[Path], queue_only: bool, as_json: bool) -> None:
    """Queue one task per file; unless `queue_only`, import alongside the workers until every file is in.

    This process takes the files in order, skipping any a worker holds, then waits for those: with no
    worker running (or no broker) it imports everything itself, as before there were file tasks."""
    import time

    from rich.progress import Progress

    from services.ingest.store import IngestResult, StoreBusy, import_file
    from services.ingest.tasks import fan_out, fan_out_summary

    queued = fan_out(files, keep=0 if queue_only else 1)  # the first one is this process's at once
    if queue_only:
        summary = fan_out_summary(queued)
        emit(summary, as_json, table("ingest queued", ["queued", "pending", "skipped", "errors"],
                                     [[summary["queued"], summary["pending"], summary["skipped"],
                                       len(summary["errors"])]]))
        for e in summary["errors"]:
            err.print(f"[red]bad file[/] {escape(e)}", highlight=False)
        if summary["errors"]:
            raise typer.Exit(1)
        return
    result = IngestResult()
    imported = 0
    with Progress(console=err, disable=as_json, transient=True) as bar:
        task = bar.add_task("ingesting", total=len(queued))
        waiting = []
        for item in queued:
            if item.action in ("done", "error"):
                done = item.action == "done"
                result.add(IngestResult(files_skipped=1) if done else IngestResult(errors=[item.error or ""]))
                bar.advance(task)
                continue
            waiting.append(item)
        while waiting:
            held_elsewhere = []
            for item in waiting:
                assert item.id is not None
                try:
                    one = import_file(item.id, item.path, wait=False)
                except StoreBusy:
                    one = None
                except KeyboardInterrupt:
                    bar.stop()
                    die(f"interrupted: {imported} of {len(queued)} files imported and kept; {item.path.name} was "
                        "rolled back. Run the same command again to go on (imported files are skipped).", code=130)
                if one is None:  # a worker is importing it: come back to it
                    held_elsewhere.append(item)
                    continue
                result.add(one)
                imported += 1
                bar.advance(task)
            waiting = held_elsewhere
            if waiting:
                time.sleep(0.5)
    _print_ingest_summary(result, as_json)
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
    from shared.tables import Abstract, IngestCursor, IngestFile, IngestFileStatus, MinedQA

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
        by_status = dict(session.exec(select(IngestFile.status, func.count()).group_by(IngestFile.status)).all())
        files = {status.value: by_status.get(status.value, 0) for status in IngestFileStatus}
    errors = [c for c in cursors if c["last_error"]]
    emit({"counts": counts, "files": files, "cursors": cursors,
          "last_error": errors[-1]["last_error"] if errors else None},
          as_json, table("ingest cursors", ["source", "query", "watermark", "stored", "dupes", "filtered", "errors",
                                             "last success", "last error"],
                          [[c["source"], c["query"] if c["source"] != "file" else Path(c["query"]).name,
                            (c["watermark"] or "")[:10] if c["source"] != "file" else "imported" if c["watermark"]
                            else "", c["stored"], c["duplicates"], c["filtered"], c["errors"], c["last_success"],
                            (c["last_error"] or "")[:60]] for c in cursors]))
    if not as_json:
        out.print(table("abstracts", list(counts), [list(counts.values())]))
        out.print(table("files (by sha256)", list(files), [list(files.values())]))


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
