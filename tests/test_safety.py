"""The referral rules (services/api/safety.py) and the off-topic probe set (shared/offtopic.py)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from services.api.safety import (
    DIAGNOSIS_MESSAGE,
    DOSAGE_MESSAGE,
    EMERGENCY_MESSAGE,
    TREATMENT_MESSAGE,
    Referral,
    referral,
)
from shared.offtopic import OFF_TOPIC_QUESTIONS

POSITIVE = {
    "personal_dosage": [
        "How much ibuprofen should I take?",
        "Can I take 2 tablets of paracetamol at once?",
        "What dose of amoxicillin should I give my son?",
        "Should I double my dose?",
        "Is 40 mg of atorvastatin too much for me?",
        "How many mg can I take?",
        "how often should i take my inhaler",
        "What dose for my 2-year-old?",
        "I'm on 20mg lisinopril, can I increase it?",
        "I missed a dose of my pill, what should I do?",
    ],
    "personal_diagnosis": [
        "Do I have diabetes?",
        "What is wrong with me?",
        "I have chest pain and a rash, what is it?",
        "Is my blood pressure of 150/95 normal?",
        "Could my headache be a tumour?",
        "Does my baby have jaundice?",
        "What\u2019s wrong with my knee?",
        "Am I pregnant?",
        "i have a fever and a cough",
        "My INR is 4.5, is that bad?",
        "I want to know if I have diabetes",
        "My son has a rash, should I be worried?",
    ],
    "personal_treatment": [
        "Should I stop taking my metformin?",
        "Should I go to the ER?",
        "Can I drink alcohol while taking antibiotics?",
        "Is it safe for me to take ibuprofen while pregnant?",
        "Should my daughter get the HPV vaccine?",
        "My dad is on warfarin, can he eat spinach?",
        "I think my wife has the flu, what should she take?",
        "Is my 3 year old too young for the flu vaccine?",
    ],
    "emergency": [
        "Am I having a heart attack?",
        "I want to kill myself",
        "I'm having suicidal thoughts, what can I do?",
        "My son took an overdose of paracetamol",
        "I have crushing chest pain right now",
        "I'm having chest pain now and it is spreading to my jaw",
        "My daughter swallowed a handful of pills",
        "I took too many of my sleeping pills",
        "My mother is having a stroke, what do I do?",
        "My husband is unconscious and won't wake up",
    ],
}

NEGATIVE = [
    # research-style questions: about a population, never about the asker
    "Does metformin reduce the risk of cancer in patients with type 2 diabetes?",
    "Is laparoscopic surgery safer than open surgery for appendicitis?",
    "Are statins associated with muscle pain in older adults?",
    "Should patients with atrial fibrillation take anticoagulants?",
    "Is suicidal ideation more common among adolescents on antidepressants?",
    "What is the risk of overdose with opioid prescriptions after surgery?",
    "Should we continue to offer second-look laparotomy in ovarian carcinoma?",
    "Is stage I lung cancer curable with surgery?",
    "Can troponin I levels predict mortality in pulmonary embolism?",
    "Does high-dose radiotherapy benefit palliative lung cancer patients?",
    "Is IM dosing of vitamin B12 better than oral dosing?",
    "Is ME/CFS associated with a high dose of antivirals?",
    # general knowledge, including general dosing: the boundary is "me"/"my", not the topic
    "What are the symptoms of diabetes?",
    "What is the recommended dose of vitamin D in older adults?",
    "What is the maximum daily dose of paracetamol for adults?",
    "Is chest pain in young adults usually cardiac?",
    "What causes headaches in children?",
    # politeness is not a personal question
    "Can you tell me the recommended dose of vitamin D for older adults?",
    "I wonder whether statins cause muscle pain.",
    "Could you explain to me how metformin works?",
    # everyday senses of medical words
    "Should I go to Japan in April?",
    "Should I keep an emergency fund?",
    "How do I bleed my radiator?",
    "Why does my gravy have lumps?",
    "Can I have a refund?",
    "Do I have to pay tax on my savings?",
    "Should I get a 5G phone?",
    "Can I use my tablet on the plane?",
    "What temperature should I set my thermostat to?",
    "I took all my savings out of the bank, should I invest?",
]


@pytest.mark.parametrize(("rule", "question"), [(r, q) for r, qs in POSITIVE.items() for q in qs])
def test_personal_questions_are_referred(rule: str, question: str) -> None:
    got = referral(question)
    assert got is not None, question
    assert got.rule == rule, question


@pytest.mark.parametrize("question", NEGATIVE)
def test_research_and_general_questions_are_not_referred(question: str) -> None:
    assert referral(question) is None


def test_matching_ignores_case() -> None:
    assert referral("HOW MUCH IBUPROFEN SHOULD I TAKE?") == referral("how much ibuprofen should i take?")
    assert referral("DO I HAVE DIABETES?") is not None


def test_each_rule_has_its_own_message_and_emergency_is_urgent() -> None:
    messages = {rule: referral(qs[0]).message for rule, qs in POSITIVE.items()}  # type: ignore[union-attr]
    assert messages == {"personal_dosage": DOSAGE_MESSAGE, "personal_diagnosis": DIAGNOSIS_MESSAGE,
                        "personal_treatment": TREATMENT_MESSAGE, "emergency": EMERGENCY_MESSAGE}
    assert len(set(messages.values())) == 4
    assert "emergency number" in EMERGENCY_MESSAGE and "crisis line" in EMERGENCY_MESSAGE
    for message in (DOSAGE_MESSAGE, DIAGNOSIS_MESSAGE, TREATMENT_MESSAGE):
        assert "doctor" in message and "crisis" not in message


def test_referral_is_frozen() -> None:
    got = referral("Do I have diabetes?")
    assert isinstance(got, Referral)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.rule = "other"  # type: ignore[misc]


@pytest.mark.timeout(120)  # a hang guard, not a speed goal: a backtracking regex would run for hours here
def test_long_questions_are_judged() -> None:
    # The API accepts questions up to api_max_question_chars (configurable to 100,000).
    expected = {"my " + "how much " * 11_000 + " should I take": "personal_dosage",
                "I have " + "chest pain " * 9_000: "personal_diagnosis",
                "my doctor " + "should I " * 12_000: None, "warfarin " + "can he " * 15_000: None}
    for question, rule in expected.items():
        got = referral(question)
        assert (got.rule if got else None) == rule


def test_offtopic_set_is_large_unique_and_never_referred() -> None:
    assert len(OFF_TOPIC_QUESTIONS) >= 60
    normalised = [" ".join(q.lower().split()) for q in OFF_TOPIC_QUESTIONS]
    assert len(set(normalised)) == len(normalised), "duplicate questions in OFF_TOPIC_QUESTIONS"
    assert "What is the capital of France?" in OFF_TOPIC_QUESTIONS
    assert all(q.strip() == q and q.endswith("?") for q in OFF_TOPIC_QUESTIONS)
    assert [q for q in OFF_TOPIC_QUESTIONS if referral(q) is not None] == []


@pytest.mark.data
def test_pubmedqa_research_questions_are_not_referred() -> None:
    root = os.environ.get("MEDQA_TEST_SHARED_DATA")
    if not root:
        pytest.skip("MEDQA_TEST_SHARED_DATA is unset: it names the folder holding pubmedqa/pqal_trainval.json")
    path = Path(root) / "pubmedqa" / "pqal_trainval.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing (MEDQA_TEST_SHARED_DATA={root})")
    questions = [row["QUESTION"] for row in json.loads(path.read_text(encoding="utf-8")).values()]
    assert len(questions) == 500
    referred = [(referral(q).rule, q) for q in questions if referral(q) is not None]  # type: ignore[union-attr]
    assert len(referred) <= len(questions) // 100, f"{len(referred)} research questions referred: {referred}"
