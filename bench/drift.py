"""Benchmark: drift detection power, false alarms, needed window size and speed of the monitor's drift
check (one JSON line last).

Run: .venv/bin/python bench/drift.py [--rows 300] [--splits 100] [--speed-rows 2000]
                                     [--halves 2000] [--e2e-halves 100] [--shift-seeds 10]

Every end-to-end comparison goes through services.monitor.drift.text_drift as the monitor calls it:
the text column, Evidently's offline descriptors, metadata columns where both sides have them
(services.monitor.features.metadata), and all-MiniLM-L6-v2 embedding drift; the verdict is Holm over
the voting columns at the monitor's family alpha (MEDQA_DRIFT_ALPHA).

1. Detection power on real shifts from ../shared/data (--rows rows a side, seeded samples):
     nlm_vs_pubmedqa     NLM sample abstracts (title + abstract) vs PubMedQA contexts
     niddk_vs_ninds      MedQuAD NIDDK answers vs MedQuAD NINDS answers
     patients_vs_pubmedqa  TREC LiveQA patients' questions vs PubMedQA questions
   Goal: all detected. Also reported, without a goal: old_vs_new_years, PubMedQA contexts from the
   oldest years vs the newest (split at the median year), texts only: a time advance, which alone
   is not drift (years do not vote); the line says whether the texts themselves moved.
Every rate comes with its one-sided 95% upper bound (Clopper-Pearson, "upper95"): an exact test
flags about alpha of null runs, so a rate measured on N runs scatters around 5% by sqrt(0.05/N).

2. False alarms: --splits random halves of one distribution (PubMedQA contexts and MedQuAD answers
   alternately), each checked the same way. Goal: <= 5% flagged.
3. Null with metadata, on the NLM files (pubmed_update_samples/{baseline,updatefiles}/*.xml):
   a. per-column false flags of the metadata tests (p < alpha: journal and subjects by the contingency
      permutation test, journal_name by the familiarity permutation test): --halves random
      halves, spread over the files (each file on its own: one source) plus as many halves of all files
      pooled (larger tables). Goal: <= 5% per column.
   b. the dataset verdict end to end (text, descriptors, year, journal, subjects, embeddings):
      --e2e-halves random halves of all NLM abstracts pooled. Goal: false-alarm rate <= 5%; the
      per-column rates at the unadjusted alpha are printed beside it.
4. Needed rows: the monitor's target shift, a complete year-and-journal shift: NLM abstracts of the
   2019-2021 files against those of the 2023-2025 files from journals the earlier files never have
   (later years, no journal in common). The reference is every early abstract, as the monitor's is the
   champion's training data (the larger side); the current window is --shift-seeds seeded samples of
   the later ones at growing sizes. Reports the detection rate per size and the smallest size from
   which every seed was detected. Goal: every seed detected at the monitor's drift_min_rows.
5. Speed: --speed-rows reference rows against as many current rows (NLM abstracts, PubMedQA contexts and
   MedQuAD answers pooled and repeated to size), embeddings included, wall time of the drift check with
   the vectors already cached (as the monitor keeps them in the store). Goal: <= 15 s on this box.
   The embedding rate over the run (embed_texts_per_s) says what a cold cache adds.

Embeddings of each distinct text are computed once per bench run (the store's cache plays that part in
the monitor). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
GOAL = {"detected_all": True, "false_alarm_rate_max": 0.05, "column_false_flag_max": 0.05,
        "dataset_false_alarm_max": 0.05, "target_shift_detected_at_min_rows": True, "speed_s_max": 15.0}
SHIFT_SIZES = (30, 40, 55, 60, 75)
EARLY, LATE = ("pubmed20", "pubmed21", "pubmed22"), ("pubmed23", "pubmed24", "pubmed25")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def corpora() -> dict[str, list]:
    from services.ingest.parser import ArticleRecord, iter_pubmed
    from shared.corpora import load_liveqa, load_medquad

    raw = json.loads((DATA / "pubmedqa" / "pqal_trainval.json").read_text())
    pqa = [(" ".join(r["CONTEXTS"]), int(r["YEAR"]) if r.get("YEAR") else None, r["QUESTION"])
           for _, r in sorted(raw.items())]
    nlm = [f"{r.title}\n{r.abstract}" for p in sorted((DATA / "pubmed_update_samples").glob("*/*.xml"))
           for r in iter_pubmed(p) if isinstance(r, ArticleRecord) and r.abstract.strip()]
    return {
        "pubmedqa_contexts": [c for c, _, _ in pqa],
        "pubmedqa_by_year": [(c, y) for c, y, _ in pqa if y],
        "pubmedqa_questions": [q for _, _, q in pqa],
        "nlm": list(dict.fromkeys(nlm)),
        "niddk": [g.answer for g in load_medquad(DATA / "medquad" / "5_NIDDK_QA")],
        "ninds": [g.answer for g in load_medquad(DATA / "medquad" / "6_NINDS_QA")],
        "patients": [g.question for g in load_liveqa(DATA / "liveqa_medical")],
    }


class Vectors:
    """Each distinct text embedded once."""

    def __init__(self) -> None:
        self.cache: dict[str, object] = {}
        self.seconds = 0.0

    def __call__(self, texts: list[str]):  # type: ignore[no-untyped-def]
        import numpy as np

        from shared.embeddings import embed

        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            t0 = time.perf_counter()
            for t, v in zip(todo, embed(todo), strict=True):
                self.cache[t] = v
            self.seconds += time.perf_counter() - t0
        return np.stack([self.cache[t] for t in texts])


def check(ref: list[str], cur: list[str], vectors: Vectors, out: Path, name: str, alpha: float,
          extra: tuple | None = None) -> dict:
    """One text_drift run (every side has enough rows: min_rows=1), summarised."""
    from services.monitor.drift import EMBEDDINGS, text_drift

    t0 = time.perf_counter()
    er, ec = vectors(ref), vectors(cur)
    t1 = time.perf_counter()
    extra_ref, extra_cur = extra if extra else (None, None)
    r = text_drift(ref, cur, html_path=out / f"{name}.html", min_rows=1, family_alpha=alpha,
                   extra_reference=extra_ref, extra_current=extra_cur, embeddings_reference=er, embeddings_current=ec)
    took = time.perf_counter() - t1
    (out / f"{name}.html").unlink(missing_ok=True)  # megabytes each
    log(f"  {name}: {r.status} ({len(ref)} vs {len(cur)}), drifted {r.drifted_columns}, "
        f"embeddings AUC {r.scores[EMBEDDINGS]['score']:.3f}, {took:.1f} s (+{t1 - t0:.1f} s embedding)")
    return {"detected": r.detected, "drifted_columns": r.drifted_columns,
            "column_flags": sorted(c for c, v in r.scores.items() if v["drifted"]),
            "embedding_score": round(r.scores[EMBEDDINGS]["score"], 4), "seconds": round(took, 2),
            "scores": {c: {"score": round(v["score"], 5), "threshold": round(v["threshold"], 4), "unit": v["unit"]}
                       for c, v in r.scores.items()}}


def nlm_records() -> dict[str, list]:
    """NLM abstracts with metadata, by file name (the ArticleRecord is Abstract-like for features.metadata)."""
    from services.ingest.parser import ArticleRecord, iter_pubmed

    files = sorted((DATA / "pubmed_update_samples").glob("*/*.xml"))
    by_file = {p.stem: [r for r in iter_pubmed(p) if isinstance(r, ArticleRecord) and r.abstract.strip()]
               for p in files}
    return {name: list({r.pmid: r for r in rows}.values()) for name, rows in by_file.items()}


def text_of(record) -> str:  # type: ignore[no-untyped-def]
    return f"{record.title}\n{record.abstract}"


def upper95(hits: int, trials: int) -> float | None:
    """One-sided 95% Clopper-Pearson upper bound of a rate: how high the true rate could be, given
    that `trials` runs flagged `hits` (a rate measured on 20 runs says little about 5%)."""
    from scipy import stats

    return round(float(stats.beta.ppf(0.95, hits + 1, trials - hits)), 3) if trials and hits < trials else 1.0


def halves(rows: list, rng: random.Random) -> tuple[list, list]:
    shuffled = rng.sample(rows, len(rows))
    return shuffled[: len(rows) // 2], shuffled[len(rows) // 2:]


def categorical_null(by_file: dict[str, list], n_halves: int, rng: random.Random, alpha: float) -> dict:
    """Per-column false-flag rate of the categorical test on random halves: per file, and pooled."""
    from services.monitor.drift import chi2_two_sample, familiarity_two_sample
    from services.monitor.features import metadata

    tests = {"journal": chi2_two_sample, "subjects": chi2_two_sample, "journal_name": familiarity_two_sample}

    pooled = [r for rows in by_file.values() for r in rows]
    sources = {"per_file": [rows for rows in by_file.values() if len(rows) >= 10], "pooled": [pooled]}
    out: dict = {}
    for kind, pools in sources.items():
        flags = dict.fromkeys(tests, 0)
        for i in range(n_halves):
            ref_rows, cur_rows = halves(pools[i % len(pools)], rng)
            ref, cur = metadata(ref_rows, cur_rows)
            for column, test in tests.items():
                flags[column] += test(ref[column], cur[column]) < alpha
        out[kind] = {"halves": n_halves, "rows_a_side": sorted({len(p) // 2 for p in pools}),
                     "false_flag_rate": {c: round(k / n_halves, 3) for c, k in flags.items()},
                     "upper95": {c: upper95(k, n_halves) for c, k in flags.items()}}
        log(f"  categorical null, {kind}: {out[kind]['false_flag_rate']}")
    return out


def dataset_null(by_file: dict[str, list], n_halves: int, rng: random.Random, vectors: Vectors, out: Path,
                 alpha: float) -> dict:
    """The dataset verdict end to end on random halves of all NLM abstracts pooled."""
    from services.monitor.features import metadata

    pooled = [r for rows in by_file.values() for r in rows]
    runs = []
    for i in range(n_halves):
        ref_rows, cur_rows = halves(pooled, rng)
        runs.append(check([text_of(r) for r in ref_rows], [text_of(r) for r in cur_rows], vectors, out,
                          f"null{i}", alpha, metadata(ref_rows, cur_rows)))
    columns = sorted(runs[0]["scores"]) if runs else []
    return {"halves": n_halves, "rows_a_side": len(pooled) // 2,
            "false_alarm_rate": round(sum(r["detected"] for r in runs) / max(1, n_halves), 3),
            "upper95": upper95(sum(r["detected"] for r in runs), n_halves),
            "column_flag_rate": {c: round(sum(c in r["column_flags"] for r in runs) / max(1, n_halves), 3)
                                 for c in columns}}


def target_shift(by_file: dict[str, list], seeds: int, vectors: Vectors, out: Path, alpha: float) -> dict:
    """2019-2021 files against 2023-2025 files at growing sizes: detection rate per size."""
    from services.monitor.features import metadata

    early = [r for name, rows in by_file.items() if name.startswith(EARLY) for r in rows]
    # Complete: later years, and only journals the early files never have (a later file of the same
    # stream shares journals as often as the same file does: that is a pure time advance, not a shift).
    early_journals = {r.journal for r in early}
    late = [r for name, rows in by_file.items() if name.startswith(LATE) for r in rows
            if r.journal not in early_journals]
    rates: dict[str, float] = {}
    # The reference is every early abstract, as the monitor's reference is the champion's training data
    # (the larger side); the current window is what grows.
    for size in [n for n in SHIFT_SIZES if n <= len(late)]:
        hits = 0
        for seed in range(seeds):
            rng = random.Random(seed)
            ref_rows, cur_rows = early, rng.sample(late, size)
            hits += check([text_of(r) for r in ref_rows], [text_of(r) for r in cur_rows], vectors, out,
                          f"shift{size}-{seed}", alpha, metadata(ref_rows, cur_rows))["detected"]
        rates[str(size)] = round(hits / seeds, 3)
    sizes = [int(n) for n in rates]
    # The smallest size from which every larger size tried was detected in every seed too.
    needed = next((n for n in sizes if all(rates[str(m)] == 1.0 for m in sizes if m >= n)), None)
    return {"reference": f"{'+'.join(EARLY)}, all {len(early)} abstracts",
            "current": f"{'+'.join(LATE)}, journals not in the reference files ({len(late)} abstracts)",
            "seeds": seeds, "detection_rate_by_current_rows": rates, "needed_rows_measured": needed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=300, help="rows a side in the shift checks (default 300)")
    parser.add_argument("--splits", type=int, default=100, help="same-distribution splits (default 100)")
    parser.add_argument("--halves", type=int, default=2000, help="NLM halves for the categorical null (default 2000)")
    parser.add_argument("--e2e-halves", type=int, default=100, help="NLM halves through text_drift (default 100)")
    parser.add_argument("--shift-seeds", type=int, default=10, help="seeds per size of the target shift")
    parser.add_argument("--speed-rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's choice)")
    args = parser.parse_args()
    if not (DATA / "pubmedqa").is_dir():
        raise SystemExit(f"needs ../shared/data beside the repo ({DATA})")
    import torch

    from shared.settings import get_settings

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = get_settings()
    alpha, min_rows = settings.drift_alpha, settings.drift_min_rows
    c = corpora()
    by_file = nlm_records()
    rng = random.Random(args.seed)
    vectors = Vectors()

    def pick(items: list, n: int) -> list:
        return rng.sample(items, min(n, len(items)))

    by_year = sorted(c["pubmedqa_by_year"], key=lambda x: x[1])
    half = len(by_year) // 2
    shifts = {
        "nlm_vs_pubmedqa": (pick(c["nlm"], args.rows), pick(c["pubmedqa_contexts"], args.rows)),
        "niddk_vs_ninds": (pick(c["niddk"], args.rows), pick(c["ninds"], args.rows)),
        "patients_vs_pubmedqa": (pick(c["patients"], args.rows), pick(c["pubmedqa_questions"], args.rows)),
    }
    # Older against newer PubMedQA contexts, texts only: a time advance. Reported, not a detection goal:
    # years do not vote, and whether the texts moved is what this case measures.
    time_only = ([t for t, _ in by_year[:half]][: args.rows], [t for t, _ in by_year[half:]][-args.rows:])
    result: dict = {"bench": "drift", "device": "cpu", "rule": "holm", "family_alpha": alpha,
                    "drift_min_rows": min_rows, "rows": args.rows, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="medqa-bench-drift-") as tmp:
        out = Path(tmp)
        log("shifts:")
        result["shifts"] = {name: check(ref, cur, vectors, out, name, alpha) for name, (ref, cur) in shifts.items()}
        result["time_only"] = {"old_vs_new_years": check(*time_only, vectors, out, "old_vs_new_years", alpha)}
        log("same-distribution splits:")
        splits = []
        for i in range(args.splits):
            pool = c["pubmedqa_contexts"] if i % 2 == 0 else c["niddk"] + c["ninds"]
            items = pick(pool, 2 * args.rows)
            splits.append(check(items[: len(items) // 2], items[len(items) // 2:], vectors, out, f"split{i}", alpha))
        alarms = [x["detected"] for x in splits]
        log("null with metadata (NLM halves):")
        result["categorical_null"] = categorical_null(by_file, args.halves, rng, alpha)
        result["dataset_null"] = dataset_null(by_file, args.e2e_halves, rng, vectors, out, alpha)
        log("target shift (needed rows):")
        result["target_shift"] = target_shift(by_file, args.shift_seeds, vectors, out, alpha)
        log("speed:")
        pool = c["nlm"] + c["pubmedqa_contexts"] + c["niddk"] + c["ninds"]
        rng.shuffle(pool)
        big = (pool * (2 * args.speed_rows // len(pool) + 1))[: 2 * args.speed_rows]
        vectors(big)  # cached beforehand, as the monitor's store holds them
        speed = check(big[: args.speed_rows], big[args.speed_rows:], vectors, out, "speed", alpha)
    result["false_alarms"] = {"splits": args.splits, "flagged": sum(alarms),
                              "rate": round(sum(alarms) / max(1, args.splits), 3),
                              "upper95": upper95(sum(alarms), args.splits),
                              "checks": [{k: x[k] for k in ("detected", "drifted_columns", "column_flags")}
                                         for x in splits]}
    # Embedding cost over the whole run (every distinct text once; the speed rows were mostly embedded
    # by the earlier checks already): what a cold cache would add per text.
    result["speed"] = {"reference_rows": args.speed_rows, "current_rows": args.speed_rows,
                       "drift_check_s": speed["seconds"], "texts_embedded_in_run": len(vectors.cache),
                       "embed_s_in_run": round(vectors.seconds, 1),
                       "embed_texts_per_s": round(len(vectors.cache) / vectors.seconds, 1) if vectors.seconds else None}
    result["goal"] = goals(result, min_rows)
    print(json.dumps(result))


def goals(result: dict, min_rows: int) -> dict:
    column_rates = [r for v in result["categorical_null"].values() for r in v["false_flag_rate"].values()]
    at_min = result["target_shift"]["detection_rate_by_current_rows"].get(str(min_rows))
    goal = {**GOAL,
            "detected_met": all(v["detected"] for v in result["shifts"].values()),
            "false_alarm_met": result["false_alarms"]["rate"] <= GOAL["false_alarm_rate_max"],
            "column_false_flag_met": max(column_rates) <= GOAL["column_false_flag_max"],
            "dataset_false_alarm_met":
                result["dataset_null"]["false_alarm_rate"] <= GOAL["dataset_false_alarm_max"],
            "target_shift_at_min_rows": at_min,
            "target_shift_met": at_min == 1.0,
            "speed_met": result["speed"]["drift_check_s"] <= GOAL["speed_s_max"]}
    goal["met"] = all(goal[k] for k in goal if k.endswith("_met"))
    return goal


if __name__ == "__main__":
    main()
