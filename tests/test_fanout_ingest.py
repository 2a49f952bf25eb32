"""Fan-out ingest: one task per file keyed by its sha256, N workers importing N files at once, each
file exactly once; and the PostgreSQL bulk path (COPY + one merge) storing what the row path stores."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis
from conftest import TEST_REDIS
from procs import Worker, wait_for
from sqlalchemy import text
from sqlmodel import col, func, select
from typer.testing import CliRunner

import services.ingest.store as store
from services.cli import app
from services.devkit.synth import generate_articles, pubmed_xml, retract, retraction_notice, write_corpus
from services.ingest.parser import ArticleRecord, iter_records
from services.ingest.store import import_file, ingest_file, keep
from services.ingest.tasks import fan_out, import_queued_file, poll
from shared.celery_app import app as celery
from shared.checksums import sha256_file
from shared.db import session_scope
from shared.tables import Abstract, IngestCursor, IngestFile, IngestFileStatus, MinedQA, Tombstone

runner = CliRunner()


def _queued_messages(r: redis.Redis) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in the ingest queue (kombu's Redis list)."""
    found = []
    for raw in r.lrange("ingest", 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        found.append((message["headers"]["task"], args))
    return found


def _files() -> list[IngestFile]:
    with session_scope() as s:
        return list(s.exec(select(IngestFile).order_by(col(IngestFile.id))))


def _abstracts() -> int:
    with session_scope() as s:
        return s.exec(select(func.count()).select_from(Abstract)).one()


@pytest.fixture
def broker() -> redis.Redis:
    r = redis.Redis.from_url(TEST_REDIS)
    r.flushdb()
    yield r
    r.flushdb()


def test_queueing_a_folder_sends_one_task_per_file_with_its_sha256_row(medqa_env, broker, tmp_path):
    medqa_env(eager="0", broker_url=TEST_REDIS, trigger_min_new="100000")
    folder = tmp_path / "baseline"
    paths = write_corpus(folder, files=3, per_file=5, seed=7)
    shutil.copy(paths[0], folder / "synth9999-copy.xml")  # the same content under another name

    res = runner.invoke(app, ["ingest", "files", str(folder), "--queue-only", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"queued": 3, "pending": 1, "skipped": 0, "errors": []}
    rows = _files()
    assert [(Path(r.path).name, r.sha256, r.status) for r in rows] == [
        (p.name, sha256_file(p), IngestFileStatus.queued) for p in paths]
    assert sorted(_queued_messages(broker)) == sorted(("ingest.file", [r.id]) for r in rows)  # ids only
    assert _abstracts() == 0  # queue-only: the workers import

    broker.flushdb()
    assert import_queued_file(rows[0].id)["stored"] == 5  # what a worker runs for the first message
    res = runner.invoke(app, ["ingest", "files", str(folder), "--queue-only", "--json"])
    assert json.loads(res.stdout) == {"queued": 0, "pending": 2, "skipped": 2, "errors": []}
    assert _queued_messages(broker) == []  # in hand already: no second task

    # A task lost with its worker (a pool child killed by the kernel is acked, not redelivered): beat's
    # poll sends the file again once it has been queued or importing for 3 x the visibility timeout.
    broker.flushdb()
    assert poll() is None  # nothing stale yet, no watch folder, no e-mail
    with session_scope() as s:
        lost = s.get(IngestFile, rows[1].id)
        lost.status, lost.started_at = IngestFileStatus.importing, lost.queued_at - timedelta(hours=1)
        s.add(lost)
    assert poll() == {"requeued": [rows[1].id]}
    assert _queued_messages(broker) == [("ingest.file", [rows[1].id])]

    # Without --queue-only (and with no worker running) the command imports every file itself.
    res = runner.invoke(app, ["ingest", "files", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["files"], doc["files_skipped"], doc["stored"]) == (2, 2, 10)
    assert [r.status for r in _files()] == [IngestFileStatus.done] * 3 and _abstracts() == 15


def test_a_file_is_imported_once_and_a_killed_import_leaves_it_importable(store_env, tmp_path, monkeypatch):
    store_env(trigger_min_new="100000")
    (tmp_path / "a.xml").write_bytes(pubmed_xml(generate_articles(30, seed=13)))
    real_keep = store.keep
    seen = []

    class Killed(BaseException):  # what a SIGKILL mid-file amounts to: the transaction never commits
        pass

    def dies_mid_file(record):  # type: ignore[no-untyped-def]
        seen.append(record.pmid)
        if len(seen) == 20:
            raise Killed
        return real_keep(record)

    monkeypatch.setattr(store, "keep", dies_mid_file)
    with pytest.raises(Killed):
        ingest_file(tmp_path / "a.xml")
    (row,) = _files()
    assert (row.status, row.attempts, _abstracts()) == (IngestFileStatus.importing, 1, 0)  # nothing of it kept

    monkeypatch.setattr(store, "keep", real_keep)
    first = ingest_file(tmp_path / "a.xml")
    assert (first.files, first.stored) == (1, 30)
    shutil.copy(tmp_path / "a.xml", tmp_path / "renamed.xml")
    for again in (ingest_file(tmp_path / "a.xml"), ingest_file(tmp_path / "renamed.xml")):
        assert (again.files, again.files_skipped, again.stored) == (0, 1, 0)
    (row,) = _files()
    assert (row.status, row.attempts, row.stored) == (IngestFileStatus.done, 2, 30)
    assert import_file(row.id).stored == 30  # a redelivered task: the row's counts, nothing imported again
    assert _abstracts() == 30 and _files()[0].attempts == 2
    with session_scope() as s:
        assert s.exec(select(IngestCursor)).one().stored == 30  # the cursor counted the file once


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.postgres
def test_two_worker_processes_store_every_article_once_on_postgres(medqa_env, pg_url, broker, tmp_path):
    medqa_env(eager="0", database_url=pg_url, broker_url=TEST_REDIS, visibility_timeout_s="10",
              trigger_min_new="100000000", monitor_after_ingest="0")
    folder = tmp_path / "baseline"
    paths = write_corpus(folder, files=6, per_file=1500, seed=19)
    # An update file that revises 200 of the first file's articles (newer DateRevised), deletes 50
    # and repeats 50 unchanged: its rows depend on which files went in before it, not on the workers.
    first = generate_articles(1500, seed=19 * 10_007, start_pmid=90_000_000, entrez_start=date(2024, 1, 1), days=7)
    revised = [dict(a, abstract=a["abstract"] + " Revised.", sections=[*a["sections"], ("", "Revised.")],
                    revised_date=a["revised_date"] + timedelta(days=400)) for a in first[:200]]
    (folder / "update0001.xml").write_bytes(pubmed_xml(revised + first[200:250],
                                                       delete_pmids=[a["pmid"] for a in first[250:300]]))
    shutil.copy(paths[1], folder / "synth0002-again.xml")  # same content: one row, one import
    expected = {r.pmid for p in paths for r in iter_records(p) if isinstance(r, ArticleRecord) and keep(r)}

    workers = [Worker(tmp_path / f"worker{n}.log", "ingest") for n in range(2)]
    try:
        queued = fan_out(store.pubmed_files(folder))
        assert sum(q.action == "send" for q in queued) == 7
        for item in queued:  # every task twice, as a sweeper's re-send or a redelivery would
            if item.action == "send":
                celery.send_task("ingest.file", args=[item.id], queue="ingest")
        wait_for("every file imported", lambda: all(r.status == IngestFileStatus.done for r in _files()), 240)
        rows = _files()
    finally:
        for worker in workers:
            worker.stop()
    with session_scope() as s:
        pmids = s.exec(select(Abstract.pmid)).all()
        assert len(pmids) == len(set(pmids)) == len(expected) and set(pmids) == expected  # each article once
        assert s.exec(select(func.count()).where(col(Abstract.deleted).is_(True))).one() == 50
        assert s.exec(select(func.count()).where(Abstract.text.endswith("Revised."))).one() == 200
    assert len(rows) == 7 and all(r.attempts == 1 for r in rows)  # no file imported twice
    assert sum(r.stored for r in rows) == len(expected)
    assert len({r.importer for r in rows}) == 2  # both workers imported files
    logs = "".join(w.log.read_text() for w in workers)
    assert "Traceback" not in logs, logs[-3000:]


def _scenario() -> list[tuple[str, bytes]]:
    """Files in import order: first publications, then updates with revisions (newer and older), an
    unchanged repeat, a PMID twice in one file, a deletion, a retracted article, a retraction notice,
    the same text under a new PMID, a filtered record, deletions and retractions of PMIDs not stored
    yet (tombstones), and those PMIDs arriving later."""
    arts = generate_articles(40, seed=23)
    asked = ("BACKGROUND: Night shifts are common among nurses and their effect on sleep is debated.\n"
             "RESULTS: Sleep was 40 minutes shorter after night shifts in 300 nurses over a year.\n"
             "CONCLUSIONS: Night shifts significantly shortened sleep.")
    arts[7] = dict(arts[7], title="Do night shifts shorten sleep?", abstract=asked, sections=[
        tuple(line.split(": ", 1)) for line in asked.splitlines()])  # mined
    arts[8] = dict(arts[8], title="Does coffee shorten sleep?", abstract=asked.replace("Night shifts", "Coffee"),
                   sections=[tuple(line.split(": ", 1)) for line in asked.replace("Night shifts", "Coffee")
                             .splitlines()])

    def revise(a: dict, note: str, days: int) -> dict:
        return dict(a, abstract=a["abstract"] + note, sections=[*a["sections"], ("", note.strip())],
                    revised_date=a["revised_date"] + timedelta(days=days))

    late = generate_articles(3, seed=24, start_pmid=95_000_000)
    new = generate_articles(2, seed=25, start_pmid=96_000_000)
    short = dict(new[1], pmid=96_000_009, abstract="Too short.", sections=[("", "Too short.")])
    twin = dict(arts[6], pmid=96_000_010)  # arts[6]'s text under a new PMID
    hedged = dict(arts[7], abstract=asked.replace("significantly shortened", "may shorten"),
                  sections=[tuple(line.split(": ", 1)) for line in asked.replace(
                      "significantly shortened", "may shorten").splitlines()],
                  revised_date=arts[7]["revised_date"] + timedelta(days=30))
    update = [revise(arts[0], " Corrected figures.", 30), revise(arts[1], " An older text.", -30), arts[2],
              retract(arts[3]), retraction_notice(arts[4]["pmid"], pmid=97_000_000, seed=3),
              new[0], revise(new[0], " Second version in the same file.", 10), twin, short, hedged,
              revise(arts[8], " Updated.", 5)]
    return [("a.xml", pubmed_xml(arts)),
            ("b.xml", pubmed_xml(update, delete_pmids=[arts[5]["pmid"], late[0]["pmid"]])),
            ("c.xml", pubmed_xml([retraction_notice(late[1]["pmid"], pmid=97_000_001, seed=4),
                                  revise(arts[5], " Revised after deletion.", 60)])),
            ("d.xml", pubmed_xml(late))]


def _snapshot() -> dict:
    def rows(model, *skip: str) -> list[dict]:  # type: ignore[no-untyped-def]
        with session_scope() as s:
            found = [r.model_dump(exclude=set(skip)) for r in s.exec(select(model))]
        return sorted(found, key=lambda r: json.dumps(r, sort_keys=True, default=str))

    return {"abstracts": rows(Abstract, "ingested_at"), "mined": rows(MinedQA, "mined_at"),
            "tombstones": rows(Tombstone, "recorded_at"),
            "files": [(Path(f.path).name, f.stored, f.updated, f.filtered, f.deleted, f.retracted, f.mined)
                      for f in _files()]}


def _import_scenario(folder: Path) -> dict:
    for name, _ in _scenario():
        assert not ingest_file(folder / name).errors
    return _snapshot()


@pytest.mark.postgres
def test_the_copy_merge_stores_what_the_row_path_stores(medqa_env, pg_url, tmp_path, monkeypatch):
    medqa_env(trigger_min_new="100000")
    for name, data in _scenario():
        (tmp_path / name).write_bytes(data)
    sqlite_rows = _import_scenario(tmp_path)  # SQLite: the row path (store_records, 1,000 at a time)

    medqa_env(trigger_min_new="100000", database_url=pg_url)
    monkeypatch.setattr(store, "USE_COPY", False)
    pg_rows = _import_scenario(tmp_path)  # PostgreSQL, the row path
    with session_scope() as s:
        s.execute(text("TRUNCATE minedqa, abstract, tombstone, ingestfile, ingestcursor CASCADE"))
    monkeypatch.setattr(store, "USE_COPY", True)
    copied = _import_scenario(tmp_path)  # PostgreSQL, COPY + merge

    assert copied == pg_rows == sqlite_rows
    by_pmid = {a["pmid"]: a for a in copied["abstracts"]}
    arts = generate_articles(40, seed=23)
    assert by_pmid[arts[0]["pmid"]]["text"].endswith("Corrected figures.")  # the newer revision won
    assert not by_pmid[arts[1]["pmid"]]["text"].endswith("An older text.")  # the older one did not
    assert by_pmid[arts[3]["pmid"]]["retracted"] and by_pmid[arts[4]["pmid"]]["retracted"]
    assert not by_pmid[arts[5]["pmid"]]["deleted"]  # deleted, then revised: live again, as on the row path
    assert by_pmid[95_000_000]["deleted"] and by_pmid[95_000_001]["retracted"]  # tombstones applied
    assert 96_000_010 not in by_pmid and 96_000_009 not in by_pmid  # the twin text, the short abstract
    assert by_pmid[96_000_000]["text"].endswith("Second version in the same file.")
    assert [m["pmid"] for m in copied["mined"]] == [arts[8]["pmid"]]  # the hedged revision lost its item
    # (stored, updated, filtered, deleted, retracted, mined) per file. Duplicates are left out: the row
    # path does not count a PMID repeated within one chunk, the merge counts it as a duplicate.
    assert [f[1:] for f in copied["files"]] == [(40, 0, 0, 0, 0, 2), (1, 3, 3, 1, 2, 1), (0, 1, 1, 0, 0, 0),
                                                (3, 0, 0, 1, 1, 0)]

