"""People in the loop: answer ids and feedback, the reviewer token, the review queue's policy, reviewed
corrections as training examples, and blind expert reviews in the gate."""

from __future__ import annotations

import random

import pytest
from apikit import AUTH, TOKEN, live_abstracts, make_version
from sqlmodel import col, select
from test_api import api_env, ask, client, ready  # noqa: F401  (api_env is a fixture)

from shared import review
from shared.db import session_scope
from shared.settings import get_settings
from shared.tables import AnswerLog, Feedback, ReviewedExample, ReviewItem, ReviewRating

REVIEWER = "r3viewer-alice"
REVIEWERS = f"alice={REVIEWER},bob=r3viewer-bob"


def _answered(c) -> dict:  # type: ignore[no-untyped-def]
    target = live_abstracts()[3]
    doc = ask(c, target.title)
    assert doc["outcome"] == "answered", doc  # its own title finds it
    return doc


def test_feedback_round_trip(api_env, tmp_path):  # noqa: F811
    api_env(api_feedback_per_minute="3")
    make_version(tmp_path, seed=1, champion=True)
    with client() as c:
        ready(c)
        doc = _answered(c)
        answer_id = doc["answer_id"]
        assert len(answer_id) == 32 and answer_id != ask(c, "What is hypertension?")["answer_id"]
        with session_scope() as s:
            row = s.exec(select(AnswerLog).where(AnswerLog.answer_id == answer_id)).one()
            assert (row.answer, row.outcome, row.version_id) == (doc["answer"], "answered", doc["model_version"])
            assert row.citations == [x["pmid"] for x in doc["citations"]]
            assert row.evidence == doc["evidence"]

        res = c.post("/v1/feedback", json={"answer_id": answer_id, "rating": "down",
                                           "correction": "It lowers it only in trials under a year.",
                                           "reason": "overstated"})
        assert res.status_code == 201, res.text
        assert res.json()["queued_for_review"] is True
        with session_scope() as s:
            fb = s.exec(select(Feedback)).one()
            assert (fb.answer_id, fb.rating, fb.reason) == (answer_id, "down", "overstated")
            assert "testclient" not in fb.client and len(fb.client) == 32  # a hash, not the address
            items = {i.source: i for i in s.exec(select(ReviewItem))}
        assert items["thumbs_down"].answer["text"] == doc["answer"]
        assert items["correction"].answer["text"] == "It lowers it only in trials under a year."

        assert c.post("/v1/feedback", json={"answer_id": "0" * 32, "rating": "up"}).status_code == 404
        for bad in ({"answer_id": answer_id, "rating": "meh"}, {"answer_id": "x", "rating": "up"},
                    {"answer_id": answer_id, "rating": "up", "reason": "a\u0000b"},
                    {"answer_id": answer_id, "rating": "up", "correction": "x" * 2001}):
            assert c.post("/v1/feedback", json=bad).status_code == 422, bad
        statuses = [c.post("/v1/feedback", json={"answer_id": answer_id, "rating": "up"}).status_code
                    for _ in range(3)]
        assert statuses == [201, 201, 429]  # 3 a minute: the down, the unknown id did not count, 2 ups
        with session_scope() as s:
            assert len(s.exec(select(Feedback)).all()) == 3


def test_the_reviewer_token_is_not_the_operator_token(api_env, tmp_path):  # noqa: F811
    make_version(tmp_path, seed=1, champion=True)
    v2 = make_version(tmp_path, seed=2)
    with client() as c:  # no reviewer tokens configured: the page is off
        res = c.get("/review")
        assert res.status_code == 503 and "MEDQA_API_REVIEWER_TOKENS" in res.text
    api_env(api_reviewer_tokens=REVIEWERS)
    with client() as c:
        assert c.get("/review").status_code == 401  # the sign-in form
        res = c.get("/review", headers=AUTH)
        assert res.status_code == 403 and "operator token" in res.text
        res = c.post("/review/login", data={"token": TOKEN}, follow_redirects=False)
        assert res.status_code == 403 and "set-cookie" not in res.headers
        res = c.post("/v1/promote", json={"version": v2, "reason": "r", "force": True},
                     headers={"Authorization": f"Bearer {REVIEWER}"})
        assert res.status_code == 403
        res = c.post("/review/login", data={"token": REVIEWER}, follow_redirects=False)
        assert res.status_code == 303 and "httponly" in res.headers["set-cookie"].lower()
        page = c.get("/review")
        assert page.status_code == 200 and "Signed in as <b>alice</b>" in page.text
    with pytest.raises(Exception, match="must not contain the operator token"):
        api_env(api_reviewer_tokens=f"carol={TOKEN}")
        get_settings()


def _correction_item(s, question: str = "Does drug X lower blood pressure?",  # type: ignore[no-untyped-def]
                     pmid: int = 11) -> ReviewItem:
    shown = review.shown_answer("Yes, by about 5 mmHg in adults.", [{"pmid": pmid, "quote": "It fell."}], None)
    item = ReviewItem(kind="single", source="correction", question=question, dedup_key=f"t:{question}", answer=shown)
    s.add(item)
    s.flush()
    return item


def test_a_reviewed_correction_trains_in_the_next_run_with_its_provenance(api_env):  # noqa: F811
    from services.trainer.data import build_manifest, training_examples
    from shared.lineage import record_run
    from shared.tables import LineageItem, RunStatus, TrainingRun

    settings = get_settings()
    new = [a.pmid for a in live_abstracts()]
    quoted = new[0]
    with session_scope() as s:
        item = _correction_item(s, pmid=quoted)
        review.record_rating(s, item, "alice", rating="wrong")  # not "correct": teaches nothing
        assert s.exec(select(ReviewedExample)).all() == []
        review.record_rating(s, item, "bob", rating="correct")
        with pytest.raises(review.ReviewError, match="rated item"):
            review.record_rating(s, item, "bob", rating="correct")
    with session_scope() as s:
        example = s.exec(select(ReviewedExample)).one()
        assert (example.reviewer, example.answer, example.pmids) == ("bob", "Yes, by about 5 mmHg in adults.", [quoted])
        manifest = build_manifest(s, new_pmids=new, model_line="default", settings=settings)
        assert manifest.reviewed == [example.id] and manifest.counts["reviewed"] == 1
        qa = [e for e in training_examples(s, manifest=manifest, settings=settings)
              if e.kind == "qa" and e.answer == example.answer]
        assert qa and qa[0].question == "Does drug X lower blood pressure?"
        assert f"[PMID {quoted}]" in (qa[0].context or "")
        run = TrainingRun(model_line="default", status=RunStatus.queued, base_model="tiny", manifest=manifest.to_json())
        s.add(run)
        s.flush()
        assert run.id is not None
        record_run(s, run.id, manifest)
        refs = s.exec(select(LineageItem.ref).where(LineageItem.run_id == run.id, LineageItem.role == "reviewed")).all()
        assert refs == [f"reviewed:{example.id}"]
        # Queued: a second run does not take it again; once trained, later runs may replay it.
        assert build_manifest(s, new_pmids=new, model_line="default", settings=settings).reviewed == []
        run.status = RunStatus.succeeded
        s.add(run)
        s.flush()
        assert review_replayed(s, new, settings) == [example.id]
        # Its evidence retracted: it trains no more, and a clean rebuild drops it.
        from services.trainer.rebuild import clean_manifest
        from shared.tables import Abstract

        paper = s.get(Abstract, quoted)
        paper.retracted = True
        s.add(paper)
        s.flush()
        assert not [e for e in training_examples(s, manifest=manifest, settings=settings) if e.answer == example.answer]
        assert clean_manifest(s, manifest).reviewed == []


def review_replayed(s, new: list[int], settings) -> list[int]:  # type: ignore[no-untyped-def]
    from services.trainer.data import build_manifest

    return build_manifest(s, new_pmids=new, model_line="default", settings=settings).replay_reviewed


def test_the_queue_policy_and_agreement(api_env):  # noqa: F811
    settings = get_settings()
    with session_scope() as s:
        def logged(probs: dict[str, float] | None) -> AnswerLog:
            row = AnswerLog(answer_id=review.new_answer_id(), question="Is X safe?", answer="Probably.",
                            outcome="answered", verdict=None if probs is None else {"label": "yes",
                                                                                      "probabilities": probs})
            s.add(row)
            s.flush()
            return row

        never = random.Random(0)
        never.random = lambda: 1.0  # type: ignore[method-assign]  # the uniform sample never draws
        assert review.queue_answer(s, logged({"yes": 0.34, "no": 0.33, "maybe": 0.33}), settings, never).source \
            == "uncertain"
        assert review.queue_answer(s, logged({"yes": 0.95, "no": 0.04, "maybe": 0.01}), settings, never) is None
        always = random.Random(0)
        always.random = lambda: 0.0  # type: ignore[method-assign]
        assert review.queue_answer(s, logged({"yes": 0.95, "no": 0.04, "maybe": 0.01}), settings, always).source \
            == "uniform"
        # The reviewer gets the uncertain one first (priority), never the same item twice.
        first = review.next_item(s, "alice", settings, never)
        assert first is not None and first.source == "uncertain"
        review.record_rating(s, first, "alice", rating="partly", correction="Safe at low doses only.")
        queued = s.exec(select(ReviewItem).where(ReviewItem.source == "correction")).one()
        assert queued.answer["text"] == "Safe at low doses only."  # another expert checks it
        with pytest.raises(review.ReviewError, match="another reviewer"):
            review.record_rating(s, queued, "alice", rating="correct")
        assert review.next_item(s, "bob", settings, never).id == queued.id  # type: ignore[union-attr]
        assert review.next_item(s, "alice", settings, never).id != first.id  # type: ignore[union-attr]

    assert review.cohen_kappa([("a", "a"), ("b", "b"), ("a", "b"), ("b", "b")]) == pytest.approx(0.5)
    assert review.cohen_kappa([("a", "a"), ("a", "a")]) is None  # chance agreement 1: undefined
    assert review.cohen_kappa([]) is None


def test_review_status_cli(api_env):  # noqa: F811
    import json

    from typer.testing import CliRunner

    from services.cli import app

    with session_scope() as s:
        items = [_correction_item(s, f"Question {n}?") for n in range(3)]
        for item, (a, b) in zip(items, [("correct", "correct"), ("wrong", "wrong"), ("correct", "wrong")],
                                strict=True):
            review.record_rating(s, item, "alice", rating=a)
            review.record_rating(s, item, "bob", rating=b)
    res = CliRunner().invoke(app, ["review", "status", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["queue"]["correction"] == {"queued": 3, "open": 0}  # two ratings each
    assert doc["reviewers"] == {"alice": 3, "bob": 3} and doc["ratings_last_day"] == 6
    assert doc["agreement"]["ratings"] == {"items": 3, "kappa": pytest.approx(0.4, abs=1e-3)}
    assert doc["reviewed_examples"] == 2  # items 0 and 2: rated correct at least once, one example each
    res = CliRunner().invoke(app, ["review", "status"])
    assert res.exit_code == 0 and "Cohen's kappa 0.40 over 3 items" in res.stdout


def test_rating_a_blind_pair_records_the_model_it_favours(api_env):  # noqa: F811
    with session_scope() as s:
        for candidate_first in (True, False):
            item = ReviewItem(kind="pair", source="disagreement", question="Q?", answer={"text": "cand"},
                              other={"text": "champ"}, candidate_first=candidate_first, candidate_version_id=2,
                              champion_version_id=1, dedup_key=f"p{candidate_first}")
            s.add(item)
            s.flush()
            shown_first, _ = review.shown_pair(item)
            assert shown_first["text"] == ("cand" if candidate_first else "champ")
            review.record_rating(s, item, "alice", choice="A")
        prefs = s.exec(select(ReviewRating.preference).order_by(col(ReviewRating.id))).all()
        assert prefs == ["candidate", "champion"]
        assert sorted(review.pairwise_scores(s, 2, 1)) == [0.0, 1.0]
        assert review.pairwise_scores(s, 2, None) == []  # reviews against another champion do not count
