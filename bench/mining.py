"""Benchmark: the QA miner's labeller against expert labels, and how many abstracts qualify (one JSON
line last).

Run: .venv/bin/python bench/mining.py

1. Labeller: every one of the 500 expert-labelled PubMedQA items has a question title and a
   conclusion (its LONG_ANSWER). The rule (services/ingest/mining.label_conclusion) labels each
   conclusion yes, no, or abstains. Reported per label: how many it gave, precision and recall,
   on the train share the rule was written on (the gate's 80/20 split), the held-out share and all
   500; and the abstention rate. Goal: precision of every label the rule gives >= GOAL (the labels
   below it were dropped from the rule: "maybe" measured 13%).
2. Qualifying abstracts per 1,000 in the NLM samples (../shared/data/pubmed_update_samples): titles
   that are questions, of those with a labelled conclusion, and items mined (the rule not abstaining).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
GOAL = {"precision_min": 0.70}


def per_label(pairs: list[tuple[str, str | None]]) -> dict:
    counts = Counter(pairs)
    out: dict = {"items": len(pairs), "abstained": sum(n for (_, p), n in counts.items() if p is None)}
    for label in ("yes", "no", "maybe"):
        given = sum(n for (_, p), n in counts.items() if p == label)
        gold = sum(n for (g, _), n in counts.items() if g == label)
        right = counts[(label, label)]
        out[label] = {"given": given, "gold": gold, "precision": round(right / given, 3) if given else None,
                      "recall": round(right / gold, 3) if gold else None}
    return out


def labeller() -> dict:
    from services.ingest.mining import label_conclusion

    raw = json.loads((DATA / "pubmedqa" / "pqal_trainval.json").read_text())
    items = sorted(raw.items(), key=lambda kv: kv[0])
    random.Random(1234).shuffle(items)  # the gate's split (shared.corpora.pubmedqa_split): 80/20
    cut = int(len(items) * 0.8)
    pairs = [(v["final_decision"], label_conclusion(v["LONG_ANSWER"])) for _, v in items]
    return {"train_share": per_label(pairs[:cut]), "heldout_share": per_label(pairs[cut:]), "all": per_label(pairs)}


def qualifying() -> dict:
    from services.ingest.mining import mine, split_conclusion
    from services.ingest.parser import ArticleRecord, iter_pubmed

    n = questions = structured = 0
    mined: Counter[str] = Counter()
    for path in sorted((DATA / "pubmed_update_samples").glob("*/*.xml")):
        for r in iter_pubmed(path):
            if not isinstance(r, ArticleRecord) or not r.abstract.strip():
                continue
            n += 1
            if r.title.strip().endswith("?"):
                questions += 1
                structured += split_conclusion(r.abstract) is not None
            item = mine(r.pmid, r.title, r.abstract)
            if item is not None:
                mined[item.decision] += 1

    def per_1000(k: int) -> float:
        return round(1000 * k / n, 1) if n else 0.0

    return {"abstracts": n, "question_titles_per_1000": per_1000(questions),
            "with_conclusion_per_1000": per_1000(structured), "mined_per_1000": per_1000(sum(mined.values())),
            "mined": dict(mined)}


def main() -> None:
    if not (DATA / "pubmedqa").is_dir():
        raise SystemExit(f"needs ../shared/data beside the repo ({DATA})")
    result = {"bench": "mining", "labeller": labeller(), "qualifying": qualifying(), "goal": GOAL}
    given = [v for v in result["labeller"]["all"].values() if isinstance(v, dict) and v["given"]]
    result["goal_met"] = all(v["precision"] >= GOAL["precision_min"] for v in given)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
