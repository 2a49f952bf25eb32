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
    _report_queued(run_id, as_json)


def _report_queued(run_id: int, as_json: bool, **extra: Any) -> None:
    """Print the queued run; in eager mode it has already run here, so report its real outcome and
    exit 1 if it failed."""
    from shared.db import session_scope
    from shared.tables import RunStatus, TrainingRun

    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        status, error = (run.status, run.error) if run else (RunStatus.failed, "the run row is gone")
    emit({"run_id": run_id, "status": status.value, "error": error, **extra}, as_json)
    if not as_json:
        out.print(f"training run {run_id}: {status.value}" if get_settings().eager else f"queued training run {run_id}")
    if status == RunStatus.failed:
        die(f"training run {run_id} failed: {error}")


runs_app = typer.Typer(help="Training runs with progress; `retry N` requeues a failed run's abstracts.")
app.add_typer(runs_app, name="runs")


@runs_app.callback(invoke_without_command=True)
def runs(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Training runs with progress."""
    if ctx.invoked_subcommand is not None:
        return
    from shared.db import session_scope
    from shared.tables import TrainingRun

    ensure_store()
    with session_scope() as session:
        rows = [r.model_dump(exclude={"manifest"}) | {"counts": r.manifest.get("counts", {}), "eta_s": eta(r)}
                for r in session.exec(select(TrainingRun).order_by(col(TrainingRun.id)))]
    # "checkpoint": the step the run resumes at on any trainer host (its last published checkpoint).
    emit(rows, as_json, table("training runs", ["id", "status", "step", "loss", "tokens/s", "eta", "checkpoint",
                                                  "parent", "error"], [
        [r["id"], r["status"], f"{r['step']}/{r['total_steps']}", fmt(r["loss"]), fmt(r["tokens_per_s"]),
         "" if r["eta_s"] is None else f"{r['eta_s']:.0f} s", r["checkpoint_step"] if r["checkpoint_sha256"] else "",
         r["parent_version_id"], (r["error"] or "")[:60]]
        for r in rows]))


def eta(run: Any) -> float | None:
    """Seconds left for a running run, from its measured tokens/s and its own configured step size."""
    if run.status != "running" or not run.tokens_per_s or not run.total_steps:
        return None
    c = run.config
    tokens_per_step = c.get("batch_size", 1) * c.get("grad_accum", 1) * c.get("max_length", 1)
    return (run.total_steps - run.step) * tokens_per_step / run.tokens_per_s


@runs_app.command("retry")
def runs_retry(run_id: int = typer.Argument(..., metavar="N", help="A failed run's id (see `medqa runs`)."),
               as_json: bool = JsonOpt) -> None:
    """Queue a new run on a failed run's abstracts (released when it failed) and whatever else is new."""
    from sqlmodel import update

    from services.trainer.trigger import maybe_queue_run
    from shared.db import session_scope
    from shared.tables import Abstract, RunStatus, TrainingRun

    ensure_store()
    if not 1 <= run_id < 2**31:
        die(f"no training run {run_id}")
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            die(f"no training run {run_id}")
        if run.status != RunStatus.failed:
            die(f"training run {run_id} is {run.status.value}; only a failed run is retried")
        # A run that failed before failures released their claims still holds its abstracts.
        session.exec(update(Abstract).where(col(Abstract.train_run_id) == run_id).values(train_run_id=None))
        line = run.model_line
    new_id = maybe_queue_run(line, force=True)
    if new_id is None:
        die("no run queued: another run is active (see `medqa runs`), or nothing is left to train")
    _report_queued(new_id, as_json, retried=run_id)
