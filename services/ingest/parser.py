"""Streaming parser for NLM PubMed XML (baseline/updatefiles, efetch replies, pre-2017 MEDLINE sets).

Bio.Entrez.read refuses the NLM files (their DOCTYPE names an http:// DTD) and builds whole
documents in memory, so ingest uses lxml.iterparse: one top-level record at a time, cleared after
use, so memory stays flat on a 200 MB update file. The parser never loads a DTD, never touches
the network and never expands entities, so a hostile reply cannot make it fetch or explode.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import BinaryIO, Protocol

from lxml import etree

__all__ = ["ArticleRecord", "DeleteRecord", "PubmedParseError", "iter_pubmed", "parse_pubmed_bytes"]

_SAFE_PARSER_OPTIONS = {"load_dtd": False, "no_network": True, "resolve_entities": False}
_ARTICLE_ROOTS = ("PubmedArticleSet", "MedlineCitationSet")
_GZIP_MAGIC = b"\x1f\x8b"
_MATHML = "{http://www.w3.org/1998/Math/MathML}"

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
# PubDate may carry a Season instead of a Month; map it to the season's first month so that
# ordering by pub_date stays roughly right.
_SEASONS = {"spring": 3, "summer": 6, "fall": 9, "autumn": 9, "winter": 12}
# MedlineDate is free text: '1998 Dec-1999 Jan', '2019 May - Jun', '2000 Spring', '1975-1976'.
_MEDLINE_DATE = re.compile(r"(\d{4})(?:\s+([A-Za-z]+)(?:\s+(\d{1,2})\b)?)?")


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class PubmedParseError(ValueError):
    """The input is not a readable PubMed article set; the message names the source."""


@dataclass(frozen=True, slots=True)
class ArticleRecord:
    pmid: int
    title: str
    abstract: str  # AbstractText sections joined by "\n"; labelled ones as "LABEL: text"
    journal: str
    pub_date: date | None
    entrez_date: date | None
    revised_date: date | None
    mesh_terms: tuple[str, ...]
    keywords: tuple[str, ...]
    language: str
    publication_types: tuple[str, ...]

    @property
    def content_hash(self) -> str:
        # Lower-cased and whitespace-normalised so that a revision that only reflows text or
        # changes case does not count as new content.
        text = _normalise(self.title).lower() + "\n" + _normalise(self.abstract).lower()
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    pmids: tuple[int, ...]


Record = ArticleRecord | DeleteRecord


def iter_pubmed(source: str | os.PathLike[str] | BinaryIO) -> Iterator[Record]:
    """Yield records in document order. A file object is read but not closed."""
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        try:
            stream: BinaryIO = open(name, "rb")  # noqa: SIM115 - closed in the finally below
        except OSError as exc:
            raise PubmedParseError(f"{name}: cannot open: {exc.strerror}") from exc
        try:
            yield from _iter_stream(stream, name)
        finally:
            stream.close()
    else:
        yield from _iter_stream(source, "<stream>")


def parse_pubmed_bytes(data: bytes, *, name: str = "<bytes>") -> list[Record]:
    return list(_iter_stream(io.BytesIO(data), name))


def _iter_stream(raw: BinaryIO, name: str) -> Iterator[Record]:
    # Sniff gzip by magic bytes rather than by file name, so '.xml.gz' downloads saved under
    # another name, and gzip bodies handed over as streams, work too.
    magic = raw.read(2)
    replay = _Replay(magic, raw)
    stream: _Readable = replay
    if magic == _GZIP_MAGIC:
        # The stubs ask for seek(), which GzipFile only uses to rewind; reading never needs it.
        stream = gzip.GzipFile(fileobj=replay, mode="rb")  # type: ignore[call-overload]
    head = _read_past_whitespace(stream, name)
    context = etree.iterparse(_Replay(head, stream), events=("start", "end"), **_SAFE_PARSER_OPTIONS)

    root: etree._Element | None = None
    depth = 0
    try:
        for event, elem in context:
            if event == "start":
                if root is None:
                    root = elem
                    _check_root(elem, name)
                depth += 1
                continue
            depth -= 1
            if depth != 1 or root is None:  # only direct children of the root are records
                continue
            record = _record(elem, name)
            # Free the finished subtree and the siblings before it; the root itself stays tiny.
            elem.clear(keep_tail=False)
            while elem.getprevious() is not None:
                del root[0]
            if record is not None:
                yield record
    except etree.XMLSyntaxError as exc:
        raise PubmedParseError(f"{name}: malformed or truncated XML at line {exc.lineno}: {exc.msg}") from exc
    except (OSError, EOFError, zlib.error) as exc:  # mostly a corrupt or cut gzip stream
        raise PubmedParseError(f"{name}: cannot read input: {exc}") from exc


def _read_past_whitespace(stream: _Readable, name: str) -> bytes:
    """Read until the first non-blank byte, so empty input gets its own clear message."""
    head = b""
    try:
        while not head.strip():
            chunk = stream.read(64 * 1024)
            if not chunk:
                raise PubmedParseError(f"{name}: empty input")
            head += chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise PubmedParseError(f"{name}: cannot read input: {exc}") from exc
    return head


class _Replay:
    """Read-only file object that returns bytes already consumed, then the rest of the stream."""

    def __init__(self, head: bytes, rest: _Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size is None or size < 0:
            data, self._head = self._head + self._rest.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


def _check_root(root: etree._Element, name: str) -> None:
    tag = etree.QName(root).localname
    if tag.lower() == "html":
        raise PubmedParseError(f"{name}: got an HTML page, not PubMed XML (an error page or a proxy reply?)")
    if tag not in _ARTICLE_ROOTS:
        raise PubmedParseError(f"{name}: expected PubmedArticleSet or MedlineCitationSet, got {tag}")


def _record(elem: etree._Element, name: str) -> Record | None:
    if elem.tag == "PubmedArticle":
        return _article(elem.find("MedlineCitation"), elem.find("PubmedData"), name)
    if elem.tag == "MedlineCitation":  # MedlineCitationSet: citations sit directly under the root
        return _article(elem, None, name)
    if elem.tag == "DeleteCitation":
        return DeleteRecord(tuple(_pmid(p, name) for p in elem.iterfind("PMID")))
    return None  # PubmedBookArticle, DeleteDocument, ...: books are not ingested


def _article(mc: etree._Element | None, pubmed_data: etree._Element | None, name: str) -> ArticleRecord:
    if mc is None:
        raise PubmedParseError(f"{name}: PubmedArticle without MedlineCitation")
    pmid = _pmid(mc.find("PMID"), name)
    article = mc.find("Article")
    if article is None:
        raise PubmedParseError(f"{name}: PMID {pmid} has no Article element")

    entrez = None
    if pubmed_data is not None:
        entrez = _date(pubmed_data.find("History/PubMedPubDate[@PubStatus='entrez']"))
    if entrez is None:  # MEDLINE sets before 2017 carry no PubmedData; DateCreated is the nearest fact
        entrez = _date(mc.find("DateCreated"))

    # Non-English records sometimes have an empty ArticleTitle and only a VernacularTitle.
    title = _text(article.find("ArticleTitle")) or _text(article.find("VernacularTitle"))
    return ArticleRecord(
        pmid=pmid,
        title=title,
        abstract="\n".join(_section(a) for a in article.iterfind("Abstract/AbstractText")),
        journal=_text(article.find("Journal/Title")) or _text(mc.find("MedlineJournalInfo/MedlineTA")),
        pub_date=_pub_date(article.find("Journal/JournalIssue/PubDate")),
        entrez_date=entrez,
        revised_date=_date(mc.find("DateRevised")),
        mesh_terms=tuple(_text(d) for d in mc.iterfind("MeshHeadingList/MeshHeading/DescriptorName")),
        keywords=tuple(k for k in (_text(k) for k in mc.iterfind("KeywordList/Keyword")) if k),
        language=_text(article.find("Language")),
        publication_types=tuple(_text(p) for p in article.iterfind("PublicationTypeList/PublicationType")),
    )


def _pmid(elem: etree._Element | None, name: str) -> int:
    text = _text(elem)
    if not text.isdigit():
        raise PubmedParseError(f"{name}: bad or missing PMID {text!r}")
    return int(text)


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _text(elem: etree._Element | None) -> str:
    """Plain text of an element: inline HTML (<i>, <sup>, ...) and MathML are flattened away."""
    if elem is None:
        return ""
    parts: list[str] = []
    _collect_text(elem, parts)
    return _normalise("".join(parts))


def _collect_text(elem: etree._Element, parts: list[str]) -> None:
    parts.append(elem.text or "")
    for child in elem:
        if not isinstance(child.tag, str):
            pass  # comment, processing instruction or unexpanded entity: only its tail is text
        elif child.tag.startswith(_MATHML):
            # MathML arrives pretty-printed; its indentation would split 'VO2max' into 'V O 2 m a x'.
            parts.append("".join(t.strip() for t in child.itertext()))
        else:
            _collect_text(child, parts)
        parts.append(child.tail or "")


def _section(abstract_text: etree._Element) -> str:
    label = abstract_text.get("Label")
    text = _text(abstract_text)
    return f"{label}: {text}" if label else text


def _date(elem: etree._Element | None) -> date | None:
    """Year/Month/Day element groups (DateRevised, PubMedPubDate, DateCreated)."""
    if elem is None:
        return None
    return _make_date(elem.findtext("Year"), elem.findtext("Month"), elem.findtext("Day"))


def _pub_date(elem: etree._Element | None) -> date | None:
    """JournalIssue/PubDate: partial dates fall to the first month or day they could mean."""
    if elem is None:
        return None
    medline = elem.findtext("MedlineDate")
    if medline is not None:
        match = _MEDLINE_DATE.search(medline)
        return _make_date(*match.groups()) if match else None
    return _make_date(elem.findtext("Year"), elem.findtext("Month") or elem.findtext("Season"),
                      elem.findtext("Day"))


def _make_date(year: str | None, month: str | None, day: str | None) -> date | None:
    if not year or not year.strip().isdigit():
        return None
    m = _month(month)
    d = int(day) if day and day.strip().isdigit() else 1
    try:
        return date(int(year), m, d)
    except ValueError:  # e.g. a Day that does not exist in that month: keep year and month
        try:
            return date(int(year), m, 1)
        except ValueError:
            return None


def _month(month: str | None) -> int:
    if not month:
        return 1
    month = month.strip().lower()
    if month.isdigit():
        return int(month)
    return _MONTHS.get(month[:3]) or _SEASONS.get(month, 1)
