"""Benchmark: QA API cold start, from `medqa serve`'s process start to its first answer (one JSON line last).

Run: .venv/bin/python bench/cold_start.py [--abstracts 1000] [--backlog 400] [--runs 3]

The store (SQLite in a temporary folder): --abstracts synthetic abstracts whose MiniLM vectors are
cached (what a replica starting against a live store finds), plus --backlog abstracts stored without
vectors (arrived since the last refresh: the API's refresher embeds them), and a SmolLM2-135M-Instruct
champion with a LoRA adapter (random weights: start-up does not depend on them). Each run spawns
`medqa serve` (the virtualenv's console script) on a free port, then POSTs a question (a
stored abstract's title) until the first 200 with citations arrives: its time since the spawn is the
figure. The backlog's cached vectors are deleted before each run, so every run starts with the same
store. Configurations, interleaved run by run so a busy box weighs on both alike:

  before   MEDQA_API_FAST_START=false: the start-up as it was (sequential: base + adapter through peft,
           then the index's cached vectors; the embedder loaded by the first question; the backlog
           embedded from the first second on, beside the first answer)
  after    the default (services/api/deps.py Runtime.start): the version's merged snapshot loaded without
           peft, the cached vectors and the embedder loaded beside the model, the backlog embedded after
           the first answer. Its first start (no snapshot yet: base + adapter, then the snapshot written
           after the first answer, waited for) is reported apart; --runs restarts load the snapshot.

Quantized serving (MEDQA_API_QUANTIZATION=int8) is measured the same way with --quantization int8.
Phases come from the server's own log lines (their timestamps against the spawn). Reported: per run
and per configuration the median seconds to the first answer, /healthz readiness, the load average
of the box before and after. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from services.devkit.local import free_port  # noqa: E402  (after the path is set)

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
RESULT = ROOT / "bench" / "results" / "cold_start_2026-12-03.json"
MEDQA = str(Path(sys.executable).parent / "medqa")  # the console script `make setup` installs
CONFIGS = {"before": {"api_fast_start": "false"}, "after": {}}
# Server log lines that mark a phase (services/api: serving.py, deps.py; uvicorn).
PHASES = {"model_loaded": re.compile(r"serving v\d+"), "app_started": re.compile(r"Application startup complete"),
          "index_loaded": re.compile(r"retrieval index: \+\d+ -\d+")}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def env_for(data_dir: Path, models_dir: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQA_")}
    settings = dict(data_dir=str(data_dir), model_cache_dir=str(models_dir), base_model=SMOLLM2, eager="1",
                    trigger_min_new="1000000", monitor_after_ingest="0", api_champion_poll_s="3600",
                    api_refresh_s="3600", **more)
    env.update({f"MEDQA_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TQDM_DISABLE"] = "1"
    return env


def prepare(data_dir: Path, models_dir: Path, abstracts: int, backlog: int) -> tuple[list[str], list[int], str]:
    """The store: embedded abstracts, a backlog without vectors, a champion. Returns questions, the
    backlog's pmids and the champion's sha256."""
    os.environ.update(env_for(data_dir, models_dir))
    from shared.settings import reset_settings

    reset_settings()
    import torch
    from peft import LoraConfig, get_peft_model
    from sqlmodel import col, select

    from services.api.retrieval import RetrievalIndex
    from services.cli.tasks import load_task_modules
    from services.devkit.local import register_version
    from services.devkit.synth import write_corpus
    from services.ingest.tasks import ingest_path
    from shared.db import migrate, session_scope
    from shared.lm.base_model import load_base_model
    from shared.tables import Abstract, ModelVersion

    migrate()
    load_task_modules()
    per_file = 100
    for path in write_corpus(data_dir / "corpus", files=max(1, abstracts // per_file), per_file=per_file, seed=9):
        ingest_path(path)
    t0 = time.perf_counter()
    RetrievalIndex().refresh()  # every abstract so far embedded and cached in the store
    log(f"embedded {abstracts} abstracts in {time.perf_counter() - t0:.0f} s")
    with session_scope() as s:
        before = set(s.exec(select(Abstract.pmid)))
    if backlog:
        for path in write_corpus(data_dir / "backlog", files=max(1, backlog // per_file), per_file=per_file,
                                 seed=10, start_pmid=95_000_000):
            ingest_path(path)
    model, _ = load_base_model(SMOLLM2, models_dir)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    adapter = data_dir / "adapter"
    get_peft_model(model, lora).save_pretrained(str(adapter))
    version_id = register_version(adapter, SMOLLM2, champion=True, actor="bench")
    with session_scope() as s:
        rows = s.exec(select(Abstract).order_by(col(Abstract.pmid))).all()
        titles = [a.title for a in rows if a.pmid in before]
        pending = [a.pmid for a in rows if a.pmid not in before]
        sha = s.get(ModelVersion, version_id).sha256  # type: ignore[union-attr]
    return titles, pending, sha


def forget_vectors(pmids: list[int]) -> None:
    """Drop the backlog's cached vectors (a run's refresher stored them), so each run starts alike."""
    from sqlmodel import col, delete

    from shared.db import session_scope
    from shared.tables import AbstractEmbedding

    with session_scope() as s:
        s.exec(delete(AbstractEmbedding).where(col(AbstractEmbedding.pmid).in_(pmids)))  # type: ignore[call-overload]


def one_start(env: dict[str, str], question: str, log_file: Path, timeout: float = 600,
              linger_for: Path | None = None) -> dict:
    """Spawn the server, POST `question` until a 200 with citations; seconds since the spawn. With
    `linger_for`, the server is stopped only once that file exists (the merged snapshot it writes after
    its first answer)."""
    import httpx

    port = free_port()
    cmd = [MEDQA, "serve", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    wall0 = time.time()
    t0 = time.perf_counter()
    with log_file.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    ready = answered = None
    doc: dict = {}
    try:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            while time.perf_counter() - t0 < timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited ({proc.returncode}): {log_file.read_text()[-2000:]}")
                try:
                    r = client.post("/v1/answer", json={"question": question, "max_new_tokens": 16})
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                ready = ready or time.perf_counter() - t0
                if r.status_code == 200 and r.json().get("citations"):
                    answered, doc = time.perf_counter() - t0, r.json()
                    break
                time.sleep(0.05)
        lingered = time.perf_counter()
        while linger_for is not None and not linger_for.exists() and time.perf_counter() - lingered < timeout:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        if linger_for is not None:
            log(f"  snapshot {'written' if linger_for.exists() else 'NOT written'} "
                f"{time.perf_counter() - lingered:.1f} s after the first answer")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if answered is None:
        raise RuntimeError(f"no answer within {timeout} s: {log_file.read_text()[-2000:]}")
    return {"first_answer_s": round(answered, 2), "accepting_s": round(ready or answered, 2),
            "answer_latency_ms": doc.get("latency_ms"), "citations": len(doc.get("citations", [])),
            "phases_s": phases(log_file, wall0)}


def phases(log_file: Path, wall0: float) -> dict[str, float]:
    """Seconds from the spawn to the first log line of each phase (log timestamps are in ms)."""
    found: dict[str, float] = {}
    for line in log_file.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall0
        found.setdefault("first_log_line", round(at, 2))
        for name, pattern in PHASES.items():
            if name not in found and pattern.search(line):
                found[name] = round(at, 2)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--abstracts", type=int, default=1000, help="abstracts with cached vectors")
    ap.add_argument("--backlog", type=int, default=400, help="abstracts stored without vectors")
    ap.add_argument("--runs", type=int, default=3, help="starts per configuration")
    ap.add_argument("--quantization", default="none", choices=["none", "int8"])
    ap.add_argument("--configs", default="before,after")
    ap.add_argument("--out", default=str(RESULT))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()
    started = time.perf_counter()
    models_dir = ROOT / ".medqa" / "models"
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="medqa-bench-cold-") as tmp:
        data_dir = Path(tmp)
        questions, backlog, sha = prepare(data_dir, models_dir, args.abstracts, args.backlog)
        snapshot = data_dir / "artifacts" / "merged" / sha / "medqa-checksums.json"
        first_start: dict | None = None
        for i in range(args.runs + 1):
            for name, more in configs.items():
                if name == "before" and i == args.runs:
                    continue
                forget_vectors(backlog)
                env = env_for(data_dir, models_dir, api_quantization=args.quantization, **more)
                # The first start of the version has no merged snapshot: it writes one after its first
                # answer (waited for here), which every later start of "after" loads.
                first = name == "after" and first_start is None
                row = one_start(env, questions[i % len(questions)], data_dir / f"serve-{name}-{i}.log",
                                linger_for=snapshot if first else None)
                row["snapshot_loaded"] = "from its merged snapshot" in (data_dir / f"serve-{name}-{i}.log").read_text()
                log(f"{name} run {i}: {json.dumps(row)}")
                if first:
                    first_start = row
                else:
                    runs[name].append(row)
    summary = {name: {"first_answer_s_median": round(statistics.median(r["first_answer_s"] for r in rows), 2),
                      "accepting_s_median": round(statistics.median(r["accepting_s"] for r in rows), 2),
                      "first_answer_s": [r["first_answer_s"] for r in rows]} for name, rows in runs.items() if rows}
    if "before" in summary and "after" in summary:
        summary["first_answer_cut"] = round(1 - summary["after"]["first_answer_s_median"]
                                            / summary["before"]["first_answer_s_median"], 3)
    if first_start is not None:
        summary["after_first_start_of_a_version"] = first_start
    result = {"bench": "cold_start", "model": SMOLLM2, "quantization": args.quantization,
              "abstracts_cached": args.abstracts, "backlog": len(backlog), "runs_per_config": args.runs,
              "summary": summary, "runs": runs, "cpu_count": os.cpu_count(),
              "bench_s": round(time.perf_counter() - started, 1),
              "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
              "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
