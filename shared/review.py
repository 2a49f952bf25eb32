"""People in the loop: the review queue, its active-learning policy, ratings, and what they yield.

What goes into the queue (ReviewItem.source), and why:
  - uncertain:    an answered yes/no question whose calibrated verdict is close to a coin toss (normalised
                  entropy of yes/no/maybe at least MEDQA_REVIEW_UNCERTAIN_ENTROPY): an expert's label is
                  worth most where the model knows least;
  - disagreement: a question the candidate and the champion answer differently (the gate queues these
                  as blind pairs): where a preference tells the two apart;
  - thumbs_down:  an answer a user rated down;
  - correction:   a correction a user (with a thumbs-down) or a reviewer wrote, to be checked by an expert;
  - uniform:      a uniform sample of answers (MEDQA_REVIEW_SAMPLE_RATE), so that the share of correct
                  answers can be estimated without the bias of the targeted sources above.
An expert's "correct" on a correction makes it a QA training example (ReviewedExample) with its
provenance; nothing else a user or reviewer says trains anything.

The gate reads blind pairwise ratings through `pairwise_scores` (services/evaluator/gate.py).
"""

from __future__ import annotations

import math
import random
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, func, select

from shared.settings import Settings
from shared.tables import AnswerLog, Feedback, ReviewedExample, ReviewItem, ReviewRating, utcnow

RATINGS = ("correct", "partly", "wrong", "harmful")  # of one answer
PREFERENCES = ("candidate", "champion", "tie")  # of a blind pair, mapped back from what was shown
SOURCES = ("uncertain", "disagreement", "thumbs_down", "correction", "uniform")
# Higher first. A user's thumbs-down and a correction waiting for its check come first: a person
# already said something is wrong. Uncertain items add their entropy (0..1) to their base.
BASE_PRIORITY = {"thumbs_down": 3.0, "correction": 3.0, "disagreement": 2.0, "uncertain": 1.0, "uniform": 0.0}


class ReviewError(ValueError):
    """A rating that cannot be stored; the message says why."""


def new_answer_id() -> str:
    return secrets.token_hex(16)


def entropy(probabilities: dict[str, float]) -> float:
    """Shannon entropy of a verdict's probabilities, divided by its maximum (0: certain, 1: uniform)."""
    p = [v for v in probabilities.values() if v > 0]
    if len(probabilities) < 2:
        return 0.0
    return -sum(v * math.log(v) for v in p) / math.log(len(probabilities))


def shown_answer(text: str, evidence: Sequence[dict], verdict: dict | None) -> dict[str, Any]:
    """What a reviewer sees of one answer: its text, its quoted evidence, its verdict label."""
    return {"text": text, "evidence": [{"pmid": int(e["pmid"]), "quote": str(e["quote"])} for e in evidence],
            "verdict": (verdict or {}).get("label")}


def _add_item(session: Session, item: ReviewItem) -> ReviewItem | None:
    """Queue an item unless one with its dedup key is queued already."""
    if session.exec(select(ReviewItem.id).where(ReviewItem.dedup_key == item.dedup_key)).first() is not None:
        return None
    session.add(item)
    session.flush()
    return item


# ----------------------------------------------------------------------------- filling the queue

def queue_answer(session: Session, row: AnswerLog, settings: Settings, rng: random.Random) -> ReviewItem | None:
    """After an answer is logged: queue it if its verdict is uncertain, or if the uniform sample draws it.
    Only answers with their text kept and evidence shown can be reviewed."""
    if row.outcome != "answered" or row.question is None or row.answer is None or row.id is None:
        return None
    probs = (row.verdict or {}).get("probabilities") or {}
    spread = entropy(probs) if probs else 0.0
    if probs and spread >= settings.review_uncertain_entropy:
        source, priority = "uncertain", BASE_PRIORITY["uncertain"] + spread
    elif rng.random() < settings.review_sample_rate:
        source, priority = "uniform", BASE_PRIORITY["uniform"]
    else:
        return None
    return _add_item(session, ReviewItem(
        kind="single", source=source, priority=priority, question=row.question,
        answer=shown_answer(row.answer, row.evidence, row.verdict), candidate_version_id=None,
        champion_version_id=row.version_id, answer_log_id=row.id, dedup_key=f"answer:{row.id}"))


def queue_feedback(session: Session, feedback: Feedback, row: AnswerLog) -> list[ReviewItem]:
    """A thumbs-down puts its answer first in the queue (raising an item already queued for it); a
    correction with it is queued to be checked."""
    out: list[ReviewItem] = []
    if feedback.rating != "down" or row.question is None or row.answer is None or row.id is None:
        return out
    queued = session.exec(select(ReviewItem).where(ReviewItem.dedup_key == f"answer:{row.id}")).first()
    if queued is not None:
        queued.source, queued.priority = "thumbs_down", BASE_PRIORITY["thumbs_down"]
        queued.feedback_id = feedback.id
        session.add(queued)
    else:
        item = _add_item(session, ReviewItem(
            kind="single", source="thumbs_down", priority=BASE_PRIORITY["thumbs_down"], question=row.question,
            answer=shown_answer(row.answer, row.evidence, row.verdict), champion_version_id=row.version_id,
            answer_log_id=row.id, feedback_id=feedback.id, dedup_key=f"answer:{row.id}"))
        out += [item] if item else []
    if feedback.correction:
        item = _add_item(session, ReviewItem(
            kind="single", source="correction", priority=BASE_PRIORITY["correction"], question=row.question,
            answer=shown_answer(feedback.correction, row.evidence, None), champion_version_id=row.version_id,
            answer_log_id=row.id, feedback_id=feedback.id, dedup_key=f"correction:feedback:{feedback.id}"))
        out += [item] if item else []
    return out


@dataclass(frozen=True)
class PairedAnswer:
    """One question both models answered differently, for a blind pairwise review."""

    key: str  # the suite item id: one pair per (candidate, item)
    question: str
    candidate: dict[str, Any]  # shown_answer(...)
    champion: dict[str, Any]


def queue_pairs(session: Session, candidate_id: int, champion_id: int | None, pairs: Sequence[PairedAnswer],
                rng: random.Random) -> int:
    """Blind pairs of a candidate and the champion; the order each is shown in is drawn here and kept."""
    added = 0
    for pair in pairs:
        added += _add_item(session, ReviewItem(
            kind="pair", source="disagreement", priority=BASE_PRIORITY["disagreement"], question=pair.question,
            answer=pair.candidate, other=pair.champion, candidate_first=rng.random() < 0.5,
            candidate_version_id=candidate_id, champion_version_id=champion_id,
            dedup_key=f"pair:v{candidate_id}:{pair.key}"[:120])) is not None
    return added


# ------------------------------------------------------------------------------- drawing and rating

def _rated(session: Session) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for item_id, reviewer in session.exec(select(ReviewRating.item_id, ReviewRating.reviewer)).all():
        out.setdefault(item_id, set()).add(reviewer)
    return out


def next_item(session: Session, reviewer: str, settings: Settings, rng: random.Random) -> ReviewItem | None:
    """The next item for `reviewer`: one they have not rated, still short of its ratings. A share of draws
    (MEDQA_REVIEW_UNIFORM_SHARE) goes to the uniform sample, so it is reviewed at a steady rate; the rest
    take the highest priority, oldest first."""
    rated = _rated(session)
    open_items = [i for i in session.exec(select(ReviewItem).order_by(col(ReviewItem.priority).desc(),
                                                                       col(ReviewItem.id))).all()
                  if reviewer not in rated.get(i.id or 0, set()) and i.written_by != reviewer
                  and len(rated.get(i.id or 0, set())) < settings.review_ratings_per_item]
    if not open_items:
        return None
    uniform = [i for i in open_items if i.source == "uniform"]
    if uniform and rng.random() < settings.review_uniform_share:
        return uniform[0]
    targeted = [i for i in open_items if i.source != "uniform"]
    return (targeted or uniform)[0]


def shown_pair(item: ReviewItem) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pair's two answers in the order the reviewer sees them ("A", then "B")."""
    assert item.other is not None
    return (item.answer, item.other) if item.candidate_first else (item.other, item.answer)


def preference_of(item: ReviewItem, choice: str) -> str:
    """A blind choice ("A", "B" or "tie") as the model it favours."""
    if choice == "tie":
        return "tie"
    if choice not in ("A", "B"):
        raise ReviewError("choice must be A, B or tie")
    first = "candidate" if item.candidate_first else "champion"
    second = "champion" if item.candidate_first else "candidate"
    return first if choice == "A" else second


def record_rating(session: Session, item: ReviewItem, reviewer: str, *, rating: str | None = None,
                  choice: str | None = None, note: str | None = None,
                  correction: str | None = None) -> ReviewRating:
    """Store one reviewer's judgement. A correction an expert rates "correct" becomes a training
    example; a correction a reviewer writes is queued for another reviewer to check."""
    assert item.id is not None
    if session.exec(select(ReviewRating.id).where(ReviewRating.item_id == item.id,
                                                   ReviewRating.reviewer == reviewer)).first() is not None:
        raise ReviewError(f"{reviewer} has rated item {item.id} already")
    if item.written_by == reviewer:
        raise ReviewError("a correction is checked by another reviewer than its author")
    if item.kind == "pair":
        if choice is None:
            raise ReviewError("a pair takes a choice: A, B or tie")
        row = ReviewRating(item_id=item.id, reviewer=reviewer, preference=preference_of(item, choice), note=note)
    else:
        if rating not in RATINGS:
            raise ReviewError(f"rating must be one of {', '.join(RATINGS)}")
        row = ReviewRating(item_id=item.id, reviewer=reviewer, rating=rating, note=note, correction=correction)
    session.add(row)
    session.flush()
    if item.kind == "single" and item.source == "correction" and rating == "correct":
        _reviewed_example(session, item, reviewer)
    if item.kind == "single" and correction and rating in ("partly", "wrong", "harmful"):
        _add_item(session, ReviewItem(
            kind="single", source="correction", priority=BASE_PRIORITY["correction"], question=item.question,
            answer=shown_answer(correction, item.answer.get("evidence", []), None),
            champion_version_id=item.champion_version_id, answer_log_id=item.answer_log_id, written_by=reviewer,
            dedup_key=f"correction:rating:{row.id}"))
    return row


def _reviewed_example(session: Session, item: ReviewItem, reviewer: str) -> None:
    assert item.id is not None
    if session.exec(select(ReviewedExample.id).where(ReviewedExample.item_id == item.id)).first() is not None:
        return  # a second "correct" on the same correction adds no second example
    evidence = item.answer.get("evidence", [])
    context = "\n".join(f"[PMID {e['pmid']}] {e['quote']}" for e in evidence) or None
    session.add(ReviewedExample(question=item.question, answer=item.answer["text"], context=context,
                                pmids=sorted({int(e["pmid"]) for e in evidence}), reviewer=reviewer,
                                item_id=item.id, feedback_id=item.feedback_id))


# ------------------------------------------------------------------------------ what it adds up to

def pairwise_scores(session: Session, candidate_id: int, champion_id: int | None) -> list[float]:
    """Each blind rating of this candidate against this champion: 1 a win, 0.5 a tie, 0 a loss."""
    value = {"candidate": 1.0, "tie": 0.5, "champion": 0.0}
    pair = col(ReviewItem.id) == col(ReviewRating.item_id)
    rows = session.exec(select(ReviewRating.preference).join(ReviewItem, pair)
                        .where(ReviewItem.kind == "pair", ReviewItem.candidate_version_id == candidate_id,
                               ReviewItem.champion_version_id == champion_id)).all()
    return [value[p] for p in rows if p in value]


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two label sequences; None when it is undefined (no pairs, or chance agreement 1)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[k] * second[k] for k in set(first) | set(second)) / (n * n)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def agreement(session: Session) -> dict[str, Any]:
    """Agreement between reviewers on items two of them rated: the first two ratings of each item, as
    rater 1 and rater 2 (Cohen's kappa), for one-answer ratings and for blind pairs separately."""
    by_item: dict[int, list[ReviewRating]] = {}
    for r in session.exec(select(ReviewRating).order_by(col(ReviewRating.id))).all():
        by_item.setdefault(r.item_id, []).append(r)
    singles, prefs = [], []
    for ratings in by_item.values():
        if len(ratings) < 2:
            continue
        a, b = ratings[0], ratings[1]
        if a.rating and b.rating:
            singles.append((a.rating, b.rating))
        elif a.preference and b.preference:
            prefs.append((a.preference, b.preference))
    return {"ratings": {"items": len(singles), "kappa": _round(cohen_kappa(singles))},
            "pairs": {"items": len(prefs), "kappa": _round(cohen_kappa(prefs))}}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def queue_status(session: Session, settings: Settings) -> dict[str, Any]:
    """The queue by source (open = still short of its ratings), throughput, agreement, and what the
    reviews produced."""
    rated = _rated(session)
    by_source: dict[str, dict[str, int]] = {s: {"queued": 0, "open": 0} for s in SOURCES}
    for item_id, source in session.exec(select(ReviewItem.id, ReviewItem.source)).all():
        entry = by_source.setdefault(source, {"queued": 0, "open": 0})
        entry["queued"] += 1
        entry["open"] += len(rated.get(item_id or 0, set())) < settings.review_ratings_per_item
    now = utcnow()

    def since(days: float) -> int:
        return int(session.exec(select(func.count()).select_from(ReviewRating)
                                .where(col(ReviewRating.created_at) >= now - timedelta(days=days))).one())

    reviewers = dict(session.exec(select(ReviewRating.reviewer, func.count()).group_by(ReviewRating.reviewer)).all())
    labels = Counter(r for r in session.exec(select(ReviewRating.rating)).all() if r)
    examples = session.exec(select(ReviewedExample).where(col(ReviewedExample.withdrawn).is_(False))).all()
    return {"queue": by_source, "ratings_last_day": since(1), "ratings_last_week": since(7),
            "reviewers": reviewers, "rating_counts": {k: labels.get(k, 0) for k in RATINGS},
            "agreement": agreement(session), "reviewed_examples": len(examples),
            "feedback": dict(session.exec(select(Feedback.rating, func.count()).group_by(Feedback.rating)).all())}
