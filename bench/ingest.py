"""Benchmark: ingest parser speed, memory over a long stream, and store upserts (one JSON line last).

Run: .venv/bin/python bench/ingest.py [--quick]
  parse   articles/s of services.ingest.parser against Bio.Entrez.read on the same files, same run
          (goal >= 3x). The NLM samples in ../shared/data are used when present, else synthetic files.
  rss     peak resident memory of a child process streaming a 100,000-article .xml.gz
          (goal: flat and < 300 MB); the child measures itself, so the generator's memory is not counted.
  upsert  rows/s through store.store_records, one transaction per 1,000 records, into a fresh SQLite
          file and a throw-away PostgreSQL database (goal >= 5,000/s on SQLite).
Progress goes to stderr; --quick shrinks every size for a smoke run.

Run: .venv/bin/python bench/ingest.py --scale [--files 8] [--per-file 30000] [--workers 1,2]
  scale   synthetic NLM files (.xml.gz, 30,000 citations each like a baseline file) queued with
          `medqa ingest files --queue-only` and imported by 1, then 2 real `medqa worker ingest` processes
          on PostgreSQL, a fresh database per case (COPY + one merge per file). Reports articles/s per
          worker count over the store's own import window, CPU seconds per 1,000 articles (workers and
          their PostgreSQL backends), peak RSS (and PSS) per worker, the projected hours for the
          36M-citation baseline, and the box's load average before and after; first, one file imported
          in this process by COPY + merge and by the row path, alternated. Writes
          bench/results/ingest_scale_2026-12-03.json (--out). The issue's size is --files 40 (1.2M
          citations a case); the default is smaller (see README).
"""

from __future__ import annotations

import argparse
import contextlib
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


# --- (d) scale: files through N Celery ingest workers on PostgreSQL --------------------------------

BASELINE_CITATIONS = 36_000_000  # the figure for the PubMed baseline
SCALE_FILES, SCALE_PER_FILE = 8, 30_000
SCALE_REDIS = os.environ.get("MEDQA_BENCH_REDIS", "redis://127.0.0.1:6379/12")  # tests use /14
SCALE_RESULT = Path(__file__).resolve().parent / "results" / "ingest_scale_2026-12-03.json"
MEDQA = str(Path(sys.executable).with_name("medqa"))
BLOCK = 2000  # distinct generated articles, repeated with new PMIDs and titles to fill the files


def write_scale_corpus(folder: Path, files: int, per_file: int, seed: int = 7) -> int:
    """`files` gzip'd PubmedArticleSets of `per_file` distinct citations each; returns the total.

    The generator makes about 900 articles/s here (33 s per 30,000-article file), over 20 minutes for the
    issue's 1.2M, so BLOCK generated articles are repeated with fresh PMIDs, each repeat's titles prefixed
    with its number: every citation has its own PMID and its own content hash (nothing is a duplicate), and
    the parser sees real NLM layout."""
    xml = pubmed_xml(generate_articles(BLOCK, seed=seed, start_pmid=10_000_000, days=365))
    head, rest = xml.split(b"<PubmedArticleSet>", 1)
    body = rest.rsplit(b"</PubmedArticleSet>", 1)[0]
    articles = [b"<PubmedArticle>" + part for part in body.split(b"<PubmedArticle>")[1:]]
    assert len(articles) == BLOCK
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for k in range(files):
        with gzip.open(folder / f"pubmed26n{k + 1:04d}.xml.gz", "wb", compresslevel=1) as out:
            out.write(head + b"<PubmedArticleSet>\n")
            for _ in range(per_file):
                repeat, j = divmod(n, BLOCK)
                old, new = 10_000_000 + j, 20_000_000 + n
                out.write(articles[j].replace(b">%d<" % old, b">%d<" % new)
                          .replace(b"<ArticleTitle>", b"<ArticleTitle>Series %d: " % repeat, 1))
                n += 1
            out.write(b"</PubmedArticleSet>\n")
    return n


def _cpu_seconds(workers: list) -> float:
    """User + system CPU seconds of the worker processes and their pool children so far."""
    return sum(sum(m.cpu_times()[:2]) for proc in workers for m in [proc, *proc.children(recursive=True)])


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_scale(files: int, per_file: int, counts: list[int], out: Path) -> dict:
    import redis

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scratch import scratch_store

    load_before = _load()
    cases = []
    with tempfile.TemporaryDirectory(prefix="medqa-scale-") as tmp:
        corpus = Path(tmp) / "baseline"
        started = time.perf_counter()
        total = write_scale_corpus(corpus, files, per_file)
        log(f"scale: wrote {files} files x {per_file:,} citations in {time.perf_counter() - started:.0f} s "
            f"({sum(p.stat().st_size for p in corpus.iterdir()) / 2**20:.0f} MiB gzip)")
        broker = redis.Redis.from_url(SCALE_REDIS)
        broker.flushdb()
        # The bulk path against the row path on the same file: alternated, twice each, on fresh databases.
        first = sorted(corpus.iterdir())[0]
        paths: dict[str, list[dict]] = {"copy": [], "rows": []}
        for _ in range(2):
            for name in paths:
                paths[name].append(_one_file(first, name == "copy", scratch_store))
                log(f"scale: one file in this process, {name}: {paths[name][-1]}")
        for workers in counts:
            broker.flushdb()
            with scratch_store("postgres") as (url, scratch):
                cases.append(_scale_case(url, scratch, corpus, workers, total))
            broker.flushdb()
            log(f"scale: {workers} worker(s): {cases[-1]['articles_per_s']:,} articles/s, "
                f"{cases[-1]['projected_baseline_hours']} h for {BASELINE_CITATIONS:,}; load {cases[-1]['load_after']}")
    by_workers = {c["workers"]: c for c in cases}
    base = by_workers.get(1)
    doc = {
        "bench": "ingest_scale",
        "date": time.strftime("%Y-%m-%d"),
        "files": files, "per_file": per_file, "citations_per_case": total,
        "issue_size": {"files": 40, "per_file": 30_000, "ran": files == 40 and per_file == 30_000},
        "corpus": f"synthetic (bench/ingest.py write_scale_corpus: {BLOCK} generated articles repeated with new "
                  "PMIDs and titles), .xml.gz",
        "store": "PostgreSQL 127.0.0.1:5432, a fresh database per case; COPY + one merge per file",
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": _load(),
        "one_file_in_process": paths,
        "cases": cases,
        "speedup": {str(n): round(c["articles_per_s"] / base["articles_per_s"], 2) for n, c in by_workers.items()}
        if base else {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"scale: wrote {out}")
    print(json.dumps(doc))
    return doc


def _one_file(path: Path, use_copy: bool, scratch_store: Callable) -> dict:
    """One file imported in this process on a fresh PostgreSQL database, by COPY + merge or by the row
    path (store_records, 1,000 rows at a time): wall seconds, this process's CPU, its backend's CPU."""
    import psutil
    import sqlalchemy

    import services.ingest.store as store
    from shared.db import engine_for, migrate
    from shared.settings import reset_settings

    with scratch_store("postgres") as (url, scratch):
        migrate(url)
        saved = dict(os.environ)
        os.environ.update({"MEDQA_DATABASE_URL": url, "MEDQA_EAGER": "0", "MEDQA_BROKER_URL": SCALE_REDIS,
                           "MEDQA_DATA_DIR": str(scratch / "medqa"), "MEDQA_TRIGGER_MIN_NEW": "1000000000"})
        reset_settings()
        store.USE_COPY = use_copy
        probe = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

        def backends() -> dict[int, float]:  # CPU so far of each backend serving this process's pool
            with probe.connect() as c:
                pids = c.execute(sqlalchemy.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                                 "AND pid <> pg_backend_pid()")).scalars().all()
            return {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids}

        try:
            before = backends()  # the migration's connection, kept in the pool: its DDL is not the import's
            wall, cpu = time.perf_counter(), time.process_time()
            result = store.ingest_file(path)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            backend = sum(spent - before.get(pid, 0.0) for pid, spent in backends().items())
            engine_for(url).dispose()
        finally:
            store.USE_COPY = True
            os.environ.clear()
            os.environ.update(saved)
            reset_settings()
    if result.errors or not result.stored:
        raise SystemExit(f"one-file import failed: {result}")
    return {"articles": result.stored, "seconds": round(wall, 1), "articles_per_s": round(result.stored / wall),
            "client_cpu_s": round(cpu, 1), "backend_cpu_s": round(backend, 1)}


def _scale_case(url: str, scratch: Path, corpus: Path, workers: int, expected: int) -> dict:
    """One worker count on a fresh database: start the workers, queue the folder, wait for every file."""
    import psutil
    import sqlalchemy

    from shared.db import engine_for, migrate

    migrate(url)
    env = os.environ | {"MEDQA_DATABASE_URL": url, "MEDQA_EAGER": "0", "MEDQA_BROKER_URL": SCALE_REDIS,
                        "MEDQA_DATA_DIR": str(scratch / "medqa"), "MEDQA_TRIGGER_MIN_NEW": "1000000000",
                        "MEDQA_MONITOR_AFTER_INGEST": "0", "MEDQA_VISIBILITY_TIMEOUT_S": "60"}
    db = url.rsplit("/", 1)[1]
    engine = engine_for(url)
    load_before = _load()
    procs = [subprocess.Popen([MEDQA, "worker", "ingest", "--hostname", f"ingest{n}@bench"], env=env,
                              stdout=(scratch / f"worker{n}.log").open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True) for n in range(workers)]
    try:
        deadline = time.monotonic() + 120
        while not all(b"ready." in (scratch / f"worker{n}.log").read_bytes() for n in range(workers)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"workers did not start: {(scratch / 'worker0.log').read_text()[-2000:]}")
            time.sleep(0.2)
        tree = [psutil.Process(p.pid) for p in procs]
        cpu_at_start = _cpu_seconds(tree)  # start-up (imports) is not import work
        queued = subprocess.run([MEDQA, "ingest", "files", str(corpus), "--queue-only", "--json"], env=env,
                                capture_output=True, text=True, check=True)
        log(f"scale: {workers} worker(s): queued {json.loads(queued.stdout)}")
        peaks: dict[int, dict[str, float]] = {}
        backends: dict[int, psutil.Process] = {}
        query = sqlalchemy.text("SELECT count(*) FILTER (WHERE status IN ('done', 'failed')), count(*) FROM ingestfile")
        while True:
            for n, proc in enumerate(tree):
                # RSS per process; PSS summed over the worker, since its pool child shares pages with its
                # main process (forked), and adding their RSS would count those twice.
                members = [proc, *proc.children(recursive=True)]
                mine = peaks.setdefault(n, {})
                for member in members:
                    role = "main_rss" if member.pid == proc.pid else "child_rss"
                    mine[role] = max(mine.get(role, 0.0), member.memory_info().rss / 2**20)
                pss = sum(m.memory_full_info().pss for m in members) / 2**20
                mine["pss"] = max(mine.get("pss", 0.0), pss)
            with engine.connect() as c:
                for (pid,) in c.execute(sqlalchemy.text("SELECT pid FROM pg_stat_activity WHERE datname = :d "
                                                        "AND pid <> pg_backend_pid()"), {"d": db}):
                    backends.setdefault(pid, psutil.Process(pid))
                finished, rows = c.execute(query).one()
            if rows and finished == rows:
                break
            time.sleep(0.5)
        cpu_workers = _cpu_seconds(tree) - cpu_at_start
        cpu_backends = 0.0
        for backend in backends.values():
            with contextlib.suppress(psutil.NoSuchProcess):  # a connection closed early: its time is not counted
                cpu_backends += sum(backend.cpu_times()[:2])
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(60)
    with engine.connect() as c:
        window = c.execute(sqlalchemy.text(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)), sum(stored), count(*) FILTER "
            "(WHERE status = 'failed'), count(DISTINCT importer), avg(extract(epoch FROM finished_at - started_at)) "
            "FROM ingestfile")).one()
        stored = c.execute(sqlalchemy.text("SELECT count(*) FROM abstract")).scalar_one()
    seconds, from_rows, failed, importers, per_file_s = float(window[0]), int(window[1]), *window[2:]
    if stored != expected or from_rows != expected or failed:
        raise SystemExit(f"{workers} worker(s): stored {stored} (rows say {from_rows}, {failed} failed), "
                         f"expected {expected}")
    rate = stored / seconds
    return {
        "workers": workers, "importers_seen": importers, "articles": stored, "seconds": round(seconds, 1),
        "articles_per_s": round(rate), "mean_file_s": round(float(per_file_s), 1),
        "cpu_s_per_1000": {"workers": round(cpu_workers / stored * 1000, 2),
                           "postgres_backends": round(cpu_backends / stored * 1000, 2)},
        "peak_mb_per_worker": [{"main_rss": round(p.get("main_rss", 0.0)),
                                "pool_child_rss": round(p.get("child_rss", 0.0)),
                                "total_pss": round(p.get("pss", 0.0))} for _, p in sorted(peaks.items())],
        "projected_baseline_hours": round(BASELINE_CITATIONS / rate / 3600, 1),
        "load_before": load_before, "load_after": _load(),
    }



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--rss-child", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--scale", action="store_true", help="only the fan-out case: files through Celery workers")
    parser.add_argument("--files", type=int, default=SCALE_FILES, help="scale: files per case (the issue: 40)")
    parser.add_argument("--per-file", type=int, default=SCALE_PER_FILE, help="scale: citations per file")
    parser.add_argument("--workers", default="1,2", help="scale: worker counts, one case each")
    parser.add_argument("--out", type=Path, default=SCALE_RESULT, help="scale: where the JSON result goes")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.scale:
        bench_scale(args.files, args.per_file, [int(n) for n in args.workers.split(",")], args.out)
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
