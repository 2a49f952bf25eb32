"""MEDLINE text records, format dispatch (iter_records) and retraction fields in both formats.

Real files under ../shared/data are read in place and checked against an independent reading
(Bio.Medline, plain lxml XPath, the folder's SOURCE.md); no text from them is copied here.
"""

from __future__ import annotations

import gzip
import io
import re
import time
from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from services.devkit.synth import generate_articles, medline_text, pubmed_xml, retract, retraction_notice
from services.ingest.medline import parse_medline, parse_medline_bytes
from services.ingest.parser import (
    ArticleRecord,
    PubmedParseError,
    iter_pubmed,
    iter_records,
    parse_pubmed_bytes,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MEDLINE = DATA / "biopython_entrez" / "Medline"
UPDATES = DATA / "pubmed_update_samples"
ENTREZ = DATA / "biopython_entrez" / "Entrez"
needs_medline = pytest.mark.skipif(not MEDLINE.is_dir(), reason=f"MEDLINE text samples not present at {MEDLINE}")
needs_updates = pytest.mark.skipif(not UPDATES.is_dir(), reason=f"real NLM samples not present at {UPDATES}")
needs_entrez = pytest.mark.skipif(not ENTREZ.is_dir(), reason=f"Biopython Entrez replies not present at {ENTREZ}")
FIELDS = ("pmid", "title", "abstract", "journal", "pub_date", "entrez_date", "revised_date", "mesh_terms",
          "keywords", "language", "publication_types", "retracted", "retraction_of")


def _corpus() -> list[dict]:
    """Synthetic articles with every retraction shape: flagged by type, linked only, and notices."""
    articles = generate_articles(120, seed=13, retracted=[90_000_004])
    articles[7] = retract(articles[7], notice_pmid=95_000_001, flag_type=False)  # link only
    articles[9] = retract(articles[9], notice_pmid=95_000_001)  # type and link
    notices = [retraction_notice(90_000_004, pmid=95_000_000, title=articles[4]["title"]),
               retraction_notice([90_000_007, 90_000_009], pmid=95_000_001, seed=1)]
    return articles + notices


def _assert_matches(articles: list[dict], records: list) -> None:
    assert len(records) == len(articles)
    for article, record in zip(articles, records, strict=True):
        assert isinstance(record, ArticleRecord)
        for field in FIELDS:
            assert getattr(record, field) == article[field], (article["pmid"], field)


def _medline(text: str) -> bytes:
    """Hand-written MEDLINE lines (our own words), with the 6-column continuation indent."""
    return text.replace("|", " " * 6).encode()


# --- synthetic round trips --------------------------------------------------------------------

def test_synthetic_medline_round_trip_keeps_every_field():
    articles = _corpus()
    _assert_matches(articles, parse_medline_bytes(medline_text(articles)))


def test_both_formats_give_identical_records():
    articles = _corpus()
    assert parse_medline_bytes(medline_text(articles)) == parse_pubmed_bytes(pubmed_xml(articles))


def test_retraction_fields_round_trip_through_xml():
    articles = _corpus()
    records = parse_pubmed_bytes(pubmed_xml(articles))
    _assert_matches(articles, records)
    assert {r.pmid for r in records if r.retracted} == {90_000_004, 90_000_007, 90_000_009}
    assert {r.pmid: r.retraction_of for r in records if r.retraction_of} == {
        95_000_000: (90_000_004,), 95_000_001: (90_000_007, 90_000_009)}


def test_iter_records_reads_paths_gzip_and_odd_chunks(tmp_path):
    articles = _corpus()
    text = medline_text(articles)
    expected = parse_medline_bytes(text)
    (tmp_path / "a.txt").write_bytes(text)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(text))
    assert list(iter_records(tmp_path / "a.txt")) == expected
    assert list(iter_records(str(tmp_path / "a.txt.gz"))) == expected
    assert list(iter_records(io.BytesIO(b"\n\n" + text))) == expected
    # Chunk borders inside lines, inside multi-byte characters and on blank lines change nothing.
    chunks = [text[i:i + 7] for i in range(0, len(text), 7)]
    assert list(parse_medline(chunks)) == expected
    # XML goes through the same entry point unchanged.
    xml = pubmed_xml(articles)
    assert list(iter_records(io.BytesIO(gzip.compress(xml)))) == parse_pubmed_bytes(xml)


def test_synth_rejects_retracting_unknown_pmids():
    with pytest.raises(ValueError, match="not among"):
        generate_articles(3, retracted=[1])
    with pytest.raises(ValueError, match="needs"):
        retract(generate_articles(1)[0], flag_type=False)


def test_old_positional_constructor_still_works():
    record = ArticleRecord(1, "T", "A", "J", None, None, None, (), (), "eng", ())
    assert (record.retracted, record.retraction_of) == (False, ())


# --- field rules on hand-written records ------------------------------------------------------

def test_medline_field_rules():
    data = _medline(
        "PMID- 42\n"
        "LR  - 20200131\n"
        "DP  - 1998 Dec-1999 Jan\n"
        "TI  -\n"
        "TT  - Ein   Titel\n|auf Deutsch.\n"
        "AB  - OBJECTIVE: To test the reader. PATIENTS AND METHODS: Nine mice, see Fig. A: top. RESULTS:\n"
        "|It works.\n"
        "LA  - ger\n"
        "LA  - eng\n"
        "PT  - Journal Article\n"
        "TA  - Test J\n"
        "MH  - *Mice\n"
        "MH  - Reading/*methods/standards\n"
        "MH  - Long Heading With\n|Continuation\n"
        "OT  - first keyword\n"
        "OT  - \n"
        "RIN - Test J. 2021. PMID: 77\n"
        "CRDT- 1999/01/05 00:00\n"
        "\n"
        "PMID- 43\n"
        "PT  - Retraction of Publication\n"
        "ROF - Test J. 1999. PMID: 42\n"
        "ROF - Test J. 1999. PMID: 41 and PMID: 40\n"
        "ROF - An entry without a PMID\n"
        "DA  - 20000102\n"
    )
    first, second = parse_medline_bytes(data)
    assert first.pmid == 42 and first.title == "Ein Titel auf Deutsch."  # TT when TI is empty
    assert first.abstract == ("OBJECTIVE: To test the reader.\nPATIENTS AND METHODS: Nine mice, see Fig. A: top."
                              "\nRESULTS: It works.")
    assert (first.pub_date, first.entrez_date, first.revised_date) == (date(1998, 12, 1), date(1999, 1, 5),
                                                                       date(2020, 1, 31))
    assert first.mesh_terms == ("Mice", "Reading", "Long Heading With Continuation")
    assert (first.keywords, first.language, first.journal) == (("first keyword",), "ger", "Test J")
    assert first.retracted and first.retraction_of == ()  # RIN alone marks it
    assert not second.retracted and second.retraction_of == (42, 41, 40)
    assert second.entrez_date == date(2000, 1, 2)  # DA when there is no EDAT or CRDT


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"^<stream>: empty input"),
        (b"Hello, this is plain text.\n", r"^<stream>: neither PubMed XML nor MEDLINE text \(starts with b'Hello"),
        (b'{"esearchresult": {"count": "0"}}', "neither PubMed XML nor MEDLINE text"),
        (b"\x00\x01\x02binary", "neither PubMed XML nor MEDLINE text"),
        (b"PMID- 1\nTI  - ok\nno tag here\n", r"^<stream>: line 3 is not MEDLINE text: 'no tag here'"),
        (b"PMID- 1\n\nTI  - orphan\n", r"^<stream>: record at line 3 starts with TI, not PMID"),
        (b"PMID- 0\n", r"^<stream>: bad PMID '0' in the record at line 1"),
        (b"PMID- 99999999999\n", "bad PMID"),
        (b"PMID- 1\nTI  - a\x00b\n", r"^<stream>: line 2 holds control characters"),
        (b"PMID- 1\nTI  - caf\xe9\n", r"^<stream>: line 2 is not UTF-8 text"),
        (b"PMID- 1\nAB  - cut in the mid", r"^<stream>: truncated MEDLINE text \(line 2 has no line end\)"),
        (b"PMID- 1\nAB  - " + b"x" * 70_000 + b"\n", r"^<stream>: line 2 is over \d+ bytes"),
        (b"PMID- 1\n" + b"AB  - x\n" * 20_001, r"^<stream>: the record at line 1 runs over 20000 lines"),
    ],
)
def test_non_medline_input_is_rejected(data, message):
    with pytest.raises(PubmedParseError, match=message):
        list(iter_records(io.BytesIO(data)))


def test_long_values_cost_linear_time():
    # Pieces are joined once per value: 15,000 continuation lines must not take quadratic time.
    data = b"PMID- 1\nAB  - start\n" + b"      more words on a continuation line\n" * 15_000
    started = time.perf_counter()
    (record,) = parse_medline_bytes(data)
    assert time.perf_counter() - started < 2.0
    assert record.abstract.count("more words") == 15_000


def test_medline_given_to_the_xml_only_reader_names_the_format():
    with pytest.raises(PubmedParseError, match="MEDLINE text, not PubMed XML"):
        list(iter_pubmed(io.BytesIO(medline_text(generate_articles(1)))))


# --- real files (../shared/data) -------------------------------------------------------------

def _source_counts() -> dict[str, tuple[int, list[int]]]:
    """Medline/ rows of SOURCE.md: file -> (records, PMIDs listed)."""
    rows = {}
    for line in (MEDLINE.parent / "SOURCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].endswith(".txt"):
            count = int(cells[1].split()[0])
            rows[cells[0]] = (count, [int(p) for p in re.findall(r"\d{6,}", cells[1])])
    return rows


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.data
@needs_medline
def test_every_medline_file_parses_and_agrees_with_biopython():
    from Bio import Medline

    table = _source_counts()
    files = sorted(MEDLINE.glob("*.txt"))
    assert {p.name for p in files} == set(table) and files
    for path in files:
        records = list(iter_records(path))
        with path.open(encoding="utf-8") as handle:
            expected = list(Medline.parse(handle))
        count, pmids = table[path.name]
        assert len(records) == len(expected) == count, path.name
        assert [r.pmid for r in records] == [int(e["PMID"]) for e in expected] == pmids, path.name
        for record, bio in zip(records, expected, strict=True):
            assert record.title == _words(bio["TI"])
            assert _words(record.abstract) == _words(bio.get("AB", ""))
            assert record.journal == bio["JT"]
            assert record.language == bio["LA"][0]
            assert record.publication_types == tuple(bio["PT"])
            assert record.mesh_terms == tuple(m.split("/")[0].lstrip("*") for m in bio.get("MH", []))
            assert record.entrez_date == date(*map(int, bio["EDAT"].split()[0].split("/")))
            assert record.pub_date is not None and record.pub_date.year == int(bio["DP"][:4])
            assert not record.retracted and record.retraction_of == ()


@pytest.mark.data
@needs_medline
def test_real_medline_known_fields(tmp_path):
    (record,) = iter_records(MEDLINE / "pubmed_result1.txt")
    assert (record.pmid, record.pub_date, record.entrez_date, record.revised_date) == (
        12230038, date(2002, 9, 1), date(2002, 9, 17), date(2004, 11, 17))
    # Structured abstracts keep their labels, one section a line, as the XML reader gives them.
    sections = next(iter_records(MEDLINE / "pubmed_result2.txt")).abstract.split("\n")
    assert [s.split(":")[0] for s in sections] == ["BACKGROUND", "RESULTS", "CONCLUSION"]
    data = (MEDLINE / "pubmed_result2.txt").read_bytes()
    (tmp_path / "r.gz").write_bytes(gzip.compress(data))
    assert list(iter_records(tmp_path / "r.gz")) == list(iter_records(MEDLINE / "pubmed_result2.txt"))
    with pytest.raises(PubmedParseError, match=r"truncated MEDLINE text"):
        parse_medline_bytes(data[: len(data) // 2].rstrip(b"\n") + b" cut", name="cut.txt")


def _xpath_retractions(path: Path) -> dict[int, tuple[bool, tuple[int, ...]]]:
    tree = etree.parse(str(path), etree.XMLParser(load_dtd=False, no_network=True, resolve_entities=False))
    out = {}
    for mc in tree.xpath("/PubmedArticleSet/PubmedArticle/MedlineCitation"):
        links = "CommentsCorrectionsList/CommentsCorrections"
        retracted = (bool(mc.xpath("Article/PublicationTypeList/PublicationType[.='Retracted Publication']"))
                     or bool(mc.xpath(f"{links}[@RefType='RetractionIn']")))
        of = tuple(int(p) for p in mc.xpath(f"{links}[@RefType='RetractionOf']/PMID/text()"))
        out[int(mc.findtext("PMID"))] = (retracted, of)
    return out


@pytest.mark.data
@needs_updates
def test_nlm_samples_retractions_agree_with_xpath_and_dispatch_changes_nothing():
    retracted = notices = 0
    for path in sorted(UPDATES.glob("*/*.xml")):
        records = list(iter_records(path))
        assert records == list(iter_pubmed(path)), path.name
        got = {r.pmid: (r.retracted, r.retraction_of) for r in records if isinstance(r, ArticleRecord)}
        assert got == _xpath_retractions(path), path.name
        retracted += sum(flag for flag, _ in got.values())
        notices += sum(bool(of) for _, of in got.values())
    assert retracted >= 1 and notices >= 1  # the samples do hold both kinds


@pytest.mark.data
@needs_entrez
def test_entrez_replies_through_dispatch():
    with pytest.raises(PubmedParseError, match="HTML page"):
        list(iter_records(ENTREZ / "pubmed3.html"))
    with pytest.raises(PubmedParseError, match="got eSearchResult"):
        list(iter_records(ENTREZ / "esearch1.xml"))
    assert [r.pmid for r in iter_records(ENTREZ / "pubmed2.xml")] == [11748933, 11700088]
