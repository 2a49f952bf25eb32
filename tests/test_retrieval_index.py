"""The shared retrieval index: its publisher (services/monitor/index.py) builds versions from the
store's abstract vectors and extends them with what was stored since; API replicas with
MEDQA_API_RETRIEVAL_INDEX=shared search the newest (fetched from the artifact store, verified,
memory-mapped) plus, in memory, only what it lacks, and refuse a version that does not verify."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
from apikit import ingest_synth
from s3kit import moto_server, s3_settings, s3fs_client
from sqlmodel import col, select

from services.monitor.index import publish_index
from shared import ann
from shared.artifacts import local_folder
from shared.checksums import sha256_folder
from shared.db import session_scope
from shared.embeddings import embed, from_bytes
from shared.queries import is_live
from shared.settings import get_settings
from shared.tables import Abstract, AbstractEmbedding, RetrievalIndexVersion


def _versions() -> list[RetrievalIndexVersion]:
    with session_scope() as s:
        return list(s.exec(select(RetrievalIndexVersion).order_by(col(RetrievalIndexVersion.id))))


def _live() -> int:
    with session_scope() as s:
        return len(s.exec(select(Abstract.pmid).where(is_live())).all())


@pytest.mark.slow
def test_versions_follow_the_store(medqa_env, tmp_path):
    ingest_synth(tmp_path / "a", files=1, per_file=30, seed=7)
    n_first = _live()
    first = publish_index()
    assert first is not None and publish_index() is None  # nothing changed: no new version
    ingest_synth(tmp_path / "b", files=1, per_file=12, seed=8, start_pmid=91_000_000)
    n = _live()
    second = publish_index()
    v1, v2 = _versions()
    assert (v1.id, v2.id) == (first, second)
    assert (v1.vectors, v1.rebuilt) == (n_first, True)
    assert (v2.vectors, v2.added, v2.rebuilt) == (n, n - n_first, False)  # extended, not rebuilt
    assert Path(v2.path).is_dir() and sha256_folder(Path(v2.path)) == v2.sha256  # a folder in the local store

    index, _ = ann.read_version(local_folder(v2.path, v2.sha256))
    with session_scope() as s:
        rows = s.exec(select(AbstractEmbedding)).all()
        assert len(rows) == n  # the vectors the API and drift share were computed once
        probe = rows[-1]
        keys, cosines = index.search(from_bytes(probe.vector)[None, :], 3)
        # 8-bit codes: approximate cosines (the API re-scores its hits with the exact vectors)
        assert keys[0, 0] == probe.pmid and cosines[0, 0] > 0.9
        # A revised abstract: its new text's vector replaces the old one in the next version.
        paper = s.get(Abstract, probe.pmid)
        paper.text, paper.content_hash = "Completely different words about renal dialysis outcomes.", "changed"
        s.add(paper)
    third = publish_index()
    v3 = _versions()[-1]
    assert v3.id == third and (v3.vectors, v3.added) == (42, 1)
    with session_scope() as s:
        fresh = s.exec(select(AbstractEmbedding).where(AbstractEmbedding.pmid == probe.pmid)).one()
        assert fresh.content_hash == "changed"
    index, covered = ann.read_version(local_folder(v3.path, v3.sha256))
    keys, _ = index.search(from_bytes(fresh.vector)[None, :], 1)
    assert keys[0, 0] == probe.pmid and covered[probe.pmid] == ann.fingerprint("changed") and len(covered) == n

    # Versions beyond the newest three lose their files (their rows stay, as history).
    for _ in range(2):
        ingest_synth(tmp_path / f"more{_}", files=1, per_file=3, seed=20 + _, start_pmid=92_000_000 + 1000 * _)
        publish_index()
    versions = _versions()
    assert sorted(Path(v3.path).parent.iterdir()) == sorted(Path(v.path) for v in versions[-3:])
    assert not Path(versions[0].path).exists()


def _titles() -> dict[int, str]:
    with session_scope() as s:
        return dict(s.exec(select(Abstract.pmid, Abstract.title).where(is_live())).all())


def _top(index, question: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [h.pmid for h in index.retrieve([question], 3)[0]]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_replicas_search_the_shared_version_and_hold_only_the_rest(medqa_env, tmp_path, where, caplog):
    from services.api.retrieval import RetrievalIndex

    medqa_env(trigger_min_new="100000")  # no training: only the index is looked at
    with contextlib.ExitStack() as stack:
        if where == "s3":  # the version comes from object storage into the replica's own cache
            endpoint = stack.enter_context(moto_server())
            s3fs_client(endpoint).mkdir("medqa")
            medqa_env(**s3_settings(endpoint, "s3://medqa/artifacts"), trigger_min_new="100000")
        ingest_synth(tmp_path / "a", files=1, per_file=30, seed=7)
        early = RetrievalIndex(shared=True)  # nothing published yet: every vector in memory, and it says so
        with caplog.at_level(logging.WARNING, logger="medqa.api.retrieval"):
            done = early.refresh()
            early.refresh()
        assert (done["shared_version"], done["in_memory"], done["size"]) == (None, 30, 30)
        assert caplog.text.count("no retrieval index version is published yet") == 1
        v1 = publish_index()
        index = RetrievalIndex(shared=True)
        done = index.refresh()
        assert (done["shared_version"], done["in_memory"], done["size"]) == (v1, 0, 30)  # no vector held in memory
        titles = _titles()
        some = sorted(titles)[5]
        assert _top(index, titles[some])[0] == some
        hit = index.retrieve([titles[some]], 1)[0][0]
        with session_scope() as s:  # relevance is the exact cosine, not the index's 8-bit approximation
            exact = from_bytes(s.exec(select(AbstractEmbedding.vector).where(AbstractEmbedding.pmid == some)).one())
        assert abs(hit.score - float(embed([titles[some]])[0] @ exact)) < 1e-5

        # Stored since the version: held in memory until the next version covers them.
        ingest_synth(tmp_path / "b", files=1, per_file=12, seed=8, start_pmid=91_000_000)
        done = index.refresh()
        assert (done["shared_version"], done["in_memory"], done["size"]) == (v1, 12, 42)
        new = max(_titles())
        assert _top(index, _titles()[new])[0] == new
        # Retracted after the version was built: still in its file, never returned.
        with session_scope() as s:
            paper = s.get(Abstract, some)
            paper.retracted = True
            s.add(paper)
        assert some not in _top(index, titles[some])

        v2 = publish_index()
        done = index.refresh()
        assert (done["shared_version"], done["in_memory"], done["size"]) == (v2, 0, 41)
        if where == "s3":  # the replica's copy of the old version went with the swap
            cached = {p.name for p in (get_settings().data_dir / "artifact-cache").iterdir()}
            with session_scope() as s:
                assert cached == {s.get(RetrievalIndexVersion, v2).sha256}

        # A version whose files do not verify is refused; the current one keeps serving.
        ingest_synth(tmp_path / "c", files=1, per_file=3, seed=9, start_pmid=93_000_000)
        v3 = publish_index()
        with session_scope() as s:
            row = s.get(RetrievalIndexVersion, v3)
            location = row.path
        _tamper(location, where)
        done = index.refresh()
        assert done["shared_version"] == v2 and done["in_memory"] == 3
        assert index.last_version_error is not None and f"cannot use retrieval index v{v3}" in index.last_version_error
        assert _top(index, _titles()[new])[0] == new


def _tamper(location: str, where: str) -> None:
    """Change the version's keys file, same size, different bytes."""
    if where == "local":
        keys = Path(location) / ann.KEYS_FILE
        data = keys.read_bytes()
        keys.write_bytes(data[:-8] + bytes(8))
        return
    s3 = s3fs_client(get_settings().s3_endpoint_url)
    key = f"{location.removeprefix('s3://')}/{ann.KEYS_FILE}"
    data = s3.cat_file(key)
    s3.pipe_file(key, data[:-8] + bytes(8))
