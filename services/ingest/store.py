"""Store parsed PubMed records: filter, dedup, upsert, mark deletions.

One source file is one transaction, so a file that fails to parse half-way leaves nothing of itself
behind; its cursor row records the error and the rest of the directory goes on. Each file has an
IngestFile row keyed by its sha256, marked done in that same transaction: a file already imported
with the same content is skipped, which makes re-running an import (or a redelivered task) a no-op,
and lets several workers import the files of one folder at once. On PostgreSQL a file's records go in
through COPY and one merge (services/ingest/bulk.py); SQLite takes the row path below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, and_, col, insert, or_, select, update

from services.ingest.bulk import copy_merge, fresh_pmids_named_by_tombstones
from services.ingest.mining import mine, store_mined
from services.ingest.parser import ArticleRecord, DeleteRecord, PubmedParseError, iter_records
from shared.checksums import sha256_file
from shared.db import session_scope, write_lock
from shared.pipeline import Event, emit
from shared.tables import Abstract, AuditEvent, IngestCursor, IngestFile, IngestFileStatus, Tombstone, utcnow

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
    _bury_and_mark(session, deleted, retracted, _tombstones(session, [record.pmid for record, _ in fresh]), source,
                   result)
    return result


def _bury_and_mark(session: Session, deleted: set[int], retracted: set[int], stones: dict[str, set[int]],
                   source: str, result: IngestResult) -> None:
    """Tombstones for the deleted and retracted PMIDs not stored; then flag the stored ones, and the
    fresh rows that earlier tombstones (`stones`) named."""
    _bury(session, deleted, "deleted", source)
    _bury(session, retracted, "retracted", source)
    # The stored ones are marked now; an unstored one is marked when it arrives (its tombstone).
    result.deleted += len(_mark(session, deleted | stones["deleted"], "deleted"))
    newly_retracted = _mark(session, retracted | stones["retracted"], "retracted")
    result.retracted += len(newly_retracted)
    if newly_retracted:  # the monitor asks the lineage which versions learned from them
        emit(session, Event.PAPERS_RETRACTED, newly_retracted)


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
    for part in _slices(pmids):
        stored = set(session.exec(select(Abstract.pmid).where(col(Abstract.pmid).in_(part))).all())
        buried = set(session.exec(select(Tombstone.pmid).where(
            col(Tombstone.pmid).in_(sorted(set(part) - stored)), Tombstone.kind == kind)).all())
        for pmid in sorted(set(part) - stored - buried):
            session.add(Tombstone(pmid=pmid, kind=kind, source=source[:200]))
        session.flush()


def _slices(pmids: set[int]) -> Iterator[list[int]]:
    """Sorted PMIDs in lists short enough for one IN-list (an update file can delete thousands)."""
    ordered = sorted(pmids)
    for start in range(0, len(ordered), MARK_SLICE):
        yield ordered[start:start + MARK_SLICE]


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
    column = col(getattr(Abstract, flag))
    marked: list[int] = []
    for part in _slices(pmids):
        fresh = sorted(session.exec(select(Abstract.pmid).where(col(Abstract.pmid).in_(part), column.is_(False))).all())
        if fresh:
            session.exec(update(Abstract).where(col(Abstract.pmid).in_(fresh)).values({flag: True}))
        marked += fresh
    return marked


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


# ------------------------------------------------------------------------------------ whole files
# A file is one IngestFile row (keyed by its sha256) and one transaction that stores its records and
# marks the row done together: exactly once, whichever process imports it. `medqa ingest files` and the
# beat's watch folder queue one `ingest.file` task per file (services/ingest/tasks.py), so N ingest
# workers import N files at once; under MEDQA_EAGER the caller imports them one after another.

USE_COPY = True  # PostgreSQL stores a file through bulk.copy_merge; False takes the row path (tests compare)
DEADLOCK_RETRIES = 3  # two workers merging update files that share PMIDs can deadlock; the loser retries
MARK_SLICE = 10_000  # PMIDs per IN-list when marking deletions and retractions


class StoreBusy(RuntimeError):
    """SQLite's write lock stayed taken by another writer: nothing was done, try again later."""


class FileChanged(ValueError):
    """The file no longer has the content (sha256) it was queued with."""


@dataclass
class QueuedFile:
    path: Path
    id: int | None = None  # its IngestFile row
    # send: a task should go out (queued now, queued again after a failure, or stale) | pending: queued
    # or importing already | done: this content is imported | error: the file cannot be read
    action: str = "send"
    error: str | None = None


def importer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


def queue_files(paths: Iterable[Path], *, stale_s: float) -> list[QueuedFile]:
    """One IngestFile row per file, and which files need a task sent: new ones, failed ones (queued
    again), and queued or importing ones untouched for `stale_s` seconds, whose message or worker may
    be lost (a second task for a file in hand is turned away, so a re-send is harmless)."""
    queued: list[QueuedFile] = []
    for path in paths:
        path = path.resolve()
        try:
            digest = sha256_file(path)
        except OSError as exc:
            queued.append(QueuedFile(path, action="error", error=f"{path}: {exc}"))
            continue
        now = utcnow()
        with session_scope() as session:
            row, created = _file_row(session, path, digest)
            last = row.started_at if row.status == IngestFileStatus.importing else row.queued_at
            if row.status == IngestFileStatus.done:
                action = "done"
            elif created:
                action = "send"
            elif row.status == IngestFileStatus.failed or last is None or (now - last).total_seconds() > stale_s:
                action = "send"
                if row.status != IngestFileStatus.importing:
                    row.status, row.queued_at, row.path = IngestFileStatus.queued, now, str(path)
                    session.add(row)
            else:
                action = "pending"
            queued.append(QueuedFile(path, row.id, action))
    return queued


def stale_files(*, stale_s: float) -> list[int]:
    """Rows queued or importing with no end for `stale_s` seconds, wherever their files lie: their
    message or their worker may be lost (a child killed by the kernel is acked, not redelivered)."""
    cutoff = utcnow() - timedelta(seconds=stale_s)
    with session_scope() as session:
        return [file_id for file_id in session.exec(select(IngestFile.id).where(or_(
            and_(col(IngestFile.status) == IngestFileStatus.queued, col(IngestFile.queued_at) < cutoff),
            and_(col(IngestFile.status) == IngestFileStatus.importing, col(IngestFile.started_at) < cutoff)))
            .order_by(col(IngestFile.id))).all() if file_id is not None]


def ingest_file(path: Path) -> IngestResult:
    """Import one PubMed XML or MEDLINE text file (plain or gzip) in one transaction. A file whose
    content (sha256) is imported already is skipped, under any name."""
    path = path.resolve()
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return _failed(None, path, exc)
    with session_scope() as session:
        row, _ = _file_row(session, path, digest)
        file_id, done = row.id, row.status == IngestFileStatus.done
    if done or file_id is None:
        return IngestResult(files_skipped=1)
    result = import_file(file_id, path, wait=True)
    return result if result is not None else IngestResult(files_skipped=1)


def import_file(file_id: int, path: Path | None = None, *, wait: bool = True,
                skip_failed: bool = False) -> IngestResult | None:
    """Import the file of row `file_id` (from `path`, default where it was found) in one transaction
    that also marks the row done, so a file is stored exactly once whoever imports it, and a process
    killed mid-file leaves nothing of it and the row importable again.

    Returns None when another process is importing it right now (PostgreSQL: it holds the row's lock;
    with `wait`, this waits for it instead). A file done already, by this call or another process,
    gives its row's counts. With `wait` False, SQLite's write lock held past its busy timeout raises
    StoreBusy. `skip_failed` leaves a file that failed alone until it is queued again."""
    taken = _take(file_id, wait=wait, skip_failed=skip_failed)
    if not isinstance(taken, str):
        return taken
    target = (path or Path(taken)).resolve()
    query = _cursor_query(target)
    for attempt in range(DEADLOCK_RETRIES + 1):
        try:
            with session_scope() as session:
                # Held to the commit: the row turns done with the file's rows, never apart from them.
                row = _locked(session, file_id, wait)
                if row is None:
                    return None
                if row.status == IngestFileStatus.done:
                    return _row_result(row)
                if sha256_file(target) != row.sha256:
                    raise FileChanged(f"{target}: changed since it was queued (its sha256 differs); queue it again")
                # The whole file, all-or-nothing: a parse error at its end rolls back everything before.
                result = IngestResult(files=1)
                result.add(_store_file(session, target, source=f"file:{target.name}"[:200]))
                cursor = _cursor(session, query)
                cursor.watermark, cursor.last_success, cursor.last_error = row.sha256, utcnow(), None
                cursor.stored += result.stored + result.updated
                cursor.skipped += result.duplicates + result.filtered
                cursor.duplicates += result.duplicates
                cursor.filtered += result.filtered
                session.add(cursor)
                for name in ("stored", "updated", "duplicates", "filtered", "deleted", "retracted", "mined"):
                    setattr(row, name, getattr(result, name))
                row.status, row.finished_at, row.error = IngestFileStatus.done, utcnow(), None
                session.add(row)
                if result.stored or result.updated:
                    emit(session, Event.ABSTRACTS_STORED)
            return result
        except (PubmedParseError, OSError, FileChanged) as exc:
            return _failed(file_id, target, exc)
        except OperationalError as exc:
            if not wait and _conflict(exc, "database is locked"):
                raise StoreBusy(f"{target.name}: the store is locked by another writer") from exc
            if attempt < DEADLOCK_RETRIES and _conflict(exc, "deadlock detected"):
                log.warning("%s: deadlock with another import, trying again", target.name)
                continue
            raise
    raise AssertionError("unreachable")


def _take(file_id: int, *, wait: bool, skip_failed: bool) -> IngestResult | None | str:
    """Mark the row importing (committed, for `medqa ingest status` and the bench), or say why not:
    None (busy) or a result (done, or failed and skipped). Returns the row's path when taken."""
    try:
        with session_scope() as session:
            row = _locked(session, file_id, wait)
            if row is None:
                return None
            if row.status == IngestFileStatus.done:
                return _row_result(row)
            if row.status == IngestFileStatus.failed and skip_failed:
                return IngestResult()
            row.status, row.started_at, row.importer = IngestFileStatus.importing, utcnow(), importer_name()
            row.attempts += 1
            session.add(row)
            return row.path
    except OperationalError as exc:
        if not wait and _conflict(exc, "database is locked"):
            raise StoreBusy(f"file {file_id}: the store is locked by another writer") from exc
        raise


def _locked(session: Session, file_id: int, wait: bool) -> IngestFile | None:
    """The row, locked for this transaction (PostgreSQL: FOR UPDATE, SKIP LOCKED unless `wait`; SQLite:
    the store's write lock). None when another transaction holds it."""
    write_lock(session)
    stmt = select(IngestFile).where(IngestFile.id == file_id).with_for_update(skip_locked=not wait)
    return session.exec(stmt).first()


def _file_row(session: Session, path: Path, digest: str) -> tuple[IngestFile, bool]:
    """The row for this content, created (queued) if there is none: (row, created). A file imported
    before migration 0014 has no row but its cursor's watermark: its row is created done."""
    write_lock(session)
    row = session.exec(select(IngestFile).where(IngestFile.sha256 == digest)).first()
    if row is not None:
        return row, False
    cursor = session.exec(select(IngestCursor).where(
        IngestCursor.source == "file", IngestCursor.query == _cursor_query(path))).first()
    imported = cursor is not None and cursor.watermark == digest
    now = utcnow()
    values = {"sha256": digest, "path": str(path), "queued_at": now,
              "status": IngestFileStatus.done if imported else IngestFileStatus.queued,
              "finished_at": now if imported else None}
    # Two processes may meet the same new file at once: one row, whoever inserts it.
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(dialect_insert(IngestFile).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))
    return session.exec(select(IngestFile).where(IngestFile.sha256 == digest)).one(), True


def _row_result(row: IngestFile) -> IngestResult:
    return IngestResult(files=1, stored=row.stored, updated=row.updated, duplicates=row.duplicates,
                        filtered=row.filtered, deleted=row.deleted, retracted=row.retracted, mined=row.mined,
                        errors=[row.error] if row.error else [])


def _failed(file_id: int | None, path: Path, exc: Exception) -> IngestResult:
    """Record a file that cannot be imported on its cursor (and its row, failed); one log line."""
    # The parser's message already names the file; OSError's may not.
    message = str(exc) if path.name in str(exc) else f"{path}: {exc}"
    log.error("ingest failed, nothing stored from this file: %s", message)
    with session_scope() as session:
        cursor = _cursor(session, _cursor_query(path))
        cursor.last_error = message
        cursor.errors += 1
        session.add(cursor)
        row = session.get(IngestFile, file_id) if file_id is not None else None
        if row is not None and row.status != IngestFileStatus.done:
            row.status, row.error, row.finished_at = IngestFileStatus.failed, message, utcnow()
            session.add(row)
    return IngestResult(errors=[message])


def _conflict(exc: OperationalError, marker: str) -> bool:
    return marker in str(getattr(exc, "orig", None) or exc).lower()


def _store_file(session: Session, path: Path, *, source: str) -> IngestResult:
    if USE_COPY and session.get_bind().dialect.name == "postgresql":
        return _copy_file(session, iter_records(path), source=source)
    # Chunks keep memory flat on a 30,000-article baseline file, inside the caller's one transaction.
    result = IngestResult()
    for chunk in _chunks(iter_records(path), CHUNK):
        result.add(store_records(session, chunk, source=source))
        session.flush()
    return result


def _copy_file(session: Session, records: Iterator[ArticleRecord | DeleteRecord], *, source: str) -> IngestResult:
    """store_records' rules for a whole file on PostgreSQL: the kept records (with the QA item each
    yields) COPY'd into a staging table and merged at once (services/ingest/bulk.py); then deletions
    and retractions as on the row path."""
    result = IngestResult()
    deleted: set[int] = set()
    retracted: set[int] = set()

    def staged() -> Iterator[tuple]:
        for seq, record in enumerate(records):
            if isinstance(record, DeleteRecord):
                deleted.update(record.pmids)
                continue
            retracted.update(_retracted_pmids((record,)))
            if not keep(record):
                result.filtered += 1
                continue
            item = mine(record.pmid, record.title, record.abstract)
            mined = ((item.question, item.context, item.long_answer, item.decision, item.confidence,
                      item.rule_version) if item is not None else (None,) * 6)
            yield (seq, record.pmid, record.title, record.abstract, record.journal, record.pub_date,
                   record.entrez_date, record.revised_date, json.dumps(list(record.mesh_terms)), record.language,
                   record.content_hash, *mined)

    merged = copy_merge(session, staged(), source=source, now=utcnow())
    result.stored, result.updated, result.mined = merged.stored, merged.updated, merged.mined
    result.duplicates = merged.staged - merged.stored - merged.updated
    _bury_and_mark(session, deleted, retracted, fresh_pmids_named_by_tombstones(session), source, result)
    return result


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
