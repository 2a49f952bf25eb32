"""Store parsed PubMed records: filter, dedup, upsert, mark deletions.

One source file is one transaction, so a file that fails to parse half-way leaves nothing of itself
behind; its cursor row records the error and the rest of the directory goes on. A file already
imported with the same content (by sha256) is skipped, which makes re-running an import a no-op.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, col, select

from services.ingest.parser import ArticleRecord, DeleteRecord, PubmedParseError, iter_pubmed
from shared.db import session_scope
from shared.models import Abstract, IngestCursor, utcnow

log = logging.getLogger("medqa.ingest")

MIN_ABSTRACT_CHARS = 200  # shorter "abstracts" are mostly notices and errata: no signal to learn from
LANGUAGES = frozenset({"eng"})
EXCLUDED_TYPES = frozenset({"Published Erratum", "Retraction of Publication", "Comment", "Retracted Publication"})


@dataclass
class IngestResult:
    files: int = 0
    files_skipped: int = 0
    stored: int = 0
    updated: int = 0
    duplicates: int = 0
    filtered: int = 0
    deleted: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        for name in ("files", "files_skipped", "stored", "updated", "duplicates", "filtered", "deleted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors


def keep(record: ArticleRecord) -> bool:
    return (len(record.abstract) >= MIN_ABSTRACT_CHARS and record.language in LANGUAGES
            and not EXCLUDED_TYPES.intersection(record.publication_types))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def store_records(session: Session, records: list[ArticleRecord | DeleteRecord], *, source: str) -> IngestResult:
    result = IngestResult()
    articles = {r.pmid: r for r in records if isinstance(r, ArticleRecord)}
    existing = {a.pmid: a for a in session.exec(select(Abstract).where(col(Abstract.pmid).in_(list(articles))))}
    hashes = {r.content_hash for r in articles.values()}
    seen_hashes = set(session.exec(
        select(Abstract.content_hash).where(col(Abstract.content_hash).in_(list(hashes)))).all())
    for record in articles.values():
        if not keep(record):
            result.filtered += 1
            continue
        row = existing.get(record.pmid)
        if row is not None:
            if row.content_hash == record.content_hash:
                result.duplicates += 1
                continue
            result.updated += 1  # a revised record: same PMID, new content
            row.train_run_id = None  # its new text has not been trained on: it counts as new again
        elif record.content_hash in seen_hashes:
            result.duplicates += 1  # the same text under another PMID
            continue
        else:
            row = Abstract(pmid=record.pmid, title="", text="", content_hash="", source=source)
            result.stored += 1
        row.title, row.text, row.journal = record.title, record.abstract, record.journal
        row.pub_date, row.entrez_date, row.revised_date = record.pub_date, record.entrez_date, record.revised_date
        row.mesh_terms, row.language = list(record.mesh_terms), record.language
        row.content_hash, row.source, row.deleted = record.content_hash, source, False
        seen_hashes.add(record.content_hash)
        session.add(row)
    for deletion in records:
        if isinstance(deletion, DeleteRecord) and deletion.pmids:
            for gone in session.exec(select(Abstract).where(col(Abstract.pmid).in_(list(deletion.pmids)))):
                if not gone.deleted:
                    gone.deleted = True
                    session.add(gone)
                    result.deleted += 1
    return result


def ingest_file(path: Path) -> IngestResult:
    path = path.resolve()
    digest = _file_sha256(path)
    with session_scope() as session:
        cursor = session.exec(select(IngestCursor).where(
            IngestCursor.source == "file", IngestCursor.query == str(path))).first()
        if cursor is not None and cursor.watermark == digest:
            return IngestResult(files_skipped=1)
    try:
        records = list(iter_pubmed(path))
        with session_scope() as session:
            result = store_records(session, records, source=f"file:{path.name}")
            result.files = 1
            cursor = _cursor(session, str(path))
            cursor.watermark, cursor.last_success, cursor.last_error = digest, utcnow(), None
            cursor.stored += result.stored + result.updated
            cursor.skipped += result.duplicates + result.filtered
            session.add(cursor)
        return result
    except (PubmedParseError, OSError) as exc:
        log.error("ingest of %s failed, nothing stored from it: %s", path, exc)
        with session_scope() as session:
            cursor = _cursor(session, str(path))
            cursor.last_error = str(exc)
            session.add(cursor)
        return IngestResult(errors=[f"{path.name}: {exc}"])


def _cursor(session: Session, query: str) -> IngestCursor:
    cursor = session.exec(select(IngestCursor).where(
        IngestCursor.source == "file", IngestCursor.query == query)).first()
    return cursor or IngestCursor(source="file", query=query)


def pubmed_files(target: Path) -> list[Path]:
    """The XML files to import, oldest NLM file name first (their names sort by sequence)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise FileNotFoundError(f"no such file or directory: {target}")
    return sorted((p for p in target.rglob("*") if p.name.endswith((".xml", ".xml.gz"))), key=lambda p: p.name)
