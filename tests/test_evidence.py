"""Evidence quotes (shared/evidence.py): biomedical sentence splitting, and supporting sentences quoted
verbatim. The example abstracts here are written for these tests."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from shared.evidence import MAX_QUOTE_CHARS, Quote, sentence_spans, supporting_quotes


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def assert_verbatim(quotes: list[Quote], text: str) -> None:
    for q in quotes:
        assert text[q.start:q.end] == q.text and q.text in text and q.text


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("Drugs were given, e.g. statins, i.e. lipid lowering ones. Outcomes improved.",
                 ["Drugs were given, e.g. statins, i.e. lipid lowering ones.", "Outcomes improved."], id="e.g.-i.e."),
    pytest.param("As Jones et al. reported, rates rose. Smith et al. (2004) saw none. See Fig. 3 and No. 7 below.",
                 ["As Jones et al. reported, rates rose.", "Smith et al. (2004) saw none.",
                  "See Fig. 3 and No. 7 below."], id="et-al-fig-no"),
    pytest.param("Drug A vs. placebo was tested in approx. 40 rats. Dr. Lee led it.",
                 ["Drug A vs. placebo was tested in approx. 40 rats.", "Dr. Lee led it."], id="vs-approx-dr"),
    pytest.param("The dose was 2.5 mg (P < .05). Risk fell (p = 0.03). It was 12.5% lower.",
                 ["The dose was 2.5 mg (P < .05).", "Risk fell (p = 0.03).", "It was 12.5% lower."], id="numbers"),
    pytest.param("Rates rose by 40%. Falls were rare (3.1%; 95% CI 1.2-4.0).",
                 ["Rates rose by 40%.", "Falls were rare (3.1%; 95% CI 1.2-4.0)."], id="percentages"),
    pytest.param("Two groups (one given drug A. The other none) were seen. It worked.",
                 ["Two groups (one given drug A. The other none) were seen.", "It worked."], id="parenthesised"),
    pytest.param("The effect (as expected.) was small. Then it rose!  Did it last? No.",
                 ["The effect (as expected.) was small.", "Then it rose!", "Did it last?", "No."], id="marks"),
    pytest.param("Mouse study of gene X\nBACKGROUND: Gene X is common.\nMETHODS: We bred 20 mice.\n"
                 "RESULTS: Gene X rose 2-fold.\nCONCLUSIONS: Gene X matters.",
                 ["Mouse study of gene X", "Gene X is common.", "We bred 20 mice.", "Gene X rose 2-fold.",
                  "Gene X matters."], id="label-lines"),
    pytest.param("A title.\nOBJECTIVE: To test it. MATERIALS AND METHODS: We tested it. RESULTS: It held.",
                 ["A title.", "To test it.", "We tested it.", "It held."], id="inline-labels"),
    pytest.param("A title\nMethods and results: We looked.\nConclusion: It helps.\nRESULTS:\nAll 5 improved.",
                 ["A title", "We looked.", "It helps.", "All 5 improved."], id="title-case-and-lone-labels"),
    pytest.param("HIV: a short review\nCD4 counts fell in 30 patients.",
                 ["HIV: a short review", "CD4 counts fell in 30 patients."], id="title-colon-is-no-label"),
    pytest.param("Cells were lysed. mRNA levels rose. p53 was lost. E. coli grew.\n\nA new line starts here",
                 ["Cells were lysed.", "mRNA levels rose.", "p53 was lost.", "E. coli grew.", "A new line starts here"],
                 id="lower-case-starts-and-newlines"),
    pytest.param("Seen at the M. D. Anderson Center. Vitamin D. Levels were 14. 1% lower.",
                 ["Seen at the M. D. Anderson Center.", "Vitamin D.", "Levels were 14. 1% lower."],
                 id="initials-and-split-decimal"),
    pytest.param("The sample was hard-wrapped\nacross two lines. Next one.",
                 ["The sample was hard-wrapped\nacross two lines.", "Next one."], id="soft-wrap"),
])
def test_sentence_splitter_hard_cases(text, expected):
    assert sentences(text) == expected


def test_spans_are_stripped_never_empty_and_never_cut_a_number():
    text = "  \nTitle.\n\n RESULTS:  \n . \nValues were 0.5, .05 and 1.25 (P < .001).   Others 3.14.\n\n"
    spans = sentence_spans(text)
    assert [text[s:e] for s, e in spans] == ["Title.", "Values were 0.5, .05 and 1.25 (P < .001).", "Others 3.14."]
    for s, e in spans:
        assert e > s and text[s:e] == text[s:e].strip()
    for number in re.finditer(r"\d*\.?\d+", text):
        assert any(s <= number.start() and number.end() <= e for s, e in spans), number.group()
    assert sentence_spans("") == [] and sentence_spans(" \n\t ") == []


ABSTRACT = (
    "Aspirin and stroke in older adults\n"
    "BACKGROUND: Stroke is a leading cause of disability in older adults.\n"
    "METHODS: We randomised 400 adults aged over 70 to aspirin or placebo for 2.5 years.\n"
    "RESULTS: Aspirin reduced the rate of stroke by 21% (P = .02). Bleeding was more common with aspirin.\n"
    "CONCLUSIONS: Low-dose aspirin lowers stroke risk in older adults."
)


def test_quotes_are_verbatim_best_first_and_in_text_order():
    quotes = supporting_quotes("Does aspirin reduce stroke in older adults?", 42, ABSTRACT, k=2)
    assert_verbatim(quotes, ABSTRACT)
    assert [q.text for q in quotes] == ["Aspirin reduced the rate of stroke by 21% (P = .02).",
                                        "Low-dose aspirin lowers stroke risk in older adults."]
    assert all(q.pmid == 42 for q in quotes) and quotes[0].start < quotes[1].start
    assert len(supporting_quotes("Does aspirin reduce stroke?", 42, ABSTRACT, k=1)) == 1
    assert supporting_quotes("Does aspirin reduce stroke?", 42, ABSTRACT, k=0) == []


def test_word_forms_match_through_the_stemmer():
    text = "Title line\nOur regimen achieved a reduction in falls. Weather was mild."
    (quote,) = supporting_quotes("Does the regimen reduce falling?", 1, text)
    assert quote.text == "Our regimen achieved a reduction in falls."


def test_no_quote_without_shared_content_words():
    assert supporting_quotes("Is the weather mild?", 1, ABSTRACT) == []
    assert supporting_quotes("What is it and how does it work?", 1, ABSTRACT) == []  # stopwords only


def test_rare_words_outrank_common_ones_and_findings_win_ties():
    text = ("A title\nInsulin was given to all. Insulin was dosed by weight. Insulin with metformin was tried.\n"
            "RESULTS: Insulin doses were stable.")
    # "metformin" occurs once, "insulin" everywhere: the metformin sentence is the best support.
    assert [q.text for q in supporting_quotes("Is insulin with metformin safe?", 1, text, k=1)] == \
        ["Insulin with metformin was tried."]
    tie = "A title\nBACKGROUND: Statins lower lipids.\nRESULTS: Statins lower lipids too.\nWe also ran other tests."
    assert [q.text for q in supporting_quotes("Do statins lower lipids?", 1, tie, k=1)] == ["Statins lower lipids too."]


def test_the_title_is_quoted_only_when_nothing_else_matches():
    text = "Vitamin C and colds\nWe followed 90 volunteers for one winter. Colds were as frequent with vitamin C."
    assert [q.text for q in supporting_quotes("Does vitamin C prevent colds?", 1, text, k=2)] == \
        ["Colds were as frequent with vitamin C."]
    only_title = "Vitamin C and colds\nWe followed 90 volunteers for one winter."
    assert [q.text for q in supporting_quotes("Does vitamin C prevent colds?", 1, only_title)] == \
        ["Vitamin C and colds"]


def test_overlong_sentences_are_skipped_not_cut():
    long_sentence = "Zinc was measured " + "and compared again " * 25 + "in every child."
    assert len(long_sentence) > MAX_QUOTE_CHARS
    text = f"A title\n{long_sentence} Zinc levels were low."
    assert [q.text for q in supporting_quotes("Is zinc compared in children?", 1, text, k=2)] == \
        ["Zinc levels were low."]


SHARED_DATA = os.environ.get("MEDQA_TEST_SHARED_DATA")
PUBMEDQA = Path(SHARED_DATA or ".") / "pubmedqa" / "pqal_trainval.json"
PUBMEDQA_MISSING = ("MEDQA_TEST_SHARED_DATA is not set" if not SHARED_DATA
                    else f"no PubMedQA items at {PUBMEDQA}" if not PUBMEDQA.is_file() else "")


@pytest.mark.data
@pytest.mark.skipif(bool(PUBMEDQA_MISSING), reason=PUBMEDQA_MISSING)
def test_real_pubmedqa_abstracts_get_verbatim_quotes():
    items = json.loads(PUBMEDQA.read_text())
    quoted = 0
    for pmid, item in items.items():
        text = "\n".join(item["CONTEXTS"])
        quotes = supporting_quotes(item["QUESTION"], int(pmid), text)
        assert_verbatim(quotes, text)
        assert len(quotes) <= 2 and all(len(q.text) <= MAX_QUOTE_CHARS for q in quotes)
        assert [q.start for q in quotes] == sorted(q.start for q in quotes)
        quoted += bool(quotes)
    assert quoted >= 0.95 * len(items), f"only {quoted} of {len(items)} items got a quote"


def test_term_coverage_counts_the_question_s_search_terms_in_the_text():
    from shared.evidence import term_coverage

    question = "Does metformin reduce the risk of cancer?"  # terms: metformin, reduce, risk, cancer
    assert term_coverage(question, "Metformin reduced cancer risk.") == 1.0
    assert term_coverage(question, "Diabetes raised the infection risk.") == 0.25
    assert term_coverage("What is it?", "Anything.") == 0.0  # no search terms: nothing can cover them
