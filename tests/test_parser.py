"""services.ingest.parser on our own synthetic XML and, where ../shared/data exists, on real NLM files.

Real files are read in place and compared with an independent lxml XPath reading; no text from
them is copied into the repo.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from services.devkit.synth import generate_articles, pubmed_xml
from services.ingest.parser import (
    ArticleRecord,
    DeleteRecord,
    PubmedParseError,
    iter_pubmed,
    parse_pubmed_bytes,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UPDATES = DATA / "pubmed_update_samples"
ENTREZ = DATA / "biopython_entrez" / "Entrez"
needs_updates = pytest.mark.skipif(not UPDATES.is_dir(), reason=f"real NLM samples not present at {UPDATES}")
needs_entrez = pytest.mark.skipif(not ENTREZ.is_dir(), reason=f"Biopython Entrez replies not present at {ENTREZ}")
_XPATH_PARSER = etree.XMLParser(load_dtd=False, no_network=True, resolve_entities=False)


def _articles(records: list) -> list[ArticleRecord]:
    return [r for r in records if isinstance(r, ArticleRecord)]


def _record_xml(citation: str, pubmed_data: str = "") -> bytes:
    """A one-article PubmedArticleSet around hand-written MedlineCitation content."""
    return (
        "<?xml version='1.0' encoding='UTF-8'?><PubmedArticleSet><PubmedArticle>"
        f"<MedlineCitation><PMID Version='1'>42</PMID>{citation}</MedlineCitation>{pubmed_data}"
        "</PubmedArticle></PubmedArticleSet>"
    ).encode()


def _with_pub_date(pub_date: str) -> ArticleRecord:
    xml = _record_xml(f"<Article><Journal><JournalIssue><PubDate>{pub_date}</PubDate></JournalIssue>"
                      "<Title>J Test</Title></Journal><ArticleTitle>T</ArticleTitle></Article>")
    (record,) = parse_pubmed_bytes(xml)
    assert isinstance(record, ArticleRecord)
    return record


# --- synthetic round trip and structure -------------------------------------------------------

def test_synthetic_round_trip_keeps_every_field():
    articles = generate_articles(60, seed=7)
    records = parse_pubmed_bytes(pubmed_xml(articles, delete_pmids=[11, 12]), name="synth")
    assert records[-1] == DeleteRecord(pmids=(11, 12))
    parsed = _articles(records)
    assert len(parsed) == 60
    for article, record in zip(articles, parsed, strict=True):
        for field in ("pmid", "title", "abstract", "journal", "pub_date", "entrez_date", "revised_date",
                      "mesh_terms", "keywords", "language", "publication_types"):
            assert getattr(record, field) == article[field], (article["pmid"], field)


def test_inline_markup_and_mathml_become_plain_text():
    mathml = """<mml:math xmlns:mml="http://www.w3.org/1998/Math/MathML">
        <mml:msub>
          <mml:mi>x</mml:mi>
          <mml:mn>1</mml:mn>
        </mml:msub>
      </mml:math>"""
    xml = _record_xml(
        "<Article><ArticleTitle>Effect of <i>Escherichia</i>   <b>coli</b> on CD4<sup>+</sup> cells"
        "</ArticleTitle><Abstract>"
        f"<AbstractText Label='RESULTS'>Mean HbA<sub>1c</sub> fell (<i>P</i> &lt; 0.01); {mathml} rose."
        "</AbstractText><AbstractText>Unlabelled  tail\n text.</AbstractText>"
        "<CopyrightInformation>Not abstract text.</CopyrightInformation></Abstract></Article>"
    )
    (record,) = parse_pubmed_bytes(xml)
    assert record.title == "Effect of Escherichia coli on CD4+ cells"
    # Pretty-printed MathML is compacted, not spread out as 'x 1'.
    assert record.abstract == "RESULTS: Mean HbA1c fell (P < 0.01); x1 rose.\nUnlabelled tail text."


def test_synthetic_markup_is_flattened():
    articles = generate_articles(40, seed=3)
    xml = pubmed_xml(articles)
    assert b"<i>" in xml and b"<sup>" in xml  # the generator really exercises the markup path
    for article, record in zip(articles, _articles(parse_pubmed_bytes(xml)), strict=True):
        assert "<" not in record.title
        assert record.abstract == article["abstract"]


@pytest.mark.parametrize(
    ("pub_date", "expected"),
    [
        ("<Year>2019</Year><Month>Dec</Month><Day>5</Day>", date(2019, 12, 5)),
        ("<Year>2019</Year><Month>03</Month>", date(2019, 3, 1)),
        ("<Year>2019</Year>", date(2019, 1, 1)),
        ("<Year>1990</Year><Season>Spring</Season>", date(1990, 3, 1)),
        ("<Year>2019</Year><Month>Feb</Month><Day>30</Day>", date(2019, 2, 1)),
        ("<MedlineDate>1998 Dec-1999 Jan</MedlineDate>", date(1998, 12, 1)),
        ("<MedlineDate>2019 May - Jun</MedlineDate>", date(2019, 5, 1)),
        ("<MedlineDate>2000 Spring</MedlineDate>", date(2000, 3, 1)),
        ("<MedlineDate>1975-1976</MedlineDate>", date(1975, 1, 1)),
        ("<MedlineDate>n.d.</MedlineDate>", None),
    ],
)
def test_pub_date_forms(pub_date, expected):
    assert _with_pub_date(pub_date).pub_date == expected


def test_medline_citation_set_falls_back_to_date_created():
    xml = b"""<?xml version="1.0"?>
<MedlineCitationSet>
  <MedlineCitation Owner="NLM" Status="MEDLINE">
    <PMID>1001</PMID>
    <DateCreated><Year>2015</Year><Month>03</Month><Day>04</Day></DateCreated>
    <DateRevised><Year>2016</Year><Month>01</Month><Day>02</Day></DateRevised>
    <Article><Journal><Title>Old Journal</Title></Journal><ArticleTitle>Old record</ArticleTitle>
      <Language>eng</Language><Language>ger</Language></Article>
  </MedlineCitation>
  <DeleteCitation><PMID>5</PMID></DeleteCitation>
</MedlineCitationSet>"""
    record, deleted = parse_pubmed_bytes(xml)
    assert (record.pmid, record.journal, record.abstract) == (1001, "Old Journal", "")
    assert record.entrez_date == date(2015, 3, 4)
    assert record.revised_date == date(2016, 1, 2)
    assert record.language == "eng"
    assert deleted == DeleteRecord(pmids=(5,))


def test_content_hash_ignores_case_and_spacing():
    a = ArticleRecord(1, "A  Title", "Some\ntext", "J", None, None, None, (), (), "eng", ())
    b = ArticleRecord(2, "a title", "some   TEXT", "K", None, None, None, (), (), "eng", ())
    c = ArticleRecord(3, "a title", "other text", "J", None, None, None, (), (), "eng", ())
    assert a.content_hash == b.content_hash != c.content_hash
    assert re.fullmatch(r"[0-9a-f]{64}", a.content_hash)


def test_book_articles_are_skipped():
    xml = b"<PubmedArticleSet><PubmedBookArticle><BookDocument/></PubmedBookArticle></PubmedArticleSet>"
    assert parse_pubmed_bytes(xml) == []


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"  \n\t "])
def test_empty_input(data):
    with pytest.raises(PubmedParseError, match=r"^empty\.xml: empty input"):
        parse_pubmed_bytes(data, name="empty.xml")


def test_truncated_xml_keeps_earlier_records_then_raises():
    xml = pubmed_xml(generate_articles(10, seed=1))
    cut = xml[: xml.index(b"<PMID", len(xml) // 2) + 20]
    seen = []
    with pytest.raises(PubmedParseError, match=r"^<stream>: malformed or truncated XML at line \d+"):
        for record in iter_pubmed(io.BytesIO(cut)):
            seen.append(record.pmid)
    assert 0 < len(seen) < 10


def test_non_article_and_html_roots_are_rejected():
    with pytest.raises(PubmedParseError, match="expected PubmedArticleSet or MedlineCitationSet, got eSearchResult"):
        parse_pubmed_bytes(b"<eSearchResult><Count>0</Count></eSearchResult>")
    with pytest.raises(PubmedParseError, match="HTML"):
        parse_pubmed_bytes(b"<!DOCTYPE html><html><body><p>Service unavailable<br></body></html>")


def test_bad_pmid_names_the_source():
    with pytest.raises(PubmedParseError, match=r"^x\.xml: bad or missing PMID 'abc'"):
        parse_pubmed_bytes(b"<PubmedArticleSet><DeleteCitation><PMID>abc</PMID></DeleteCitation>"
                           b"</PubmedArticleSet>", name="x.xml")


def test_entities_are_not_expanded():
    # An external entity would read a local file; the parser must leave it unresolved.
    xml = (b'<?xml version="1.0"?><!DOCTYPE PubmedArticleSet [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>'
           + _record_xml("<Article><ArticleTitle>Title &xxe; end</ArticleTitle></Article>").split(b"?>", 1)[1])
    (record,) = parse_pubmed_bytes(xml)
    assert record.title == "Title end"


def test_missing_file_raises_parse_error(tmp_path):
    with pytest.raises(PubmedParseError, match="cannot open"):
        list(iter_pubmed(tmp_path / "absent.xml"))


# --- sources: paths, gzip, streams -------------------------------------------------------------

def test_gzip_path_and_stream(tmp_path):
    articles = generate_articles(5, seed=2)
    xml = pubmed_xml(articles)
    path = tmp_path / "batch.xml.gz"
    path.write_bytes(gzip.compress(xml))
    expected = [a["pmid"] for a in articles]
    assert [r.pmid for r in iter_pubmed(path)] == expected
    assert [r.pmid for r in iter_pubmed(str(path))] == expected
    assert [r.pmid for r in iter_pubmed(io.BytesIO(gzip.compress(xml)))] == expected
    # A gzip cut short is reported as a parse error, not as a bare EOFError.
    with pytest.raises(PubmedParseError, match="batch.xml.gz"):
        list(iter_pubmed(_write(tmp_path / "batch.xml.gz", gzip.compress(xml)[:300])))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class _CountingReader(io.RawIOBase):
    """A binary stream that records how far the parser has read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        self.consumed += len(chunk)
        return chunk


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_streams_thousands_of_articles_lazily():
    n = 3000
    data = pubmed_xml(generate_articles(n, seed=11))
    reader = _CountingReader(data)
    records = iter_pubmed(reader)
    first = next(records)
    assert first.pmid == 90_000_000
    assert reader.consumed < len(data) // 10  # the first record came before the file was read

    # Memory stays flat: a parser that kept its tree would grow by tens of MiB on ~18 MiB of XML.
    on_linux = Path("/proc/self/statm").exists()
    start = _rss_mib() if on_linux else 0.0
    growth = 0.0
    count = 1
    for count, _record in enumerate(records, start=2):
        if on_linux and count % 250 == 0:
            growth = max(growth, _rss_mib() - start)
    assert count == n
    assert reader.consumed == len(data)
    assert growth < 15, f"resident memory grew by {growth:.1f} MiB while streaming"


# --- real NLM samples (../shared/data) ---------------------------------------------------------

def _source_table() -> dict[str, dict]:
    """Per-file facts from pubmed_update_samples/SOURCE.md, read at test time."""
    rows = {}
    for line in (UPDATES / "SOURCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].endswith(".xml"):
            entrez = [date.fromisoformat(d) for d in re.findall(r"\d{4}-\d{2}-\d{2}", cells[5])]
            revised = [date.fromisoformat(d) for d in re.findall(r"\d{4}-\d{2}-\d{2}", cells[6])]
            rows[cells[0]] = {"articles": int(cells[2]), "with_abstract": int(cells[3]),
                              "deleted": int(cells[4]), "entrez": (entrez[0], entrez[-1]),
                              "revised": (revised[0], revised[-1])}
    return rows


@pytest.mark.data
@needs_updates
def test_nlm_samples_match_source_counts():
    table = _source_table()
    assert len(table) == 12
    totals = {"articles": 0, "with_abstract": 0, "deleted": 0}
    for rel, expected in table.items():
        records = list(iter_pubmed(UPDATES / rel))
        articles = _articles(records)
        got = {
            "articles": len(articles),
            # SOURCE.md counts <Abstract> elements; the parser also takes an English OtherAbstract
            # when a record has no Abstract, so those records are counted apart.
            "with_abstract": sum(bool(a.abstract) for a in articles) - _other_abstract_only(UPDATES / rel),
            "deleted": sum(len(r.pmids) for r in records if isinstance(r, DeleteRecord)),
            "entrez": (min(a.entrez_date for a in articles), max(a.entrez_date for a in articles)),
            "revised": (min(a.revised_date for a in articles), max(a.revised_date for a in articles)),
        }
        assert got == expected, rel
        for key in totals:
            totals[key] += got[key]
    assert totals == {"articles": 359, "with_abstract": 310, "deleted": 310}


def _other_abstract_only(path: Path) -> int:
    """Articles in `path` with no Abstract text but an English OtherAbstract (read with lxml directly)."""
    tree = etree.parse(str(path))
    return sum(1 for mc in tree.iterfind(".//MedlineCitation")
               if not "".join(mc.xpath("Article/Abstract/AbstractText//text()")).strip()
               and "".join(mc.xpath("OtherAbstract[not(@Language) or @Language='eng']/AbstractText//text()")).strip())


def _xpath_date(node) -> date | None:
    if node is None:
        return None
    return date(int(node.findtext("Year")), int(node.findtext("Month")), int(node.findtext("Day")))


@pytest.mark.data
@needs_updates
def test_nlm_records_agree_with_plain_xpath():
    for path in sorted(UPDATES.glob("*/*.xml")):
        tree = etree.parse(str(path), _XPATH_PARSER)
        expected = [
            {
                "pmid": int(a.findtext("MedlineCitation/PMID")),
                "title": " ".join(a.xpath("string(MedlineCitation/Article/ArticleTitle)").split()),
                "journal": a.findtext("MedlineCitation/Article/Journal/Title"),
                "entrez_date": _xpath_date(a.find("PubmedData/History/PubMedPubDate[@PubStatus='entrez']")),
                "mesh_terms": tuple(a.xpath("MedlineCitation/MeshHeadingList/MeshHeading/DescriptorName/text()")),
            }
            for a in tree.xpath("/PubmedArticleSet/PubmedArticle")
        ]
        got = [{k: getattr(r, k) for k in expected[0]} for r in _articles(list(iter_pubmed(path)))]
        assert got == expected, path.name


@pytest.mark.data
@needs_updates
def test_nlm_sample_read_from_gzip_and_truncated(tmp_path):
    source = UPDATES / "updatefiles" / "pubmed22n1115.xml"
    data = source.read_bytes()
    plain = list(iter_pubmed(source))
    assert list(iter_pubmed(_write(tmp_path / "f.xml.gz", gzip.compress(data)))) == plain
    with pytest.raises(PubmedParseError, match=r"cut\.xml: malformed or truncated XML at line \d+"):
        parse_pubmed_bytes(data[: len(data) // 2], name="cut.xml")


@pytest.mark.data
@needs_entrez
def test_every_entrez_article_set_parses_and_other_replies_are_rejected():
    parsed = 0
    for path in sorted(ENTREZ.iterdir()):
        if path.suffix != ".xml":
            continue
        try:
            root = etree.parse(str(path), _XPATH_PARSER).getroot()
        except etree.XMLSyntaxError:  # einfo4.xml is cut short on purpose
            root = None
        if root is not None and root.tag == "PubmedArticleSet":
            records = _articles(list(iter_pubmed(path)))
            pmids = root.xpath("PubmedArticle/MedlineCitation/PMID/text()")
            assert [r.pmid for r in records] == [int(p) for p in pmids]
            parsed += 1
        else:  # esearch, einfo (one of them truncated), elink, epost, esummary, espell
            with pytest.raises(PubmedParseError, match=f"^{re.escape(str(path))}: expected PubmedArticleSet"):
                list(iter_pubmed(path))
    assert parsed == 6


@pytest.mark.data
@needs_entrez
def test_entrez_replies_known_cases():
    with pytest.raises(PubmedParseError, match="expected PubmedArticleSet or MedlineCitationSet, got eSearchResult"):
        list(iter_pubmed(ENTREZ / "esearch1.xml"))
    with pytest.raises(PubmedParseError, match="HTML page"):
        list(iter_pubmed(ENTREZ / "pubmed3.html"))

    no_abstract, with_abstract = _articles(list(iter_pubmed(ENTREZ / "pubmed1.xml")))
    assert (no_abstract.pmid, no_abstract.abstract) == (12091962, "")
    assert with_abstract.pmid == 9997 and with_abstract.abstract

    (structured,) = _articles(list(iter_pubmed(ENTREZ / "pubmed4.xml")))
    assert structured.pmid == 27797938
    assert structured.entrez_date == date(2016, 11, 1)
    sections = structured.abstract.split("\n")
    assert len(sections) == 4 and all(re.match(r"[A-Z ]+: \S", s) for s in sections)

    for name in ("pubmed6.xml", "pubmed7.xml"):  # HTML and MathML inside the abstract
        assert b"<mml:math" in (ENTREZ / name).read_bytes()
        (record,) = _articles(list(iter_pubmed(ENTREZ / name)))
        assert not re.search(r"</?[a-z]", record.abstract), name
        # Pretty-printed MathML must not come out letter by letter ('m a x').
        assert not re.search(r"(?:\b\w ){4}\w\b", record.abstract), name


def test_an_english_other_abstract_stands_in_for_a_missing_abstract():
    """Before: a record whose only abstract was an English OtherAbstract was dropped as "no abstract"."""
    summary = "Plain-language summary: " + "this trial tested a walking programme in older adults. " * 3
    xml = _record_xml("<Article><Journal><Title>J</Title></Journal><ArticleTitle>T</ArticleTitle></Article>"
                      "<OtherAbstract Type='plain-language-summary' Language='spa'><AbstractText>Resumen"
                      "</AbstractText></OtherAbstract><OtherAbstract Type='plain-language-summary' Language='eng'>"
                      f"<AbstractText>{summary}</AbstractText></OtherAbstract>")
    (record,) = _articles(parse_pubmed_bytes(xml))
    assert record.abstract == summary.strip()
    with_abstract = _record_xml("<Article><Journal><Title>J</Title></Journal><ArticleTitle>T</ArticleTitle>"
                                "<Abstract><AbstractText>The real abstract.</AbstractText></Abstract></Article>"
                                "<OtherAbstract Language='eng'><AbstractText>Other.</AbstractText></OtherAbstract>")
    assert _articles(parse_pubmed_bytes(with_abstract))[0].abstract == "The real abstract."
