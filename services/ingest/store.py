"""Store parsed PubMed records: filter, dedup, upsert, mark deletions.

One source file is one transaction, so a file that fails to parse half-way leaves nothing of itself
behind; its cursor row records the error and the rest of the directory goes on. A file already
imported with the same content (by sha256) is skipped, which makes re-running an import a no-op.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, col, insert, select, update

from services.ingest.mining import store_mined
from services.ingest.parser import ArticleRecord, DeleteRecord, PubmedParseError, iter_records
from shared.checksums import sha256_file
from shared.db import session_scope, write_lock
from shared.pipeline import Event, emit
from shared.tables import Abstract, AuditEvent, IngestCursor, Tombstone, utcnow

log = logging.getLogger("medqa.ingest")

PUBMED_SUFFIXES = (".xml", ".xml.gz", ".txt", ".txt.gz", ".medline", ".nbib")  # XML or MEDLINE text
CHUNK = 1000  # records per store_records call within a file's transaction
MIN_ABSTRACT_CHARS = 200  # shorter "abstracts" are mostly notices and errata: no signal to learn from
LANGUAGES = frozenset({"eng"})
# Notices, not science: errata, comments, retraction notices (whose targets are marked instead),
# and retracted publications themselves. NLM types a retraction notice "Retraction Notice" since
# 2025; older records say "Retraction of Publication".
EXCLUDED_TYPES = frozenset({"Published Erratum", "Retraction of Publication", "Retraction Notice", "Comment",
                            "Retracted Publication"})


@dataclass
class IngestResult:
    files: int = 0
    files_skipped: int = 0
    stored: int = 0
    updated: int = 0
    duplicates: int = 0
    filtered: int = 0
    deleted: int = 0
    retracted: int = 0
    mined: int = 0  # QA items mined from the stored and revised abstracts (services/ingest/mining)
    errors: list[str] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        for name in ("files", "files_skipped", "stored", "updated", "duplicates", "filtered", "deleted", "retracted",
                     "mined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors


def keep(record: ArticleRecord) -> bool:
    return (len(record.abstract) >= MIN_ABSTRACT_CHARS and record.language in LANGUAGES
            and not EXCLUDED_TYPES.intersection(record.publication_types))


def store_records(session: Session, records: list[ArticleRecord | DeleteRecord], *, source: str) -> IngestResult:
    """Upsert the articles that pass `keep` (mining QA items from the new and revised ones), then mark
    the deleted PMIDs and the retracted ones."""
    # Reads decide what is written (dedup, tombstones), and on SQLite a transaction that has read cannot
    # take the write lock once another writer (a worker claiming abstracts) has committed since: it fails
    # "database is locked" at once, whatever the busy timeout. Holding the lock from the start makes
    # the other writers wait instead. A no-op on PostgreSQL, and when the lock is held already.
    write_lock(session)
    articles = {r.pmid: r for r in records if isinstance(r, ArticleRecord)}
    result, fresh = _upsert(session, articles, source=source)
    result.mined += store_mined(session, [(r.pmid, r.title, r.abstract, digest) for r, digest in fresh])
    deleted = {pmid for r in records if isinstance(r, DeleteRecord) for pmid in r.pmids}
    retracted = _retracted_pmids(articles.values())
    _bury(session, deleted, "deleted", source)
    _bury(session, retracted, "retracted", source)
    # The stored ones are marked now; an unstored one is marked when it arrives (its tombstone).
    stones = _tombstones(session, [record.pmid for record, _ in fresh])
    result.deleted += len(_mark(session, deleted | stones["deleted"], "deleted"))
    newly_retracted = _mark(session, retracted | stones["retracted"], "retracted")
    result.retracted += len(newly_retracted)
    if newly_retracted:  # the monitor asks the lineage which versions learned from them
        emit(session, Event.PAPERS_RETRACTED, newly_retracted)
    return result


def _upsert(session: Session, articles: dict[int, ArticleRecord], *,
            source: str) -> tuple[IngestResult, list[tuple[ArticleRecord, str]]]:
    """Insert new articles and revise changed ones; same content (by PMID or by text) is a duplicate.
    Returns the counts and the (record, content hash) of every row inserted or revised."""
    result = IngestResult()
    fresh: list[tuple[ArticleRecord, str]] = []
    existing = {a.pmid: a for a in session.exec(select(Abstract).where(col(Abstract.pmid).in_(list(articles))))}
    # content_hash is a sha256 over normalised text: compute it once per record, not at every use.
    digests = {pmid: r.content_hash for pmid, r in articles.items()}
    seen_hashes = set(session.exec(
        select(Abstract.content_hash).where(col(Abstract.content_hash).in_(set(digests.values())))).all())
    new_rows: list[dict] = []
    now = utcnow()
    for record in articles.values():
        digest = digests[record.pmid]
        if not keep(record):
            result.filtered += 1
            continue
        row = existing.get(record.pmid)
        if row is not None and _older(record, row):
            result.duplicates += 1  # an older revision arriving late: the newer stored one stays
            continue
        if row is not None and row.content_hash != digest:
            _revise(row, record, digest, source)  # a revised record: same PMID, new content
            session.add(row)
            result.updated += 1
        elif row is None and digest not in seen_hashes:
            # New rows go in as one executemany below: building SQLModel objects runs pydantic's
            # default factories through inspect.signature, two thirds of the time at 1,000 rows.
            new_rows.append(_row(record, digest, source, now))
            result.stored += 1
        else:
            result.duplicates += 1  # unchanged, or the same text under another PMID
            continue
        seen_hashes.add(digest)
        fresh.append((record, digest))
    if new_rows:
        session.exec(insert(Abstract), params=new_rows)
    return result, fresh


def _older(record: ArticleRecord, row: Abstract) -> bool:
    """True when `record` is an earlier revision (DateRevised) than the stored row: files can be
    imported out of order, and the newest revision must win whatever the order."""
    return record.revised_date is not None and row.revised_date is not None and record.revised_date < row.revised_date


def _revise(row: Abstract, record: ArticleRecord, digest: str, source: str) -> None:
    row.title, row.text, row.journal = record.title, record.abstract, record.journal
    row.pub_date, row.entrez_date, row.revised_date = record.pub_date, record.entrez_date, record.revised_date
    row.mesh_terms, row.language = list(record.mesh_terms), record.language
    row.content_hash, row.source, row.deleted = digest, source, False
    row.train_run_id = None  # its new text has not been trained on: it counts as new again


def _retracted_pmids(articles: Iterable[ArticleRecord]) -> set[int]:
    """PMIDs retracted per these records, kept or filtered alike: a retraction notice names what it
    retracts, and NLM also flags the retracted record itself."""
    pmids: set[int] = set()
    for record in articles:
        pmids.update(getattr(record, "retraction_of", ()))
        if getattr(record, "retracted", False):
            pmids.add(record.pmid)
    return pmids


def _bury(session: Session, pmids: set[int], kind: str, source: str) -> None:
    """Keep a tombstone for each PMID deleted or retracted here that is not stored (yet): files can be
    imported out of order, and the record that arrives later must not go live."""
    if not pmids:
        return
    stored = set(session.exec(select(Abstract.pmid).where(col(Abstract.pmid).in_(sorted(pmids)))).all())
    buried = set(session.exec(select(Tombstone.pmid).where(
        col(Tombstone.pmid).in_(sorted(pmids - stored)), Tombstone.kind == kind)).all())
    for pmid in sorted(pmids - stored - buried):
        session.add(Tombstone(pmid=pmid, kind=kind, source=source[:200]))
    session.flush()


def _tombstones(session: Session, pmids: list[int]) -> dict[str, set[int]]:
    """The PMIDs among `pmids` that an earlier deletion or retraction named, by kind."""
    found: dict[str, set[int]] = {"deleted": set(), "retracted": set()}
    if pmids:
        for stone in session.exec(select(Tombstone).where(col(Tombstone.pmid).in_(sorted(pmids)))):
            found.setdefault(stone.kind, set()).add(stone.pmid)
    return found


def _mark(session: Session, pmids: set[int], flag: str) -> list[int]:
    """Set `flag` ("deleted" or "retracted") on the stored rows among `pmids`; returns the PMIDs that
    were not flagged yet.

    Marked, not removed: past runs' lineage still resolves, but no future run, replay buffer or
    evaluation slice reads such a text again (see shared/queries.py)."""
    if not pmids:
        return []
    column = col(getattr(Abstract, flag))
    fresh = sorted(session.exec(select(Abstract.pmid).where(col(Abstract.pmid).in_(sorted(pmids)),
                                                            column.is_(False))).all())
    if fresh:
        session.exec(update(Abstract).where(col(Abstract.pmid).in_(fresh)).values({flag: True}))
    return fresh


class AlreadyRetracted(ValueError):
    pass


def retract(session: Session, pmid: int, *, actor: str, reason: str) -> bool:
    """An operator marks a paper retracted (a notice NLM has not indexed yet, a journal's own notice):
    as an ingested retraction does, audited like a promotion. A PMID not stored yet gets a tombstone,
    so it never goes live. Returns whether the paper was stored."""
    stored = session.get(Abstract, pmid)
    buried = stored is None and session.get(Tombstone, (pmid, "retracted")) is not None
    if buried or stored is not None and stored.retracted:
        raise AlreadyRetracted(f"PMID {pmid} is marked retracted already")
    _bury(session, {pmid}, "retracted", f"operator:{actor}")
    newly = _mark(session, {pmid}, "retracted")
    session.add(AuditEvent(actor=actor, action="retract", subject=f"pmid:{pmid}", reason=reason))
    if newly:
        emit(session, Event.PAPERS_RETRACTED, newly)
    return stored is not None


def _row(record: ArticleRecord, digest: str, source: str, now: datetime) -> dict:
    return {"pmid": record.pmid, "title": record.title, "text": record.abstract, "journal": record.journal,
            "pub_date": record.pub_date, "entrez_date": record.entrez_date, "revised_date": record.revised_date,
            "mesh_terms": list(record.mesh_terms), "language": record.language, "content_hash": digest,
            "source": source, "ingested_at": now, "deleted": False}


def ingest_file(path: Path) -> IngestResult:
    """Import one PubMed XML or MEDLINE text file (plain or gzip) in one transaction."""
    path = path.resolve()
    query = _cursor_query(path)
    try:
        digest = sha256_file(path)
        with session_scope() as session:
            cursor = session.exec(select(IngestCursor).where(
                IngestCursor.source == "file", IngestCursor.query == query)).first()
            if cursor is not None and cursor.watermark == digest:
                return IngestResult(files_skipped=1)
        with session_scope() as session:
            # Chunks keep memory flat on a 30,000-article baseline file; the one transaction around
            # them keeps the file all-or-nothing (a parse error at the end rolls back the chunks).
            result = IngestResult(files=1)
            for chunk in _chunks(iter_records(path), CHUNK):
                result.add(store_records(session, chunk, source=f"file:{path.name}"[:200]))
                session.flush()
            cursor = _cursor(session, query)
            cursor.watermark, cursor.last_success, cursor.last_error = digest, utcnow(), None
            cursor.stored += result.stored + result.updated
            cursor.skipped += result.duplicates + result.filtered
            cursor.duplicates += result.duplicates
            cursor.filtered += result.filtered
            session.add(cursor)
            if result.stored or result.updated:
                emit(session, Event.ABSTRACTS_STORED)
        return result
    except (PubmedParseError, OSError) as exc:
        # The parser's message already names the file; OSError's may not.
        message = str(exc) if path.name in str(exc) else f"{path}: {exc}"
        log.error("ingest failed, nothing stored from this file: %s", message)
        with session_scope() as session:
            cursor = _cursor(session, query)
            cursor.last_error = message
            cursor.errors += 1
            session.add(cursor)
        return IngestResult(errors=[message])


def _chunks(records: Iterator[ArticleRecord | DeleteRecord], size: int) -> Iterator[list[ArticleRecord | DeleteRecord]]:
    chunk: list[ArticleRecord | DeleteRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _cursor_query(path: Path) -> str:
    """The cursor key for a file: its path, or for a path too long for the column, a digest of it."""
    text = str(path)
    return text if len(text) <= 500 else f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


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
    return sorted((p for p in target.rglob("*") if p.is_file() and p.name.endswith(PUBMED_SUFFIXES)),
                  key=lambda p: p.name)
