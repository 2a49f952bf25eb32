"""Retrieval: the live stored abstracts ranked for a question, and each hit's relevance.

Ranking (MEDQA_API_RETRIEVER): MiniLM vectors in an in-memory matrix searched by cosine (the default:
best on PubMedQA's development share among 3,000 abstracts, bench/retrieval_quality.py), the store's
full-text search (shared/search.py), or both fused by reciprocal rank. Relevance is always the cosine,
which means the same for every question, so one floor (MEDQA_API_MIN_RELEVANCE) decides what counts
as evidence.

Refresh is incremental in the work that costs: each pass lists (pmid, content_hash) of the live
abstracts, two narrow columns, and embeds only rows the index lacks or whose text changed. Listing
the hashes, rather than following a pmid or ingested_at watermark, also catches what a watermark
misses: a revised abstract (same pmid, new text), an un-deleted one, and drop-outs (deleted,
retracted). Vectors come from the AbstractEmbedding cache and new ones are stored there, so the
monitor and every API replica share one embedding per abstract text.

With MEDQA_API_RETRIEVAL_INDEX=shared the replica does not hold every vector: each refresh looks for
a newer version of the ANN index the monitor publishes (services/monitor/index.py), fetches it from
the artifact store into this host's cache, verifies its sha256, memory-maps it and swaps it in, as a
new champion's adapter is swapped; the in-memory matrix then holds only the live abstracts that
version does not cover (stored or revised since). The vector ranker merges both by cosine, and the
hits' relevance is their exact cosine from the shared vector cache. A version that cannot be fetched
or verified is refused, and the current one keeps serving.

Readers never lock: a refresh builds a new immutable snapshot and swaps the reference. Citations
are re-checked against the store at answer time, so an abstract deleted or retracted since the last
refresh (or since the shared version was built) is dropped before it can be cited.
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
from sqlmodel import Session, col, select

from shared import ann
from shared.artifacts import ArtifactError, cache_dir, local_folder
from shared.db import session_scope
from shared.embeddings import DIM, MODEL_NAME, embed, from_bytes, store_vectors
from shared.queries import abstract_text, is_live, live_abstracts
from shared.search import RANKERS, combined, lexical_search, merge_hits, over_floor, vector_hits
from shared.tables import Abstract, AbstractEmbedding, RetrievalIndexVersion

log = logging.getLogger("medqa.api.retrieval")

# The MiniLM tokenizer is a Rust object that raises "Already borrowed" when two threads call it at
# once; the answer worker (questions) and the refresher (abstracts) share it through this lock.
EMBED_LOCK = threading.Lock()
def warm_embedder() -> None:
    """Load the embedder and run it once (a start-up warms it, so the first question does not)."""
    with EMBED_LOCK:
        embed(["warm-up"])


_IN_CHUNK = 5000  # pmids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
CANDIDATES = 20  # per ranker, before fusion and the relevance floor


@dataclass(frozen=True)
class Hit:
    pmid: int
    title: str
    text: str
    score: float


@dataclass(frozen=True)
class _Snapshot:
    pmids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM), np.float32))
    hashes: dict[int, str] = field(default_factory=dict)

    @functools.cached_property
    def position(self) -> dict[int, int]:
        """pmid -> its row in `matrix`."""
        return {int(p): i for i, p in enumerate(self.pmids)}

    def extended(self, pmids: Sequence[int], vectors: np.ndarray, hashes: dict[int, str]) -> _Snapshot:
        return _Snapshot(np.concatenate([self.pmids, np.asarray(pmids, np.int64)]),
                         np.concatenate([self.matrix, vectors.astype(np.float32)]),
                         {**self.hashes, **{p: hashes[p] for p in pmids}})


class RefreshCounts(TypedDict):
    added: int  # vectors added to memory
    removed: int  # dropped from memory (deleted, retracted, revised, or covered by a new shared version)
    size: int  # live abstracts searchable
    pending: int  # live abstracts without a vector yet
    in_memory: int  # vectors held in this replica's memory
    shared_version: int | None  # the published ANN index version searched, if any


@dataclass(frozen=True)
class _SharedVersion:
    """A published ANN index version, memory-mapped from this host's copy."""

    version_id: int
    index: ann.AnnIndex
    covered: dict[int, int]  # pmid -> fingerprint of the text its vector was computed from
    folder: Path

    def search(self, q: np.ndarray, depth: int) -> list[list[tuple[int, float]]]:
        keys, scores = self.index.search(q, depth)
        return [[(int(k), float(v)) for k, v in zip(ks, vs, strict=True) if k >= 0]
                for ks, vs in zip(keys, scores, strict=True)]


def _live_hashes(session: Session) -> dict[int, str]:
    rows = session.exec(select(Abstract.pmid, Abstract.content_hash).where(is_live()))
    return dict(rows.all())  # type: ignore[arg-type]


def _cached_vectors(session: Session, want: dict[int, str]) -> dict[int, np.ndarray]:
    """Stored vectors that still match the abstract's current text."""
    out: dict[int, np.ndarray] = {}
    pmids = sorted(want)
    for i in range(0, len(pmids), _IN_CHUNK):
        rows = session.exec(select(AbstractEmbedding).where(
            col(AbstractEmbedding.pmid).in_(pmids[i:i + _IN_CHUNK]), AbstractEmbedding.model == MODEL_NAME))
        out.update({e.pmid: from_bytes(e.vector) for e in rows if e.content_hash == want[e.pmid]})
    return out


class RetrievalIndex:
    def __init__(self, *, embed_chunk: int = 64, shared: bool = False) -> None:
        # Small chunks: the refresher holds EMBED_LOCK per chunk, and questions wait behind it.
        self.embed_chunk = embed_chunk
        self.shared = shared  # search the published ANN index (plus what it lacks in memory)
        self._snap = _Snapshot()
        self._version: _SharedVersion | None = None
        self._covered_live = 0  # live abstracts the shared version covers, at the last refresh
        self.last_version_error: str | None = None
        self._said_none_published = False
        self._refresh_lock = threading.Lock()  # one refresh at a time (periodic vs on demand)

    def __len__(self) -> int:
        """Live abstracts searchable (as of the last refresh)."""
        return len(self._snap.pmids) + (self._covered_live if self._version is not None else 0)

    @property
    def shared_version(self) -> int | None:
        return self._version.version_id if self._version is not None else None

    def refresh(self, *, embed_missing: bool = True) -> RefreshCounts:
        """Bring the index in line with the store. `embed_missing=False` takes cached vectors only
        (fast start-up); the rest then come from the periodic refresh."""
        with self._refresh_lock:
            if self.shared:
                self._swap_version()
            with session_scope() as session:
                live = _live_hashes(session)
            version = self._version
            if version is not None:  # in memory: only what the shared version lacks or holds an old text of
                delta = {p: h for p, h in live.items() if version.covered.get(p) != ann.fingerprint(h)}
                self._covered_live = len(live) - len(delta)
                live = delta
            snap = self._snap
            keep = np.array([live.get(int(p)) == snap.hashes[int(p)] for p in snap.pmids], dtype=bool)
            removed = int((~keep).sum())
            if removed:
                kept = snap.pmids[keep]
                snap = _Snapshot(kept, snap.matrix[keep], {int(p): snap.hashes[int(p)] for p in kept})
            todo = {p: h for p, h in live.items() if snap.hashes.get(p) != h}
            with session_scope() as session:
                cached = _cached_vectors(session, todo)
            if cached:
                order = sorted(cached)
                snap = snap.extended(order, np.stack([cached[p] for p in order]), todo)
            self._snap = snap
            added = len(cached)
            missing = sorted(p for p in todo if p not in cached) if embed_missing else []
            for i in range(0, len(missing), self.embed_chunk):
                added += self._embed_chunk(missing[i:i + self.embed_chunk])
        if removed or added:
            log.info("retrieval index: +%d -%d, %d abstracts", added, removed, len(self))
        return RefreshCounts(added=added, removed=removed, size=len(self), pending=len(todo) - added,
                             in_memory=len(self._snap.pmids), shared_version=self.shared_version)

    def _swap_version(self) -> None:
        """Load the newest published version if it is not the one searched now; a version that cannot be
        fetched or verified is refused (named in `last_version_error`) and the current one stays."""
        with session_scope() as session:
            row = session.exec(select(RetrievalIndexVersion).where(
                RetrievalIndexVersion.embedding_model == MODEL_NAME).order_by(col(RetrievalIndexVersion.id).desc())
            ).first()
            newest = (row.id, row.path, row.sha256) if row is not None and row.id is not None else None
        current = self._version
        if newest is None:
            if not self._said_none_published:  # once: the replica then holds every vector, as `memory` does
                self._said_none_published = True
                log.warning("MEDQA_API_RETRIEVAL_INDEX=shared, but no retrieval index version is published yet "
                            "(the monitor publishes one every MEDQA_RETRIEVAL_INDEX_EVERY_S); holding every "
                            "vector in memory until one is")
            return
        if current is not None and current.version_id == newest[0]:
            return
        version_id, location, sha = newest
        try:
            folder = local_folder(location, sha, what="retrieval index")
            index, covered = ann.read_version(folder)
        except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
            self.last_version_error = f"cannot use retrieval index v{version_id}: {exc}"
            log.error("%s; still searching %s", self.last_version_error,
                      f"v{current.version_id}" if current else "the in-memory vectors alone")
            return
        self._version, self.last_version_error = _SharedVersion(version_id, index, covered, folder), None
        log.info("retrieval index: searching shared version v%d (%d vectors)", version_id, index.size)
        if current is not None and current.folder.is_relative_to(cache_dir()):
            # This host's fetched copy of the old version (never a local store's own files). A search
            # still reading its memory map keeps the pages until it ends.
            shutil.rmtree(current.folder, ignore_errors=True)

    def _embed_chunk(self, pmids: list[int]) -> int:
        # No transaction stays open while the model runs: on SQLite an open read holds a lock that
        # keeps writers (an ingest, a retraction) from committing, and they gave up "database is locked".
        with session_scope() as session:
            rows = live_abstracts(session, pmids)
            texts = [abstract_text(r) for r in rows]
            hashes = {r.pmid: r.content_hash for r in rows}
        if not rows:
            return 0
        with EMBED_LOCK:
            vectors = embed(texts)
        with session_scope() as session:
            store_vectors(session, list(hashes.items()), vectors)  # the cache the monitor and replicas share
        # Published per chunk, so a large backlog becomes searchable as it is embedded.
        self._snap = self._snap.extended([r.pmid for r in rows], vectors, hashes)
        return len(rows)

    def retrieve(self, questions: Sequence[str], k: int, *, ranker: str = "vector",
                 min_relevance: float | None = None, margin: float | None = None) -> list[list[Hit]]:
        """Per question, up to k live abstracts, best first, ranked by `ranker` ("vector": MiniLM cosine;
        "lexical": the store's full-text search; "hybrid": their reciprocal-rank fusion). Each hit's
        score is its cosine to the question whatever ranked it: the one relevance scale that holds
        across questions, which `min_relevance` (None: no floor) and `margin` (shared/search.over_floor)
        apply to."""
        if ranker not in RANKERS:
            raise ValueError(f"unknown ranker {ranker!r}; expected one of {', '.join(RANKERS)}")
        snap, version = self._snap, self._version
        if k <= 0 or not questions:
            return [[] for _ in questions]
        with EMBED_LOCK:
            q = embed(list(questions))
        # Spare candidates replace abstracts dropped since the last refresh, or below the floor.
        depth = max(CANDIDATES, 2 * k + 4)
        vector: list[list[int]] = []
        if ranker != "lexical":
            in_memory = vector_hits(q, snap.matrix, snap.pmids, depth)
            published = version.search(q, depth) if version is not None else [[] for _ in questions]
            vector = [merge_hits(parts, depth) for parts in zip(in_memory, published, strict=True)]
        lexical = []
        if ranker != "vector":
            with session_scope() as session:
                lexical = [[p for p, _ in lexical_search(session, text, depth)] for text in questions]
        rankings = combined(ranker, vector, lexical, depth)
        with session_scope() as session:
            rows = {r.pmid: r for r in live_abstracts(session, sorted({p for r in rankings for p in r}))}
        vectors = self._vectors(snap, rows)
        out: list[list[Hit]] = []
        for i, ranking in enumerate(rankings):
            # A ranked pmid missing from `rows` was deleted or retracted since the last refresh.
            kept = over_floor(ranking, lambda p: float(q[i] @ vectors[p]) if p in rows else None,  # noqa: B023
                              min_relevance, k, margin=margin)
            out.append([Hit(p, rows[p].title, rows[p].text, cosine) for p, cosine in kept])
        return out

    def _vectors(self, snap: _Snapshot, rows: dict[int, Abstract]) -> dict[int, np.ndarray]:
        """Unit vectors of `rows`: the in-memory index's, else the shared vector cache's (a hit from the
        published ANN index), else (not embedded yet: a lexical hit on an abstract stored since the
        last refresh) computed now."""
        out = {p: snap.matrix[snap.position[p]] for p in rows if p in snap.position
               and snap.hashes.get(p) == rows[p].content_hash}
        if len(out) < len(rows):
            with session_scope() as session:
                out |= _cached_vectors(session, {p: r.content_hash for p, r in rows.items() if p not in out})
        missing = [rows[p] for p in rows if p not in out]
        if missing:
            with EMBED_LOCK:
                fresh = embed([abstract_text(r) for r in missing])
            out |= {r.pmid: v for r, v in zip(missing, fresh, strict=True)}
        return out

