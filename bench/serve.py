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
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = {"tiny": "tiny-gpt2", "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
WARMUP = 4


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def configure(data_dir: Path, **env: str) -> None:
    from shared.settings import reset_settings

    for key in [k for k in os.environ if k.startswith("MEDQA_")]:
        del os.environ[key]
    os.environ.update({f"MEDQA_{k.upper()}": v for k, v in env.items()})
    os.environ["MEDQA_DATA_DIR"] = str(data_dir)
    reset_settings()


def prepare_store(data_dir: Path, base: str, models_dir: Path) -> list[str]:
    """Store with synthetic abstracts, their vectors, and a LoRA champion on `base`; returns questions."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sqlmodel import select

    from services.api.retrieval import RetrievalIndex
    from services.cli.tasks import load_task_modules
    from services.devkit.synth import write_corpus
    from services.ingest.tasks import ingest_path
    from services.trainer.config import LORA_TARGETS
    from shared import registry
    from shared.checksums import sha256_folder
    from shared.db import migrate, session_scope
    from shared.lm.base_model import load_base_model
    from shared.tables import Abstract, ModelVersion, RunStatus, TrainingRun, VersionStatus

    migrate()
    for path in write_corpus(data_dir / "corpus", files=2, per_file=30, seed=9):
        load_task_modules()  # eager: the events' consumers run in this process
        ingest_path(path)
    RetrievalIndex().refresh()  # embeds once; each app run then starts from the cached vectors
    model, _ = load_base_model(base, models_dir)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS[model.config.model_type],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    adapter = data_dir / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter)
    with session_scope() as s:
        run = TrainingRun(model_line="default", status=RunStatus.succeeded, base_model=base)
        s.add(run)
        s.flush()
        v = ModelVersion(model_line="default", run_id=run.id, base_model=base, adapter_path=str(adapter),  # type: ignore[arg-type]
                         sha256=sha256_folder(adapter), status=VersionStatus.blessed)
        s.add(v)
        s.flush()
        registry.set_champion(s, model_line="default", version=v, actor="bench", action="promote", reason="bench")
        titles = [a.title for a in s.exec(select(Abstract))]
    return [f"What did this study find: {t.rstrip('.')}?" for t in titles]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(questions: list[str], *, requests: int, concurrency: int, max_new_tokens: int) -> dict:
    """Start the app under uvicorn, send the questions, stop it; latency per request and wall time."""
    import httpx
    import uvicorn

    from services.api.app import create_app

    app = create_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start")
        time.sleep(0.1)
    try:
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
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    latencies.sort()
    return {"requests": requests, "concurrency": concurrency, "wall_s": round(wall, 2),
            "rps": round(requests / wall, 2), "p50_ms": round(statistics.median(latencies) * 1e3, 1),
            "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1e3, 1),
            "generate_calls": calls, "mean_batch": round(requests / calls, 2) if calls else None}


def _count(app) -> int:  # type: ignore[no-untyped-def]
    # Generate calls so far: the batch-size histogram's observation count.
    for metric in app.state.metrics.batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return int(sample.value)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512, help="Prompt + answer tokens per item.")
    ap.add_argument("--models", default="tiny,smollm2")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
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
