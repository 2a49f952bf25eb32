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

Readers never lock: a refresh builds a new immutable snapshot and swaps the reference. Citations
are re-checked against the store at answer time, so an abstract retracted since the last refresh
is dropped before it can be cited.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlmodel import Session, col, select

from shared.db import session_scope
from shared.embeddings import DIM, MODEL_NAME, embed, from_bytes, store_vectors
from shared.queries import abstract_text, is_live, live_abstracts
from shared.search import RANKERS, combined, lexical_search, over_floor, vector_rankings
from shared.tables import Abstract, AbstractEmbedding

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
    def __init__(self, *, embed_chunk: int = 64) -> None:
        # Small chunks: the refresher holds EMBED_LOCK per chunk, and questions wait behind it.
        self.embed_chunk = embed_chunk
        self._snap = _Snapshot()
        self._refresh_lock = threading.Lock()  # one refresh at a time (periodic vs on demand)

    def __len__(self) -> int:
        return len(self._snap.pmids)

    def refresh(self, *, embed_missing: bool = True) -> dict[str, int]:
        """Bring the index in line with the store. `embed_missing=False` takes cached vectors only
        (fast start-up); the rest then come from the periodic refresh."""
        with self._refresh_lock:
            with session_scope() as session:
                live = _live_hashes(session)
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
        return {"added": added, "removed": removed, "size": len(self), "pending": len(todo) - added}

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
        snap = self._snap
        if k <= 0 or not questions:
            return [[] for _ in questions]
        with EMBED_LOCK:
            q = embed(list(questions))
        # Spare candidates replace abstracts dropped since the last refresh, or below the floor.
        depth = max(CANDIDATES, 2 * k + 4)
        vector = vector_rankings(q, snap.matrix, snap.pmids, depth) if ranker != "lexical" else []
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
        """Unit vectors of `rows`: the index's, else (not embedded yet: a lexical hit on an abstract
        stored since the last refresh) computed now."""
        out = {p: snap.matrix[snap.position[p]] for p in rows if p in snap.position
               and snap.hashes.get(p) == rows[p].content_hash}
        missing = [rows[p] for p in rows if p not in out]
        if missing:
            with EMBED_LOCK:
                fresh = embed([abstract_text(r) for r in missing])
            out |= {r.pmid: v for r, v in zip(missing, fresh, strict=True)}
        return out

