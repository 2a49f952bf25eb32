"""Ingest tasks: import NLM/PubMed XML files and poll PubMed through E-utilities.

Emits (shared/pipeline.py): abstracts.stored, once per committed file or Entrez window that stored
new or revised abstracts. Nothing here imports torch: an ingest worker stays small.

A folder fans out: one `ingest.file` task per file, by its IngestFile row id (services/ingest/store.py),
so N ingest workers import N files at once, each file exactly once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis
from kombu.exceptions import OperationalError as BrokerError

from services.ingest.entrez import EntrezError, ingest_entrez, poll_retractions
from services.ingest.store import (
    IngestResult,
    QueuedFile,
    StoreBusy,
    import_file,
    ingest_file,
    pubmed_files,
    queue_files,
    stale_files,
)
from shared.celery_app import app, medqa_task
from shared.settings import get_settings

log = logging.getLogger("medqa.ingest")
FILE_TASK = "ingest.file"


def ingest_path(target: Path) -> IngestResult:
    """Import every XML file under `target` in this process, one transaction each."""
    total = IngestResult()
    for path in pubmed_files(target):
        total.add(ingest_file(path))
    return total


def stale_after_s() -> float:
    """A file queued or importing this long without an end may have lost its message or its worker
    (the sweeper's rule for a running training run)."""
    return 3.0 * get_settings().visibility_timeout_s


def fan_out(paths: list[Path], *, keep: int = 0) -> list[QueuedFile]:
    """Record a row per file and send one `ingest.file` task for each that needs one, except the first
    `keep` files (the caller imports those itself, at once). A broker that cannot be reached is logged
    once and nothing more is sent: the rows wait for the next poll, or the caller."""
    queued = queue_files(paths, stale_s=stale_after_s())
    broker_ok = not get_settings().eager  # eager: no broker; the caller imports in this process
    for n, item in enumerate(queued):
        if item.action != "send" or n < keep or not broker_ok:
            continue
        assert item.id is not None
        if not _send(item.id, item.path.name):
            broker_ok = False
            item.action = "pending"
    return queued


def _send(file_id: int, name: str) -> bool:
    try:
        app.send_task(FILE_TASK, args=[file_id], queue="ingest")
        return True
    except (BrokerError, redis.exceptions.ConnectionError, OSError) as exc:
        log.warning("broker unreachable, %s left queued in the store: %s", name, exc)
        return False


def fan_out_summary(queued: list[QueuedFile]) -> dict:
    count = {action: sum(q.action == action for q in queued) for action in ("send", "pending", "done", "error")}
    return {"queued": count["send"], "pending": count["pending"], "skipped": count["done"],
            "errors": [q.error for q in queued if q.error]}


@medqa_task(FILE_TASK, queue="ingest", singleton=lambda file_id: str(file_id), retry_on=(StoreBusy,), max_retries=5)
def import_queued_file(file_id: int) -> dict | None:
    """Import one queued file. A file another worker holds is left to it (if that worker dies, its
    message comes back); a file done already is not imported again; a failed one waits to be queued
    again. SQLite's write lock taken by another writer retries the task (SQLite has one writer)."""
    result = import_file(file_id, wait=False, skip_failed=True)
    if result is None:
        log.info("file %s is being imported by another worker", file_id)
        return {"busy": True}
    return vars(result)


@medqa_task("ingest.files", queue="ingest", singleton=lambda path: str(path))
def ingest_files(path: str) -> dict:
    """Queue every file under `path`, one `ingest.file` task each (under MEDQA_EAGER: import them here)."""
    if get_settings().eager:
        return vars(ingest_path(Path(path)))
    return fan_out_summary(fan_out(pubmed_files(Path(path))))


@medqa_task("ingest.poll", queue="ingest", singleton=lambda: "poll")
def poll() -> dict | None:
    """Beat's periodic import. Files queued earlier (from any folder) whose task or worker was lost are
    queued again; the watch folder's files are queued, one task per file (files already imported are
    skipped by hash); then PubMed is polled through E-utilities when an NCBI e-mail is set: new
    abstracts, then newly retracted publications."""
    settings = get_settings()
    done: dict = {}
    if not settings.eager:  # files queued from anywhere whose task or worker was lost go out again
        lost = [file_id for file_id in stale_files(stale_s=stale_after_s()) if _send(file_id, f"file {file_id}")]
        if lost:
            done["requeued"] = lost
    if settings.ingest_watch_dir is not None:
        done["files"] = (vars(ingest_path(settings.ingest_watch_dir)) if settings.eager
                         else fan_out_summary(fan_out(pubmed_files(settings.ingest_watch_dir))))
    if settings.ncbi_email:
        for name, fetch in (("entrez", ingest_entrez), ("retractions", poll_retractions)):
            try:
                done[name] = vars(fetch())
            except EntrezError as exc:  # on the cursor already (`medqa ingest status`); the next poll resumes
                log.error("%s", exc)
                done[name] = {"error": str(exc)}
    if not done:
        log.debug("neither MEDQA_INGEST_WATCH_DIR nor MEDQA_NCBI_EMAIL set; nothing to poll")
        return None
    return done
