"""`medqa train` and `medqa runs`: the training trigger and the runs it queued."""

from __future__ import annotations

from typing import Any

import typer
from sqlmodel import col, select

from services.cli.common import JsonOpt, die, emit, ensure_store, fmt, out, table
from services.cli.root import app
from shared.settings import get_settings


@app.command()
def train(force: bool = typer.Option(False, help="Queue a run on whatever is new, below the threshold."),
          as_json: bool = JsonOpt) -> None:
    """Check the training trigger and queue a run (in eager mode it runs here and now)."""
    from services.trainer.trigger import maybe_queue_run

    ensure_store()
    run_id = maybe_queue_run(get_settings().model_line, force=force)
    if run_id is None:
        die("no run queued: a run is already active, or too few new abstracts (see `medqa status`)")
    emit({"run_id": run_id}, as_json)
    if not as_json:
        out.print(f"queued training run {run_id}")


@app.command()
def runs(as_json: bool = JsonOpt) -> None:
    """Training runs with progress."""
    from shared.db import session_scope
    from shared.tables import TrainingRun

    ensure_store()
    with session_scope() as session:
        rows = [r.model_dump(exclude={"manifest"}) | {"counts": r.manifest.get("counts", {}), "eta_s": eta(r)}
                for r in session.exec(select(TrainingRun).order_by(col(TrainingRun.id)))]
    emit(rows, as_json, table("training runs", ["id", "status", "step", "loss", "tokens/s", "eta", "parent",
                                                  "error"], [
        [r["id"], r["status"], f"{r['step']}/{r['total_steps']}", fmt(r["loss"]), fmt(r["tokens_per_s"]),
         "" if r["eta_s"] is None else f"{r['eta_s']:.0f} s", r["parent_version_id"], (r["error"] or "")[:60]]
        for r in rows]))


def eta(run: Any) -> float | None:
    """Seconds left for a running run, from its measured tokens/s and its own configured step size."""
    if run.status != "running" or not run.tokens_per_s or not run.total_steps:
        return None
    c = run.config
    tokens_per_step = c.get("batch_size", 1) * c.get("grad_accum", 1) * c.get("max_length", 1)
    return (run.total_steps - run.step) * tokens_per_step / run.tokens_per_s
