"""Retraction alerts: when a paper some version learned from is retracted, one alert names the
versions (directly trained or inherited through warm starts); error if the serving champion is one
of them, else warning. One alert per retraction, ever: the cooldown dedup of other alerts would
repeat it after hours, and a retraction does not change."""

from __future__ import annotations

import logging

from sqlmodel import Session, select

from services.monitor.alerts import raise_alert
from shared.lineage import PaperLineage, paper_lineage, retraction_key
from shared.tables import Alert

log = logging.getLogger("medqa.monitor")
KIND = "retraction"


def alert_retraction(session: Session, pmid: int) -> Alert | None:
    """The alert for one retracted paper, or None if no version learned from it or it alerted before."""
    if session.exec(select(Alert.id).where(Alert.dedup_key == retraction_key(pmid))).first() is not None:
        return None
    found = paper_lineage(session, pmid)
    if not found.versions:
        return None
    return raise_alert(session, kind=KIND, severity="error" if any(u.champion for u in found.versions) else "warning",
                       dedup_key=retraction_key(pmid), message=message(found))


def message(found: PaperLineage) -> str:
    def one(u) -> str:  # type: ignore[no-untyped-def]
        how = ", ".join(u.how) if u.how else f"inherited from v{u.inherited_from}"
        role = " (serving champion)" if u.champion else " (champion before)" if u.was_champion else ""
        return f"v{u.version} [{u.status}{role}; {how}]"

    champion = [u.version for u in found.versions if u.champion]
    cited = f"; the API cited it {found.cited_total} times" if found.cited_total else ""
    return (f"PMID {found.pmid} was retracted; {len(found.versions)} version(s) learned from it: "
            f"{', '.join(one(u) for u in found.versions)}{cited}. "
            + (f"The serving champion v{champion[0]} is affected: `medqa rebuild v{champion[0]}`. " if champion else "")
            + f"Details: `medqa lineage {found.pmid}`.")
