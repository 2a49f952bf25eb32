"""Benchmark: does retrieval find the evidence, and does the relevance floor abstain when there is none?
One JSON line last.

Run: .venv/bin/python bench/retrieval_quality.py [--stores sqlite,postgres] [--answer-share 0.99]
Needs MEDQA_PUBMEDQA_SOURCE and MEDQA_MEDQUAD_SOURCE (the Makefile sets them on our machines) and, for the
NLM samples, MEDQA_DEMO_CORPUS (a folder of PubMed XML).

The index, in a fresh store of each kind (a SQLite file; a new PostgreSQL database on 127.0.0.1:5432):
  - PubMedQA's development share (pubmedqa_split()[1], the items the gate scores): each item's context,
    stored as an abstract under its PMID with an EMPTY title (a PubMedQA question is its paper's title,
    so indexing the title would make the task a title lookup);
  - distractors: PubMedQA's training share the same way, every NLM sample abstract the ingest keeps, and
    every MedQuAD answer (its question as the title).
Each development question is asked; the target is the item's own abstract. Per ranker (the API's code,
services/api/retrieval.RetrievalIndex.retrieve: MiniLM cosine, the store's full-text search, their
reciprocal-rank fusion): recall@1, recall@3, MRR over the top 20, and per-question latency (p50/p95 ms,
one question per call, embedding included).

Abstention: the relevance floor (cosine of question and abstract) is fitted on the TRAINING share only:
the cosine that --answer-share (0.99) of its questions reach with their own abstract. (0.95 gave a floor
of 0.605 and answered only 82% of the development share, whose cosines run lower: 5th percentile 0.42
against the training share's 0.61.) It is then measured on the
development share (answer rate: at least one abstract over the floor among the top 3 with a sentence
to quote, as the API answers; own-abstract cited
rate; citation precision: own abstracts among all cited, a lower bound, since another abstract may be
relevant too) and on shared/offtopic.py's questions (abstention rate: nothing over the floor). Citations
are also cut at --margin (0.10) below the best abstract's cosine, as the API cuts them; the margin is
chosen on the training share too (margin_on_training_share: own-abstract rate and precision per margin).
A cited abstract must also contain --coverage (0.45) of the question's search terms, the largest share
that keeps 95% of the training share answered (coverage_on_training_share). Last, every PubMedQA
abstract is removed and the same questions are asked again: medical questions whose evidence is not
indexed, which should mostly abstain (without_own_abstracts).
Goals: recall@3 >= 0.90, answer rate >= 0.90, abstention rate >= 0.95. No baseline is divided by: the
rankers are compared in the same run. Say how loaded the box was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scratch import scratch_store  # noqa: E402  (bench/, beside this file)

MEDQUAD_PMIDS = 990_000_000  # made-up ids for MedQuAD answers, far above real PMIDs
DEPTH = 20
COVERAGES = (0.0, 0.3, 0.4, 0.45, 0.5, 0.6)


def configure(url: str, data_dir: Path) -> None:
    os.environ.update({"MEDQA_DATABASE_URL": url, "MEDQA_DATA_DIR": str(data_dir), "MEDQA_EAGER": "1",
                       "HF_HUB_OFFLINE": "1"})
    from shared.settings import reset_settings

    reset_settings()


def corpus() -> tuple[list[dict], list, list]:
    """(abstract rows, development items, training items)."""
    from services.ingest.parser import ArticleRecord, iter_records
    from services.ingest.store import keep, pubmed_files
    from shared.corpora import corpus_items, pubmedqa_split

    train, dev = pubmedqa_split()
    rows = [dict(pmid=int(i.item_id.split(":")[1]), title="", text=i.context or "", source="pubmedqa")
            for i in (*dev, *train)]
    demo = os.environ.get("MEDQA_DEMO_CORPUS")
    if demo:
        taken = {r["pmid"] for r in rows}
        for path in pubmed_files(Path(demo)):
            for rec in iter_records(path):
                if isinstance(rec, ArticleRecord) and keep(rec) and rec.pmid not in taken:
                    taken.add(rec.pmid)
                    rows.append(dict(pmid=rec.pmid, title=rec.title, text=rec.abstract, source="nlm"))
    for n, item in enumerate(corpus_items("medquad")):
        rows.append(dict(pmid=MEDQUAD_PMIDS + n, title=item.question, text=item.answer, source="medquad"))
    return rows, list(dev), list(train)


def store_corpus(rows: list[dict], vectors) -> None:  # type: ignore[no-untyped-def]
    """The rows as live abstracts, with their MiniLM vectors in the embedding cache (computed once for all
    stores), through the real schema: the FTS5 triggers / GIN index see them as they see an ingest."""
    from sqlmodel import insert

    from shared.db import migrate, session_scope
    from shared.embeddings import MODEL_NAME, to_bytes
    from shared.tables import Abstract, AbstractEmbedding, utcnow

    migrate()
    now = utcnow()
    with session_scope() as s:
        s.exec(insert(Abstract), params=[dict(r, journal="", mesh_terms=[], language="eng", ingested_at=now,
                                              content_hash=f"h{r['pmid']}", deleted=False, retracted=False)
                                         for r in rows])
        s.exec(insert(AbstractEmbedding), params=[dict(pmid=r["pmid"], model=MODEL_NAME, vector=to_bytes(v),
                                                       content_hash=f"h{r['pmid']}")
                                                  for r, v in zip(rows, vectors, strict=True)])


def ranks(index, questions: list[str], targets: list[int], ranker: str) -> dict:  # type: ignore[no-untyped-def]
    positions, latencies = [], []
    for question, target in zip(questions, targets, strict=True):
        t0 = time.perf_counter()
        hits = index.retrieve([question], DEPTH, ranker=ranker)[0]
        latencies.append((time.perf_counter() - t0) * 1000)
        found = [h.pmid for h in hits]
        positions.append(found.index(target) + 1 if target in found else None)
    n = len(questions)
    latencies.sort()
    return {"recall@1": round(sum(p == 1 for p in positions) / n, 3),
            "recall@3": round(sum(p is not None and p <= 3 for p in positions) / n, 3),
            "mrr@20": round(sum(1 / p for p in positions if p) / n, 3),
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[int(0.95 * (n - 1))], 1)}


def floor_from_training(train, vectors_by_pmid: dict, share: float) -> float:  # type: ignore[no-untyped-def]
    """The cosine that `share` of the training questions reach with their own abstract."""
    from shared.embeddings import embed

    q = embed([i.question for i in train])
    own = sorted(float(q[n] @ vectors_by_pmid[int(i.item_id.split(":")[1])]) for n, i in enumerate(train))
    return round(own[int((1 - share) * (len(own) - 1))], 3)


def cited_by_api(index, questions: list[str], floor: float, ranker: str, margin: float | None,  # type: ignore[no-untyped-def]
                 coverage: float, k: int = 3) -> list[list[int]]:
    """What the API would cite (services/api/pipeline: retrieve over the floor, within the margin of the
    best, then shared/evidence.grounded): the abstracts over the floor that have a sentence to quote."""
    from shared.evidence import QUOTES_PER_ABSTRACT, grounded

    hits = index.retrieve(questions, k, ranker=ranker, min_relevance=floor, margin=margin)
    return [[h.pmid for h in grounded(q, found, QUOTES_PER_ABSTRACT, min_coverage=coverage)[0]]
            for q, found in zip(questions, hits, strict=True)]


def citing(index, items, floor: float, ranker: str, margin: float | None,  # type: ignore[no-untyped-def]
           coverage: float) -> dict:
    cited = cited_by_api(index, [i.question for i in items], floor, ranker, margin, coverage)
    targets = [int(i.item_id.split(":")[1]) for i in items]
    n_cited = sum(len(c) for c in cited)
    own = sum(t in c for c, t in zip(cited, targets, strict=True))
    answered = sum(bool(c) for c in cited)
    return {"answer_rate": round(answered / len(items), 3), "own_cited_rate": round(own / len(items), 3),
            "citation_precision": round(own / n_cited, 3) if n_cited else None,
            "citations_per_answer": round(n_cited / max(1, answered), 2)}


def abstention(index, dev, floor: float, ranker: str, margin: float | None,  # type: ignore[no-untyped-def]
               coverage: float) -> dict:
    from shared.offtopic import OFF_TOPIC_QUESTIONS

    off = cited_by_api(index, list(OFF_TOPIC_QUESTIONS), floor, ranker, margin, coverage)
    return {"floor": floor, "margin": margin, "coverage": coverage,
            **citing(index, dev, floor, ranker, margin, coverage),
            "offtopic_questions": len(off), "abstention_rate": round(sum(not c for c in off) / len(off), 3)}


def remove_pubmedqa_abstracts() -> None:
    from sqlmodel import col, update

    from shared.db import session_scope
    from shared.tables import Abstract

    with session_scope() as s:
        s.exec(update(Abstract).where(col(Abstract.source) == "pubmedqa").values(deleted=True))  # type: ignore[call-overload]


def one_store(kind: str, rows: list[dict], vectors, dev, train, share: float,  # type: ignore[no-untyped-def]
              margin: float | None, coverage: float) -> dict:
    from services.api.retrieval import RetrievalIndex
    from shared.search import RANKERS

    with scratch_store(kind) as (url, tmp):
        configure(url, tmp)
        t0 = time.monotonic()
        store_corpus(rows, vectors)
        index = RetrievalIndex()
        index.refresh(embed_missing=False)
        assert len(index) == len(rows), (len(index), len(rows))
        out: dict = {"store": kind, "indexed": len(index), "load_s": round(time.monotonic() - t0, 1)}
        questions = [i.question for i in dev]
        targets = [int(i.item_id.split(":")[1]) for i in dev]
        index.retrieve(questions[:2], 3)  # warm-up: the first call loads MiniLM
        out["rankers"] = {r: ranks(index, questions, targets, r) for r in RANKERS}
        vectors_by_pmid = {p: index._snap.matrix[i] for p, i in index._snap.position.items()}
        floor = floor_from_training(train, vectors_by_pmid, share)
        out["abstention"] = {r: abstention(index, dev, floor, r, margin, coverage) for r in RANKERS}
        # How the margin and the term coverage were chosen: on the TRAINING share (its abstracts are
        # indexed too), per value.
        out["margin_on_training_share"] = {str(m): citing(index, train, floor, "vector", m, coverage)
                                           for m in (None, 0.2, 0.15, 0.1, 0.05)}
        out["coverage_on_training_share"] = {str(c): citing(index, train, floor, "vector", margin, c)
                                             for c in COVERAGES}
        # Medical questions whose evidence is not indexed: every PubMedQA abstract removed (deleted, so
        # the API's answer-time check drops them), the same questions asked again.
        remove_pubmedqa_abstracts()
        out["without_own_abstracts"] = {
            "training_share_by_coverage": {str(c): citing(index, train, floor, "vector", margin, c)["answer_rate"]
                                           for c in COVERAGES},
            "dev_answer_rate": {r: citing(index, dev, floor, r, margin, coverage)["answer_rate"] for r in RANKERS}}
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--answer-share", type=float, default=0.99,
                        help="share of training questions whose own abstract must clear the floor")
    parser.add_argument("--margin", type=float, default=0.10,
                        help="cite only abstracts within this cosine of the best (MEDQA_API_RELEVANCE_MARGIN)")
    parser.add_argument("--coverage", type=float, default=0.45,
                        help="share of the question's terms a cited abstract must contain "
                             "(MEDQA_API_MIN_TERM_COVERAGE)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / f"retrieval_quality_{date.today()}.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    from shared.embeddings import embed

    t0 = time.monotonic()
    rows, dev, train = corpus()
    vectors = embed([f"{r['title']}\n{r['text']}" for r in rows])
    embed_s = time.monotonic() - t0
    stores = [one_store(kind, rows, vectors, dev, train, args.answer_share, args.margin, args.coverage)
              for kind in args.stores.split(",")]
    first = stores[0]
    best = max(first["rankers"], key=lambda r: (first["rankers"][r]["recall@3"], first["rankers"][r]["mrr@20"]))
    result = {"bench": "retrieval_quality", "dev_items": len(dev), "training_items": len(train),
              "indexed": len(rows), "distractors": len(rows) - len(dev),
              "by_source": {s: sum(r["source"] == s for r in rows) for s in ("pubmedqa", "nlm", "medquad")},
              "embed_s": round(embed_s, 1), "stores": stores, "best_ranker": best,
              "goals": {"recall@3": 0.90, "answer_rate": 0.90, "abstention_rate": 0.95},
              "met": {s["store"]: {"recall@3": s["rankers"][best]["recall@3"] >= 0.90,
                                   "answer_rate": s["abstention"][best]["answer_rate"] >= 0.90,
                                   "abstention_rate": s["abstention"][best]["abstention_rate"] >= 0.95}
                      for s in stores},
              "box_load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "wall_s": round(time.monotonic() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
