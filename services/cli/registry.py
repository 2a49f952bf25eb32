"""Registry commands: evaluate, score, versions, promote, rollback, history, report, policy check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from sqlmodel import col, select

from services.cli.common import (
    JsonOpt,
    actor_or_user,
    die,
    emit,
    ensure_store,
    err,
    fmt,
    out,
    printable_reason,
    table,
)
from services.cli.root import app
from shared.settings import get_settings


@app.command()
def evaluate(version: str, as_json: bool = JsonOpt) -> None:
    """Gate a candidate version against the champion now, in this process."""
    from services.evaluator.gate import evaluate_version
    from shared.registry import RegistryError, parse_version_id

    ensure_store()
    try:
        decision = evaluate_version(parse_version_id(version))
    except RegistryError as exc:
        die(str(exc))
    if decision is None:
        die(f"{version} is not a candidate; it was decided already (see `medqa versions`)")
        return
    emit(decision.to_json(), as_json)
    if not as_json:
        out.print(f"v{decision.version_id}: {'blessed' if decision.passed else 'rejected'}"
                  f"{' and promoted' if decision.promoted else ''}")
        for r in decision.reasons:
            out.print(f"  {r}", highlight=False)


@app.command("score")
def score_cmd(target: str = typer.Argument(..., help="base, champion, or a version (v3 or 3)"),
              suite: str = typer.Option(..., "--suite", help="pubmedqa, consumer, retention or grounding"),
              source: str | None = typer.Option(None, "--source", help="A local path or hub id in the suite's "
                                                "format (default: the gate's own items)"),
              items: str | None = typer.Option(None, "--items", help="N or all (default: the gate's size)"),
              calibration: str | None = typer.Option(None, "--calibration", help="pubmedqa: none, contextual "
                                                     "or prior (default: MEDQA_PUBMEDQA_CALIBRATION)"),
              as_json: bool = JsonOpt) -> None:
    """Score one model on one suite: metrics with 95% intervals, items, PubMedQA's predicted labels."""
    from services.evaluator.scoring import ScoreError, score_one
    from shared.corpora import CorpusUnavailable
    from shared.db import session_scope

    if items is not None and items != "all" and not (items.isdigit() and int(items) > 0):
        die(f"--items must be a positive number or 'all', not {items!r}")
    settings = get_settings()
    if calibration is not None:
        from shared.lm.decisions import CALIBRATIONS

        if calibration not in CALIBRATIONS:
            die(f"--calibration must be one of {', '.join(CALIBRATIONS)}, not {calibration!r}")
        settings = settings.model_copy(update={"pubmedqa_calibration": calibration})
    ensure_store()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("scoring {task.description}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, disable=as_json or not err.is_terminal, transient=True) as bar:
            bar.add_task(f"{target} on {suite}", total=None)
            doc = score_one(session_scope, target, suite, settings, source=source, items=items)
    except (ScoreError, CorpusUnavailable) as exc:
        die(str(exc))
    if "warning" in doc:
        err.print(f"warning: {doc['warning']}", highlight=False)
    emit(doc, as_json, table(
        f"{doc['target']} on {doc['suite']} ({doc['items']} items, {doc['seconds']} s"
        f"{', stored result' if doc['reused'] else ''})", ["metric", "value", "95% interval"],
        [[m, fmt(v["value"], 4), f"[{fmt(v['low'], 4)}, {fmt(v['high'], 4)}]" if "low" in v else ""]
         for m, v in doc["metrics"].items()]))
    if not as_json and "predicted_labels" in doc:
        out.print(f"predicted labels: {doc['predicted_labels']}", highlight=False)


@app.command()
def versions(as_json: bool = JsonOpt) -> None:
    """Model versions with status, metrics, parent and lineage."""
    from shared import registry
    from shared.db import session_scope

    ensure_store()
    with session_scope() as session:
        champ = registry.champion(session, model_line=get_settings().model_line)
        rows = []
        for v in registry.list_versions(session):
            run = registry.run_for_version(session, version=v)
            rows.append(v.model_dump() | {"champion": champ is not None and champ.id == v.id,
                                          "manifest_hash": run.manifest.get("hash"),
                                          "data": run.manifest.get("counts", {})})
    emit(rows, as_json, table("versions", ["id", "status", "champion", "parent", "ppl_new", "ppl_retention",
                                             "sha256", "created"], [
        [f"v{r['id']}", r["status"], "*" if r["champion"] else "",
         r["parent_version_id"] and f"v{r['parent_version_id']}",
         fmt(r["metrics"].get("ppl_new"), 4), fmt(r["metrics"].get("ppl_retention"), 4), r["sha256"][:12],
         r["created_at"]] for r in rows]))


def _alias_change(action: str, **kwargs: Any) -> None:
    from sqlalchemy.exc import IntegrityError

    from shared import registry
    from shared.db import session_scope

    ensure_store()
    try:
        with session_scope() as session:
            event = getattr(registry, action)(session, **kwargs)
            doc = event.model_dump()
    except registry.RegistryError as exc:
        die(str(exc))
    except IntegrityError:  # two first promotions at once: the other created the alias row first
        die("the champion alias changed concurrently; nothing was changed here, try again")
    out.print(f"{doc['action']}: champion v{doc['from_version_id']} -> v{doc['to_version_id']} "
              f"(audit #{doc['id']})")


@app.command()
def promote(version: str, reason: str = typer.Option(..., help="Why; stored in the audit trail."),
            force: bool = typer.Option(False, help="Promote a version that is not blessed."),
            actor: str | None = None) -> None:
    """Make VERSION the champion. Only a blessed version, unless --force."""
    from shared.registry import RegistryError, parse_version_id

    try:
        vid = parse_version_id(version)
    except RegistryError as exc:
        die(str(exc))
    _alias_change("promote", version_id=vid, actor=actor_or_user(actor), reason=printable_reason(reason), force=force)


@app.command()
def rollback(to: str | None = typer.Option(None, "--to", help="Version to go back to (default: previous)."),
             reason: str = typer.Option(..., help="Why; stored in the audit trail."), actor: str | None = None) -> None:
    """Point the champion back at an earlier blessed version."""
    from shared.registry import RegistryError, parse_version_id

    try:
        target = parse_version_id(to) if to is not None else None
    except RegistryError as exc:
        die(str(exc))
    _alias_change("rollback", model_line=get_settings().model_line, actor=actor_or_user(actor),
                  reason=printable_reason(reason), to=target)


@app.command()
def history(as_json: bool = JsonOpt) -> None:
    """The audit trail of champion changes."""
    from shared.db import session_scope
    from shared.tables import AuditEvent

    ensure_store()
    with session_scope() as session:
        rows = [e.model_dump() for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.id)))]
    emit(rows, as_json, table("alias history", ["#", "at", "actor", "action", "from", "to", "reason"], [
        [r["id"], r["at"], r["actor"], r["action"], r["from_version_id"], r["to_version_id"], r["reason"][:70]]
        for r in rows]))


@app.command()
def report(version: str, out_dir: Path | None = typer.Option(None, "--out", help="Folder (default: artifacts)."),
           as_json: bool = JsonOpt) -> None:
    """Write VERSION's evaluation report: markdown, HTML and a PNG per guarded metric across versions."""
    from services.evaluator.report import write_report
    from shared.registry import RegistryError, parse_version_id

    ensure_store()
    try:
        written = write_report(parse_version_id(version), out_dir)
    except RegistryError as exc:
        die(str(exc))
        return
    from shared.db import session_scope
    from shared.lineage import version_card

    with session_scope() as session:
        card = version_card(session, parse_version_id(version))
    paths = {"markdown": str(written.markdown), "html": str(written.html), "plots": [str(p) for p in written.plots],
             "card": card}
    emit(paths, as_json)
    if not as_json:
        out.print(f"{written.markdown}\n{written.html}\n{len(written.plots)} plots", highlight=False)


policy_app = typer.Typer(help="The gate's written policy.", no_args_is_help=True)


@policy_app.command("check")
def policy_check(as_json: bool = JsonOpt) -> None:
    """Can each guard's suite detect its margin? Exits 1 when a suite is too small for its margin."""
    from services.evaluator.sizing import check_sizes
    from shared.db import session_scope
    from shared.policy import Policy, PolicyError

    settings = get_settings()
    try:
        policy = Policy.load(settings.policy_file)  # type: ignore[arg-type]
    except PolicyError as exc:
        die(str(exc))
    ensure_store()
    with session_scope() as session:
        sizes = [s.to_json() for s in check_sizes(session, policy, settings)]

    def shown(value: float | None, unit: str) -> str:
        if value is None:
            return ""
        return f"{value:.2%}" if unit == "relative" else f"{value:.3g}"

    emit({"policy": str(settings.policy_file), "confidence": policy.confidence, "power": policy.power,
          "guards": sizes}, as_json, table(
        f"policy {settings.policy_file} ({policy.confidence:.0%} intervals, suites sized for {policy.power:.0%} power)",
        ["metric", "suite", "items", "margin", "detectable", "needs", "measured on", "status"],
        [[s["metric"], s["suite"], s["configured_items"] or "", shown(s["margin"], s["unit"]),
          shown(s["detectable"], s["unit"]), s["needed_items"] or "",
          f"v{s['measured_version']} ({s['measured_items']} items)" if s["measured_version"] else "",
          s["status"].upper() if s["status"] == "too small" else s["status"]] for s in sizes]))
    if any(s["status"] == "too small" for s in sizes):
        raise typer.Exit(1)
