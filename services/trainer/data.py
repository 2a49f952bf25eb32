"""What a run trains on: its manifest (new abstracts, held-out slice, replay) and the texts behind it.

The manifest is fixed when the run is queued and stored on the run row, so a redelivered or resumed
task trains on exactly the same data, and every version's lineage is exact.
"""

from __future__ import annotations

import hashlib
import json
import random

from sqlmodel import Session, col, select

from shared.corpora import general_texts, split_general
from shared.models import Abstract, RunStatus, TrainingRun
from shared.settings import Settings


def abstract_text(row: Abstract) -> str:
    return f"{row.title}\n{row.text}"


def unclaimed_pmids(session: Session) -> list[int]:
    """Stored, live abstracts no run has taken yet: the 'new' data the trigger counts."""
    return list(session.exec(
        select(Abstract.pmid).where(col(Abstract.train_run_id).is_(None), col(Abstract.deleted).is_(False),
                                    col(Abstract.retracted).is_(False))
        .order_by(col(Abstract.pmid))
    ).all())


def reservoir(session: Session, *, model_line: str) -> list[int]:
    """PMIDs earlier successful runs trained on (never their held-out slices), still live."""
    trained: set[int] = set()
    for manifest in session.exec(select(TrainingRun.manifest).where(
            TrainingRun.model_line == model_line, TrainingRun.status == RunStatus.succeeded)):
        trained.update(manifest.get("new", []))
    if not trained:
        return []
    live = session.exec(select(Abstract.pmid).where(
        col(Abstract.pmid).in_(sorted(trained)), col(Abstract.deleted).is_(False), col(Abstract.retracted).is_(False)))
    return sorted(live.all())


def build_manifest(session: Session, *, new_pmids: list[int], model_line: str, s: Settings) -> dict:
    rng = random.Random(f"{s.seed}:{new_pmids[0] if new_pmids else 0}:{len(new_pmids)}")
    shuffled = list(new_pmids)
    rng.shuffle(shuffled)
    n_hold = max(2, round(len(shuffled) * s.holdout_fraction))
    holdout, train_new = sorted(shuffled[:n_hold]), sorted(shuffled[n_hold:])
    # replay_ratio is the share of replay among all training examples: r = R / (N + R).
    n_replay = round(len(train_new) * s.replay_ratio / (1 - s.replay_ratio))
    past = reservoir(session, model_line=model_line)
    general, _retention = split_general(general_texts(s.retention_corpus))
    n_past = min(len(past), n_replay // 2 if general else n_replay)
    replay_pmids = sorted(rng.sample(past, n_past))
    replay_general = [g.item_id for g in rng.sample(general, min(len(general), n_replay - n_past))]
    manifest = {
        "new": train_new, "holdout": holdout, "replay_pmids": replay_pmids, "replay_general": replay_general,
        "replay_ratio": s.replay_ratio,
        "counts": {"new": len(train_new), "holdout": len(holdout), "replay_pmids": len(replay_pmids),
                   "replay_general": len(replay_general)},
    }
    manifest["hash"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return manifest


def texts_for(session: Session, pmids: list[int]) -> list[str]:
    rows = session.exec(select(Abstract).where(col(Abstract.pmid).in_(pmids)).order_by(col(Abstract.pmid)))
    # Checked at read time too: a record deleted or retracted after its run was queued (or while a
    # resumed run waited) must not be trained on or scored.
    return [abstract_text(r) for r in rows if not r.deleted and not r.retracted]


def training_texts(session: Session, *, manifest: dict, s: Settings) -> list[str]:
    general = {g.item_id: g.text for g in general_texts(s.retention_corpus)}
    return (texts_for(session, manifest["new"]) + texts_for(session, manifest["replay_pmids"])
            + [general[i] for i in manifest["replay_general"] if i in general])
