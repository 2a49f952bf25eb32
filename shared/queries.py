"""The store's domain reads that every service shares: which abstracts are live, and their text.

An abstract is live when it is neither deleted nor retracted. Retracted and deleted rows stay stored
(the lineage of past runs must resolve) but are never trained on, scored, compared or cited again,
and a service checks liveness again at read time: a row may have been retracted since it was chosen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_
from sqlmodel import Session, col, select

from shared.tables import Abstract, Evaluation


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


@dataclass(frozen=True)
class VerdictCalibration:
    """What the gate measured of a version's yes/no/maybe decisions, for the QA API's verdicts."""

    offsets: tuple[float, ...]
    accuracy: float | None  # pubmedqa_acc on the gate's held-out items
    majority: float | None  # what always answering those items' most common label scores
    items: int | None  # how many items that accuracy is over


def verdict_calibration(session: Session, version_id: int) -> VerdictCalibration | None:
    """From the version's latest gate decision (its Evaluation): the PubMedQA suite the gate judged it on,
    never a `medqa score --source FILE` result on other items. None when that decision holds no offsets
    (scored before they were stored, scored uncalibrated, or never gated)."""
    evaluation = session.exec(select(Evaluation).where(Evaluation.version_id == version_id)
                              .order_by(col(Evaluation.id).desc())).first()
    if evaluation is None:
        return None
    values = [evaluation.metrics.get(name) for name in OFFSET_METRICS]
    if not all(isinstance(v, int | float) for v in values):
        return None
    items = _number(evaluation.metrics.get("pubmedqa_items"))
    return VerdictCalibration(tuple(float(v) for v in values),  # type: ignore[arg-type]
                              _number(evaluation.metrics.get("pubmedqa_acc")),
                              _number(evaluation.metrics.get("pubmedqa_majority_acc")),
                              int(items) if items is not None else None)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
