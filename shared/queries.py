"""The store's domain reads that every service shares: which abstracts are live, and their text.

An abstract is live when it is neither deleted nor retracted. Retracted and deleted rows stay stored
(the lineage of past runs must resolve) but are never trained on, scored, compared or cited again,
and a service checks liveness again at read time: a row may have been retracted since it was chosen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_
from sqlmodel import Session, col, select

from shared.tables import Abstract, SuiteResult


def is_live() -> ColumnElement[bool]:
    """The WHERE clause of a live abstract."""
    return and_(col(Abstract.deleted).is_(False), col(Abstract.retracted).is_(False))


def abstract_text(row: Abstract) -> str:
    """The one text form of an abstract: what is trained on, scored, embedded and compared."""
    return f"{row.title}\n{row.text}"


def live_abstracts(session: Session, pmids: Sequence[int]) -> list[Abstract]:
    """The live rows among `pmids`, in PMID order."""
    return list(session.exec(select(Abstract).where(col(Abstract.pmid).in_(list(pmids)), is_live())
                             .order_by(col(Abstract.pmid))))


def live_texts(session: Session, pmids: Sequence[int]) -> list[str]:
    return [abstract_text(r) for r in live_abstracts(session, pmids)]


def unclaimed_pmids(session: Session) -> list[int]:
    """Live abstracts no run has taken yet: the 'new' data the training trigger counts."""
    return list(session.exec(select(Abstract.pmid).where(col(Abstract.train_run_id).is_(None), is_live())
                             .order_by(col(Abstract.pmid))).all())


def sample(pmids: Sequence[int], n: int, seed: int = 1234) -> list[int]:
    """At most n PMIDs, the same for the same inputs (a fixed seed, not the process's RNG)."""
    chosen = sorted(pmids)
    if len(chosen) > n:
        chosen = sorted(random.Random(seed).sample(chosen, n))
    return chosen


# The "prior" calibration's log-offsets per decision (yes, no, maybe) that the gate fits on a version's
# PubMedQA suite and stores with its metrics; the QA API shifts its verdicts by them.
OFFSET_METRICS = ("pubmedqa_offset_yes", "pubmedqa_offset_no", "pubmedqa_offset_maybe")


def decision_offsets(session: Session, version_id: int) -> list[float] | None:
    """The offsets of the version's latest PubMedQA scoring; None when it has none (scored before they
    were stored, scored uncalibrated, or never scored)."""
    rows = session.exec(select(SuiteResult).where(SuiteResult.subject == f"v{version_id}",
                                                  SuiteResult.suite == "pubmedqa")
                        .order_by(col(SuiteResult.created_at).desc(), col(SuiteResult.id).desc()))
    for row in rows:
        values = [row.metrics.get(name) for name in OFFSET_METRICS]
        if all(isinstance(v, int | float) for v in values):
            return [float(v) for v in values]  # type: ignore[arg-type]
    return None
