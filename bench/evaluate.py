"""Benchmark: evaluation speed on CPU, and the base-vs-fine-tuned seed table (one JSON line last).

Run: .venv/bin/python bench/evaluate.py [--items 32] [--batch-size 8] [--seed-table]

1. PubMedQA scoring, batched against one item at a time, in the same run and process: the same
   held-out PubMedQA items (../shared/data/pubmedqa, the share replay never trains on), the same code
   (shared.lm.decisions), once with --batch-size items per forward and once with 1. Both halves of
   the pubmedqa suite are timed: yes/no/maybe by answer likelihood, and greedy long answers
   (--max-new-tokens). Goal: batched >= 4x the items/s of one at a time, for the suite as a whole.
   Peak RSS (the process's high-water mark) is reported after this part and at the end.
2. The full suite set the gate runs (services.evaluator.suites: new, retention, pubmedqa, consumer),
   timed on the base model, with the default item counts from settings. The "new" slice here is 48
   abstracts from ../shared/data/pubmed_update_samples, standing in for an increment's held-out part.
3. --seed-table: PPL, BLEU, ROUGE-1 and ROUGE-2 on PubMedQA long answers (held-out items) for the base
   model and the latest fine-tuned version in the store (MEDQA_DATA_DIR, default .medqa/demo, the
   demo's workspace: run `make demo` first), laid out as the design document's table. PPL is of the
   reference long answer given the question and context. Goal: no metric worse after fine-tuning.

Model: SmolLM2-135M-Instruct (offline copy), bf16 autocast where the CPU has native bf16, --threads
torch threads (default 1, as the other CPU benches: a shared 2-core box). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This file is named evaluate.py: with bench/ first on sys.path, `import evaluate` (Hugging Face's, which
# the metric modules subclass) would import this script instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GOAL = {"batched_items_per_s_ratio_min": 4.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def answer_ppl(net, tok, items, max_length: int = 512) -> float:  # type: ignore[no-untyped-def]
    """Perplexity of each reference long answer given its question + context prompt, token-weighted."""
    import torch

    from services.evaluator.suites import long_answer_of
    from shared.lm.prompts import prompt_ids

    nll, n = 0.0, 0
    with torch.no_grad():
        for item in items:
            answer = tok(" " + long_answer_of(item), add_special_tokens=False)["input_ids"][:200]
            prompt = prompt_ids(tok, item.question, item.context, max_length - len(answer))
            ids = torch.tensor([prompt + answer])
            logits = net(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):], reduction="sum"))
            n += len(answer)
    return math.exp(nll / n)


def seed_table(base_spec: str, models_dir: Path, items, batch_size: int, max_new_tokens: int) -> dict:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from sqlmodel import col, select

    from services.evaluator.metrics import text_scores
    from services.evaluator.suites import long_answer_of
    from shared.db import session_scope
    from shared.lm.base_model import load_base_model
    from shared.lm.generation import generate
    from shared.tables import ModelVersion

    with session_scope() as s:
        latest = s.exec(select(ModelVersion).order_by(col(ModelVersion.id).desc())).first()
        if latest is None:
            return {"error": "no fine-tuned version in the store: run `make demo` first (or set MEDQA_DATA_DIR)"}
        version, adapter, version_base = latest.id, latest.adapter_path, latest.base_model
    model, tok = load_base_model(version_base, models_dir)
    rows = {}
    refs = [long_answer_of(i) for i in items]
    for name, net in (("base", model), (f"v{version}", None)):
        if net is None:
            net = PeftModel.from_pretrained(model, adapter)
        log(f"seed table: {name} ...")
        answers = generate(net, tok, [(i.question, i.context) for i in items], max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
        scores = text_scores([a.split("Answer:")[0].strip() for a in answers], refs)
        rows[name] = {"ppl": answer_ppl(net, tok, items), "bleu": scores["bleu"], "rouge1": scores["rouge1"],
                      "rouge2": scores["rouge2"]}
    base, tuned = rows["base"], rows[f"v{version}"]
    no_worse = tuned["ppl"] <= base["ppl"] and all(tuned[k] >= base[k] for k in ("bleu", "rouge1", "rouge2"))
    table = ["| Model | PPL | BLEU | ROUGE-1 | ROUGE-2 |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        label = f"{version_base} (base)" if name == "base" else f"{name} (fine-tuned)"
        table.append(f"| {label} | {r['ppl']:.2f} | {r['bleu']:.3f} | {r['rouge1']:.3f} | {r['rouge2']:.3f} |")
    print("\n".join(table), file=sys.stderr)
    return {"version": version, "rows": rows, "table": table, "goal_no_metric_worse": no_worse,
            "base_model": version_base, "matches_bench_model": version_base == base_spec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--models-dir", default=str(ROOT / ".medqa" / "models"))
    parser.add_argument("--items", type=int, default=32, help="PubMedQA items in the batching comparison (default 32)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="items per forward (default 16, the eval_batch_size default)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed-table", action="store_true", help="also print the base vs fine-tuned table")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MEDQA_DATA_DIR", str(ROOT / ".medqa" / "demo"))
    import torch
    from transformers.utils import logging as hf_logging

    from services.evaluator.gate import pubmedqa_suite
    from services.evaluator.suites import Suite, sample
    from services.ingest.parser import ArticleRecord, iter_pubmed
    from shared.corpora import GeneralText, corpus_items, general_texts, pubmedqa_split, split_general
    from shared.lm.base_model import load_base_model
    from shared.lm.decisions import decision_scores
    from shared.lm.generation import generate, use_bf16
    from shared.settings import get_settings

    hf_logging.set_verbosity_error()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    s = get_settings()
    held_out = pubmedqa_split()[1]  # MEDQA_PUBMEDQA_SOURCE (the Makefile points it at ../shared/data)
    if not held_out:
        raise SystemExit("needs PubMedQA: set MEDQA_PUBMEDQA_SOURCE")
    items = sample(held_out, args.items)
    pairs = [(i.question, i.context) for i in items]
    models_dir = Path(args.models_dir)
    model, tok = load_base_model(args.model, models_dir)
    bf16 = use_bf16("auto", torch.device("cpu"))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    result: dict = {"bench": "evaluate", "device": "cpu", "model": args.model, "torch_threads": torch.get_num_threads(),
                    "precision": "bf16" if bf16 else "fp32"}

    with autocast:
        decision_scores(model, tok, pairs[:2], batch_size=2)  # warm-up: first-call allocations
        timing = {}
        for label, bs in (("batched", args.batch_size), ("one_at_a_time", 1)):
            scores, t_lik = timed(decision_scores, model, tok, pairs, batch_size=bs)
            answers, t_gen = timed(generate, model, tok, pairs, max_new_tokens=args.max_new_tokens, batch_size=bs)
            timing[label] = {"likelihood_s": round(t_lik, 2), "generation_s": round(t_gen, 2),
                             "items_per_s": round(len(items) / (t_lik + t_gen), 3),
                             "likelihood_items_per_s": round(len(items) / t_lik, 3),
                             "generation_items_per_s": round(len(items) / t_gen, 3)}
            timing[label]["_answers"] = answers
            log(f"{label} (batch {bs}): likelihood {t_lik:.1f} s, generation {t_gen:.1f} s")
        same = timing["batched"].pop("_answers") == timing["one_at_a_time"].pop("_answers")
        ratio = timing["batched"]["items_per_s"] / timing["one_at_a_time"]["items_per_s"]
        result["pubmedqa_scoring"] = {"items": len(items), "batch_size": args.batch_size,
                                      "max_new_tokens": args.max_new_tokens, **timing,
                                      "ratio_items_per_s": round(ratio, 2),
                                      "ratio_likelihood": round(timing["batched"]["likelihood_items_per_s"]
                                                                / timing["one_at_a_time"]["likelihood_items_per_s"], 2),
                                      "ratio_generation": round(timing["batched"]["generation_items_per_s"]
                                                                / timing["one_at_a_time"]["generation_items_per_s"], 2),
                                      "same_answers_batched_and_single": same}
        result["goal"] = {**GOAL, "met": ratio >= GOAL["batched_items_per_s_ratio_min"]}
        result["peak_rss_mb_after_scoring"] = peak_rss_mb()

        # The full suite set, as the gate builds it (a stand-in "new" slice: see the docstring).
        files = sorted((DATA / "pubmed_update_samples").glob("*/*.xml"))
        new = [GeneralText(f"pmid:{r.pmid}", f"{r.title}\n{r.abstract}") for p in files for r in iter_pubmed(p)
               if isinstance(r, ArticleRecord) and r.abstract.strip()][: s.eval_max_texts]
        general = split_general(general_texts())[1]
        patients = [p for p in corpus_items("liveqa") if p.answer]
        half = s.eval_consumer_items // 2
        gen = {"max_length": 512, "max_new_tokens": s.eval_max_new_tokens, "batch_size": s.eval_batch_size}
        ppl = {"max_length": s.eval_max_length}
        suites = [Suite("new", "perplexity", tuple(new), ppl),
                  Suite("retention", "perplexity", tuple(general[: s.eval_max_texts]), ppl),
                  pubmedqa_suite(s),
                  Suite("consumer", "consumer", sample(patients, half) + sample(
                      [g for g in general if g.question], s.eval_consumer_items - half), gen)]
        per_suite, metrics = {}, {}
        for suite in suites:
            out, took = timed(suite.run, model, tok)
            per_suite[suite.name] = {"items": len(suite.items), "seconds": round(took, 1)}
            metrics.update({k: round(v, 4) for k, v in out.metrics.items()})
            log(f"suite {suite.name}: {len(suite.items)} items, {took:.1f} s")
        result["full_suite"] = {"seconds": round(sum(x["seconds"] for x in per_suite.values()), 1),
                                "suites": per_suite, "base_metrics": metrics}

        if args.seed_table:
            result["seed_table"] = seed_table(args.model, models_dir, items, args.batch_size, args.max_new_tokens)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (ru_maxrss is in KiB on Linux)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


if __name__ == "__main__":
    main()
