"""`medqa`: the operator's command line. Listings print tables, or one JSON document with --json.
Unknown ids and bad arguments exit non-zero with a clear message and change nothing."""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import sys
import warnings
from datetime import date, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import col, func, select

from shared.settings import SettingsError, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
ingest_app = typer.Typer(no_args_is_help=True, help="Import PubMed XML into the store.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(ingest_app, name="ingest")
app.add_typer(db_app, name="db")
# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
JsonOpt = typer.Option(False, "--json", help="Print one JSON document instead of a table.")


@app.callback()
def _main(verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_libraries()
    try:
        get_settings()
    except SettingsError as exc:
        _die(str(exc), code=2)


def quiet_libraries() -> None:
    """Library chatter (alembic plugin set-up, optional bitsandbytes kernels, HF advisories) would
    bury the lines an operator needs; keep their warnings about real problems."""
    for noisy in ("httpx", "urllib3", "alembic", "celery.app.trace", "absl"):  # absl: rouge_score's tokenizer
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # library bars; our own progress uses rich
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")


def _die(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@functools.cache
def _store() -> None:
    from shared.db import migrate

    migrate()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return str(obj)


def _emit(doc: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        print(json.dumps(doc, default=_jsonable, indent=2))
    elif table is not None:
        out.print(table)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


# ----------------------------------------------------------------------------------------------- db
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest migration."""
    _store()
    out.print(f"schema at head on {get_settings().database_url}")


# ------------------------------------------------------------------------------------------- ingest
@ingest_app.command("files")
def ingest_files(path: Path = typer.Argument(..., help="An XML file or a folder of NLM baseline/update XML"),
                 as_json: bool = JsonOpt) -> None:
    """Import PubMed XML files (plain or .gz); one transaction per file. Signals the trainer."""
    from services.ingest.store import pubmed_files
    from services.ingest.tasks import ingest_path

    _store()
    try:
        files = pubmed_files(path)
    except FileNotFoundError as exc:
        _die(str(exc))
    from rich.progress import Progress

    with Progress(console=err, disable=as_json, transient=True) as bar:
        task = bar.add_task("ingesting", total=len(files))
        result = ingest_path(path, progress=lambda _p: bar.advance(task))
    doc = vars(result)
    _emit(doc, as_json, _table("ingest", ["files", "stored", "updated", "duplicates", "filtered", "deleted"],
                               [[result.files, result.stored, result.updated, result.duplicates, result.filtered,
                                 result.deleted]]))
    for e in result.errors:
        err.print(f"[red]bad file[/] {e}", highlight=False)
    if result.errors:
        raise typer.Exit(1)


@ingest_app.command("synth")
def ingest_synth(directory: Path, files: int = typer.Option(3, min=1), per_file: int = typer.Option(40, min=1),
                 seed: int = 0) -> None:
    """Write synthetic PubMed XML (the project's own generator) for trying the loop out."""
    from services.ingest.synth import write_corpus

    for p in write_corpus(directory, files=files, per_file=per_file, seed=seed):
        out.print(str(p))


@ingest_app.command("status")
def ingest_status(as_json: bool = JsonOpt) -> None:
    """Watermarks, counts of stored / with abstract / deleted / retracted / skipped, last errors."""
    from shared.db import session_scope
    from shared.models import Abstract, IngestCursor

    _store()

    def count(*where: Any) -> int:
        return s.exec(select(func.count()).select_from(Abstract).where(*where)).one()

    with session_scope() as s:
        cursors = [c.model_dump() for c in s.exec(select(IngestCursor).order_by(col(IngestCursor.id)))]
        counts = {
            "stored": count(),
            "with_abstract": count(func.length(Abstract.text) > 0),
            "deleted": count(col(Abstract.deleted).is_(True)),
            "retracted": count(col(Abstract.retracted).is_(True)),
            "untrained": count(col(Abstract.train_run_id).is_(None), col(Abstract.deleted).is_(False),
                               col(Abstract.retracted).is_(False)),
            "duplicates_skipped": sum(c["duplicates"] for c in cursors),
            "filtered": sum(c["filtered"] for c in cursors),
            "bad_documents": sum(c["errors"] for c in cursors),
        }
    errors = [c for c in cursors if c["last_error"]]
    _emit({"counts": counts, "cursors": cursors, "last_error": errors[-1]["last_error"] if errors else None},
          as_json, _table("ingest cursors", ["source", "query", "watermark", "stored", "dupes", "filtered", "errors",
                                             "last success", "last error"],
                          [[c["source"], c["query"] if c["source"] != "file" else Path(c["query"]).name,
                            (c["watermark"] or "")[:10] if c["source"] != "file" else "imported" if c["watermark"]
                            else "", c["stored"], c["duplicates"], c["filtered"], c["errors"], c["last_success"],
                            (c["last_error"] or "")[:60]] for c in cursors]))
    if not as_json:
        out.print(_table("abstracts", list(counts), [list(counts.values())]))


@ingest_app.command("entrez")
def ingest_entrez_cmd(
    since: datetime | None = typer.Option(None, formats=["%Y-%m-%d"], help="Start here unless the cursor is later."),
    until: datetime | None = typer.Option(None, formats=["%Y-%m-%d"], help="Last entrez date (default today)."),
    query: str | None = typer.Option(None, help="PubMed query; default MEDQA_ENTREZ_QUERY + _TERM_FILTER."),
    as_json: bool = JsonOpt,
) -> None:
    """Poll PubMed through E-utilities by entrez-date window from the stored watermark. Signals the trainer."""
    from services.ingest.entrez import EntrezError, ingest_entrez

    _store()
    try:
        result = ingest_entrez(since=since.date() if since else None, until=until.date() if until else None,
                               query=query)
    except (EntrezError, ValueError) as exc:
        _die(str(exc))
        return
    _emit(vars(result), as_json, _table("entrez ingest", ["stored", "updated", "duplicates", "filtered", "deleted"],
                                        [[result.stored, result.updated, result.duplicates, result.filtered,
                                          result.deleted]]))


# -------------------------------------------------------------------------------------------- train
@app.command()
def train(force: bool = typer.Option(False, help="Queue a run on whatever is new, below the threshold."),
          as_json: bool = JsonOpt) -> None:
    """Check the training trigger and queue a run (in eager mode it runs here and now)."""
    from services.trainer.trigger import signal_trigger

    _store()
    run_id = signal_trigger(get_settings().model_line, force=force)
    if run_id is None:
        _die("no run queued: a run is already active, or too few new abstracts (see `medqa status`)")
    _emit({"run_id": run_id}, as_json)
    if not as_json:
        out.print(f"queued training run {run_id}")


@app.command()
def runs(as_json: bool = JsonOpt) -> None:
    """Training runs with progress."""
    from shared.db import session_scope
    from shared.models import TrainingRun

    _store()
    with session_scope() as s:
        rows = [r.model_dump(exclude={"manifest"}) | {"counts": r.manifest.get("counts", {}), "eta_s": _eta(r)}
                for r in s.exec(select(TrainingRun).order_by(col(TrainingRun.id)))]
    _emit(rows, as_json, _table("training runs", ["id", "status", "step", "loss", "tokens/s", "eta", "parent",
                                                  "error"], [
        [r["id"], r["status"], f"{r['step']}/{r['total_steps']}", _fmt(r["loss"]), _fmt(r["tokens_per_s"]),
         "" if r["eta_s"] is None else f"{r['eta_s']:.0f} s", r["parent_version_id"], (r["error"] or "")[:60]]
        for r in rows]))


def _eta(run: Any) -> float | None:
    """Seconds left for a running run, from its measured tokens/s and its own configured step size."""
    if run.status != "running" or not run.tokens_per_s or not run.total_steps:
        return None
    c = run.config
    tokens_per_step = c.get("batch_size", 1) * c.get("grad_accum", 1) * c.get("max_length", 1)
    return (run.total_steps - run.step) * tokens_per_step / run.tokens_per_s


# ----------------------------------------------------------------------------------------- registry
@app.command()
def evaluate(version: str, as_json: bool = JsonOpt) -> None:
    """Gate a candidate version against the champion now, in this process."""
    from services.evaluator.gate import evaluate_version
    from shared.crud import RegistryError, parse_version_id

    _store()
    try:
        decision = evaluate_version(parse_version_id(version))
    except RegistryError as exc:
        _die(str(exc))
    if decision is None:
        _die(f"{version} is not a candidate; it was decided already (see `medqa versions`)")
        return
    _emit(vars(decision), as_json)
    if not as_json:
        out.print(f"v{decision.version_id}: {'blessed' if decision.passed else 'rejected'}"
                  f"{' and promoted' if decision.promoted else ''}")
        for r in decision.reasons:
            out.print(f"  {r}", highlight=False)


@app.command()
def versions(as_json: bool = JsonOpt) -> None:
    """Model versions with status, metrics, parent and lineage."""
    from shared import crud
    from shared.db import session_scope

    _store()
    with session_scope() as s:
        champ = crud.champion(s, model_line=get_settings().model_line)
        rows = []
        for v in crud.list_versions(s):
            run = crud.run_for_version(s, version=v)
            rows.append(v.model_dump() | {"champion": champ is not None and champ.id == v.id,
                                          "manifest_hash": run.manifest.get("hash"),
                                          "data": run.manifest.get("counts", {})})
    _emit(rows, as_json, _table("versions", ["id", "status", "champion", "parent", "ppl_new", "ppl_retention",
                                             "sha256", "created"], [
        [f"v{r['id']}", r["status"], "*" if r["champion"] else "",
         r["parent_version_id"] and f"v{r['parent_version_id']}",
         _fmt(r["metrics"].get("ppl_new"), 4), _fmt(r["metrics"].get("ppl_retention"), 4), r["sha256"][:12],
         r["created_at"]] for r in rows]))


def _alias_change(action: str, **kwargs: Any) -> None:
    from shared import crud
    from shared.db import session_scope

    _store()
    try:
        with session_scope() as s:
            event = getattr(crud, action)(s, **kwargs)
            doc = event.model_dump()
    except crud.RegistryError as exc:
        _die(str(exc))
    out.print(f"{doc['action']}: champion v{doc['from_version_id']} -> v{doc['to_version_id']} "
              f"(audit #{doc['id']})")


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


@app.command()
def promote(version: str, reason: str = typer.Option(..., help="Why; stored in the audit trail."),
            force: bool = typer.Option(False, help="Promote a version that is not blessed."),
            actor: str | None = None) -> None:
    """Make VERSION the champion. Only a blessed version, unless --force."""
    from shared.crud import RegistryError, parse_version_id

    try:
        vid = parse_version_id(version)
    except RegistryError as exc:
        _die(str(exc))
    _alias_change("promote", version_id=vid, actor=_actor(actor), reason=reason, force=force)


@app.command()
def rollback(to: str | None = typer.Option(None, "--to", help="Version to go back to (default: previous)."),
             reason: str = typer.Option(..., help="Why; stored in the audit trail."), actor: str | None = None) -> None:
    """Point the champion back at an earlier blessed version."""
    from shared.crud import RegistryError, parse_version_id

    try:
        target = parse_version_id(to) if to is not None else None
    except RegistryError as exc:
        _die(str(exc))
    _alias_change("rollback", model_line=get_settings().model_line, actor=_actor(actor), reason=reason, to=target)


@app.command()
def history(as_json: bool = JsonOpt) -> None:
    """The audit trail of champion changes."""
    from shared.db import session_scope
    from shared.models import AuditEvent

    _store()
    with session_scope() as s:
        rows = [e.model_dump() for e in s.exec(select(AuditEvent).order_by(col(AuditEvent.id)))]
    _emit(rows, as_json, _table("alias history", ["#", "at", "actor", "action", "from", "to", "reason"], [
        [r["id"], r["at"], r["actor"], r["action"], r["from_version_id"], r["to_version_id"], r["reason"][:70]]
        for r in rows]))


@app.command()
def report(version: str, out_dir: Path | None = typer.Option(None, "--out", help="Folder (default: artifacts)."),
           as_json: bool = JsonOpt) -> None:
    """Write VERSION's evaluation report: markdown, HTML and a PNG per guarded metric across versions."""
    from services.evaluator.report import write_report
    from shared.crud import RegistryError, parse_version_id

    _store()
    try:
        written = write_report(parse_version_id(version), out_dir)
    except RegistryError as exc:
        _die(str(exc))
        return
    paths = {"markdown": str(written.markdown), "html": str(written.html), "plots": [str(p) for p in written.plots]}
    _emit(paths, as_json)
    if not as_json:
        out.print(f"{written.markdown}\n{written.html}\n{len(written.plots)} plots", highlight=False)


# ---------------------------------------------------------------------------------------- monitoring
drift_app = typer.Typer(help="Drift reports (data and question drift); `show ID` for one.")
app.add_typer(drift_app, name="drift")


@drift_app.callback(invoke_without_command=True)
def drift(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Stored drift reports."""
    if ctx.invoked_subcommand is not None:
        return
    from shared.db import session_scope
    from shared.models import DriftReport

    _store()
    with session_scope() as s:
        rows = [d.model_dump() for d in s.exec(select(DriftReport).order_by(col(DriftReport.id)))]
    _emit(rows, as_json, _table("drift reports", ["id", "at", "kind", "status", "reference", "current", "html"], [
        [r["id"], r["created_at"], r["kind"], r["status"], r["reference_window"], r["current_window"], r["html_path"]]
        for r in rows]))


@drift_app.command("show")
def drift_show(report_id: int = typer.Argument(..., metavar="ID", help="The report's id (see `medqa drift`)."),
               as_json: bool = JsonOpt) -> None:
    """One drift report: its verdict, per-column scores and the path of Evidently's HTML."""
    from shared.db import session_scope
    from shared.models import DriftReport

    _store()
    with session_scope() as s:
        row = s.get(DriftReport, report_id)
        if row is None:
            _die(f"no drift report {report_id} (see `medqa drift`)")
            return
        doc = row.model_dump()
    _emit(doc, as_json)
    if as_json:
        return
    sc = doc["scores"]
    out.print(f"drift report {doc['id']} ({doc['kind']}, {doc['created_at']:%Y-%m-%d %H:%M} UTC): {doc['status']}",
              highlight=False)
    out.print(f"  reference: {doc['reference_window']} ({sc.get('n_reference', 0)} rows)", highlight=False)
    out.print(f"  current:   {doc['current_window']} ({sc.get('n_current', 0)} rows)", highlight=False)
    out.print(f"  html:      {doc['html_path'] or '(none: not enough data)'}", highlight=False)
    for column, v in sorted(sc.get("scores", {}).items()):
        out.print(f"  {'DRIFT' if v['drifted'] else 'ok   '} {column:<16} {v['method']:<24} score {v['score']:.4g} "
                  f"(threshold {v['threshold']:.4g})", highlight=False)


alerts_app = typer.Typer(help="Alerts raised by the monitor, with their delivery per channel; `ack ID`.")
app.add_typer(alerts_app, name="alerts")


@alerts_app.callback(invoke_without_command=True)
def alerts(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Alerts raised by the monitor, with their delivery status per channel."""
    if ctx.invoked_subcommand is not None:
        return
    from shared.db import session_scope
    from shared.models import Alert, AlertDelivery

    _store()
    with session_scope() as s:
        rows = [a.model_dump() | {"deliveries": []} for a in s.exec(select(Alert).order_by(col(Alert.id)))]
        by_id = {r["id"]: r for r in rows}
        for d in s.exec(select(AlertDelivery).order_by(col(AlertDelivery.id))):
            if d.alert_id in by_id:
                by_id[d.alert_id]["deliveries"].append(d.model_dump(exclude={"id", "alert_id"}))

    def delivery(r: dict) -> str:
        return " ".join(f"{d['channel']}:{d['status']}" + (f"({d['attempts']})" if d["status"] != "sent" else "")
                        for d in r["deliveries"])

    _emit(rows, as_json, _table("alerts", ["id", "at", "severity", "kind", "ack", "delivery", "message"], [
        [r["id"], r["created_at"], r["severity"], r["kind"], r["acknowledged_by"] or r["acknowledged"], delivery(r),
         r["message"][:90]] for r in rows]))


@alerts_app.command("ack")
def alerts_ack(alert_id: int = typer.Argument(..., metavar="ID", help="The alert's id (see `medqa alerts`)."),
               actor: str | None = typer.Option(None, help="Who acknowledges; default cli:<user>.")) -> None:
    """Acknowledge alert ID: it no longer counts as open."""
    from shared.db import session_scope
    from shared.models import Alert, utcnow

    _store()
    with session_scope() as s:
        alert = s.get(Alert, alert_id)
        if alert is None:
            _die(f"unknown alert {alert_id} (see `medqa alerts`)")
            return
        if alert.acknowledged:
            out.print(f"alert {alert_id} was acknowledged already by {alert.acknowledged_by} at "
                      f"{alert.acknowledged_at}", highlight=False)
            return
        alert.acknowledged, alert.acknowledged_at, alert.acknowledged_by = True, utcnow(), _actor(actor)
        s.add(alert)
        doc = alert.model_dump()
    out.print(f"alert {alert_id} acknowledged by {doc['acknowledged_by']}", highlight=False)


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """What is serving, what is training, and whether the broker answers."""
    from shared import crud
    from shared.celery_app import redis_client
    from shared.db import session_scope
    from shared.models import Abstract, Alert, DriftReport, RunStatus, TrainingRun

    _store()
    st = get_settings()
    with session_scope() as s:
        champ = crud.champion(s, model_line=st.model_line)
        active = [r.model_dump(include={"id", "status", "step", "total_steps", "loss", "tokens_per_s",
                                        "heartbeat_at"}) | {"eta_s": _eta(r)}
                  for r in s.exec(select(TrainingRun).where(
                      col(TrainingRun.status).in_([RunStatus.queued, RunStatus.running])))]
        last_drift = s.exec(select(DriftReport).order_by(col(DriftReport.id).desc())).first()
        doc = {
            "model_line": st.model_line, "database": st.database_url.split("@")[-1], "eager": st.eager,
            "champion": f"v{champ.id}" if champ else None,
            "abstracts": s.exec(select(func.count()).select_from(Abstract)).one(),
            "active_runs": active,
            "last_drift": last_drift.status if last_drift else None,
            "open_alerts": s.exec(select(func.count()).where(col(Alert.acknowledged).is_(False))).one(),
        }
    try:
        doc["broker"] = "up" if redis_client().ping() else "down"
    except Exception as exc:
        doc["broker"] = f"down ({type(exc).__name__})"
    if as_json:
        _emit(doc, True)
        return
    for k, v in doc.items():
        if k != "active_runs":
            out.print(f"{k:>12}: {v}", highlight=False)
    for r in active:
        out.print(f"   run {r['id']}: {r['status']} step {r['step']}/{r['total_steps']} loss {_fmt(r['loss'])}"
                  f" {_fmt(r['tokens_per_s'])} tok/s, eta {_fmt(r['eta_s'])} s, heartbeat {r['heartbeat_at']}",
                  highlight=False)


# ------------------------------------------------------------------------------------------ workers
@app.command()
def worker(queues: str = typer.Argument(..., help="Comma-separated queues (ingest,train,evaluate,monitor) or 'all'"),
           concurrency: int = typer.Option(1, min=1), hostname: str | None = None) -> None:
    """Run a Celery worker. Trainer workers: one per GPU, concurrency 1."""
    from shared.celery_app import QUEUES
    from shared.celery_app import app as celery

    names = list(QUEUES) if queues == "all" else [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if unknown or not names:
        _die(f"unknown queue(s) {unknown}; queues are {', '.join(QUEUES)} or 'all'", code=2)
    if get_settings().eager:
        _die("MEDQA_EAGER=1 runs tasks in the calling process; a worker needs a broker", code=2)
    _store()
    argv = ["worker", "-Q", ",".join(names), "--concurrency", str(concurrency), "--loglevel", "INFO",
            "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["--hostname", hostname]
    celery.worker_main(argv)


@app.command()
def beat() -> None:
    """Run the Celery beat scheduler (ingest polling, monitoring, sweeps)."""
    from shared.celery_app import app as celery

    _store()
    celery.start(["beat", "--loglevel", "INFO",
                  "--schedule", str(get_settings().data_dir / "celerybeat-schedule")])


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 in a container)."),
          port: int = typer.Option(8000, min=0, max=65535)) -> None:
    """Run the QA API (answers with citations; hot-swaps when the champion moves) until Ctrl-C."""
    import uvicorn

    from services.api.app import create_app

    _store()
    # One process: the model, the batcher and the alias poller live in it (replicas = more processes).
    uvicorn.run(create_app(), host=host, port=port, log_level="info")


@app.command()
def sweep(as_json: bool = JsonOpt) -> None:
    """Re-derive pending work from the store and send it (what beat does every minute)."""
    from services.monitor.tasks import sweep_now

    _store()
    sent = sweep_now()
    _emit(sent, as_json)
    if not as_json:
        out.print(f"re-sent runs {sent['runs']} and candidates {sent['candidates']}")


@app.command()
def emulator(corpus: Path = typer.Option(..., "--corpus", help="A PubMed XML file or folder (plain or .gz)."),
             port: int = typer.Option(8765, min=0, max=65535, help="Port on 127.0.0.1 (0: any free one).")) -> None:
    """Serve PubMed XML as a local E-utilities (esearch, efetch, einfo) until Ctrl-C."""
    import time

    from services.ingest.emulator import EntrezEmulator
    from services.ingest.store import pubmed_files

    try:
        files = pubmed_files(corpus)
    except FileNotFoundError as exc:
        _die(str(exc))
        return
    try:
        server = EntrezEmulator(files, port=port).start()
    except OSError as exc:
        _die(f"cannot serve on port {port}: {exc}")
        return
    try:  # printing inside: Ctrl-C right after the banner still stops the server cleanly
        out.print(f"serving {len(server)} articles from {len(files)} files at {server.base_url}\n"
                  f"point ingest at it: MEDQA_ENTREZ_BASE_URL={server.base_url}", highlight=False)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def demo(corpus: Path | None = typer.Option(None, envvar="MEDQA_DEMO_CORPUS",
                                            help="Folder of PubMed XML; default ../shared/data samples."),
         as_json: bool = JsonOpt) -> None:
    """The whole loop on this machine: ingest, train, evaluate, promote, monitor; then a summary."""
    from shared.demo import run_demo

    try:
        summary = run_demo(corpus, console=None if as_json else out)
    except FileNotFoundError as exc:
        _die(str(exc))
        return
    _emit(summary, as_json)
    if any(r["status"] != "succeeded" for r in summary["rounds"]) or not summary["rounds"]:
        _die("the loop did not complete: see the summary above")


if __name__ == "__main__":
    app()
