"""`medqa drift`, `medqa alerts` and `medqa status`: what the monitor found and what is running."""

from __future__ import annotations

import typer
from sqlmodel import col, func, select

from services.cli.common import JsonOpt, actor_or_user, die, emit, ensure_store, fmt, out, table
from services.cli.root import app
from services.cli.training import eta
from shared.settings import get_settings
from shared.text import terminal_safe

drift_app = typer.Typer(help="Drift reports (data and question drift); `show ID` for one.")
app.add_typer(drift_app, name="drift")


@drift_app.callback(invoke_without_command=True)
def drift(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Stored drift reports."""
    if ctx.invoked_subcommand is not None:
        return
    from shared.db import session_scope
    from shared.tables import DriftReport

    ensure_store()
    with session_scope() as session:
        rows = [d.model_dump() for d in session.exec(select(DriftReport).order_by(col(DriftReport.id)))]
    emit(rows, as_json, table("drift reports", ["id", "at", "kind", "status", "reference", "current", "html"], [
        [r["id"], r["created_at"], r["kind"], r["status"], r["reference_window"], r["current_window"], r["html_path"]]
        for r in rows]))


@drift_app.command("show")
def drift_show(report_id: int = typer.Argument(..., metavar="ID", min=1, max=2**31 - 1,
                                               help="The report's id (see `medqa drift`)."),
               as_json: bool = JsonOpt) -> None:
    """One drift report: its verdict, per-column scores and the path of Evidently's HTML."""
    from shared.db import session_scope
    from shared.tables import DriftReport

    ensure_store()
    with session_scope() as session:
        row = session.get(DriftReport, report_id)
        if row is None:
            die(f"no drift report {report_id} (see `medqa drift`)")
            return
        doc = row.model_dump()
    emit(doc, as_json)
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
    from shared.tables import Alert, AlertDelivery

    ensure_store()
    with session_scope() as session:
        rows = [a.model_dump() | {"deliveries": []} for a in session.exec(select(Alert).order_by(col(Alert.id)))]
        by_id = {r["id"]: r for r in rows}
        for d in session.exec(select(AlertDelivery).order_by(col(AlertDelivery.id))):
            if d.alert_id in by_id:
                by_id[d.alert_id]["deliveries"].append(d.model_dump(exclude={"id", "alert_id"}))

    def delivery(r: dict) -> str:
        return " ".join(f"{d['channel']}:{d['status']}" + (f"({d['attempts']})" if d["status"] != "sent" else "")
                        for d in r["deliveries"])

    emit(rows, as_json, table("alerts", ["id", "at", "severity", "kind", "ack", "delivery", "message"], [
        [r["id"], r["created_at"], r["severity"], r["kind"], r["acknowledged_by"] or r["acknowledged"], delivery(r),
         r["message"][:90]] for r in rows]))


@alerts_app.command("ack")
def alerts_ack(alert_id: int = typer.Argument(..., metavar="ID", min=1, max=2**31 - 1,
                                           help="The alert's id (see `medqa alerts`)."),
               actor: str | None = typer.Option(None, help="Who acknowledges; default cli:<user>.")) -> None:
    """Acknowledge alert ID: it no longer counts as open."""
    from shared.db import session_scope
    from shared.tables import Alert, utcnow

    ensure_store()
    with session_scope() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            die(f"unknown alert {alert_id} (see `medqa alerts`)")
            return
        if alert.acknowledged:
            out.print(f"alert {alert_id} was acknowledged already by {alert.acknowledged_by} at "
                      f"{alert.acknowledged_at}", highlight=False)
            return
        alert.acknowledged, alert.acknowledged_at, alert.acknowledged_by = True, utcnow(), actor_or_user(actor)
        session.add(alert)
        doc = alert.model_dump()
    out.print(f"alert {alert_id} acknowledged by {doc['acknowledged_by']}", highlight=False)


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """What is serving, what is training, and whether the broker answers."""
    from services.monitor.retractions import KIND as RETRACTION
    from shared import registry
    from shared.celery_app import redis_client
    from shared.db import session_scope
    from shared.tables import Abstract, Alert, DriftReport, RunStatus, TrainingRun

    ensure_store()
    settings = get_settings()
    with session_scope() as session:
        champ = registry.champion(session, model_line=settings.model_line)
        active = [r.model_dump(include={"id", "status", "step", "total_steps", "loss", "tokens_per_s",
                                        "heartbeat_at"}) | {"eta_s": eta(r)}
                  for r in session.exec(select(TrainingRun).where(
                      col(TrainingRun.status).in_([RunStatus.queued, RunStatus.running])))]
        last_drift = session.exec(select(DriftReport).order_by(col(DriftReport.id).desc())).first()
        doc = {
            "model_line": settings.model_line, "database": settings.database_url.split("@")[-1],
            "eager": settings.eager,
            "champion": f"v{champ.id}" if champ else None,
            "abstracts": session.exec(select(func.count()).select_from(Abstract)).one(),
            "active_runs": active,
            "last_drift": last_drift.status if last_drift else None,
            "open_alerts": session.exec(select(func.count()).where(col(Alert.acknowledged).is_(False))).one(),
        }
        # Until acknowledged (`medqa alerts ack N`): which versions learned from a retracted paper.
        retracted = [{"alert": a.id, "severity": a.severity, "message": a.message}
                     for a in session.exec(select(Alert).where(Alert.kind == RETRACTION, col(Alert.acknowledged)
                                                               .is_(False)).order_by(col(Alert.id)))]
        doc["retracted_in_lineage"] = retracted
    try:
        doc["broker"] = "up" if redis_client().ping() else "down"
    except Exception as exc:
        doc["broker"] = f"down ({type(exc).__name__})"
    if as_json:
        emit(doc, True)
        return
    for k, v in doc.items():
        if k not in ("active_runs", "retracted_in_lineage"):
            out.print(f"{k:>12}: {v}", highlight=False)
    for a in retracted:
        out.print(f"   {a['severity']} alert {a['alert']}: {terminal_safe(str(a['message']))}", highlight=False,
                  markup=False)
    for r in active:
        out.print(f"   run {r['id']}: {r['status']} step {r['step']}/{r['total_steps']} loss {fmt(r['loss'])}"
                  f" {fmt(r['tokens_per_s'])} tok/s, eta {fmt(r['eta_s'])} s, heartbeat {r['heartbeat_at']}",
                  highlight=False)
