"""The evaluator's grounding suite (services/evaluator/grounding.py): abstention correctness and citation
precision of the QA API's evidence step, measured with the API's settings, stored and guarded like
every other suite, and runnable from `medqa score`."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import SHARED_DATA  # noqa: E402  (after the package imports, as pytest puts tests/ on the path)
from procs import MEDQA

from services.evaluator.gate import grounding_suite
from services.evaluator.judge import judge
from services.evaluator.suites import SuiteScores
from shared.corpora import GeneralText
from shared.offtopic import OFF_TOPIC_QUESTIONS
from shared.policy import Policy
from shared.settings import get_settings

# Two studies written for this test: each question has one abstract that answers it.
ANSWERABLE = [
    GeneralText("pubmedqa:101", "", question="Does metformin reduce the risk of cancer in adults with type 2 diabetes?",
                context="BACKGROUND: Metformin may lower cancer risk.\nMETHODS: We followed 12,400 adults with type 2 "
                        "diabetes for six years.\nRESULTS: Metformin users had fewer incident cancers than "
                        "sulfonylurea users (hazard ratio 0.78).\nCONCLUSIONS: Metformin use was associated with a "
                        "lower risk of cancer in adults with type 2 diabetes."),
    GeneralText("pubmedqa:102", "", question="Is early mobilisation after hip fracture surgery associated with "
                                            "shorter hospital stay?",
                context="BACKGROUND: Patients often stay in bed for days after hip fracture surgery.\nMETHODS: "
                        "In 2,300 older adults we compared mobilisation on the first day after surgery with later "
                        "mobilisation.\nRESULTS: Early mobilisation shortened the hospital stay by 2.1 days.\n"
                        "CONCLUSIONS: Early mobilisation after hip fracture surgery was associated with a shorter "
                        "hospital stay."),
]


def _run(**settings: str) -> SuiteScores:
    suite = grounding_suite(get_settings(), ANSWERABLE, len(ANSWERABLE))
    assert suite is not None and [i.item_id for i in suite.items] == [
        "pubmedqa:101", "pubmedqa:102", "offtopic:0", "offtopic:1"]
    return suite.run(None, None)  # the model plays no part


def test_answerable_questions_cite_their_abstract_and_off_topic_ones_abstain(medqa_env):
    result = _run()
    assert result.items["abstained_ok"] == [1, 1, 1, 1]
    # Each cites its own abstract (MedQuAD answers about diabetes may be cited beside it: precision is a
    # lower bound); off-topic questions cite nothing, so they have no precision.
    own = result.items["precision"][:2]
    assert all(p is not None and p >= 1 / 3 for p in own) and result.items["precision"][2:] == [None, None]
    assert result.metrics == {"grounding_abstention_acc": 1.0, "grounding_answer_rate": 1.0,
                              "grounding_abstention_rate": 1.0, "grounding_citation_precision": sum(own) / 2}


def test_a_floor_that_abstains_on_everything_fails_the_policys_bound(medqa_env, tmp_path):
    medqa_env(api_min_relevance="0.99")  # a bad setting: nothing is relevant enough
    scores = _run()
    assert scores.items["abstained_ok"] == [0, 0, 1, 1] and scores.metrics["grounding_answer_rate"] == 0.0
    (tmp_path / "policy.toml").write_text('target = "grounding_abstention_acc"\ntarget_test = "non-inferiority"\n'
                                          '[metrics.grounding_abstention_acc]\ndirection = "higher"\nmin = 0.9\n'
                                          'margin = 0.05\n')
    policy = Policy.load(tmp_path / "policy.toml")
    verdict = judge(policy, {"grounding": scores}, {"grounding": scores})
    assert not verdict.passed
    assert any("FAIL grounding_abstention_acc=0.5 min 0.9" in g.reason for g in verdict.guards), verdict.guards


def test_the_suite_changes_with_the_serving_settings(medqa_env):
    before = grounding_suite(get_settings(), ANSWERABLE, 2)
    medqa_env(api_retriever="hybrid")
    after = grounding_suite(get_settings(), ANSWERABLE, 2)
    assert before is not None and after is not None and before.hash != after.hash  # never compared as one test
    assert after.run(None, None).items["abstained_ok"] == [1, 1, 1, 1]  # the lexical half runs on its own index


def test_off_topic_items_come_from_the_probe_set(medqa_env):
    suite = grounding_suite(get_settings(), ANSWERABLE, 2)
    assert suite is not None
    assert [i.question for i in suite.items[2:]] == list(OFF_TOPIC_QUESTIONS[:2])
    assert grounding_suite(get_settings(), [], 5) is None


@pytest.mark.data
@pytest.mark.slow
def test_medqa_score_runs_the_grounding_suite_on_real_pubmedqa(medqa_env, tmp_path):
    if not (SHARED_DATA / "pubmedqa").is_dir():
        pytest.skip("needs ../shared/data (MEDQA_TEST_SHARED_DATA)")
    medqa_env(eval_grounding_items="30")
    out = subprocess.run([MEDQA, "score", "base", "--suite", "grounding", "--json"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["items"] == 60 and doc["suite"] == "grounding"
    metrics = doc["metrics"]
    assert metrics["grounding_abstention_rate"]["value"] >= 0.95
    assert metrics["grounding_answer_rate"]["value"] >= 0.8
    low, high = metrics["grounding_abstention_acc"]["low"], metrics["grounding_abstention_acc"]["high"]
    assert low <= metrics["grounding_abstention_acc"]["value"] <= high
