"""What a run trains on: its manifest (new abstracts, held-out slice, replay) and the texts behind it.

The manifest is fixed when the run is queued and stored on the run row, so a redelivered or resumed
task trains on exactly the same data, and every version's lineage is exact.
"""

from __future__ import annotations

import random

from sqlmodel import Session, col, select

from services.trainer.examples import ExampleSpec, lm, qa
from shared.corpora import GeneralText, general_texts, pubmedqa_split, split_general
from shared.lm.prompts import qa_answer
from shared.manifest import RunManifest
from shared.queries import is_live, live_texts
from shared.settings import Settings
from shared.tables import Abstract, MinedQA, ReviewedExample, RunStatus, TrainingRun


def reservoir(session: Session, *, model_line: str) -> list[tuple[int, int]]:
    """(PMID, entrez year) of what earlier successful runs trained on (never their held-out
    slices), still live: neither deleted nor retracted since."""
    trained: set[int] = set()
    for manifest in session.exec(select(TrainingRun.manifest).where(
            TrainingRun.model_line == model_line, TrainingRun.status == RunStatus.succeeded)):
        trained.update(RunManifest.from_json(manifest).new)
    if not trained:
        return []
    live = session.exec(select(col(Abstract.pmid), col(Abstract.entrez_date)).where(
        col(Abstract.pmid).in_(sorted(trained)), is_live()))
    return sorted((pmid, d.year if d else 0) for pmid, d in live.all())


def stratified_sample(items: list[tuple[int, int]], n: int, rng: random.Random) -> list[int]:
    """n PMIDs spread evenly over entrez years (round robin over shuffled strata), so replay keeps
    old literature in view instead of mirroring whichever years were ingested most."""
    strata: dict[int, list[int]] = {}
    for pmid, year in items:
        strata.setdefault(year, []).append(pmid)
    for pool in strata.values():
        rng.shuffle(pool)
    picked: list[int] = []
    while len(picked) < n and any(strata.values()):
        for year in sorted(strata):
            if strata[year] and len(picked) < n:
                picked.append(strata[year].pop())
    return picked


def build_manifest(session: Session, *, new_pmids: list[int], model_line: str, settings: Settings) -> RunManifest:
    rng = random.Random(f"{settings.seed}:{new_pmids[0] if new_pmids else 0}:{len(new_pmids)}")
    shuffled = list(new_pmids)
    rng.shuffle(shuffled)
    n_hold = max(2, round(len(shuffled) * settings.holdout_fraction))
    holdout, train_new = sorted(shuffled[:n_hold]), sorted(shuffled[n_hold:])
    # replay_ratio is the share of replay among all training examples: r = R / (N + R).
    n_replay = round(len(train_new) * settings.replay_ratio / (1 - settings.replay_ratio))
    past = reservoir(session, model_line=model_line)
    general = replay_general_pool(settings)
    n_past = min(len(past), n_replay // 2 if general else n_replay)
    replay_pmids = sorted(stratified_sample(past, n_past, rng))
    replay_general = [g.item_id for g in rng.sample(general, min(len(general), n_replay - n_past))]
    # A paper whose mined QA item exists trains twice: its text (the literature) and its question
    # (answering). Held-out papers' items are never trained: their texts are the `new` suite.
    # Expert-checked corrections (shared/review.py) train in the first run after their review, and are
    # replayed later like any other item: a quarter of the replay budget at most.
    fresh, earlier = reviewed_examples(session, model_line=model_line)
    replay_reviewed = sorted(rng.sample(earlier, min(len(earlier), n_replay // 4)))
    return RunManifest(new=train_new, holdout=holdout, replay_pmids=replay_pmids, replay_general=replay_general,
                       replay_ratio=settings.replay_ratio, mined=mined_pmids(session, train_new),
                       replay_mined=mined_pmids(session, replay_pmids), reviewed=fresh,
                       replay_reviewed=replay_reviewed)


def reviewed_examples(session: Session, *, model_line: str) -> tuple[list[int], list[int]]:
    """(ids of reviewed examples no run of the line has taken yet, ids an earlier successful run trained).
    A queued or running run holds its examples; a failed run's are free again."""
    taken: set[int] = set()
    trained: set[int] = set()
    for manifest, status in session.exec(select(TrainingRun.manifest, TrainingRun.status).where(
            TrainingRun.model_line == model_line, TrainingRun.status != RunStatus.failed)):
        reviewed = RunManifest.from_json(manifest).reviewed
        taken.update(reviewed)
        if status == RunStatus.succeeded:
            trained.update(reviewed)
    live = session.exec(select(ReviewedExample.id).where(col(ReviewedExample.withdrawn).is_(False))
                        .order_by(col(ReviewedExample.id))).all()
    return [i for i in live if i is not None and i not in taken], [i for i in live if i in trained]


def mined_pmids(session: Session, pmids: list[int]) -> list[int]:
    """Those of `pmids` with a mined QA item whose paper is live."""
    return [item.pmid for item in live_mined(session, pmids)]


def replay_general_pool(settings: Settings) -> list[GeneralText]:
    """The fixed general-medical replay set: MedQuAD's replay half plus PubMedQA's train items."""
    medquad_half, _retention = split_general(general_texts())
    return medquad_half + list(pubmedqa_split()[0])


def live_mined(session: Session, pmids: list[int]) -> list[MinedQA]:
    """The mined items of `pmids` whose paper is still live, in PMID order."""
    if not pmids:
        return []
    return list(session.exec(select(MinedQA).join(Abstract, col(Abstract.pmid) == col(MinedQA.pmid))
                             .where(col(MinedQA.pmid).in_(pmids), is_live()).order_by(col(MinedQA.pmid))).all())


def training_examples(session: Session, *, manifest: RunManifest, settings: Settings) -> list[ExampleSpec]:
    """New abstracts and replayed abstracts as LM examples; their mined items, and general items with
    a question, as QA examples (loss on the answer); other general items as LM text."""
    general = {g.item_id: g for g in replay_general_pool(settings)}
    # Liveness is checked at read time too: a record deleted or retracted after its run was queued
    # (or while a resumed run waited) must not be trained on.
    out = [lm(t) for t in live_texts(session, manifest.new) + live_texts(session, manifest.replay_pmids)]
    for item in live_mined(session, manifest.mined + manifest.replay_mined):
        out.append(qa(item.question, qa_answer(item.long_answer, item.decision), item.context))
    reviewed = manifest.reviewed + manifest.replay_reviewed
    examples = session.exec(select(ReviewedExample).where(col(ReviewedExample.id).in_(reviewed),
                                                          col(ReviewedExample.withdrawn).is_(False))).all()
    quoted = {p for ex in examples for p in ex.pmids}
    gone = quoted - set(session.exec(select(Abstract.pmid).where(col(Abstract.pmid).in_(quoted), is_live())).all())
    for ex in examples:  # one quoting a retracted or deleted paper is not trained (an unstored PMID counts as gone)
        if not set(ex.pmids) & gone:
            out.append(qa(ex.question, ex.answer, ex.context))
    for item_id in manifest.replay_general:
        g = general.get(item_id)
        if g is not None:
            out.append(qa(g.question, g.answer, g.context) if g.question else lm(g.text))
    return out
