"""The shared retrieval index's publisher (services/monitor/index.py): versions built from the store's
abstract vectors, extended with what was stored since, verified and memory-mapped by readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apikit import ingest_synth
from sqlmodel import col, select

from services.monitor.index import publish_index
from shared import ann
from shared.db import session_scope
from shared.embeddings import from_bytes
from shared.queries import is_live
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
    assert v2.sha256 in v2.path and Path(v2.path).is_file()

    index = ann.load(Path(v2.path), v2.sha256)
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
    keys, _ = ann.load(Path(v3.path), v3.sha256).search(from_bytes(fresh.vector)[None, :], 1)
    assert keys[0, 0] == probe.pmid

    # Old files beyond the newest three are pruned; the newest verify.
    assert sorted(Path(v3.path).parent.glob("*.faiss")) == sorted(Path(v.path) for v in _versions()[-3:])
    assert np.load(Path(v3.path).with_suffix(".keys.npy")).shape == (n, 2)
