"""Benchmark: QA API throughput and latency with micro-batching against without, in one run (one JSON line last).

Run: .venv/bin/python bench/serve.py [--requests 32] [--concurrency 8] [--max-new-tokens 32] [--models tiny,smollm2]

For each base model (the dev kit's tiny-gpt2, and SmolLM2-135M-Instruct converted offline into
.medqa/models on first use) and each mode (batching on: up to 8 questions per generate call within
10 ms; off: one per call), the bench starts the real app under uvicorn on 127.0.0.1, with a small
synthetic store (60 abstracts, cached MiniLM vectors) and a LoRA champion on the base, as served. It
sends --requests questions from --concurrency client threads over HTTP and reports requests/s and
p50/p95 latency; the first few requests are a warm-up and not counted. The same machine, store
and questions serve every configuration, so the ratio batched/unbatched is the figure to read.
If SmolLM2 cannot be prepared here the bench says why and measures tiny-gpt2 only.
Progress goes to stderr.

--precisions compares the served precisions instead (MEDQA_API_PRECISION, MEDQA_API_QUANTIZATION), on
SmolLM2-135M-Instruct with a trained LoRA champion (bench/gate.py's champion recipe, seed 0, about a
minute; --adapter reuses one). Modes: fp32 (the baseline), bf16 where the server would pick it (CUDA,
CPUs with native bf16), int8 (CPU: dynamic int8 Linear layers; CUDA: bitsandbytes 8-bit) and nf4
(bitsandbytes 4-bit, CUDA only; skipped with the reason elsewhere). Each mode is served by a fresh
process (the same store, questions and champion; MEDQA_API_FAST_START=false, so no merged snapshot
is written in the background meanwhile): it starts the real app under uvicorn, sends
--requests questions over HTTP as above, reads its own resident memory (VmRSS after the load; VmHWM,
the peak, which includes building the model), then decides the gate's PubMedQA development items
(the pubmedqa suite: 100 items of pubmedqa_split()[1], seeded as the gate samples them) through the
server's own ModelServer.decide (shared/lm/decisions.verdicts with the version's calibration). That
calibration is the gate's: before the modes run, the champion is scored as the evaluator scores it
(float32, base + adapter, services/evaluator/suites.calibrated_decisions, "prior" offsets) and the
offsets are stored as its gate decision, as the evaluator stores them. Reported per mode: answers/s,
p50/p95 latency, RSS, accuracy with a 95% bootstrap interval, and against fp32 on the same items the
paired accuracy difference with its interval, non-inferior when its low end is at or above --margin
(-0.05); ratios against fp32 and the goal (at least 40% less memory or 1.5x the answers/s, with
accuracy non-inferior). The box's 1-minute load average before and after goes into the JSON, which is
also written to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds evaluate.py, which would shadow Hugging Face's `evaluate` (the evaluator's metrics use it).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from services.devkit.local import free_port  # noqa: E402  (after the path is set)

MODELS = {"tiny": "tiny-gpt2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
WARMUP = 4
SMOLLM2 = MODELS["smollm2"]
RESULT = ROOT / "bench" / "results" / "serve_quantized_2026-12-03.json"
SAMPLE_QUESTION = "Does metformin lower HbA1c in older adults with type 2 diabetes?"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def configure(data_dir: Path, **env: str) -> None:
    from shared.settings import reset_settings

    for key in [k for k in os.environ if k.startswith("MEDQA_")]:
        del os.environ[key]
    os.environ.update({f"MEDQA_{k.upper()}": v for k, v in env.items()})
    os.environ["MEDQA_DATA_DIR"] = str(data_dir)
    reset_settings()


def prepare_store(data_dir: Path, base: str, models_dir: Path, adapter: Path | None = None) -> list[str]:
    """Store with synthetic abstracts, their vectors, and a LoRA champion on `base` (`adapter`, else a
    random one); returns questions."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sqlmodel import select

    from services.api.retrieval import RetrievalIndex
    from services.cli.tasks import load_task_modules
    from services.devkit.local import register_version
    from services.devkit.synth import write_corpus
    from services.ingest.tasks import ingest_path
    from services.trainer.config import LORA_TARGETS
    from shared.db import migrate, session_scope
    from shared.lm.base_model import load_base_model
    from shared.tables import Abstract

    migrate()
    for path in write_corpus(data_dir / "corpus", files=2, per_file=30, seed=9):
        load_task_modules()  # eager: the events' consumers run in this process
        ingest_path(path)
    RetrievalIndex().refresh()  # embeds once; each app run then starts from the cached vectors
    if adapter is None:
        model, _ = load_base_model(base, models_dir)
        torch.manual_seed(0)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS[model.config.model_type],
                          init_lora_weights=False, task_type="CAUSAL_LM")
        adapter = data_dir / "adapter"
        get_peft_model(model, lora).save_pretrained(adapter)
    register_version(adapter, base, champion=True, actor="bench")
    with session_scope() as s:
        titles = [a.title for a in s.exec(select(Abstract))]
    return [f"What did this study find: {t.rstrip('.')}?" for t in titles]


@contextmanager
def serving() -> Iterator[tuple[Any, str]]:
    """The app under uvicorn on a free port, in a thread: (app, base URL) once it has started."""
    import uvicorn

    from services.api.app import create_app

    app = create_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start")
        time.sleep(0.1)
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def load(app: Any, url: str, questions: list[str], *, requests: int, concurrency: int, max_new_tokens: int) -> dict:
    """Send WARMUP questions, then `requests` timed ones from `concurrency` client threads."""
    import httpx

    with httpx.Client(base_url=url, timeout=600) as client:
        def one(i: int) -> float:
            t0 = time.perf_counter()
            r = client.post("/v1/answer", json={"question": questions[i % len(questions)],
                                                "max_new_tokens": max_new_tokens})
            r.raise_for_status()
            return time.perf_counter() - t0

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(WARMUP)))
            calls_before = _count(app)
            started = time.perf_counter()
            latencies = list(pool.map(one, range(WARMUP, WARMUP + requests)))
            wall = time.perf_counter() - started
        calls = _count(app) - calls_before
    latencies.sort()
    return {"requests": requests, "concurrency": concurrency, "wall_s": round(wall, 2),
            "rps": round(requests / wall, 2), "p50_ms": round(statistics.median(latencies) * 1e3, 1),
            "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1e3, 1),
            "generate_calls": calls, "mean_batch": round(requests / calls, 2) if calls else None}


def measure(questions: list[str], *, requests: int, concurrency: int, max_new_tokens: int) -> dict:
    """Start the app under uvicorn, send the questions, stop it; latency per request and wall time."""
    with serving() as (app, url):
        return load(app, url, questions, requests=requests, concurrency=concurrency, max_new_tokens=max_new_tokens)


def _count(app) -> int:  # type: ignore[no-untyped-def]
    # Generate calls so far: the batch-size histogram's observation count.
    for metric in app.state.metrics.batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return int(sample.value)
    return 0


# ------------------------------------------------------------------------------- --precisions


def memory_mb() -> dict[str, float]:
    """This process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def precision_modes() -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, str]]:
    """(mode -> its MEDQA_ settings, mode -> how it is served, skipped mode -> why) on this machine."""
    import importlib.util

    import torch

    from shared.lm.generation import use_bf16

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    modes = {"fp32": {"api_precision": "fp32", "api_quantization": "none"}}
    how = {"fp32": "float32 base + LoRA adapter (peft)"}
    skipped: dict[str, str] = {}
    if use_bf16("auto", device):
        modes["bf16"] = {"api_precision": "bf16", "api_quantization": "none"}
        how["bf16"] = "bfloat16 base + LoRA adapter (peft): what MEDQA_API_PRECISION=auto serves here"
    else:
        skipped["bf16"] = "MEDQA_API_PRECISION=auto serves fp32 here (no native bf16)"
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    modes["int8"] = {"api_precision": "auto", "api_quantization": "int8"}
    how["int8"] = ("merged, bitsandbytes 8-bit (LLM.int8)" if cuda else
                   "merged, float32, every nn.Linear dynamically quantized to int8 (torch quantize_dynamic)")
    if cuda and not bnb:
        del modes["int8"]
        skipped["int8"] = "CUDA int8 is bitsandbytes 8-bit, and bitsandbytes is not installed"
    if cuda and bnb:
        modes["nf4"] = {"api_precision": "auto", "api_quantization": "nf4"}
        how["nf4"] = "merged, bitsandbytes 4-bit NormalFloat (bf16 compute)"
    else:
        skipped["nf4"] = ("bitsandbytes 4-bit needs CUDA; this machine has none" if not cuda
                          else "bitsandbytes is not installed")
    if not cuda:
        skipped["int8 (bitsandbytes)"] = "bitsandbytes 8-bit serving needs CUDA; int8 here is torch's dynamic int8"
    return modes, how, skipped


def train_champion(out: Path) -> tuple[Path, float]:
    """bench/gate.py's champion: SmolLM2 + LoRA on 16 NLM abstracts and 64 PubMedQA training decisions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gate_bench", ROOT / "bench" / "gate.py")
    gb = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(gb)  # type: ignore[union-attr]
    recipe = argparse.Namespace(steps=16, lr=2e-3, batch_size=4, max_length=256, abstracts=16, qa=64, new=48,
                                retention=48, qa_items=100)
    return gb.train(gb.examples(gb.load_data(recipe)), 0, out, recipe)


def gate_calibration(models_dir: Path, adapter: Path) -> dict:
    """Score the champion on the gate's pubmedqa suite as the evaluator does (float32, base + adapter,
    calibrated_decisions) and store its offsets as the version's gate decision; the suite's items back."""
    import torch
    from peft import PeftModel
    from sqlmodel import select

    from services.evaluator.gate import pubmedqa_suite
    from services.evaluator.suites import calibrated_decisions, decision_of
    from shared.db import session_scope
    from shared.lm.base_model import load_base_model
    from shared.lm.decisions import DECISIONS
    from shared.queries import OFFSET_METRICS
    from shared.settings import get_settings
    from shared.tables import Evaluation, ModelVersion

    suite = pubmedqa_suite(get_settings())
    assert suite is not None, "no PubMedQA items: set MEDQA_PUBMEDQA_SOURCE"
    pairs = [(i.question, i.context) for i in suite.items]
    gold = [decision_of(i) for i in suite.items]
    base, tokenizer = load_base_model(SMOLLM2, models_dir, torch_dtype=torch.float32)
    net = PeftModel.from_pretrained(base, str(adapter)).eval()
    t0 = time.perf_counter()
    scores, offsets = calibrated_decisions(suite, net, tokenizer, pairs)
    score_s = time.perf_counter() - t0
    pred = [DECISIONS[max(range(len(DECISIONS)), key=row.__getitem__)] for row in scores]
    acc = sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold)
    majority = max(gold.count(d) for d in DECISIONS) / len(gold)
    with session_scope() as s:
        version = s.exec(select(ModelVersion)).one()
        metrics = {"pubmedqa_acc": acc, "pubmedqa_majority_acc": majority, "pubmedqa_items": len(gold),
                   **dict(zip(OFFSET_METRICS, offsets, strict=True))}
        s.add(Evaluation(version_id=version.id, suite="pubmedqa", suite_hash=suite.hash, metrics=metrics,  # type: ignore[arg-type]
                         passed=True, reasons=["bench/serve.py --precisions: the gate's pubmedqa calibration"]))
    return {"pairs": pairs, "gold": gold, "accuracy": acc, "majority": majority, "offsets": offsets,
            "calibration": suite.params.get("calibration"), "prior": suite.params.get("prior"),
            "score_s": round(score_s, 1)}


def precision_child(args: argparse.Namespace) -> None:
    """One mode, in its own process: serve, load, read memory, then decide the development items."""
    import httpx
    import torch

    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.child_input).read_text())
    pairs = [tuple(p) for p in spec["pairs"]]
    t0 = time.perf_counter()
    with serving() as (app, url):
        start_s = time.perf_counter() - t0
        server = app.state.runtime.server
        loaded = memory_mb()
        row = load(app, url, spec["questions"], requests=args.requests, concurrency=args.concurrency,
                   max_new_tokens=args.max_new_tokens)
        served = memory_mb()  # before the accuracy pass, whose 16-row forwards are no serving load
        with httpx.Client(base_url=url, timeout=600) as client:
            sample = client.post("/v1/answer", json={"question": spec["questions"][0], "max_new_tokens": 32}).json()
        from shared.lm.generation import generate

        with server._gen_lock:  # the served network, as /v1/answer would run it, on a question with no context
            plain = generate(server._net, server.tokenizer, [(SAMPLE_QUESTION, None)], max_new_tokens=32,
                             batch_size=1, max_length=server.max_length)[0]
        t1 = time.perf_counter()
        labels: list[str] = []
        for i in range(0, len(pairs), 16):
            found, calibration = server.decide(pairs[i:i + 16])
            labels += [label for label, _ in found]
        decide_s = time.perf_counter() - t1
        layers = {type(m).__module__ + "." + type(m).__name__ for m in server._net.modules()
                  if "Linear" in type(m).__name__}
    print(json.dumps({"start_s": round(start_s, 1), "rss_loaded_mb": loaded["VmRSS"],
                      "rss_serving_mb": served["VmRSS"], "rss_peak_mb": served["VmHWM"], **row,
                      "dtype": str(server.dtype).replace("torch.", ""), "linear_layers": sorted(layers),
                      "calibration_offsets": list(calibration.offsets) if calibration else None,
                      "decide_s": round(decide_s, 1), "labels": labels,
                      "sample_answer": {"question": "a synthetic abstract's title", "answer": sample.get("answer"),
                                        "model_version": sample.get("model_version")},
                      "sample_plain": {"question": SAMPLE_QUESTION, "answer": plain}}))


def precisions(args: argparse.Namespace) -> None:
    from services.evaluator.qa import macro_f1
    from shared.stats import mean_interval, non_inferior, paired_bootstrap

    load_before = os.getloadavg()
    bench_started = time.perf_counter()
    models_dir = ROOT / ".medqa" / "models"
    shared_data = ROOT.parent / "shared" / "data"
    pubmedqa = os.environ.get("MEDQA_PUBMEDQA_SOURCE") or str(shared_data / "pubmedqa" / "pqal_trainval.json")
    modes, how, skipped = precision_modes()
    log(f"modes: {', '.join(modes)}; skipped: {skipped}")
    result: dict[str, Any] = {"bench": "serve_precisions", "model": SMOLLM2, "margin": -args.margin,
                              "requests": args.requests, "concurrency": args.concurrency,
                              "max_new_tokens": args.max_new_tokens, "max_length": args.max_length}
    with tempfile.TemporaryDirectory(prefix="medqa-bench-precisions-") as tmp:
        common = dict(model_cache_dir=str(models_dir), base_model=SMOLLM2, eager="1", trigger_min_new="100000",
                      monitor_after_ingest="0", api_max_length=str(args.max_length), api_champion_poll_s="3600",
                      api_refresh_s="3600", pubmedqa_source=pubmedqa, eval_qa_items=str(args.qa_items),
                      # no merged snapshot written in the background while the load runs (bench/cold_start.py)
                      api_fast_start="false")
        configure(Path(tmp), **common)
        if args.adapter:
            adapter, train_s = Path(args.adapter), None
        else:
            adapter, train_s = train_champion(Path(tmp) / "champion")
            log(f"champion trained in {train_s:.0f} s")
        questions = prepare_store(Path(tmp), SMOLLM2, models_dir, adapter)
        gate = gate_calibration(models_dir, adapter)
        log(f"gate: pubmedqa_acc {gate['accuracy']:.3f} on {len(gate['gold'])} items, offsets {gate['offsets']}")
        spec_file = Path(tmp) / "child-input.json"
        spec_file.write_text(json.dumps({"questions": questions, "pairs": gate["pairs"]}))
        rows: dict[str, dict] = {}
        for mode, env in modes.items():
            configure(Path(tmp), **common, **env)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--child-input", str(spec_file),
                   "--requests", str(args.requests), "--concurrency", str(args.concurrency),
                   "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                skipped[mode] = f"the serving process failed (exit {done.returncode}): {done.stderr[-800:]}"
                log(skipped[mode])
                continue
            rows[mode] = {"served_as": how[mode], **json.loads(done.stdout.strip().splitlines()[-1]),
                          "process_s": round(time.perf_counter() - t0, 1)}
            log(f"{mode}: " + json.dumps({k: v for k, v in rows[mode].items() if k != "labels"}))
    gold = gate["gold"]
    base = rows.get("fp32")
    for row in rows.values():
        correct = [int(p == g) for p, g in zip(row["labels"], gold, strict=True)]
        row["correct"] = correct
        acc = mean_interval(correct)
        row["accuracy"] = {"estimate": round(acc.estimate, 4), "ci95": [round(acc.low, 4), round(acc.high, 4)],
                           "macro_f1": round(macro_f1(gold, row["labels"]), 4),
                           "labels": {d: row["labels"].count(d) for d in ("yes", "no", "maybe")}}
    for mode, row in rows.items():
        if base is None or mode == "fp32":
            continue
        diff = paired_bootstrap(row["correct"], base["correct"])
        row["vs_fp32"] = {
            "accuracy_difference": round(diff.estimate, 4), "ci95": [round(diff.low, 4), round(diff.high, 4)],
            "non_inferior": non_inferior(diff, args.margin, higher_is_better=True),
            "same_label_share": round(sum(a == b for a, b in zip(row["labels"], base["labels"], strict=True))
                                      / len(gold), 4),
            "rps_ratio": round(row["rps"] / base["rps"], 3), "p95_ratio": round(row["p95_ms"] / base["p95_ms"], 3),
            "rss_ratio": round(row["rss_serving_mb"] / base["rss_serving_mb"], 3),
            "memory_saving": round(1 - row["rss_serving_mb"] / base["rss_serving_mb"], 3),
            "peak_rss_ratio": round(row["rss_peak_mb"] / base["rss_peak_mb"], 3)}
        if mode in ("int8", "nf4"):
            v = row["vs_fp32"]
            v["goal_met"] = bool((v["memory_saving"] >= 0.40 or v["rps_ratio"] >= 1.5) and v["non_inferior"])
            if "bf16" in rows:  # the precision this box serves by default: the comparison that decides
                b = rows["bf16"]
                d = paired_bootstrap(row["correct"], b["correct"])
                row["vs_bf16"] = {"accuracy_difference": round(d.estimate, 4),
                                  "ci95": [round(d.low, 4), round(d.high, 4)],
                                  "non_inferior": non_inferior(d, args.margin, higher_is_better=True),
                                  "rps_ratio": round(row["rps"] / b["rps"], 3),
                                  "memory_saving": round(1 - row["rss_serving_mb"] / b["rss_serving_mb"], 3)}
    for row in rows.values():
        del row["correct"]
    quantized = {m: r["vs_fp32"]["goal_met"] for m, r in rows.items() if "goal_met" in r.get("vs_fp32", {})}
    result.update({
        "goal": "at least 40% less RSS or 1.5x the answers/s of fp32, with accuracy non-inferior (paired "
                f"difference's 95% low end >= {-args.margin})",
        "champion": {"adapter": "given" if args.adapter else "bench/gate.py champion recipe, seed 0",
                     "train_s": round(train_s, 1) if train_s else None},
        "gate": {"items": len(gold), "accuracy": round(gate["accuracy"], 4), "majority": round(gate["majority"], 4),
                 "calibration": gate["calibration"], "prior": gate["prior"],
                 "offsets": [round(o, 4) for o in gate["offsets"]], "score_s": gate["score_s"]},
        "modes": rows, "skipped": skipped, "goal_met": quantized,
        "recommended_default": next((m for m, ok in quantized.items() if ok), "none"),
        "cpu_count": os.cpu_count(), "bench_s": round(time.perf_counter() - bench_started, 1),
        "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
        "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512, help="Prompt + answer tokens per item.")
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--precisions", action="store_true",
                    help="Compare served precisions (fp32, bf16, int8, nf4) on SmolLM2 instead; defaults then: "
                         "--requests 24, 100 PubMedQA items.")
    ap.add_argument("--qa-items", type=int, default=100, help="--precisions: PubMedQA development items decided.")
    ap.add_argument("--margin", type=float, default=0.05, help="--precisions: non-inferiority margin (accuracy).")
    ap.add_argument("--adapter", default=None, help="--precisions: a trained LoRA adapter on SmolLM2 to serve "
                    "(default: train bench/gate.py's champion, about a minute).")
    ap.add_argument("--threads", type=int, default=2, help="--precisions: torch threads per serving process.")
    ap.add_argument("--out", default=None, help=f"--precisions: JSON file (default {RESULT.relative_to(ROOT)})")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-input", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.child:
        precision_child(args)
        return
    if args.precisions:
        if "--requests" not in sys.argv:
            args.requests = 24
        args.out = args.out or str(RESULT)
        precisions(args)
        return
    models_dir = ROOT / ".medqa" / "models"  # SmolLM2's offline conversion is kept here between runs
    results: list[dict] = []
    skipped: dict[str, str] = {}
    for key in args.models.split(","):
        base = MODELS[key.strip()]
        if base == "tiny-gpt2":  # the dev kit's test model, built into a folder
            from services.devkit.tiny_model import tiny_gpt2

            base = tiny_gpt2(models_dir)
        with tempfile.TemporaryDirectory(prefix="medqa-bench-serve-") as tmp:
            common = dict(model_cache_dir=str(models_dir), base_model=base, eager="1", trigger_min_new="100000",
                          monitor_after_ingest="0", api_max_length=str(args.max_length),
                          api_champion_poll_s="3600", api_refresh_s="3600")
            configure(Path(tmp), **common)
            try:
                t0 = time.perf_counter()
                questions = prepare_store(Path(tmp), base, models_dir)
                log(f"{key}: store and adapter ready in {time.perf_counter() - t0:.1f} s")
            except Exception as exc:  # e.g. SmolLM2's GGUF package missing: report, measure the rest
                skipped[key] = f"{type(exc).__name__}: {exc}"
                log(f"{key}: cannot be prepared here ({skipped[key]}); skipped")
                continue
            for batching in (True, False):
                configure(Path(tmp), **common, api_batching=str(batching).lower())
                row = {"model": key, "batching": batching,
                       **measure(questions, requests=args.requests, concurrency=args.concurrency,
                                 max_new_tokens=args.max_new_tokens)}
                log(json.dumps(row))
                results.append(row)
    by = {(r["model"], r["batching"]): r for r in results}
    speedup = {m: round(by[(m, True)]["rps"] / by[(m, False)]["rps"], 2)
               for m in {r["model"] for r in results} if (m, True) in by and (m, False) in by}
    import torch

    print(json.dumps({"bench": "serve", "max_new_tokens": args.max_new_tokens, "max_length": args.max_length,
                      "torch_threads": torch.get_num_threads(), "results": results,
                      "rps_speedup_batched": speedup, "skipped": skipped}))


if __name__ == "__main__":
    main()
