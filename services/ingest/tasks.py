"""Ingest tasks: import NLM/PubMed XML files and poll PubMed through E-utilities.

Emits (shared/pipeline.py): abstracts.stored, once per committed file or Entrez window that stored
new or revised abstracts. Nothing here imports torch: an ingest worker stays small.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.ingest.entrez import EntrezError, ingest_entrez, poll_retractions
from services.ingest.store import IngestResult, ingest_file, pubmed_files
from shared.celery_app import medqa_task
from shared.settings import get_settings

log = logging.getLogger("medqa.ingest")


def ingest_path(target: Path) -> IngestResult:
    """Import every XML file under `target`, one transaction each."""
    total = IngestResult()
    for path in pubmed_files(target):
        total.add(ingest_file(path))
    return total


@medqa_task("ingest.files", queue="ingest", singleton=lambda path: str(path))
def ingest_files(path: str) -> dict:
    return vars(ingest_path(Path(path)))


@medqa_task("ingest.poll", queue="ingest", singleton=lambda: "poll")
def poll() -> dict | None:
    """Beat's periodic import of the watch folder (files already imported are skipped by hash),
    then of PubMed through E-utilities when an NCBI e-mail is set: new abstracts, then newly
    retracted publications."""
    settings = get_settings()
    done: dict = {}
    if settings.ingest_watch_dir is not None:
        done["files"] = vars(ingest_path(settings.ingest_watch_dir))
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
