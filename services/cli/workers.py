"""Long-running processes: Celery workers, beat, the QA API, and the sweeper on demand."""

from __future__ import annotations

import typer

from services.cli.common import JsonOpt, die, emit, ensure_store, out
from services.cli.root import app
from services.cli.tasks import modules_for
from shared.settings import get_settings


@app.command()
def worker(queues: str = typer.Argument(..., help="Comma-separated queues (ingest,train,evaluate,monitor) or 'all'"),
           concurrency: int = typer.Option(1, min=1), hostname: str | None = None) -> None:
    """Run a Celery worker. Trainer workers: one per GPU, concurrency 1."""
    from shared.celery_app import QUEUES
    from shared.celery_app import app as celery

    names = list(QUEUES) if queues == "all" else [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if unknown or not names:
        die(f"unknown queue(s) {unknown}; queues are {', '.join(QUEUES)} or 'all'", code=2)
    if get_settings().eager:
        die("MEDQA_EAGER=1 runs tasks in the calling process; a worker needs a broker", code=2)
    ensure_store()
    # Only the served queues' task modules: an ingest worker never imports the trainer (or torch).
    celery.conf.include = modules_for(names)
    argv = ["worker", "-Q", ",".join(names), "--concurrency", str(concurrency), "--loglevel", "INFO",
            "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["--hostname", hostname]
    celery.worker_main(argv)


@app.command()
def beat() -> None:
    """Run the Celery beat scheduler (ingest polling, monitoring, sweeps)."""
    from shared.celery_app import app as celery

    ensure_store()
    celery.start(["beat", "--loglevel", "INFO",
                  "--schedule", str(get_settings().data_dir / "celerybeat-schedule")])


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 in a container)."),
          port: int = typer.Option(8000, min=0, max=65535)) -> None:
    """Run the QA API (answers with citations; hot-swaps when the champion moves) until Ctrl-C."""
    import uvicorn

    from services.api.app import create_app

    ensure_store()
    # One process: the model, the batcher and the alias poller live in it (replicas = more processes).
    # h11 enforces a limit on the request line and headers (httptools, uvicorn's default, has none).
    uvicorn.run(create_app(), host=host, port=port, log_level="info", http="h11",
                h11_max_incomplete_event_size=get_settings().api_max_header_bytes)


@app.command()
def sweep(as_json: bool = JsonOpt) -> None:
    """Re-derive pending work from the store and send it (what beat does every minute)."""
    from shared.pipeline import sweep_now

    ensure_store()
    sent = sweep_now()
    emit(sent, as_json)
    if not as_json:
        out.print(f"re-sent runs {sent['runs']}, candidates {sent['candidates']}, alerts {sent['alerts']}"
                  f"{', the training trigger' if sent['abstracts'] else ''}")
