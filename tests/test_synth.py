"""services.devkit.synth: deterministic, NLM-shaped, topic-specific synthetic PubMed XML."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date, timedelta

import pytest
from lxml import etree

from services.devkit.synth import TOPICS, generate_articles, pubmed_xml, write_corpus
from services.ingest.parser import ArticleRecord, iter_pubmed, parse_pubmed_bytes

_PARSER = etree.XMLParser(load_dtd=False, no_network=True, resolve_entities=False)
_LABELS = ["BACKGROUND", "METHODS", "RESULTS", "CONCLUSIONS"]


def _words(articles: list[dict]) -> Counter:
    return Counter(w for a in articles for w in re.findall(r"[a-z]{4,}", (a["title"] + " " + a["abstract"]).lower()))


def test_deterministic_by_seed():
    assert generate_articles(25, seed=4) == generate_articles(25, seed=4)
    assert pubmed_xml(generate_articles(25, seed=4)) == pubmed_xml(generate_articles(25, seed=4))
    assert generate_articles(25, seed=4) != generate_articles(25, seed=5)


def test_pmids_and_entrez_dates():
    start = date(2024, 3, 1)
    articles = generate_articles(200, seed=1, start_pmid=95_000_000, entrez_start=start, days=10)
    assert [a["pmid"] for a in articles] == list(range(95_000_000, 95_000_200))
    entrez = [a["entrez_date"] for a in articles]
    assert entrez == sorted(entrez)  # a later PMID never entered earlier
    assert start <= entrez[0] and entrez[-1] < start + timedelta(days=10)
    assert len(set(entrez)) > 5
    assert all(a["revised_date"] >= a["entrez_date"] for a in articles)


def test_abstracts_are_structured_and_sized():
    articles = generate_articles(300, seed=2)
    for a in articles:
        assert [label for label, _ in a["sections"]] == _LABELS
        assert 120 <= sum(len(text.split()) for _, text in a["sections"]) <= 250
        assert a["abstract"] == "\n".join(f"{label}: {text}" for label, text in a["sections"])
        assert a["title"].endswith(".") and a["title"][0].isupper()
        assert a["mesh_terms"] and a["keywords"] and a["publication_types"][0] == "Journal Article"
    # Varied rather than a handful of fixed texts.
    assert len({a["abstract"] for a in articles}) == len(articles)
    assert len({a["title"] for a in articles}) > 150
    assert {a["topic"] for a in articles} == set(TOPICS)
    assert len({a["pub_date_style"] for a in articles}) == 5


def test_topics_have_distinct_vocabulary():
    by_topic = {t: generate_articles(80, seed=9, topics=[t]) for t in TOPICS}
    for topic, articles in by_topic.items():
        assert {a["topic"] for a in articles} == {topic}
    # Journals and disease headings never cross topics.
    journals = {t: {a["journal"] for a in arts} for t, arts in by_topic.items()}
    assert sum(len(j) for j in journals.values()) == len(set().union(*journals.values()))
    # Two samples of one topic share more frequent words than two topics do: drift is visible.
    same = generate_articles(80, seed=10, topics=["cardiology"])

    def overlap(a: Counter, b: Counter) -> float:
        top_a, top_b = {w for w, _ in a.most_common(60)}, {w for w, _ in b.most_common(60)}
        return len(top_a & top_b) / 60

    cardio = _words(by_topic["cardiology"])
    assert overlap(cardio, _words(same)) > overlap(cardio, _words(by_topic["oncology"])) + 0.2


def test_unknown_topic_is_rejected():
    with pytest.raises(ValueError, match="unknown or empty topics"):
        generate_articles(3, topics=["dermatology"])


def test_xml_has_nlm_structure():
    articles = generate_articles(50, seed=5)
    xml = pubmed_xml(articles, delete_pmids=[1, 2, 3])
    assert xml.startswith(b"<?xml")
    tree = etree.fromstring(xml, _PARSER).getroottree()
    assert tree.docinfo.root_name == "PubmedArticleSet"
    assert tree.docinfo.system_url.startswith("https://dtd.nlm.nih.gov/")
    required = [
        "MedlineCitation/PMID",
        "MedlineCitation/DateRevised/Year",
        "MedlineCitation/Article/Journal/JournalIssue/PubDate",
        "MedlineCitation/Article/Journal/Title",
        "MedlineCitation/Article/ArticleTitle",
        "MedlineCitation/Article/Abstract/AbstractText[@Label='BACKGROUND']",
        "MedlineCitation/Article/Language",
        "MedlineCitation/Article/PublicationTypeList/PublicationType",
        "MedlineCitation/MeshHeadingList/MeshHeading/DescriptorName",
        "MedlineCitation/KeywordList/Keyword",
        "PubmedData/History/PubMedPubDate[@PubStatus='entrez']/Day",
    ]
    pubmed_articles = tree.xpath("/PubmedArticleSet/PubmedArticle")
    assert len(pubmed_articles) == 50
    for element in pubmed_articles:
        for path in required:
            assert element.find(path) is not None, path
    assert tree.xpath("/PubmedArticleSet/DeleteCitation/PMID/text()") == ["1", "2", "3"]
    # Inline markup appears in some records so the parser's flattening is exercised.
    for tag in ("i", "sup", "sub"):
        assert tree.xpath(f"count(//AbstractText/{tag})") > 0, tag
    assert tree.xpath("count(//PubDate/MedlineDate)") > 0


def test_generated_xml_parses_back():
    articles = generate_articles(30, seed=6)
    records = parse_pubmed_bytes(pubmed_xml(articles))
    assert [(r.pmid, r.title, r.abstract, r.entrez_date) for r in records] == [
        (a["pmid"], a["title"], a["abstract"], a["entrez_date"]) for a in articles
    ]


def test_write_corpus(tmp_path):
    paths = write_corpus(tmp_path / "corpus", files=3, per_file=15, seed=1, topics=["oncology", "neurology"])
    assert [p.name for p in paths] == ["synth0001.xml", "synth0002.xml", "synth0003.xml"]
    per_file = [[r for r in iter_pubmed(p) if isinstance(r, ArticleRecord)] for p in paths]
    assert [len(records) for records in per_file] == [15, 15, 15]
    pmids = [r.pmid for records in per_file for r in records]
    assert len(set(pmids)) == 45
    # Each file is a later window, like successive update files.
    for earlier, later in zip(per_file, per_file[1:], strict=False):
        assert max(r.entrez_date for r in earlier) < min(r.entrez_date for r in later)
        assert max(r.pmid for r in earlier) < min(r.pmid for r in later)
    assert write_corpus(tmp_path / "again", files=3, per_file=15, seed=1, topics=["oncology", "neurology"])[0] \
        .read_bytes() == paths[0].read_bytes()
