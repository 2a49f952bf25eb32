"""Ingest tasks: import NLM/PubMed XML files, then signal the training trigger after commit."""

from __future__ import annotations

import logging
from pathlib import Path

from services.ingest.store import IngestResult, ingest_file, pubmed_files
from shared.celery_app import medqa_task
from shared.settings import get_settings

log = logging.getLogger("medqa.ingest")


def ingest_path(target: Path, *, progress=None) -> IngestResult:  # type: ignore[no-untyped-def]
    """Import every XML file under `target` (one transaction each), then check the trigger."""
    from services.trainer.trigger import signal_trigger

    total = IngestResult()
    for path in pubmed_files(target):
        total.add(ingest_file(path))
        if progress is not None:
            progress(path)
    if total.stored or total.updated:
        signal_trigger(get_settings().model_line)
    signal_monitor(total.stored)
    return total


def signal_monitor(stored: int) -> None:
    """A batch of at least `monitor_after_ingest` new abstracts gets a drift check now rather than
    at beat's next round (the monitor reads committed rows; call after the commit)."""
    from services.monitor.tasks import monitor_run
    from shared.celery_app import enqueue

    threshold = get_settings().monitor_after_ingest
    if threshold and stored >= threshold:
        log.info("%d new abstracts (>= %d): monitor run queued", stored, threshold)
        enqueue(monitor_run)


@medqa_task("ingest.files", queue="ingest", singleton=lambda path: str(path))
def ingest_files(path: str) -> dict:
    return vars(ingest_path(Path(path)))


@medqa_task("ingest.poll", queue="ingest", singleton=lambda: "poll")
def poll() -> dict | None:
    """Beat's periodic import of the watch folder (files already imported are skipped by hash),
    then of PubMed through E-utilities when an NCBI e-mail is set."""
    s = get_settings()
    done: dict = {}
    if s.ingest_watch_dir is not None:
        done["files"] = vars(ingest_path(s.ingest_watch_dir))
    if s.ncbi_email:
        from services.ingest.entrez import EntrezError, ingest_entrez

        try:
            done["entrez"] = vars(ingest_entrez())
        except EntrezError as exc:  # on the cursor already (`medqa ingest status`); the next poll resumes
            log.error("%s", exc)
            done["entrez"] = {"error": str(exc)}
    if not done:
        log.debug("neither MEDQA_INGEST_WATCH_DIR nor MEDQA_NCBI_EMAIL set; nothing to poll")
        return None
    return done
