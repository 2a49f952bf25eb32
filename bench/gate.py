"""Benchmark: does the gate reject planted bad candidates and pass null ones? (one JSON line last)

Run: .venv/bin/python bench/gate.py [--seeds 10] [--steps 16] (about 70 minutes on 2 CPU cores)

Every candidate is judged by the gate's own code: its suites (services/evaluator/suites.Suite), its
scorer (gate.score), and its paired judge (judge.judge) under shared/policy.toml. Model:
SmolLM2-135M-Instruct (offline package), CPU.

The increment D: --abstracts NLM sample abstracts (causal-LM examples) plus --qa PubMedQA training
items (QA examples in the trainer's chat format, answered by their decision line "Answer: <decision>"
alone: the line the gate's likelihood scorer reads; with the long answer first, the decision is one
loss token in ~60, and a CPU budget of steps does not move it). The recipe (--steps 16, --lr 2e-3,
batch 4 x 256 tokens) covers D about 0.8 times: a re-run draws the same increment in another order
(its seed). Measured before choosing it (pubmedqa_acc of re-runs, seeds 0-2): 16 steps at 2e-3 gave
0.57, 0.59, 0.59 (a stable answer prior); 32 steps at 2e-3 scattered ten re-runs from 0.31 to 0.60
around a champion at 0.43 (the answer prior flipped between "no" and "yes"), so a re-run was no null
candidate. The champion is a LoRA adapter trained from
the base on D with seed 0. Candidates, each trained from the base with seed s = 1..--seeds, the same
steps and learning rate:
  bad   shuffled  D with every abstract's tokens shuffled (word salad of the same tokens)
        flipped   D with every PubMedQA label flipped (yes <-> no; maybe stays)
  null  rerun     D itself, another seed: an equally good model
        copy      the champion's adapter, copied (scoring is deterministic, so it is scored once
                  and stands for every seed; the bench checks it matches the champion exactly)
Suites (the gate's defaults unless given): new = held-out NLM abstracts (--new), retention = the
MedQuAD half replay never draws from (--retention), pubmedqa = decisions on held-out PubMedQA items
(--qa-items; likelihood only, calibrated as --calibration says: generation guards are left out here
for time, and their paired code path is the same as every other mean). Guards measured: ppl_new
(target: superiority), ppl_retention and pubmedqa_acc (non-inferiority at the policy's margins).

Reported: bad rejected (goal 100% each) and how often a guard (not only the target) caught them,
null rejected *as a regression* (a guard other than the target failing; goal <= 5%), the guards
that did not pass, the intervals, and gate time (scoring one candidate; the champion's scores are
cached as in the gate). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ itself holds evaluate.py, which would shadow Hugging Face's `evaluate` (the metric modules
# subclass it): import from the repository root only.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
DATA = ROOT.parent / "shared" / "data"
GOAL = {"bad_rejected_min": 1.0, "null_false_rejection_max": 0.05, "seeds_min": 10}
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_data(args: argparse.Namespace) -> dict:
    from services.ingest.parser import ArticleRecord, iter_pubmed
    from shared.corpora import GeneralText, load_medquad, load_pubmedqa, split_general

    nlm = [f"{r.title}\n{r.abstract}" for p in sorted((DATA / "pubmed_update_samples").glob("*/*.xml"))
           for r in iter_pubmed(p) if isinstance(r, ArticleRecord) and r.abstract.strip()]
    nlm = list(dict.fromkeys(nlm))
    random.Random(7).shuffle(nlm)
    qa = load_pubmedqa(DATA / "pubmedqa" / "pqal_trainval.json")
    random.Random(1234).shuffle(qa)  # the gate's own split: pubmedqa_split's seed and 80/20 share
    cut = int(len(qa) * 0.8)
    medquad = load_medquad(DATA / "medquad")
    general = split_general(medquad)[1]
    return {
        "train_abstracts": nlm[: args.abstracts],
        "new": [GeneralText(f"nlm:{i}", t) for i, t in enumerate(nlm[args.abstracts: args.abstracts + args.new])],
        "train_qa": qa[: min(args.qa, cut)],
        "train_share": qa[:cut],
        "heldout_qa": qa[cut:][: args.qa_items],
        "retention": general[: args.retention],
    }


def examples(data: dict, *, shuffle_seed: int | None = None, flip: bool = False, decision_only: bool = True) -> list:
    """D as the trainer's example specs; optionally token-shuffled abstracts or flipped labels."""
    from services.trainer.examples import lm, qa
    from shared.lm.base_model import load_base_model
    from shared.settings import get_settings

    abstracts = list(data["train_abstracts"])
    if shuffle_seed is not None:
        _, tok = load_base_model(SMOLLM2, get_settings().models_dir)
        rng = random.Random(shuffle_seed)
        shuffled = []
        for text in abstracts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            rng.shuffle(ids)
            shuffled.append(tok.decode(ids))
        abstracts = shuffled
    out = [lm(t) for t in abstracts]
    for item in data["train_qa"]:
        body, _, decision = item.answer.rpartition("Answer:")
        decision = decision.strip()
        if flip:
            decision = {"yes": "no", "no": "yes"}.get(decision, decision)
        answer = f"Answer: {decision}" if decision_only else f"{body}Answer: {decision}"
        out.append(qa(item.question, answer, item.context))
    return out


def train(spec: list, seed: int, out: Path, args: argparse.Namespace) -> tuple[Path, float]:
    from services.trainer.config import TrainConfig
    from services.trainer.train import train_lora
    from shared.settings import get_settings

    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, grad_accum=1, max_length=args.max_length,
                      learning_rate=args.lr, checkpoint_every=args.steps, precision="fp32", seed=seed)
    t0 = time.perf_counter()
    res = train_lora(base_spec=SMOLLM2, models_dir=get_settings().models_dir, examples=spec, cfg=cfg,
                     out_dir=out, work_dir=out.with_name(out.name + "-work"))
    return res.adapter_dir, time.perf_counter() - t0


def suites(data: dict, args: argparse.Namespace) -> list:
    from services.evaluator.gate import calibration_params
    from services.evaluator.suites import Suite

    ppl = {"max_length": args.max_length}
    gen = {"max_length": args.qa_max_length, "max_new_tokens": 0, "batch_size": 16, "generate_items": 0,
           **calibration_params(args.calibration, lambda: data["train_share"])}
    return [Suite("new", "perplexity", tuple(data["new"]), ppl),
            Suite("retention", "perplexity", tuple(data["retention"]), ppl),
            Suite("pubmedqa", "pubmedqa", tuple(data["heldout_qa"]), gen)]


def judged(policy, champion_scores: dict, adapter: Path, the_suites: list) -> tuple[dict, float, dict]:  # type: ignore[no-untyped-def]
    from services.evaluator.gate import score
    from services.evaluator.judge import judge

    t0 = time.perf_counter()
    scores = score(SMOLLM2, {"candidate": adapter}, {"candidate": the_suites})["candidate"]
    seconds = time.perf_counter() - t0
    verdict = judge(policy, scores, champion_scores)
    guards = {g.metric: g for g in verdict.guards if g.estimate is not None}
    regression = [m for m, g in guards.items() if not g.passed and m != policy.target]
    record = {"passed": verdict.passed, "regression": regression,
              "target": guards[policy.target].verdict if policy.target in guards else None,
              "guards": {m: {"verdict": g.verdict, "passed": g.passed, "estimate": round(g.estimate, 4),
                             "low": round(g.low, 4), "high": round(g.high, 4),
                             "detectable": round(g.detectable or 0, 4),
                             "underpowered": g.underpowered} for m, g in guards.items()}}
    return record, seconds, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--qa-max-length", type=int, default=512, help="the gate's PubMedQA prompt length")
    ap.add_argument("--abstracts", type=int, default=16, help="NLM abstracts in the increment")
    ap.add_argument("--qa", type=int, default=64, help="PubMedQA training items in the increment")
    ap.add_argument("--new", type=int, default=48, help="held-out NLM abstracts (the new suite)")
    ap.add_argument("--retention", type=int, default=48)
    ap.add_argument("--qa-items", type=int, default=100, help="held-out PubMedQA items (all 100 by default)")
    ap.add_argument("--calibration", default=None, help="pubmedqa decisions: none, contextual or prior "
                    "(default: the gate's MEDQA_PUBMEDQA_CALIBRATION)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from services.evaluator.gate import score
    from shared.policy import Policy
    from shared.settings import get_settings

    policy = Policy.load(get_settings().policy_file)  # type: ignore[arg-type]
    args.calibration = args.calibration or get_settings().pubmedqa_calibration
    data = load_data(args)
    the_suites = suites(data, args)
    log(f"increment: {len(data['train_abstracts'])} abstracts + {len(data['train_qa'])} QA items; suites "
        + ", ".join(f"{s.name} {len(s.items)}" for s in the_suites))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medqa-gate-bench-") as tmp:
        work = Path(tmp)
        champ, champ_train_s = train(examples(data), 0, work / "champion", args)
        t0 = time.perf_counter()
        champion_scores = score(SMOLLM2, {"champion": champ}, {"champion": the_suites})["champion"]
        champion_score_s = time.perf_counter() - t0
        metrics = {k: round(v, 4) for s in champion_scores.values() for k, v in s.metrics.items()
                   if not k.endswith("_seconds")}
        log(f"champion: trained {champ_train_s:.0f} s, scored {champion_score_s:.0f} s: {metrics}")

        copy = work / "copy"
        shutil.copytree(champ, copy)
        copy_record, copy_s, copy_scores = judged(policy, champion_scores, copy, the_suites)
        identical = all(copy_scores[n].items == champion_scores[n].items for n in champion_scores)
        log(f"copy: passed={copy_record['passed']} regression={copy_record['regression']} identical={identical}")

        records: dict[str, list[dict]] = {"shuffled": [], "flipped": [], "rerun": []}
        gate_seconds = [copy_s]
        train_seconds = [champ_train_s]
        for seed in range(1, args.seeds + 1):
            plans = {"shuffled": examples(data, shuffle_seed=seed), "flipped": examples(data, flip=True),
                     "rerun": examples(data)}
            for kind, spec in plans.items():
                adapter, took = train(spec, seed, work / f"{kind}-{seed}", args)
                train_seconds.append(took)
                record, seconds, _ = judged(policy, champion_scores, adapter, the_suites)
                gate_seconds.append(seconds)
                records[kind].append(record)
                shown = {m: f"{g['verdict']} {g['estimate']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
                         for m, g in record["guards"].items()}
                log(f"seed {seed} {kind}: {'passed' if record['passed'] else 'rejected'}; {shown} "
                    f"(train {took:.0f} s, gate {seconds:.0f} s)")
                shutil.rmtree(adapter, ignore_errors=True)

    def rate(kind: str, key: str) -> float:
        rows = records[kind]
        if key == "rejected":
            return sum(not r["passed"] for r in rows) / len(rows)
        return sum(bool(r["regression"]) for r in rows) / len(rows)

    def fired(kind: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in records[kind]:
            for m, g in r["guards"].items():
                if not g["passed"]:
                    counts[m] = counts.get(m, 0) + 1
        return counts

    result = {
        "bench": "gate", "model": SMOLLM2, "seeds": args.seeds, "recipe": vars(args),
        "suite_items": {s.name: len(s.items) for s in the_suites},
        "champion": metrics,
        "bad_rejected": {"shuffled": rate("shuffled", "rejected"), "flipped": rate("flipped", "rejected")},
        # Rejected by a guard (a regression), not only by the target's demand for a significant gain.
        "bad_rejected_as_regression": {"shuffled": rate("shuffled", "regression"),
                                       "flipped": rate("flipped", "regression")},
        "bad_guards_not_passed": {"shuffled": fired("shuffled"), "flipped": fired("flipped")},
        "null_false_rejection": {"rerun": rate("rerun", "regression"), "copy": float(bool(copy_record["regression"]))},
        "null_guards_not_passed": {"rerun": fired("rerun")},
        "rerun_target_verdicts": [r["target"] for r in records["rerun"]],
        "copy_identical_to_champion": identical,
        "detectable": {m: [r["guards"][m]["detectable"] for r in records["rerun"]] for m in
                       records["rerun"][0]["guards"]} if records["rerun"] else {},
        "gate_seconds_per_candidate": round(sum(gate_seconds) / len(gate_seconds), 1),
        "train_seconds_per_candidate": round(sum(train_seconds) / len(train_seconds), 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "goal": GOAL,
    }
    result["goal_met"] = (min(result["bad_rejected"].values()) >= GOAL["bad_rejected_min"]
                          and max(result["null_false_rejection"].values()) <= GOAL["null_false_rejection_max"]
                          and args.seeds >= GOAL["seeds_min"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
