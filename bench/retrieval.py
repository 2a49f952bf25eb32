"""Benchmark: the shared ANN retrieval index (shared/ann.py) against the exact dense matrix, in one run.

Run: .venv/bin/python bench/retrieval.py [--vectors 1000000] [--queries 300] [--threads 1]

Made-up data, since no million real abstracts are here: unit 384-d vectors with the structure of
sentence embeddings (low intrinsic dimension, topical clusters): 3,000 cluster centres in a 48-d
latent space, each vector a centre plus noise, mapped to 384-d by one fixed random projection, plus
isotropic noise. A query is a stored vector's latent point moved a little (a question near its own
abstract), projected the same way. Uniform random vectors would be a harder, unrealistic case (no
neighbourhood structure); the README says so.

Exact: the dense float32 matrix searched by one matrix-vector product per query (what an API replica
does today). ANN: FAISS IVF with 8-bit scalar quantization, built from the same vectors, saved,
memory-mapped back. Each side runs in its own process, so resident memory is each one's own: the
figure is VmRSS after loading and answering every query, minus the process's RSS before loading.
Recall@3 = share of the exact top 3 found in the ANN top 3. Latency is per query, one at a time.
Prints one JSON line last (ratios: ANN over exact) and writes bench/results/retrieval_<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from services.devkit.synth import made_up_vectors  # noqa: E402  (after the path insert)

DIM = 384


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _percentiles(lat: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
            "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 3)}


def run_exact(work: Path, k: int) -> dict:
    before = rss_mb()
    x = np.load(work / "vectors.npy")  # an API replica's matrix, held in memory
    q = np.load(work / "queries.npy")
    lat, found = [], []
    for row in q:
        t = time.perf_counter()
        scores = x @ row
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        lat.append(time.perf_counter() - t)
        found.append(top.tolist())
    np.save(work / "exact.npy", np.array(found))
    return {"rss_mb": round(rss_mb() - before, 1), **_percentiles(lat)}


def run_ann(work: Path, k: int, sha: str, nprobe: int | None) -> dict:
    from shared import ann

    before = rss_mb()
    index = ann.load(work / f"{sha}.faiss", sha)
    q = np.load(work / "queries.npy")
    lat, found = [], []
    for row in q:
        t = time.perf_counter()
        keys, _ = index.search(row[None, :], k, nprobe=nprobe)
        lat.append(time.perf_counter() - t)
        found.append(keys[0].tolist())
    np.save(work / f"ann-{nprobe or 0}.npy", np.array(found))
    return {"rss_mb": round(rss_mb() - before, 1), **_percentiles(lat)}


def child(args: argparse.Namespace) -> None:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.work)
    doc = run_exact(work, args.k) if args.child == "exact" else run_ann(work, args.k, args.sha, args.nprobe)
    print(json.dumps(doc))


def in_child(work: Path, args: argparse.Namespace, mode: str, **more: object) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(work), "--k", str(args.k),
           "--threads", str(args.threads)] + [f"--{k}={v}" for k, v in more.items() if v is not None]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ,
                                                                                "OMP_NUM_THREADS": str(args.threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), exact.tolist(), strict=True)]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="FAISS threads per search (an API replica's share)")
    p.add_argument("--nprobe", default="auto,64", help="comma list; auto = shared/ann.default_nprobe")
    p.add_argument("--child", choices=("exact", "ann"))
    p.add_argument("--work")
    p.add_argument("--sha")
    p.add_argument("--nprobe-child", dest="nprobe_child", type=int)
    args = p.parse_args()
    if args.child:
        args.nprobe = args.nprobe_child
        child(args)
        return

    import faiss

    from shared import ann

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="medqa-ann-") as tmp:
        work = Path(tmp)
        log(f"making {args.vectors:,} vectors")
        x, q, origin = made_up_vectors(args.vectors, args.queries)
        np.save(work / "vectors.npy", x)
        np.save(work / "queries.npy", q)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        log("building the ANN index")
        t = time.perf_counter()
        index = ann.build(x, np.arange(len(x), dtype=np.int64))
        build_s = time.perf_counter() - t
        path, sha = ann.save(index, work)
        nlist = faiss.extract_index_ivf(index.index).nlist
        del index, x
        log("exact search")
        exact = in_child(work, args, "exact")
        truth = np.load(work / "exact.npy")
        own = float(np.mean([o in row for o, row in zip(origin, truth.tolist(), strict=True)]))
        runs = []
        for choice in args.nprobe.split(","):
            nprobe = None if choice == "auto" else int(choice)
            log(f"ANN search, nprobe {nprobe or ann.default_nprobe(nlist)}")
            got = in_child(work, args, "ann", sha=sha, **{"nprobe-child": nprobe})
            found = np.load(work / f"ann-{nprobe or 0}.npy")
            runs.append({"nprobe": nprobe or ann.default_nprobe(nlist), "recall_at_3": round(recall(found, truth), 4),
                         **got})
        file_mb = path.stat().st_size / 1e6
    dense_mb = args.vectors * DIM * 4 / 1e6
    best = runs[0]
    doc = {"bench": "retrieval", "vectors": args.vectors, "dim": DIM, "queries": args.queries, "k": args.k,
           "threads": args.threads, "nlist": nlist, "build_s": round(build_s, 1), "index_file_mb": round(file_mb, 1),
           "dense_matrix_mb": round(dense_mb, 1), "exact": exact, "ann": runs,
           "query_own_vector_in_exact_top3": round(own, 3),
           "goals": {"recall_at_3": 0.95, "p95_ms": 10.0},
           "goal_met": best["recall_at_3"] >= 0.95 and best["p95_ms"] <= 10.0 and best["rss_mb"] < exact["rss_mb"],
           "ratios": {"p95_ann_over_exact": round(best["p95_ms"] / exact["p95_ms"], 4),
                      "rss_ann_over_exact": round(best["rss_mb"] / exact["rss_mb"], 4),
                      "file_over_dense": round(file_mb / dense_mb, 4)},
           "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    out = ROOT / "bench" / "results" / f"retrieval_{date.today().isoformat()}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
