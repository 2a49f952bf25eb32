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
                  + (f" (held out by {', '.join(f'v{v}' for v in found.held_out_by)})" if found.held_out_by else ""))


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
