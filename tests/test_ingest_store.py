"""Storing parsed records: dedup, revisions, deletions, bad files that leave nothing behind."""

import dataclasses

from sqlmodel import func, select

from services.devkit.synth import generate_articles, pubmed_xml
from services.ingest.parser import parse_pubmed_bytes
from services.ingest.store import ingest_file, store_records
from services.ingest.tasks import ingest_path
from shared.db import session_scope
from shared.tables import Abstract, IngestCursor, LineageItem, TrainingRun


def _count(**where):
    with session_scope() as s:
        stmt = select(func.count()).select_from(Abstract)
        for k, v in where.items():
            stmt = stmt.where(getattr(Abstract, k) == v)
        return s.exec(stmt).one()


def test_ingest_is_idempotent_and_dedups(store_env, synth_dir, monkeypatch):
    store_env(trigger_min_new="100000")
    first = ingest_path(synth_dir)
    assert first.files == 2 and first.stored == 50 and not first.errors
    again = ingest_path(synth_dir)  # same files: skipped by content hash, nothing rewritten
    assert again.files_skipped == 2 and again.stored == 0
    assert _count() == 50


def test_revised_record_updates_row_and_deletion_marks_it(store_env, tmp_path):
    store_env(trigger_min_new="100000")
    arts = generate_articles(5, seed=11)
    (tmp_path / "a.xml").write_bytes(pubmed_xml(arts))
    assert ingest_file(tmp_path / "a.xml").stored == 5
    revised = dict(arts[0], title=arts[0]["title"] + " (revised)")
    (tmp_path / "b.xml").write_bytes(pubmed_xml([revised], delete_pmids=[arts[1]["pmid"]]))
    res = ingest_file(tmp_path / "b.xml")
    assert (res.stored, res.updated, res.deleted) == (0, 1, 1)
    with session_scope() as s:
        assert s.get(Abstract, arts[0]["pmid"]).title.endswith("(revised)")
        assert s.get(Abstract, arts[1]["pmid"]).deleted


def test_same_text_under_another_pmid_is_a_duplicate(store_env):
    rec = [r for r in parse_pubmed_bytes(pubmed_xml(generate_articles(1, seed=5)))][0]
    twin = dataclasses.replace(rec, pmid=rec.pmid + 1)
    with session_scope() as s:
        res = store_records(s, [rec, twin], source="t")
    assert (res.stored, res.duplicates) == (1, 1)


def test_truncated_file_stores_nothing_and_records_the_error(store_env, tmp_path):
    store_env(trigger_min_new="100000")
    xml = pubmed_xml(generate_articles(10, seed=2))
    (tmp_path / "bad.xml").write_bytes(xml[: len(xml) * 2 // 3])
    (tmp_path / "good.xml").write_bytes(pubmed_xml(generate_articles(3, seed=9, start_pmid=91_000_000)))
    res = ingest_path(tmp_path)
    assert res.stored == 3 and len(res.errors) == 1 and "bad.xml" in res.errors[0]
    assert _count() == 3  # nothing from the truncated file, not even its complete first records
    with session_scope() as s:
        cur = s.exec(select(IngestCursor).where(IngestCursor.query.endswith("bad.xml"))).one()
        assert cur.last_error and cur.watermark is None


def test_trigger_queues_one_run_when_threshold_met(store_env, synth_dir):
    from services.trainer.tasks import trigger

    store_env(trigger_min_new="40", eager="0", broker_url="redis://127.0.0.1:1/0")  # no broker: row only
    ingest_path(synth_dir)  # abstracts.stored cannot reach the trainer: nothing is lost, the rows wait
    assert trigger() is not None  # what the train worker runs on that event (or on the sweeper's copy)
    with session_scope() as s:
        runs = s.exec(select(TrainingRun)).all()
        assert len(runs) == 1
        m = runs[0].manifest
        assert m["counts"]["new"] + m["counts"]["holdout"] == 50
        assert not set(m["new"]) & set(m["holdout"])
        claimed = s.exec(select(func.count()).where(Abstract.train_run_id == runs[0].id)).one()
        assert claimed == 50
        indexed = s.exec(select(LineageItem.role, func.count()).where(LineageItem.run_id == runs[0].id)
                         .group_by(LineageItem.role)).all()
        assert {role: n for role, n in indexed if role in ("new", "holdout")} == {
            "new": m["counts"]["new"], "holdout": m["counts"]["holdout"]}  # the manifest, indexed by PMID
    from services.trainer.trigger import maybe_queue_run

    assert maybe_queue_run("default") is None  # one active run per line; nothing new either


def test_trigger_waits_below_threshold(store_env, synth_dir):
    from services.trainer.tasks import trigger

    store_env(trigger_min_new="51", eager="0", broker_url="redis://127.0.0.1:1/0")
    ingest_path(synth_dir)
    assert trigger() is None
    with session_scope() as s:
        assert s.exec(select(func.count()).select_from(TrainingRun)).one() == 0


def test_retractions_are_marked_and_never_trained(store_env):
    from shared.queries import live_texts as texts_for
    from shared.queries import unclaimed_pmids

    recs = [r for r in parse_pubmed_bytes(pubmed_xml(generate_articles(4, seed=21)))]
    with session_scope() as s:
        assert store_records(s, recs, source="t").stored == 4
    notice = dataclasses.replace(recs[0], pmid=99_999_999, publication_types=("Retraction of Publication",),
                                 retraction_of=(recs[0].pmid,), retracted=False)
    flagged = dataclasses.replace(recs[1], retracted=True)
    # NLM's current type for a notice; before, one with an abstract became training text.
    new_style = dataclasses.replace(recs[2], pmid=99_999_998, publication_types=("Retraction Notice",),
                                    retraction_of=(), retracted=False)
    with session_scope() as s:
        res = store_records(s, [notice, flagged, new_style], source="t")
    assert res.retracted == 2 and res.stored == 0  # the notices themselves are not stored
    with session_scope() as s:
        assert s.get(Abstract, recs[0].pmid).retracted and s.get(Abstract, recs[1].pmid).retracted
        assert s.get(Abstract, 99_999_998) is None
        assert set(unclaimed_pmids(s)) == {recs[2].pmid, recs[3].pmid}
        assert len(texts_for(s, [r.pmid for r in recs])) == 2


def test_a_deletion_or_retraction_imported_before_its_target_still_applies(store_env, tmp_path):
    """Update files can be imported out of order. Before tombstones, a DeleteCitation or a retraction
    notice naming an unstored PMID was forgotten, and the record imported later went live."""
    from shared.queries import unclaimed_pmids
    from shared.tables import Tombstone

    store_env(trigger_min_new="100000")
    arts = generate_articles(3, seed=41)
    gone, retracted, kept = (a["pmid"] for a in arts)
    notice = parse_pubmed_bytes(pubmed_xml(generate_articles(1, seed=42, start_pmid=98_000_000)))
    notice = dataclasses.replace(next(iter(notice)), publication_types=("Retraction Notice",),
                                 retraction_of=(retracted,))
    (tmp_path / "early.xml").write_bytes(pubmed_xml([], delete_pmids=[gone]))
    assert ingest_file(tmp_path / "early.xml").deleted == 0  # nothing stored to mark yet
    with session_scope() as s:
        store_records(s, [notice], source="notice")
    (tmp_path / "late.xml").write_bytes(pubmed_xml(arts))
    res = ingest_file(tmp_path / "late.xml")
    assert (res.stored, res.deleted, res.retracted) == (3, 1, 1)
    with session_scope() as s:
        assert s.get(Abstract, gone).deleted and s.get(Abstract, retracted).retracted
        assert not s.get(Abstract, kept).deleted and not s.get(Abstract, kept).retracted
        assert set(unclaimed_pmids(s)) == {kept}  # only the live one will train
        assert {(t.pmid, t.kind) for t in s.exec(select(Tombstone))} == {(gone, "deleted"),
                                                                         (retracted, "retracted")}
    (tmp_path / "again.xml").write_bytes(pubmed_xml([], delete_pmids=[gone]))
    assert ingest_file(tmp_path / "again.xml").deleted == 0  # already marked: counted once


def test_a_file_streams_in_chunks_inside_one_transaction(store_env, tmp_path, monkeypatch):
    import services.ingest.store as store

    monkeypatch.setattr(store, "CHUNK", 7)
    store_env(trigger_min_new="100000")
    arts = generate_articles(20, seed=31)
    (tmp_path / "ok.xml").write_bytes(pubmed_xml(arts + [dict(arts[0])]))  # a repeat across chunks
    res = ingest_file(tmp_path / "ok.xml")
    assert (res.stored, res.duplicates) == (20, 1)
    xml = pubmed_xml(generate_articles(20, seed=32, start_pmid=92_000_000))
    (tmp_path / "cut.xml").write_bytes(xml[: int(len(xml) * 0.9)])  # fails after several chunks
    assert ingest_file(tmp_path / "cut.xml").errors
    assert _count() == 20  # the earlier chunks of the broken file were rolled back


def test_question_titles_with_a_conclusion_are_mined_and_mined_again_when_revised(store_env):
    from shared.tables import MinedQA

    recs = [r for r in parse_pubmed_bytes(pubmed_xml(generate_articles(3, seed=31)))]
    structured = ("BACKGROUND: Night shifts are common among nurses and their effect on sleep is debated.\n"
                  "RESULTS: Sleep was 40 minutes shorter after night shifts in 300 nurses over a year.\n"
                  "CONCLUSIONS: Night shifts significantly shortened sleep.")
    asked = dataclasses.replace(recs[0], title="Do night shifts shorten sleep?", abstract=structured)
    plain = recs[1]  # a statement title: not mined
    with session_scope() as s:
        assert store_records(s, [asked, plain], source="t").mined == 1
    with session_scope() as s:
        item = s.get(MinedQA, asked.pmid)
        assert (item.question, item.decision, item.long_answer) == (
            "Do night shifts shorten sleep?", "yes", "Night shifts significantly shortened sleep.")
        assert "CONCLUSIONS" not in item.context and item.content_hash == asked.content_hash
        assert s.get(MinedQA, plain.pmid) is None
    hedged = dataclasses.replace(asked, abstract=structured.replace("significantly shortened", "may shorten"))
    with session_scope() as s:
        res = store_records(s, [hedged], source="t")
    assert (res.updated, res.mined) == (1, 0)
    with session_scope() as s:
        assert s.get(MinedQA, asked.pmid) is None  # the revised text yields no item: the old one is gone


def test_an_older_revision_imported_late_does_not_overwrite_the_newer(store_env):
    """Before: the record imported last won, so an older revision overwrote a newer one."""
    from datetime import date

    (rec,) = [r for r in parse_pubmed_bytes(pubmed_xml(generate_articles(1, seed=41)))]
    newer = dataclasses.replace(rec, abstract=rec.abstract + " Revised in 2025 with corrected figures.",
                                revised_date=date(2025, 6, 1))
    older = dataclasses.replace(rec, abstract=rec.abstract + " The 2023 text.", revised_date=date(2023, 1, 1))
    with session_scope() as s:
        assert store_records(s, [newer], source="new").stored == 1
    with session_scope() as s:
        res = store_records(s, [older], source="old")
    assert (res.updated, res.duplicates) == (0, 1)
    with session_scope() as s:
        row = s.get(Abstract, rec.pmid)
        assert row.text.endswith("corrected figures.") and row.revised_date == date(2025, 6, 1)
    newest = dataclasses.replace(rec, abstract=rec.abstract + " 2026.", revised_date=date(2026, 1, 1))
    with session_scope() as s:
        assert store_records(s, [newest], source="newest").updated == 1


def test_a_write_committed_during_a_file_import_does_not_fail_it(medqa_env, tmp_path, monkeypatch):
    """SQLite (the embedded default): a worker committing while a file is imported (the trigger claiming
    the previous file's abstracts) made the import fail with "database is locked", because its transaction
    read first and could not upgrade a stale snapshot to a write (seen in CI's Redis-restart fault test).
    The import now holds the write lock from its first statement, and the other writer waits for it."""
    import threading

    import services.ingest.store as store

    medqa_env(trigger_min_new="100000")
    (tmp_path / "a.xml").write_bytes(pubmed_xml(generate_articles(20, seed=41)))
    other: list[BaseException | None] = []

    def another_writer() -> None:
        try:
            with session_scope() as s:
                s.add(IngestCursor(source="file", query="written by another process"))
            other.append(None)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            other.append(exc)

    writer = threading.Thread(target=another_writer)
    real_keep = store.keep

    def keep_after_a_concurrent_commit(record):  # type: ignore[no-untyped-def]
        if not writer.is_alive() and not other:  # once, after the import's first reads
            writer.start()
            writer.join(1.0)  # the import holds the lock: the writer waits (before: it committed here)
        return real_keep(record)

    monkeypatch.setattr(store, "keep", keep_after_a_concurrent_commit)
    result = ingest_file(tmp_path / "a.xml")
    writer.join(30)
    assert result.stored == 20 and not result.errors
    assert other == [None]  # the other writer waited, then committed
    assert _count() == 20
    with session_scope() as s:
        assert s.exec(select(IngestCursor).where(IngestCursor.query == "written by another process")).first()
