"""The QA miner on made-up abstracts, and the labeller's rules."""

import pytest

from services.ingest.mining import PRECISION, RULE_VERSION, label_conclusion, mine, split_conclusion

STRUCTURED = ("BACKGROUND: Zinc lozenges are sold for colds.\n"
              "METHODS: We randomised 200 adults to zinc or placebo.\n"
              "RESULTS: Colds lasted 4.1 days with zinc and 6.0 days with placebo.\n"
              "CONCLUSIONS: Zinc lozenges significantly shortened the common cold. They were well tolerated.")


def test_a_question_title_with_a_conclusion_becomes_an_item():
    item = mine(17, "Do zinc lozenges shorten the common cold?", STRUCTURED)
    assert item is not None
    assert (item.pmid, item.question, item.decision) == (17, "Do zinc lozenges shorten the common cold?", "yes")
    assert item.long_answer == "Zinc lozenges significantly shortened the common cold. They were well tolerated."
    assert "CONCLUSIONS" not in item.context and "Zinc lozenges significantly" not in item.context
    assert item.context.startswith("BACKGROUND: Zinc") and item.context.endswith("placebo.")
    assert item.answer.endswith("\nAnswer: yes") and item.confidence == PRECISION["yes"]
    assert item.rule_version == RULE_VERSION


@pytest.mark.parametrize("title, abstract", [
    ("Zinc lozenges and the common cold.", STRUCTURED),  # the title is not a question
    ("Do zinc lozenges shorten the common cold?", "Zinc was given to 200 adults. Colds were shorter."),  # unstructured
    ("Do zinc lozenges shorten the common cold?", "BACKGROUND: Zinc.\nRESULTS: Shorter colds."),  # no conclusion
    ("Do zinc lozenges shorten the common cold?", "CONCLUSIONS: Zinc shortened colds."),  # no context left
    ("Is zinc useful?", STRUCTURED.replace("significantly shortened", "may shorten")),  # hedged: abstains
])
def test_what_does_not_qualify_yields_nothing(title, abstract):
    assert mine(1, title, abstract) is None


@pytest.mark.parametrize("conclusion, label", [
    ("Zinc did not shorten colds.", "no"),
    ("There was no significant difference between the groups.", "no"),
    ("Screening failed to reduce mortality.", "no"),
    ("Statins are not associated with dementia.", "no"),
    ("The score is a reliable predictor of outcome.", "yes"),
    ("Early surgery improved survival.", "yes"),
    ("Exercise was associated with lower blood pressure.", "yes"),
    ("Metformin may reduce the risk.", None),  # hedged
    ("Further studies are needed to tell whether it did not help.", None),  # hedged, even when negated
    ("We describe the cohort.", None),  # no finding stated
    ("Early surgery improved survival. It may not suit the frail.", "yes"),  # the first sentence decides
])
def test_the_labeller_reads_the_first_sentence(conclusion, label):
    assert label_conclusion(conclusion) == label


def test_an_unlabelled_tail_after_the_conclusion_belongs_to_it_and_later_sections_stay_context():
    abstract = ("OBJECTIVE: To test aspirin.\nCONCLUSION: Aspirin did not prevent migraine.\nIt was safe.\n"
                "TRIAL REGISTRATION: NCT0001.")
    context, conclusion = split_conclusion(abstract)
    assert conclusion == "Aspirin did not prevent migraine. It was safe."
    assert context == "OBJECTIVE: To test aspirin.\nTRIAL REGISTRATION: NCT0001."
    assert mine(3, "Does aspirin prevent migraine?", abstract).decision == "no"
