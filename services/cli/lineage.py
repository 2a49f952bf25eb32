"""`medqa lineage`: which versions learned from a paper (directly or through warm starts), and a
version's complete training ancestry."""

from __future__ import annotations

import typer

from services.cli.common import JsonOpt, actor_or_user, die, emit, ensure_store, out, printable_reason, table
from services.cli.root import app

MAX_ID = 2**31 - 1  # PMIDs and version ids are 32-bit in the store


@app.command()
def lineage(pmid: int | None = typer.Argument(None, min=1, max=MAX_ID, help="A PubMed id."),
            version: str | None = typer.Option(None, "--version", help="A version (vN): its training ancestry."),
            as_json: bool = JsonOpt) -> None:
    """Every version that trained on PMID (how, its status, whether it is or was champion, whether the
    API cited the paper); or, with --version, the version's ancestry back to the base model."""
    from shared.db import session_scope
    from shared.lineage import paper_lineage, version_ancestry
    from shared.registry import RegistryError, get_version, parse_version_id

    if (pmid is None) == (version is None):
        die("give a PMID or --version V (one of them)", code=2)
    ensure_store()
    with session_scope() as session:
        if version is not None:
            try:
                version_id = get_version(session, version_id=parse_version_id(version)).id
            except RegistryError as exc:
                die(str(exc))
            assert version_id is not None
            chain = version_ancestry(session, version_id)
            emit(chain, as_json, table(f"ancestry of v{version_id}", ["version", "run", "status", "parent", "new",
                                                                     "replay", "mined", "held out"],
                                       [[f"v{c['version']}", c["run"], c["status"], c["parent"] or "base",
                                         c["items"]["new"], c["items"]["replay"],
                                         c["items"]["mined"] + c["items"]["replay_mined"], c["items"]["holdout"]]
                                        for c in chain]))
            return
        assert pmid is not None
        found = paper_lineage(session, pmid)
    emit(found.to_json(), as_json, table(
        f"versions that learned from PMID {pmid}", ["version", "status", "how", "champion", "cited"],
        [[f"v{u.version}", u.status, ", ".join(u.how) or f"inherited from v{u.inherited_from}",
          "now" if u.champion else "before" if u.was_champion else "", u.cited] for u in found.versions]))
    if not as_json and not found.versions:
        out.print(f"no version trained on PMID {pmid}"
                  + (f" (scored by {', '.join(f'v{v}' for v in found.evaluated_by)})" if found.evaluated_by else ""))


@app.command()
def retract(pmid: int = typer.Argument(..., min=1, max=MAX_ID, help="A PubMed id."),
            reason: str = typer.Option(..., "--reason", help="Why (the notice, its source): kept in the audit trail."),
            actor: str | None = typer.Option(None, "--actor", help="Who (default cli:<user>)."),
            as_json: bool = JsonOpt) -> None:
    """Mark a paper retracted by hand, audited: it never trains or serves as evidence again, and the
    versions that learned from it are alerted on (see `medqa lineage PMID`)."""
    from services.ingest.store import AlreadyRetracted
    from services.ingest.store import retract as mark_retracted
    from shared.db import session_scope

    who, why = actor_or_user(actor), printable_reason(reason)
    ensure_store()
    try:
        with session_scope() as session:
            stored = mark_retracted(session, pmid, actor=who, reason=why)
    except AlreadyRetracted as exc:
        die(str(exc))
    doc = {"pmid": pmid, "stored": stored, "actor": who}
    emit(doc, as_json)
    if not as_json:
        out.print(f"PMID {pmid} marked retracted" + ("" if stored else " (not stored yet: it will arrive retracted)"))


@app.command()
def rebuild(version: str = typer.Argument(..., help="The version to rebuild clean (vN)."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and its estimated GPU-hours."),
            reason: str = typer.Option("retracted or deleted papers in its lineage", "--reason",
                                       help="Kept in the audit trail."),
            actor: str | None = typer.Option(None, "--actor", help="Who (default cli:<user>)."),
            as_json: bool = JsonOpt) -> None:
    """Re-train V's lineage from its nearest clean ancestor with the same configs, seeds and manifests
    minus retracted and deleted items (no substitutes). Each rebuilt version names the one it replaces
    and is gated; an operator promotes it."""
    from services.trainer.rebuild import RebuildError, plan, start
    from shared.db import session_scope
    from shared.registry import RegistryError, parse_version_id

    who, why = actor_or_user(actor), printable_reason(reason)
    ensure_store()
    try:
        with session_scope() as session:
            version_id = parse_version_id(version)
            if dry_run:
                found, run_id = plan(session, version_id), None
            else:
                found, run_id = start(session, version_id, actor=who, reason=why)
    except (RebuildError, RegistryError) as exc:
        die(str(exc))
    doc = found.to_json() | {"first_run": run_id, "dry_run": dry_run}
    emit(doc, as_json, table(
        f"rebuild of v{found.version} from {f'v{found.clean_ancestor}' if found.clean_ancestor else 'the base model'}",
        ["replaces", "run", "removed", "kept new", "kept replay", "est. GPU-hours"],
        [[f"v{s.replaces}", s.run, sum(len(v) for v in s.removed.values()), s.kept["new"], s.kept["replay_pmids"],
          s.est_gpu_hours] for s in found.steps]))
    if not as_json:
        out.print(f"estimated {found.est_gpu_hours} GPU-hours in all" + (
            "; dry run, nothing queued" if dry_run else f"; queued run {run_id}, the first step"))
