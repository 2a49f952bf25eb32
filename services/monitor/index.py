"""The shared retrieval index: built incrementally from the store's abstract vectors, published as an
immutable folder in the artifact store (a local path or object storage) with a RetrievalIndexVersion
row naming its location and sha256 (shared/ann.py).

Each pass lists the live abstracts' (pmid, content_hash), embeds those without a cached vector (the
AbstractEmbedding cache the API and the drift checks share), and publishes a new version only when
something changed: the previous version plus the abstracts stored or revised since, or a fresh build
when the collection outgrew the lists the previous one was trained on. Abstracts deleted or retracted
since stay in the file until the next fresh build; the API filters them at query time, as it always
re-checks citations against the store. API replicas with MEDQA_API_RETRIEVAL_INDEX=shared load the
newest version and swap it as they swap adapters (services/api/retrieval.py).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from sqlmodel import Session, col, select

from shared import ann
from shared.artifacts import ArtifactError, artifact_store, local_folder
from shared.checksums import sha256_file
from shared.db import session_scope
from shared.embeddings import MODEL_NAME, abstract_vectors
from shared.queries import is_live
from shared.settings import Settings, get_settings
from shared.tables import Abstract, RetrievalIndexVersion

log = logging.getLogger("medqa.monitor.index")
_BATCH = 5000  # abstracts embedded (or read from the cache) per transaction
KEEP_VERSIONS = 3  # published versions kept in the store: replicas still on an older one can finish swapping


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
    with session_scope() as session:
        live = _live(session)
        last = session.exec(select(RetrievalIndexVersion).order_by(col(RetrievalIndexVersion.id).desc())).first()
        last_state = (last.path, last.sha256) if last is not None else None
    if not live:
        return None
    want = {p: ann.fingerprint(h) for p, h in live.items()}
    have: dict[int, int] = {}
    previous = None
    if last_state is not None:  # fetched into this host's cache, verified, memory-mapped
        previous, have = ann.read_version(local_folder(*last_state, settings, what="retrieval index"))
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
    location, sha = _put(index, covered, settings)
    with session_scope() as session:
        row = RetrievalIndexVersion(path=location, sha256=sha, vectors=index.size, trained_on=index.trained_on,
                                    embedding_model=MODEL_NAME, added=len(added), rebuilt=rebuilt)
        session.add(row)
        session.flush()
        version_id = row.id
        stale = [r.path for r in session.exec(select(RetrievalIndexVersion).order_by(
            col(RetrievalIndexVersion.id).desc()).offset(KEEP_VERSIONS).limit(KEEP_VERSIONS))]
    _prune(stale, settings)
    log.info("retrieval index v%s: %d vectors (%d added%s)", version_id, index.size, len(added),
             ", rebuilt" if rebuilt else "")
    return version_id


def _put(index: ann.AnnIndex, covered: dict[int, int], settings: Settings) -> tuple[str, str]:
    """Write the version's folder beside the data and put it in the artifact store, under a key of its
    own (uploaded, verified, then committed: shared/artifacts.py); returns (location, folder sha256)."""
    store = artifact_store(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.data_dir, prefix="retrieval-") as tmp:
        folder = ann.write_version(index, covered, Path(tmp) / "version")
        key = f"retrieval/{sha256_file(folder / ann.INDEX_FILE)}"
        sha = store.put_folder(folder, key)
    return store.uri(key), sha


def _prune(locations: list[str], settings: Settings) -> None:
    """Remove the files of versions older than the newest KEEP_VERSIONS (rows stay, as history); a few
    past the window each time, so one missed by a failed pass goes with the next."""
    store = artifact_store(settings)
    for location in locations:
        key = store.key_of(location)
        try:
            if key is not None:
                store.delete(key)
        except ArtifactError as exc:  # housekeeping: the next pass tries again
            log.warning("retrieval index files at %s not removed: %s", location, exc)
