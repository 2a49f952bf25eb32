"""Fuzzed, truncated and mutated input never crashes ingest (hypothesis).

The parser may only ever raise PubmedParseError, and ingest_file must turn each bad document into
one counted error and one clear log line, storing nothing from it. Examples are few and small, and
hypothesis keeps no example database in the repo (database=None), so the module stays quick and
leaves nothing behind.
"""

from __future__ import annotations

import gzip
import io
import itertools
import logging
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import func, select

from services.devkit.synth import generate_articles, medline_text, pubmed_xml, retraction_notice
from services.ingest.parser import PubmedParseError, iter_pubmed, iter_records, parse_pubmed_bytes
from services.ingest.store import ingest_file
from shared.db import session_scope
from shared.tables import Abstract, IngestCursor

pytestmark = pytest.mark.timeout(120)  # a hang fails the module instead of stalling CI

_ARTICLES = generate_articles(3, seed=17, retracted=[90_000_001])
_ARTICLES.append(retraction_notice(90_000_001, pmid=95_000_000))
XML = pubmed_xml(_ARTICLES, delete_pmids=[7, 8])
MEDLINE = medline_text(_ARTICLES)
FUZZ = settings(max_examples=200, deadline=timedelta(seconds=5), database=None)

# Where the names are: right after each '<' in XML, at each line start in MEDLINE.
_XML_TAGS = [i + 1 for i, c in enumerate(XML) if c == ord("<")]
_MEDLINE_TAGS = [0] + [i + 1 for i, c in enumerate(MEDLINE) if c == ord("\n")]


def _parses(data: bytes, *, medline: bool = False) -> bool:
    """True if the input is accepted; False if it is rejected with PubmedParseError. Any other
    exception escapes and fails the test, which is the point."""
    try:
        if medline:
            list(iter_records(io.BytesIO(data)))
        else:
            parse_pubmed_bytes(data, name="fuzz")
            list(iter_records(io.BytesIO(data)))
        return True
    except PubmedParseError:
        return False


@st.composite
def _mutated(draw: st.DrawFn, base: bytes, tags: list[int]) -> bytes:
    """1-4 edits of `base`: renamed or cut tags, deleted, inserted, duplicated or flipped bytes.
    Edits go left to right over a growing or shrinking copy, so tag offsets are only approximate
    after the first edit, which is fine for fuzzing."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["tag", "delete", "insert", "duplicate", "flip"]))
        at = draw(st.integers(0, len(data)))
        if kind == "tag":
            at = draw(st.sampled_from(tags))
            data[at:at + draw(st.integers(0, 12))] = draw(st.binary(max_size=12) | st.text("AZaz/ -", max_size=6)
                                                          .map(str.encode))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"<", b">", b"&", b"</", b"<!--", b"]]>", b"\x00", b"\n      ",
                                                b"PMID- ", b"&#0;", b"\xff\xfe", b"<PubmedArticle>"])
                               | st.binary(min_size=1, max_size=16))
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
        elif data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


# --- the parser alone ---------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_parse_errors(data):
    _parses(data)
    _parses(gzip.compress(data))
    _parses(b"\x1f\x8b" + data)  # gzip magic over junk: a corrupt gzip stream


@FUZZ
@given(st.integers(0, len(XML)))
def test_truncated_xml_is_always_detected(cut):
    data = XML[:cut]
    complete = b"</PubmedArticleSet>" in data
    assert _parses(data) == complete
    # A gzip stream cut anywhere before its end is an error too, never a silently short document.
    packed = gzip.compress(XML)
    assert _parses(packed[: cut * len(packed) // len(XML)]) == (cut == len(XML))


@FUZZ
@given(_mutated(XML, _XML_TAGS))
def test_mutated_xml_only_raises_parse_errors(data):
    _parses(data)


@FUZZ
@given(st.integers(0, len(MEDLINE)), _mutated(MEDLINE, _MEDLINE_TAGS))
def test_truncated_and_mutated_medline_only_raise_parse_errors(cut, mutated):
    data = MEDLINE[:cut]
    ok = _parses(data, medline=True)
    last_line = data.rsplit(b"\n", 1)[-1]
    if last_line.strip():  # cut inside a line: must be caught, not stored as a shorter text
        assert not ok
    _parses(mutated, medline=True)


@settings(max_examples=30, deadline=timedelta(seconds=5), database=None)
@given(st.integers(1, 20))
def test_iter_pubmed_on_a_cut_stream_keeps_order_then_raises(keep):
    """Records before the cut come out in order; the cut itself is one PubmedParseError."""
    articles = generate_articles(keep + 1, seed=keep)
    xml = pubmed_xml(articles)
    cut = xml[: xml.rindex(b"<PubmedArticle>") + 40]
    seen = []
    with pytest.raises(PubmedParseError, match=r"^<stream>: malformed or truncated XML"):
        for record in iter_pubmed(io.BytesIO(cut)):
            seen.append(record.pmid)
    assert seen == [a["pmid"] for a in articles[:keep]]


def _one_article(pmid: str = "1", year: str = "2020", month: str = "01", day: str = "01") -> bytes:
    return (f"<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>{pmid}</PMID><DateRevised><Year>{year}"
            f"</Year><Month>{month}</Month><Day>{day}</Day></DateRevised><Article><ArticleTitle>t</ArticleTitle>"
            "</Article></MedlineCitation></PubmedArticle></PubmedArticleSet>").encode()


_BOMB = b"".join(b'<!ENTITY %s "%s">' % (bytes([c]), b"&%s;" % bytes([c - 1]) * 10) for c in range(ord("b"), ord("i")))


@pytest.mark.parametrize(
    ("data", "accepted"),
    [
        # str.isdigit() says yes to these, int() says no: once a ValueError that crashed the worker
        (_one_article(pmid="\u00b2"), False),
        (_one_article(year="\u00b2\u2070\u00b2\u2070", day="\u00b2", month="\u00b9"), True),
        (_one_article(pmid="9" * 5000), False),  # past int()'s digit limit
        (_one_article(year="9" * 5000), True),
        (_one_article(pmid="4294967296"), False),  # over the store's 32-bit PMID column
        (b'<?xml version="1.0" encoding="x-bogus"?><PubmedArticleSet/>', False),
        (b"<PubmedArticleSet>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</PubmedArticleSet>", False),
        (b'<?xml version="1.0"?><!DOCTYPE PubmedArticleSet [<!ENTITY a "aaaaaaaaaa">' + _BOMB + b"]>"
         + _one_article().replace(b"<ArticleTitle>t", b"<ArticleTitle>&h;"), False),  # entity expansion bomb
        (_one_article(pmid="1&#0;"), False),
        (b"<!-- only a comment -->", False),
        # Prolog junk that once sent the root-name regex into exponential backtracking (a hang)
        (b"<?a?>" * 5000 + b"x", False),
        (b"<!--a-->" * 5000 + b"x", False),
        (b"<!DOCTYPE x " + b"[]" * 5000, False),
    ],
)
def test_nasty_inputs(data, accepted):
    start = time.perf_counter()
    assert _parses(data) == accepted
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("data", [b"<PubmedArticleSet>\n\x00</PubmedArticleSet>", b"\x1f\x8bjunk", b"<a",
                                  b"PMID- 1\n\x00"])
def test_error_messages_are_one_line(data):
    # libxml2 ends some messages with a newline (found by the store test below): one log line each.
    with pytest.raises(PubmedParseError) as caught:
        list(iter_records(io.BytesIO(data)))
    assert "\n" not in str(caught.value)


# --- through the store --------------------------------------------------------------------------

def _rows() -> int:
    with session_scope() as session:
        return session.exec(select(func.count()).select_from(Abstract)).one()


_documents = st.one_of(
    st.integers(0, len(XML) - 1).map(lambda n: XML[:n]),
    _mutated(XML, _XML_TAGS),
    st.binary(max_size=512),
    st.binary(max_size=512).map(lambda b: gzip.compress(XML)[: len(b) * 8 + 10]),
)


def test_ingest_file_counts_and_logs_each_bad_document_once(store_env, tmp_path, caplog):
    counter = itertools.count()

    # The fixtures are set up once; hypothesis varies only the document, one new file per example.
    @settings(max_examples=60, deadline=timedelta(seconds=10), database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_documents)
    def check(data: bytes) -> None:
        path = (tmp_path / f"doc{next(counter):04d}.xml").resolve()
        path.write_bytes(data)
        bad = not _parses(data)
        before = _rows()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            result = ingest_file(path)  # must not raise, whatever the bytes
        if not bad:  # a mutation that left a valid document: stored like any other file
            assert not result.errors
            return
        assert _rows() == before, "a bad document stored rows"
        assert (result.files, result.stored, result.updated, result.deleted) == (0, 0, 0, 0)
        assert len(result.errors) == 1 and path.name in result.errors[0]
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        message = lines[0].getMessage()
        assert str(path) in message and "\n" not in message and len(message) < 1000
        with session_scope() as session:
            cursor = session.exec(select(IngestCursor).where(IngestCursor.query == str(path))).one()
            assert cursor.last_error and cursor.watermark is None

    check()
