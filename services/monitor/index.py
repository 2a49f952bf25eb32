"""The shared retrieval index: built incrementally from the store's abstract vectors, published as an
immutable file under the artifact store with a RetrievalIndexVersion row (shared/ann.py).

Each pass lists the live abstracts' (pmid, content_hash), embeds those without a cached vector (the
AbstractEmbedding cache the API and the drift checks share), and publishes a new version only when
something changed: the previous version plus the abstracts stored or revised since, or a fresh build
when the collection outgrew the lists the previous one was trained on. Abstracts deleted or retracted
since stay in the file until the next fresh build; the API filters them at query time, as it always
re-checks citations against the store. (The API does not read these versions yet: its vector ranker
searches its own in-memory matrix; see the README's "Scale" sections.)
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
from sqlmodel import Session, col, select

from shared import ann
from shared.db import session_scope
from shared.embeddings import MODEL_NAME, abstract_vectors
from shared.queries import is_live
from shared.settings import get_settings
from shared.tables import Abstract, RetrievalIndexVersion

log = logging.getLogger("medqa.monitor.index")
_BATCH = 5000  # abstracts embedded (or read from the cache) per transaction
KEEP_FILES = 3  # published versions kept on disk: replicas still on an older one can finish swapping


def _fingerprint(content_hash: str) -> int:
    return zlib.crc32(content_hash.encode())


def _keys_path(index_path: Path) -> Path:
    return index_path.with_suffix(".keys.npy")


def _live(session: Session) -> dict[int, str]:
    return dict(session.exec(select(Abstract.pmid, Abstract.content_hash).where(is_live())).all())


def _vectors(pmids: list[int]) -> np.ndarray:
    """Vectors of `pmids` (live abstracts), embedding what the cache lacks, a batch per transaction."""
    parts = []
    for start in range(0, len(pmids), _BATCH):
        with session_scope() as session:
            rows = list(session.exec(select(Abstract).where(col(Abstract.pmid).in_(pmids[start:start + _BATCH]))
                                     .order_by(col(Abstract.pmid))))
            by_pmid = {r.pmid: r for r in rows}
            ordered = [by_pmid[p] for p in pmids[start:start + _BATCH] if p in by_pmid]
            parts.append(abstract_vectors(session, ordered))
    return np.vstack(parts) if parts else np.zeros((0, ann.DIM), np.float32)


def publish_index() -> int | None:
    """Publish the next version if the live abstracts changed since the last one; its id, or None."""
    settings = get_settings()
    folder = Path(settings.artifact_dir) / "retrieval"  # type: ignore[arg-type]
    with session_scope() as session:
        live = _live(session)
        last = session.exec(select(RetrievalIndexVersion).order_by(col(RetrievalIndexVersion.id).desc())).first()
        last_state = (Path(last.path), last.sha256, last.trained_on) if last is not None else None
    if not live:
        return None
    want = {p: _fingerprint(h) for p, h in live.items()}
    have: dict[int, int] = {}
    previous = None
    if last_state is not None:
        keys = np.load(_keys_path(last_state[0]))
        have = dict(zip(keys[:, 0].tolist(), keys[:, 1].tolist(), strict=True))
        previous = ann.load(last_state[0], last_state[1])
    added = sorted(p for p, f in want.items() if have.get(p) != f)
    if previous is not None and not added:
        return None  # nothing new or revised (drop-outs are filtered at query time)
    replaced = np.array([p for p in added if p in have], dtype=np.int64)
    grows_past = previous is not None and len(have) + len(added) > ann.GROWTH_RETRAIN * previous.trained_on
    if previous is None or grows_past:
        pmids = sorted(want)
        index = ann.build(_vectors(pmids), np.array(pmids, dtype=np.int64), seed=settings.seed)
        covered = {p: want[p] for p in pmids}
    else:
        index = ann.extend(previous, _vectors(added), np.array(added, dtype=np.int64), replaced=replaced)
        covered = {**have, **{p: want[p] for p in added}}
    rebuilt = previous is None or grows_past
    path, sha = ann.save(index, folder)
    np.save(_keys_path(path), np.array(sorted(covered.items()), dtype=np.int64).reshape(-1, 2))
    with session_scope() as session:
        row = RetrievalIndexVersion(path=str(path), sha256=sha, vectors=index.size, trained_on=index.trained_on,
                                    embedding_model=MODEL_NAME, added=len(added), rebuilt=rebuilt)
        session.add(row)
        session.flush()
        version_id = row.id
        _prune(session, folder)
    log.info("retrieval index v%s: %d vectors (%d added%s)", version_id, index.size, len(added),
             ", rebuilt" if rebuilt else "")
    return version_id


def _prune(session: Session, folder: Path) -> None:
    keep = {Path(r.path) for r in session.exec(select(RetrievalIndexVersion)
                                               .order_by(col(RetrievalIndexVersion.id).desc()).limit(KEEP_FILES))}
    for old in folder.glob("*.faiss"):
        if old not in keep:
            for sidecar in (old, _keys_path(old), old.with_suffix(".trained")):
                sidecar.unlink(missing_ok=True)
