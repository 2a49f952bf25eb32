"""Benchmark: PubMedQA answer calibration on the development share (one JSON line last).

Run: .venv/bin/python bench/calibration.py [--seed 0] [--adapter PATH ...]   (about 3 minutes on 2 CPU cores)

The development share is the gate's: the 100 held-out items of the 80/20 split of
../shared/data/pubmedqa (seed 1234), the items the gate's pubmedqa suite scores; the 500 expert items
the issue's owner keeps are never read. Two models: the base SmolLM2-135M-Instruct, and a fine-tune
by bench/gate.py's champion recipe (16 NLM abstracts + 64 PubMedQA decisions, 16 steps, lr 2e-3,
--seed). Each model's raw decision scores (shared.lm.decisions.decision_scores, the gate's code, 512
tokens) are computed once; every calibration (shared.lm.decisions.calibrate) is applied to those
same scores, so "none" is the baseline of the same run on the same items. Reported per model and
calibration: accuracy, macro-F1, expected calibration error and the predicted labels, plus the change
against "none". The prior is the training share's label shares. "prior_argmax" (not choosable by the
gate) matches the shares of answered labels to the prior instead of the mean probabilities.

With --alternatives N the issue's other two options are measured on the same items too (not choosable
by the gate: they need more than offsets): "pmi", each label's score with the context minus its score
for the question alone (normalised), then prior-fitted; and "fitted"/"fitted_balanced", a multinomial
logistic regression over both normalised score triples, fitted on N items of the training share
(scored the same way; class weights none or balanced). About 10 more minutes at N = 400.

With --probe N, a test of whether the model's representations hold the item-level signal its answer
scores lack: "probe"/"probe_balanced", a standardised logistic regression over hidden states of the
decision prompt (the last position and the mean over positions, of the middle and the final layer),
its strength C chosen by 5-fold cross-validation on N training-share items (accuracy + macro-F1),
then scored once on the development items. About 2 more minutes per model at N = 400.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]


def _gate_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gate_bench", ROOT / "bench" / "gate.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seed", type=int, default=0, help="the fine-tune's seed (0 = bench/gate.py's champion)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alternatives", type=int, default=0, metavar="N",
                    help="also PMI and a calibration fitted on N training-share items (0 = off)")
    ap.add_argument("--adapter", action="append", default=[], metavar="PATH",
                    help="also score this LoRA adapter folder (e.g. a demo version's); repeatable")
    ap.add_argument("--probe", type=int, default=0, metavar="N",
                    help="also a logistic-regression probe on hidden states, fitted on N training-share items")
    args = ap.parse_args()
    for folder in args.adapter:
        if not (Path(folder) / "adapter_config.json").is_file():
            ap.error(f"--adapter {folder}: no adapter_config.json there, so it is no LoRA adapter folder")
    import torch
    from peft import PeftModel

    from services.evaluator.suites import decision_of, label_shares
    from shared.lm.base_model import load_base_model
    from shared.lm.decisions import CALIBRATIONS, CONTENT_FREE, DECISIONS, calibrate, decision_scores
    from shared.settings import get_settings

    torch.set_num_threads(args.threads)
    gb = _gate_bench()
    recipe = argparse.Namespace(steps=16, lr=2e-3, batch_size=4, max_length=256, abstracts=16, qa=64, new=48,
                                retention=48, qa_items=100)
    data = gb.load_data(recipe)
    dev, prior = data["heldout_qa"], label_shares(data["train_share"])
    gold = [DECISIONS.index(decision_of(i)) for i in dev]
    result: dict = {"bench": "calibration", "model": gb.SMOLLM2, "dev_items": len(dev), "prior": prior,
                    "fine_tune": {"recipe": "bench/gate.py champion", "seed": args.seed}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="medqa-calibration-") as tmp:
        adapter, train_s = gb.train(gb.examples(data), args.seed, Path(tmp) / "fine-tune", recipe)
        result["fine_tune"]["train_s"] = round(train_s, 1)
        extra = [(f"adapter:{Path(a).name}", Path(a)) for a in args.adapter]
        for name, path in (("base", None), ("fine_tune", adapter), *extra):
            net, tok = load_base_model(gb.SMOLLM2, get_settings().models_dir)
            if path is not None:
                net = PeftModel.from_pretrained(net, str(path))
            t0 = time.perf_counter()
            raw = decision_scores(net, tok, [(i.question, i.context) for i in dev], batch_size=16, max_length=512)
            content_free = decision_scores(net, tok, [(c, c or None) for c in CONTENT_FREE], batch_size=3)
            rows = {"score_s": round(time.perf_counter() - t0, 1)}
            for method in CALIBRATIONS:
                rows[method] = figures(calibrate(raw, method, prior=prior, content_free=content_free), gold)
            rows["prior_argmax"] = figures(argmax_share_calibration(raw, prior), gold)
            if args.alternatives:
                fit = list(data["train_share"])[: args.alternatives]
                rows |= alternatives(net, tok, dev, fit, raw, gold, prior)
            if args.probe:
                rows |= probe(net, tok, dev, list(data["train_share"])[: args.probe], gold)
            for method in rows:
                if method != "score_s":
                    rows[method]["vs_none"] = {k: round(rows[method][k] - rows["none"][k], 3)
                                               for k in ("accuracy", "macro_f1", "ece")}
            result["models"][name] = rows
            print(f"{name}: " + json.dumps(rows), file=sys.stderr, flush=True)
    # The pick: the best mean accuracy over both models, macro-F1 breaking ties.
    # The pick reads base and the fine-tune only: --adapter models are reported, not chosen on.
    pair = [result["models"][k] for k in ("base", "fine_tune")]
    methods = [m for m in pair[0] if m != "score_s"]
    means = {m: (sum(r[m]["accuracy"] for r in pair) / 2, sum(r[m]["macro_f1"] for r in pair) / 2) for m in methods}
    result["mean_accuracy_macro_f1"] = {m: [round(a, 3), round(f, 3)] for m, (a, f) in means.items()}
    result["best_on_dev"] = max(CALIBRATIONS, key=lambda m: means[m])  # of those the gate can apply
    print(json.dumps(result))


def argmax_share_calibration(raw: list[list[float]], prior: list[float], sharpness: float = 30.0) -> list[list[float]]:
    """Offsets that match the share of items *answered* with each label to `prior`, where the library's
    `prior` matches the mean probabilities (so a label the model never ranks first, "maybe", stays
    unanswered): prior_offsets on scores sharpened `sharpness`-fold, where softmax is near argmax."""
    from shared.lm.decisions import normalised, prior_offsets, with_offsets

    sharp = [[v * sharpness for v in row] for row in normalised(raw)]
    return with_offsets(raw, [b / sharpness for b in prior_offsets(sharp, prior)])


def figures(cal: list[list[float]], gold: list[int]) -> dict:
    """Accuracy, macro-F1, ECE and predicted labels of calibrated log-scores against gold label indices."""
    from services.evaluator.qa import expected_calibration_error, macro_f1
    from shared.lm.decisions import DECISIONS, softmax

    pred = [max(range(len(DECISIONS)), key=r.__getitem__) for r in cal]
    return {"accuracy": sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold),
            "macro_f1": round(macro_f1([DECISIONS[g] for g in gold], [DECISIONS[p] for p in pred]), 3),
            "ece": round(expected_calibration_error([softmax(r) for r in cal], gold), 3),
            "labels": {d: pred.count(k) for k, d in enumerate(DECISIONS)}}


def alternatives(net, tok, dev, fit, raw, gold, prior) -> dict:  # type: ignore[no-untyped-def]
    """PMI (with-context minus question-only scores, prior-fitted) and a logistic regression fitted on
    the training share's `fit` items, on the same development items as the library's calibrations."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from services.evaluator.suites import decision_of
    from shared.lm.decisions import DECISIONS, calibrate, decision_scores, normalised

    def scores(items, with_context: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
        pairs = [(i.question, i.context if with_context else None) for i in items]
        return np.array(normalised(decision_scores(net, tok, pairs, batch_size=16, max_length=512)))

    dev_c, dev_q = np.array(normalised(raw)), scores(dev, False)
    fit_x = np.hstack([scores(fit, True), scores(fit, False)])
    fit_y = [DECISIONS.index(decision_of(i)) for i in fit]
    out = {"pmi": figures(calibrate((dev_c - dev_q).tolist(), "prior", prior=prior), gold)}
    for name, weights in (("fitted", None), ("fitted_balanced", "balanced")):
        model = LogisticRegression(C=1.0, class_weight=weights, max_iter=2000).fit(fit_x, fit_y)
        out[name] = figures(model.predict_log_proba(np.hstack([dev_c, dev_q])).tolist(), gold)
    return out


def probe(net, tok, dev, fit, gold) -> dict:  # type: ignore[no-untyped-def]
    """Logistic regression over the decision prompt's hidden states, fitted on the training share's
    `fit` items (C by 5-fold cross-validation there), scored on the development items."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from services.evaluator.suites import decision_of
    from shared.lm.decisions import DECISION_CUE, DECISIONS
    from shared.lm.generation import body_and_head
    from shared.lm.prompts import prompt_ids

    body, _ = body_and_head(net)  # SmolLM2 (under PEFT or not) is a layout it knows
    cue = tok(DECISION_CUE, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def features(items) -> np.ndarray:  # type: ignore[no-untyped-def]
        rows = []
        for item in items:  # one at a time: no padding to mask out of the means
            ids = prompt_ids(tok, item.question, item.context, 510 - len(cue)) + cue
            states = body(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True).hidden_states
            layers = [states[len(states) // 2][0].float(), states[-1][0].float()]
            rows.append(np.concatenate([h[-1].numpy() for h in layers] + [h.mean(0).numpy() for h in layers]))
        return np.array(rows)

    fit_x, dev_x = features(fit), features(dev)
    fit_y = np.array([DECISIONS.index(decision_of(i)) for i in fit])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    out = {}
    for name, weights in (("probe", None), ("probe_balanced", "balanced")):
        def model(c: float, w=weights):  # type: ignore[no-untyped-def]
            return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight=w, max_iter=3000))

        def cv_score(c: float) -> float:
            pred = cross_val_predict(model(c), fit_x, fit_y, cv=folds)
            return accuracy_score(fit_y, pred) + f1_score(fit_y, pred, average="macro")

        best = max((0.001, 0.01, 0.1, 1.0), key=cv_score)
        out[name] = figures(model(best).fit(fit_x, fit_y).predict_log_proba(dev_x).tolist(), gold) | {"C": best}
    return out


if __name__ == "__main__":
    main()
