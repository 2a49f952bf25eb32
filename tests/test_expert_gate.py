"""Experts in the gate: blind pairwise reviews of a candidate against the champion become a guard once
there are enough of them; the policy says whether a decision waits for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select
from test_evaluator import DEFAULT_POLICY, _ppl, _rng_values, _scores, line  # noqa: F401  (line is a fixture)

from services.evaluator import gate
from services.evaluator.judge import expert_guard
from services.evaluator.suites import Suite, SuiteScores
from shared import registry, review
from shared.corpora import GeneralText
from shared.db import session_scope
from shared.policy import ExpertReview, Policy, PolicyError
from shared.settings import get_settings
from shared.tables import Evaluation, ModelVersion, ReviewItem, SuiteResult, VersionStatus


def _policy(tmp_path: Path, expert: str) -> Path:
    path = tmp_path / "policy.toml"
    text = DEFAULT_POLICY.read_text().split("[expert_review]")[0]
    path.write_text(text + "[expert_review]\n" + expert)
    return path


def _planted_scores(calls: list[int]):  # type: ignore[no-untyped-def]
    """Real storage and policy over planted scores: a candidate better on its target and no worse elsewhere."""
    nll = _rng_values(12, 8, 3.4, 0.3)

    def planted(suite, candidate: bool):  # type: ignore[no-untyped-def]
        if suite.kind == "perplexity":
            shift = -0.2 if candidate and suite.name == "new" else 0.0
            return _ppl(suite.name, [x + shift for x in nll[: len(suite.items)]])
        if suite.kind == "pubmedqa":
            return _scores("pubmedqa", rouge1=[0.25] * 8, rouge2=[0.1] * 8, correct=[1] * 8)
        if suite.kind == "grounding":
            return _scores(suite.name, abstained_ok=[1] * 8, precision=[1.0] * 8)
        return _scores(suite.name, rougeL=[0.2] * len(suite.items), fk_grade=[9.0] * len(suite.items))

    def fake_score(base_spec, adapters, suites):  # type: ignore[no-untyped-def]
        calls.append(len(suites["candidate"]))
        return {"candidate": {x.name: planted(x, True) for x in suites["candidate"]},
                "baseline": {x.name: planted(x, False) for x in suites["baseline"]}}

    return fake_score


def _rate_pairs(candidate: int, champion: int, winners: list[str], first: int = 0) -> None:
    """Blind pairs of `candidate` against `champion`, one reviewer each, choosing as `winners` says."""
    with session_scope() as s:
        for n, winner in enumerate(winners, start=first):
            item = ReviewItem(kind="pair", source="disagreement", question=f"Q{n}?", answer={"text": "c"},
                              other={"text": "h"}, candidate_first=n % 2 == 0, candidate_version_id=candidate,
                              champion_version_id=champion, dedup_key=f"test:{candidate}:{n}")
            s.add(item)
            s.flush()
            shown_first = "candidate" if item.candidate_first else "champion"
            choice = "tie" if winner == "tie" else ("A" if winner == shown_first else "B")
            review.record_rating(s, item, f"reviewer{n % 3}", choice=choice)


@pytest.mark.slow
def test_a_candidate_with_enough_losing_blind_reviews_is_rejected(line, medqa_env, monkeypatch, tmp_path):  # noqa: F811
    policy = _policy(tmp_path, "min_reviews = 8\nmargin = 0.10\nwait = true\n")
    medqa_env(train_lr="5e-3", train_max_steps="8", policy_file=str(policy))
    cand = line(line.info["texts"], "cand")
    v1 = line.info["v1"]
    with session_scope() as s:  # forget v1's real scores, so the champion's are planted too
        for row in s.exec(select(SuiteResult).where(SuiteResult.subject == f"v{v1}")):
            s.delete(row)
    calls: list[int] = []
    monkeypatch.setattr(gate, "score", _planted_scores(calls))

    first = gate.evaluate_version(cand)  # every automatic check passes; the policy waits for experts
    assert first is not None and first.waiting and not first.passed and not first.promoted
    with session_scope() as s:
        assert s.get(ModelVersion, cand).status == VersionStatus.candidate
        ev = s.exec(select(Evaluation).where(Evaluation.version_id == cand)).one()
        assert any(r.startswith(gate.AWAITING) and "0 of 8" in r for r in ev.reasons)
    _rate_pairs(cand, v1, ["champion"] * 5)
    assert gate.evaluate_version(cand) is None  # 5 of 8: still waiting, and nothing scored again
    assert len(calls) == 1

    _rate_pairs(cand, v1, ["champion", "champion", "tie", "champion"], first=5)  # 9 reviews: 0.5 wins of 9
    decision = gate.evaluate_version(cand)
    assert decision is not None and not decision.passed and not decision.waiting
    assert calls == [calls[0]]  # decided on the scores stored while it waited
    guard = next(g for g in decision.guards if g.metric == "expert_win_rate")
    assert guard.verdict == "inferior" and guard.n_items == 9 and guard.estimate == pytest.approx(0.5 / 9)
    with session_scope() as s:
        assert s.get(ModelVersion, cand).status == VersionStatus.rejected
        assert registry.champion(s, model_line="default").id == v1
        stored = s.exec(select(Evaluation).where(Evaluation.version_id == cand)).all()
        assert any(r.startswith("FAIL expert_win_rate") for r in stored[-1].reasons)


def test_the_expert_guard_judges_the_win_rate_interval():
    expert = ExpertReview(min_reviews=10, margin=0.10)
    few = expert_guard(expert, [1.0] * 9, 0.95)  # the default policy does not wait: it decides, and says so
    assert few.passed and few.verdict == "not enough reviews" and "decided without expert review" in few.reason
    even = expert_guard(expert, [1.0, 0.0] * 20, 0.95)
    assert even.passed and even.verdict in ("non-inferior", "inconclusive")
    assert expert_guard(expert, [1.0] * 12 + [0.5] * 8, 0.95).verdict == "non-inferior"
    losing = expert_guard(expert, [0.0] * 18 + [1.0] * 2, 0.95)
    assert not losing.passed and losing.verdict == "inferior" and "FAIL expert_win_rate" in losing.reason


@pytest.mark.parametrize("body, message", [
    ("min_reviews = 0\n", "min_reviews"), ("margin = 0.7\n", "margin"), ("wait = 'yes'\n", "wait"),
    ("quorum = 3\n", "unknown keys"),
])
def test_a_malformed_expert_policy_names_its_key(tmp_path, body, message):
    with pytest.raises(PolicyError, match=message):
        Policy.load(_policy(tmp_path, body))


def test_the_gate_queues_blind_pairs_where_the_verdicts_differ(medqa_env):
    medqa_env(review_pairs_per_candidate="2")
    items = tuple(GeneralText(f"pubmedqa:{100 + n}", "", question=f"Does treatment {n} reduce pain?",
                              context=f"Treatment {n} reduced pain in 40 patients. It was safe.")
                  for n in range(4))
    suites = [Suite("pubmedqa", "pubmedqa", items)]
    cand = SuiteScores({}, {"label": ["yes", "no", "yes", "maybe"], "answer": ["It does.", None, None, None]})
    base = SuiteScores({}, {"label": ["yes", "yes", "no", "no"]})
    with session_scope() as s:
        added = gate.queue_disagreements(s, 7, 3, suites, {"candidate": {"pubmedqa": cand},
                                                           "baseline": {"pubmedqa": base}}, get_settings())
        assert added == 2  # 3 disagreements, 2 asked for
        pairs = s.exec(select(ReviewItem)).all()
        assert all(p.kind == "pair" and p.candidate_version_id == 7 and p.champion_version_id == 3 for p in pairs)
        assert {p.question for p in pairs} <= {f"Does treatment {n} reduce pain?" for n in (1, 2, 3)}
        for p in pairs:
            assert p.answer["verdict"] != p.other["verdict"]
            assert p.answer["evidence"] and p.answer["evidence"][0]["pmid"] in (101, 102, 103)
        again = gate.queue_disagreements(s, 7, 3, suites, {"candidate": {"pubmedqa": cand},
                                                           "baseline": {"pubmedqa": base}}, get_settings())
        assert again == 0  # a retried decision queues nothing twice
