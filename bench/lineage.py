"""Benchmark: `medqa lineage PMID` latency over a large made-up lineage, and the time from a retraction
entering the store to its alert (one JSON line last).

Run: .venv/bin/python bench/lineage.py [--versions 1000] [--rows 10000] [--queries 200] [--stores sqlite,postgres]

For each store (a fresh SQLite file; a fresh PostgreSQL database on 127.0.0.1:5432, db `test` for admin)
the bench makes --versions versions in one warm-start chain, each with a run whose manifest has --rows
items (a fifth new papers, the rest replayed from earlier runs, as a long-lived model line looks),
written through shared/lineage.record_run as the trigger writes them. Then:
  lookup      shared/lineage.paper_lineage for --queries random papers (what `medqa lineage PMID`
              computes, without the process start): p50, p95, max in ms. Goal: p95 <= 50 ms.
  cli         one `medqa lineage PMID --json` process end to end (interpreter and imports included).
  retraction  a retraction notice stored for a paper of the first version (so every version inherits it)
              until its alert row exists, eager (monitor.retractions runs on the commit), in ms.
There is no baseline to divide by: the goal is an absolute latency. Say how loaded the box was.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scratch import scratch_store  # noqa: E402  (bench/, beside this file)

FIRST_PMID = 30_000_000


def configure(url: str, data_dir: Path) -> None:
    os.environ.update({"MEDQA_DATABASE_URL": url, "MEDQA_DATA_DIR": str(data_dir), "MEDQA_EAGER": "1",
                       "MEDQA_ALERT_CHANNELS": "log", "HF_HUB_OFFLINE": "1"})
    from shared.celery_app import reconfigure
    from shared.settings import reset_settings

    reset_settings()
    reconfigure()


def build(versions: int, rows: int, seed: int = 7) -> tuple[list[int], int]:
    """The chain of versions and their lineage rows; returns (paper PMIDs, first version's paper)."""
    from sqlmodel import insert

    from shared import lineage
    from shared.db import migrate, session_scope
    from shared.manifest import RunManifest
    from shared.tables import Abstract, ModelVersion, RunStatus, TrainingRun

    migrate()
    rng = random.Random(seed)
    fresh_per_run = rows // 5
    papers: list[int] = []
    parent = None
    t0 = time.monotonic()
    for n in range(versions):
        new = list(range(FIRST_PMID + n * fresh_per_run, FIRST_PMID + (n + 1) * fresh_per_run))
        replay = rng.sample(papers, min(len(papers), rows - fresh_per_run)) if papers else []
        manifest = RunManifest(new=new, replay_pmids=replay)
        with session_scope() as s:
            run = TrainingRun(model_line="default", base_model="made-up", status=RunStatus.succeeded,
                              parent_version_id=parent, manifest={"counts": manifest.counts})
            s.add(run)
            s.flush()
            assert run.id is not None
            lineage.record_run(s, run.id, manifest)
            version = ModelVersion(model_line="default", run_id=run.id, parent_version_id=parent,
                                   base_model="made-up", adapter_path="/none", sha256="0" * 64)
            s.add(version)
            s.flush()
            parent = version.id
            if n == 0:  # the first run's papers are stored, so that one can be retracted
                s.exec(insert(Abstract), params=[  # type: ignore[call-overload]
                    {"pmid": p, "title": f"Paper {p}", "text": "made up", "content_hash": f"{p:064d}",
                     "source": "bench", "mesh_terms": []} for p in new[:100]])
        papers.extend(new)
        if n % 100 == 99:
            print(f"  {n + 1} versions, {(n + 1) * rows:,} rows, {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return papers, FIRST_PMID


def lookups(papers: list[int], queries: int) -> dict[str, float]:
    from shared.db import session_scope
    from shared.lineage import paper_lineage

    rng = random.Random(1)
    times = []
    with session_scope() as s:
        paper_lineage(s, papers[0])  # warm the connection
    for pmid in rng.sample(papers, queries):
        t0 = time.perf_counter()
        with session_scope() as s:
            found = paper_lineage(s, pmid)
        times.append((time.perf_counter() - t0) * 1000)
        assert found.versions, pmid
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
            "max_ms": round(times[-1], 2)}


def cli_once(pmid: int) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([str(Path(sys.executable).with_name("medqa")), "lineage", str(pmid), "--json"],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return round((time.perf_counter() - t0) * 1000, 1)


def retraction_to_alert(pmid: int) -> tuple[float, int]:
    """A retraction notice stored (eager: the alert is raised on its commit) until its alert exists."""
    from sqlmodel import select

    import services.monitor.tasks  # noqa: F401  (registers monitor.retractions for eager runs)
    from services.ingest.parser import ArticleRecord
    from services.ingest.store import store_records
    from shared.db import session_scope
    from shared.tables import Alert

    notice = ArticleRecord(pmid=99_000_001, title="Retraction", abstract="", journal="", pub_date=None,
                           entrez_date=None, revised_date=None, mesh_terms=(), keywords=(), language="eng",
                           publication_types=("Retraction Notice",), retraction_of=(pmid,))
    t0 = time.perf_counter()
    with session_scope() as s:
        store_records(s, [notice], source="bench")
    with session_scope() as s:
        alert = s.exec(select(Alert).where(Alert.dedup_key == f"retraction:{pmid}")).one()
    return round((time.perf_counter() - t0) * 1000, 1), alert.message.count("v")


def one_store(kind: str, versions: int, rows: int, queries: int) -> dict:
    with scratch_store(kind) as (url, tmp):
        configure(url, tmp)
        t0 = time.monotonic()
        papers, first = build(versions, rows)
        built_s = time.monotonic() - t0
        result = {"store": kind, "versions": versions, "rows": versions * rows, "build_s": round(built_s, 1),
                  "lookup": lookups(papers, queries), "cli_ms": cli_once(papers[len(papers) // 2])}
        result["retraction_to_alert_ms"], _ = retraction_to_alert(first)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = []
    for kind in args.stores.split(","):
        print(f"== {kind}", file=sys.stderr)
        results.append(one_store(kind, args.versions, args.rows, args.queries))
        print(json.dumps(results[-1]), file=sys.stderr)
    doc = {"bench": "lineage", "goal_p95_ms": 50, "results": results,
           "goal_met": all(r["lookup"]["p95_ms"] <= 50 for r in results),
           "load_1min_before_after": [round(load, 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
