"""Lexical search over the stored abstracts, on the store's own engine, and rank fusion.

SQLite (the embedded default) searches an FTS5 index ranked by BM25; PostgreSQL (the deployment) a
stored, GIN-indexed tsvector column ranked by ts_rank with length normalisation. Both stem English words, so
"reduces" finds "reduction". Migration 0012 builds both; SQLite's index is kept current by triggers
on the abstract table, so no writer needs to know it exists.

A question becomes an OR of its content words: an AND of every word of a question finds almost
nothing, and the ranking already rewards abstracts that match more of them. Deleted and retracted
abstracts never match.

Measured against the MiniLM vectors and their fusion in bench/retrieval_quality.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sqlalchemy import create_engine, text
from sqlmodel import Session

FTS_TABLE = "abstract_fts"
PG_INDEX = "ix_abstract_fts"
# A stored generated column, not an expression index alone: ranking reads the vector of every matching
# row, and recomputing it per row made a query 0.5 s on 3,000 abstracts (bench/retrieval_quality.py).
PG_COLUMN = "search_vector"
PG_VECTOR = "to_tsvector('english', title || ' ' || text)"
# Only a change of title or text touches the index: claiming abstracts for a run (train_run_id) or
# marking them deleted updates thousands of rows, and liveness is checked on the abstract row anyway.
SQLITE_TRIGGERS = {
    "abstract_fts_insert": f"AFTER INSERT ON abstract BEGIN INSERT INTO {FTS_TABLE}(rowid, title, text) "
                           "VALUES (new.pmid, new.title, new.text); END",
    "abstract_fts_delete": f"AFTER DELETE ON abstract BEGIN INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, title, "
                           "text) VALUES ('delete', old.pmid, old.title, old.text); END",
    "abstract_fts_update": f"AFTER UPDATE OF title, text ON abstract BEGIN INSERT INTO {FTS_TABLE}({FTS_TABLE}, "
                           "rowid, title, text) VALUES ('delete', old.pmid, old.title, old.text); "
                           f"INSERT INTO {FTS_TABLE}(rowid, title, text) VALUES (new.pmid, new.title, new.text); END",
}
RANKERS = ("vector", "lexical", "hybrid")
FTS_DDL = (f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(title, text, content='abstract', content_rowid='pmid', "
           "tokenize='porter unicode61')")
MAX_TERMS = 32  # a pasted paragraph must not become a query of hundreds of ORs
RRF_K = 60  # reciprocal-rank fusion's constant (Cormack et al. 2009): ranks past a few dozen barely count

# Words that say what kind of question it is, not what it is about.
_STOPWORD_TEXT = """
a about above after again against all also am an and any are as at be been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers him his
how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over
own same she should so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your yours
whether versus vs patient patients effect effects use used using role associated association among study
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def query_terms(question: str) -> list[str]:
    """The question's content words, lower case, first occurrence first, at most MAX_TERMS."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[^\W_]+", question.lower()):
        if len(word) > 1 and word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]


def lexical_search(session: Session, question: str, k: int) -> list[tuple[int, float]]:
    """The k best live abstracts for `question` as (pmid, score), best first; higher scores are better.
    Scores rank within one question only: they are not comparable across questions or engines."""
    terms = query_terms(question)
    if not terms or k <= 0:
        return []
    if session.get_bind().dialect.name == "sqlite":
        # Terms are \\w runs, quoted, so none can be read as an FTS5 operator or column filter.
        match = " OR ".join(f'"{t}"' for t in terms)
        rows = session.execute(text(
            f"SELECT f.rowid, bm25({FTS_TABLE}) AS rank FROM {FTS_TABLE} f JOIN abstract a ON a.pmid = f.rowid "
            f"WHERE {FTS_TABLE} MATCH :match AND NOT a.deleted AND NOT a.retracted ORDER BY rank LIMIT :k"),
            {"match": match, "k": k})
        return [(int(pmid), -float(rank)) for pmid, rank in rows]  # bm25() is lower-is-better
    rows = session.execute(text(
        f"SELECT pmid, ts_rank({PG_COLUMN}, q, 1) AS rank FROM abstract, to_tsquery('english', :query) q "
        f"WHERE {PG_COLUMN} @@ q AND NOT deleted AND NOT retracted ORDER BY rank DESC LIMIT :k"),
        {"query": " | ".join(terms), "k": k})
    return [(int(pmid), float(rank)) for pmid, rank in rows]


def fuse(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: each ranking gives a document 1 / (k + rank); best total first. Needs no
    score calibration between rankers, which cosines and BM25 scores would."""
    total: dict[int, float] = {}
    for ranking in rankings:
        for rank, pmid in enumerate(ranking, start=1):
            total[pmid] = total.get(pmid, 0.0) + 1.0 / (k + rank)
    return sorted(total.items(), key=lambda item: (-item[1], item[0]))


def vector_hits(questions: np.ndarray, matrix: np.ndarray, ids: np.ndarray,
                depth: int) -> list[list[tuple[int, float]]]:
    """Per question vector (unit length), the `depth` rows of `matrix` (unit vectors) with the highest
    cosine, as (id, cosine), best first."""
    if not len(ids):
        return [[] for _ in range(len(questions))]
    scores = questions @ matrix.T
    take = min(len(ids), depth)
    top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    return [[(int(ids[j]), float(scores[i, j])) for j in sorted(row, key=lambda j: -scores[i, j])]
            for i, row in enumerate(top)]


def vector_rankings(questions: np.ndarray, matrix: np.ndarray, ids: np.ndarray, depth: int) -> list[list[int]]:
    """`vector_hits` without the cosines."""
    return [[p for p, _ in hits] for hits in vector_hits(questions, matrix, ids, depth)]


def merge_hits(parts: Sequence[Sequence[tuple[int, float]]], depth: int) -> list[int]:
    """One ranking from several lists of (id, cosine) on the same scale: highest cosine first, each id
    once (at its best), at most `depth`."""
    best: dict[int, float] = {}
    for hits in parts:
        for pmid, score in hits:
            if score > best.get(pmid, -np.inf):
                best[pmid] = score
    return [p for p, _ in sorted(best.items(), key=lambda item: (-item[1], item[0]))][:depth]


def combined(ranker: str, vector: list[list[int]], lexical: list[list[int]], depth: int) -> list[list[int]]:
    """The rankings `ranker` names: "vector", "lexical", or "hybrid" (their reciprocal-rank fusion)."""
    if ranker not in RANKERS:
        raise ValueError(f"unknown ranker {ranker!r}; expected one of {', '.join(RANKERS)}")
    if ranker == "vector":
        return vector
    if ranker == "lexical":
        return lexical
    return [[p for p, _ in fuse([v, lx])][:depth] for v, lx in zip(vector, lexical, strict=True)]


def over_floor(ranking: Sequence[int], cosine: Callable[[int], float | None], floor: float | None,
               k: int, *, margin: float | None = None) -> list[tuple[int, float]]:
    """The first k of `ranking` whose cosine to the question reaches `floor` (None: no floor), as (id,
    cosine), less those more than `margin` below the best of them (None: keep all k). `cosine` gives
    None for an id to skip (deleted or retracted since it was ranked).

    The margin is for precision: a question usually has one abstract that answers it, and the next
    ones over the floor are most often only on the same topic (bench/retrieval_quality.py)."""
    out: list[tuple[int, float]] = []
    for pmid in ranking:
        value = cosine(pmid)
        if value is not None and (floor is None or value >= floor):
            out.append((pmid, value))
            if len(out) == k:
                break
    if margin is not None and out:
        best = max(value for _, value in out)
        out = [(pmid, value) for pmid, value in out if value >= best - margin]
    return out


@contextmanager
def scratch_index(docs: Sequence[tuple[int, str, str]]) -> Iterator[Session]:
    """A throwaway in-memory SQLite store of (pmid, title, text) with the same FTS5 index and triggers as
    the real one, for lexical_search over a fixed set of documents (the evaluator's grounding suite):
    the same ranking code as the API, on documents that are not in the store."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE abstract (pmid INTEGER PRIMARY KEY, title TEXT NOT NULL, "
                                 "text TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT 0, "
                                 "retracted BOOLEAN NOT NULL DEFAULT 0)")
            conn.exec_driver_sql(FTS_DDL)
            for name, sql in SQLITE_TRIGGERS.items():
                conn.exec_driver_sql(f"CREATE TRIGGER {name} {sql}")
            conn.execute(text("INSERT INTO abstract (pmid, title, text) VALUES (:pmid, :title, :text)"),
                         [{"pmid": p, "title": t, "text": x} for p, t, x in docs])
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def not_search_index(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's include_name filter: the search index lives outside the models (FTS5's table and its
    shadow tables; PostgreSQL's generated column and its index), so comparing models with the store
    skips it."""
    if type_ == "table" and name is not None and name.startswith(FTS_TABLE):
        return False
    return (type_, name) not in {("index", PG_INDEX), ("column", PG_COLUMN)}
