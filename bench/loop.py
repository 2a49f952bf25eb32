"""Benchmark: the whole demo loop on this CPU, against the 5-minute target (one JSON line last).

Run: .venv/bin/python bench/loop.py [CORPUS]. The baseline is the target itself (300 s) and the
base-model preparation, measured in the same run, is reported apart from the loop.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from services.devkit.demo import run_demo

TARGET_S = 300.0


def main() -> None:
    # The Makefile sets MEDQA_DEMO_CORPUS to the real NLM samples where they exist.
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(os.environ["MEDQA_DEMO_CORPUS"]) \
        if os.environ.get("MEDQA_DEMO_CORPUS") else None
    summary = run_demo(corpus)
    rounds = [r for r in summary["rounds"] if r["status"] == "succeeded"]
    print(json.dumps({
        "bench": "loop",
        "corpus": summary["corpus"],
        "abstracts": summary["abstracts_ingested"],
        "runs": len(summary["rounds"]),
        "loop_seconds": summary["loop_seconds"],
        "target_seconds": TARGET_S,
        "loop_over_target": round(summary["loop_seconds"] / TARGET_S, 3),
        "base_model_prep_seconds": summary["base_model_prep_seconds"],
        "train_tokens_per_s": [round(r["tokens_per_s"] or 0, 1) for r in rounds],
        "champion": summary["champion"],
    }))


if __name__ == "__main__":
    main()
