"""Benchmark: drift detection power, false alarms and speed of the monitor's drift check (one JSON line last).

Run: .venv/bin/python bench/drift.py [--rows 300] [--splits 20] [--speed-rows 2000]

Every comparison goes through services.monitor.drift.text_drift exactly as the monitor calls it: the
text column, Evidently's offline descriptors, metadata columns where both sides have them, and
all-MiniLM-L6-v2 embedding drift, with the monitor's drift_share (0.25).

1. Detection power on real shifts from ../shared/data (--rows rows a side, seeded samples):
     nlm_vs_pubmedqa     NLM sample abstracts (title + abstract) vs PubMedQA contexts
     niddk_vs_ninds      MedQuAD NIDDK answers vs MedQuAD NINDS answers
     old_vs_new_years    PubMedQA contexts from the oldest years vs the newest (split at the median year)
     patients_vs_pubmedqa  TREC LiveQA patients' questions vs PubMedQA questions
   Goal: all detected.
2. False alarms: --splits random halves of one distribution (PubMedQA contexts and MedQuAD answers
   alternately), each checked the same way. Goal: <= 5% flagged.
3. Speed: --speed-rows reference rows against as many current rows (NLM abstracts, PubMedQA contexts and
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
GOAL = {"detected_all": True, "false_alarm_rate_max": 0.05, "speed_s_max": 15.0}


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


def check(ref: list[str], cur: list[str], vectors: Vectors, out: Path, name: str, share: float) -> dict:
    from services.monitor.drift import EMBEDDINGS, text_drift

    t0 = time.perf_counter()
    er, ec = vectors(ref), vectors(cur)
    t1 = time.perf_counter()
    r = text_drift(ref, cur, html_path=out / f"{name}.html", min_rows=10, drift_share=share,
                   embeddings_reference=er, embeddings_current=ec)
    took = time.perf_counter() - t1
    drifted = sorted(c for c, v in r.scores.items() if v["drifted"])
    log(f"  {name}: {r.status} ({len(ref)} vs {len(cur)}), drifted {drifted}, "
        f"embeddings score {r.scores[EMBEDDINGS]['score']:.3f}, {took:.1f} s (+{t1 - t0:.1f} s embedding)")
    return {"detected": r.detected, "share_drifted": round(r.share_drifted, 3), "drifted_columns": drifted,
            "embedding_score": round(r.scores[EMBEDDINGS]["score"], 4), "seconds": round(took, 2),
            "scores": {c: {"score": round(v["score"], 5), "threshold": round(v["threshold"], 4)}
                       for c, v in r.scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=300, help="rows a side in the shift checks (default 300)")
    parser.add_argument("--splits", type=int, default=20, help="same-distribution splits (default 20)")
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
    share = get_settings().drift_share
    c = corpora()
    rng = random.Random(args.seed)
    vectors = Vectors()

    def pick(items: list, n: int) -> list:
        return rng.sample(items, min(n, len(items)))

    by_year = sorted(c["pubmedqa_by_year"], key=lambda x: x[1])
    half = len(by_year) // 2
    shifts = {
        "nlm_vs_pubmedqa": (pick(c["nlm"], args.rows), pick(c["pubmedqa_contexts"], args.rows)),
        "niddk_vs_ninds": (pick(c["niddk"], args.rows), pick(c["ninds"], args.rows)),
        "old_vs_new_years": ([t for t, _ in by_year[:half]][: args.rows], [t for t, _ in by_year[half:]][-args.rows:]),
        "patients_vs_pubmedqa": (pick(c["patients"], args.rows), pick(c["pubmedqa_questions"], args.rows)),
    }
    result: dict = {"bench": "drift", "device": "cpu", "drift_share": share, "rows": args.rows,
                    "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="medqa-bench-drift-") as tmp:
        out = Path(tmp)
        log("shifts:")
        result["shifts"] = {name: check(ref, cur, vectors, out, name, share) for name, (ref, cur) in shifts.items()}
        log("same-distribution splits:")
        splits = []
        for i in range(args.splits):
            pool = c["pubmedqa_contexts"] if i % 2 == 0 else c["niddk"] + c["ninds"]
            items = pick(pool, 2 * args.rows)
            splits.append(check(items[: len(items) // 2], items[len(items) // 2:], vectors, out, f"split{i}", share))
        alarms = [x["detected"] for x in splits]
        log("speed:")
        pool = c["nlm"] + c["pubmedqa_contexts"] + c["niddk"] + c["ninds"]
        rng.shuffle(pool)
        big = (pool * (2 * args.speed_rows // len(pool) + 1))[: 2 * args.speed_rows]
        vectors(big)  # cached beforehand, as the monitor's store holds them
        speed = check(big[: args.speed_rows], big[args.speed_rows:], vectors, out, "speed", share)
    result["false_alarms"] = {"splits": args.splits, "flagged": sum(alarms),
                              "rate": round(sum(alarms) / max(1, args.splits), 3), "checks": splits}
    # Embedding cost over the whole run (every distinct text once; the speed rows were mostly embedded
    # by the earlier checks already): what a cold cache would add per text.
    result["speed"] = {"reference_rows": args.speed_rows, "current_rows": args.speed_rows,
                       "drift_check_s": speed["seconds"], "texts_embedded_in_run": len(vectors.cache),
                       "embed_s_in_run": round(vectors.seconds, 1),
                       "embed_texts_per_s": round(len(vectors.cache) / vectors.seconds, 1) if vectors.seconds else None}
    result["goal"] = {**GOAL,
                      "detected_met": all(v["detected"] for v in result["shifts"].values()),
                      "false_alarm_met": result["false_alarms"]["rate"] <= GOAL["false_alarm_rate_max"],
                      "speed_met": speed["seconds"] <= GOAL["speed_s_max"]}
    result["goal"]["met"] = all(result["goal"][k] for k in ("detected_met", "false_alarm_met", "speed_met"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
