"""Benchmark: ingest parser speed, memory over a long stream, and store upserts (one JSON line last).

Run: .venv/bin/python bench/ingest.py [--quick]
  parse   articles/s of services.ingest.parser against Bio.Entrez.read on the same files, same run
          (goal >= 3x). The NLM samples in ../shared/data are used when present, else synthetic files.
  rss     peak resident memory of a child process streaming a 100,000-article .xml.gz
          (goal: flat and < 300 MB); the child measures itself, so the generator's memory is not counted.
  upsert  rows/s through store.store_records, one transaction per 1,000 records, into a fresh SQLite
          file and a throw-away PostgreSQL database (goal >= 5,000/s on SQLite).
Progress goes to stderr; --quick shrinks every size for a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from services.devkit.synth import generate_articles, pubmed_xml
from services.ingest.parser import ArticleRecord, DeleteRecord, iter_pubmed, parse_pubmed_bytes

UPDATES = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmed_update_samples"
PG_ADMIN_URL = os.environ.get("MEDQA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
GOALS = {"parse_ratio_min": 3.0, "rss_peak_mb_max": 300.0, "sqlite_upserts_per_s_min": 5000.0}
BATCH = 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- (a) parser against Bio.Entrez.read -----------------------------------------------------------

def bench_parse(quick: bool) -> dict:
    from Bio import Entrez

    if UPDATES.is_dir():
        source = f"{UPDATES.name} (real NLM samples)"
        documents = [p.read_bytes() for p in sorted(UPDATES.glob("*/*.xml"))]
    else:
        source = "synthetic (../shared/data absent)"
        documents = [pubmed_xml(generate_articles(30, seed=k, start_pmid=90_000_000 + 30 * k)) for k in range(12)]
    # Biopython accepts only https NCBI DTD URLs and refuses the NLM files' http:// DOCTYPE
    # ("Expected secure URL to NCBI"); it finds the DTD in its own bundled copies by file name.
    patched = [re.sub(rb'"http://dtd\.nlm\.nih\.gov/', b'"https://dtd.nlm.nih.gov/', d, count=1) for d in documents]

    def ours() -> int:
        return sum(isinstance(r, ArticleRecord) for d in documents for r in parse_pubmed_bytes(d))

    def biopython() -> int:
        return sum(len(Entrez.read(io.BytesIO(d))["PubmedArticle"]) for d in patched)

    passes = 2 if quick else 5
    ours_n, ours_s = _timed(ours, passes)
    bio_n, bio_s = _timed(biopython, passes)
    if ours_n != bio_n:
        raise SystemExit(f"article counts differ: ours {ours_n}, Bio.Entrez.read {bio_n}")
    ours_rate, bio_rate = ours_n / ours_s, bio_n / bio_s
    log(f"parse: ours {ours_rate:,.0f}/s, Bio.Entrez.read {bio_rate:,.0f}/s")
    return {"source": source, "files": len(documents), "articles_per_pass": ours_n // passes, "passes": passes,
            "ours_articles_per_s": round(ours_rate), "biopython_articles_per_s": round(bio_rate),
            "ratio": round(ours_rate / bio_rate, 2)}


def _timed(work: Callable[[], int], passes: int) -> tuple[int, float]:
    work()  # warm-up: imports, Biopython's DTD loading, lxml's first allocations
    start = time.perf_counter()
    count = sum(work() for _ in range(passes))
    return count, time.perf_counter() - start


# --- (b) memory over a long stream ----------------------------------------------------------------

def bench_rss(quick: bool, tmp: Path) -> dict:
    n = 20_000 if quick else 100_000
    path = tmp / "stream.xml.gz"
    started = time.perf_counter()
    _write_stream(path, n)
    log(f"rss: wrote {n:,} articles ({path.stat().st_size / 2**20:.0f} MiB gzip) in "
        f"{time.perf_counter() - started:.0f} s; parsing in a child process")
    child = subprocess.run([sys.executable, __file__, "--rss-child", str(path)], capture_output=True, text=True,
                           check=True)
    stats = json.loads(child.stdout.strip().splitlines()[-1])
    if stats["articles"] != n:
        raise SystemExit(f"stream parse returned {stats['articles']} articles, expected {n}")
    log(f"rss: start {stats['start_rss_mb']} MB, peak {stats['peak_rss_mb']} MB")
    return stats


def _write_stream(path: Path, n: int) -> None:
    """n articles as one gzip'd PubmedArticleSet: 1,000 generated articles written over and over with
    fresh PMIDs, so the writer stays small and fast while the parser sees n distinct records."""
    chunk = 1000
    xml = pubmed_xml(generate_articles(chunk, seed=1, start_pmid=0))
    head, rest = xml.split(b"<PubmedArticleSet>", 1)
    body = rest.rsplit(b"</PubmedArticleSet>", 1)[0]
    pmid = re.compile(rb'<PMID Version="1">(\d+)</PMID>')

    def renumbered(offset: int) -> bytes:
        return pmid.sub(lambda m: b'<PMID Version="1">%d</PMID>' % (offset + int(m.group(1))), body)

    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(head + b"<PubmedArticleSet>")
        for k in range(n // chunk):
            out.write(renumbered(10_000_000 + k * chunk))
        out.write(b"</PubmedArticleSet>\n")


def rss_child(path: str) -> None:
    """Parse `path` and print this process's own memory figures as JSON (run by bench_rss)."""
    start = _rss_mb()
    samples: list[float] = []
    articles = 0
    began = time.perf_counter()
    for record in iter_pubmed(path):
        articles += isinstance(record, ArticleRecord)
        if articles % 5000 == 0:
            samples.append(_rss_mb())
    seconds = time.perf_counter() - began
    peak = _peak_rss_mb()
    tenth = samples[max(len(samples) // 10 - 1, 0)] if samples else start
    print(json.dumps({
        "articles": articles, "seconds": round(seconds, 1), "articles_per_s": round(articles / seconds),
        "start_rss_mb": round(start, 1), "peak_rss_mb": round(peak, 1),
        "rss_samples_mb": [round(s, 1) for s in samples[:: max(len(samples) // 10, 1)]],
        # Flat means no growth once the parser is warm: the last sample against the one at 10%.
        "growth_after_10pct_mb": round((samples[-1] if samples else start) - tenth, 1),
    }))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak so far is the best figure there is
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    # VmHWM is this program's own high-water mark. ru_maxrss is not: Linux folds the forked copy of
    # the parent (generator, Biopython and all) into it at exec, which reads ~70 MB too high here.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


# --- (c) upserts --------------------------------------------------------------------------------

def bench_upserts(quick: bool, tmp: Path) -> dict:
    n = 5_000 if quick else 20_000
    # Records are built straight from the generator's dicts: this measures the store, not the parser.
    fields = [f.name for f in dataclasses.fields(ArticleRecord)]
    records = [ArticleRecord(**{k: a[k] for k in fields}) for a in generate_articles(n, seed=5, days=365)]
    revised = [dataclasses.replace(r, abstract=r.abstract + " Revised.") for r in records]
    out: dict = {"records": n, "batch": BATCH, "sqlite": _upserts(f"sqlite:///{tmp / 'bench.db'}", records, revised)}
    log(f"upsert sqlite: {out['sqlite']}")
    try:
        out["postgres"] = _with_pg_database(lambda url: _upserts(url, records, revised))
        log(f"upsert postgres: {out['postgres']}")
    except Exception as exc:  # the bench still reports SQLite when no server is running
        out["postgres"] = {"skipped": f"{type(exc).__name__}: {exc}"[:300]}
        log(f"upsert postgres skipped: {exc}")
    return out


def _upserts(url: str, records: list[ArticleRecord], revised: list[ArticleRecord]) -> dict:
    from sqlmodel import Session

    from services.ingest.store import store_records
    from shared.db import engine_for, migrate

    migrate(url)
    engine = engine_for(url)

    def run(all_records: list[ArticleRecord], expect: str) -> float:
        start = time.perf_counter()
        for i in range(0, len(all_records), BATCH):
            batch: list[ArticleRecord | DeleteRecord] = list(all_records[i:i + BATCH])
            with Session(engine) as session:
                result = store_records(session, batch, source="bench")
                session.commit()
            if getattr(result, expect) != len(batch):
                raise SystemExit(f"{url.split(':')[0]}: expected every record {expect}, got {result}")
        return len(all_records) / (time.perf_counter() - start)

    try:
        return {"insert_per_s": round(run(records, "stored")), "update_per_s": round(run(revised, "updated")),
                "unchanged_per_s": round(run(revised, "duplicates"))}
    finally:
        engine.dispose()


def _with_pg_database(work: Callable[[str], dict]) -> dict:
    import sqlalchemy

    name = f"medqa_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            return work(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--rss-child", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    with tempfile.TemporaryDirectory(prefix="medqa-bench-") as tmp:
        parse = bench_parse(args.quick)
        rss = bench_rss(args.quick, Path(tmp))
        upsert = bench_upserts(args.quick, Path(tmp))
    pg = upsert["postgres"]
    print(json.dumps({
        "bench": "ingest",
        "quick": args.quick,
        "data": "shared" if UPDATES.is_dir() else "synthetic only: ../shared/data is absent",
        "parse": parse,
        "rss": rss,
        "upsert": upsert,
        "goals": GOALS,
        "met": {
            "parse_ratio": parse["ratio"] >= GOALS["parse_ratio_min"],
            "rss_peak": rss["peak_rss_mb"] < GOALS["rss_peak_mb_max"],
            "sqlite_upserts": upsert["sqlite"]["insert_per_s"] >= GOALS["sqlite_upserts_per_s_min"],
            "postgres_measured": "skipped" not in pg,
        },
    }))


if __name__ == "__main__":
    main()
