"""Streaming parser for NLM PubMed XML (baseline/updatefiles, efetch replies, pre-2017 MEDLINE sets).

Bio.Entrez.read refuses the NLM files (their DOCTYPE names an http:// DTD) and builds whole
documents in memory, so ingest uses lxml.iterparse: one top-level record at a time, cleared after
use, so memory stays flat on a 200 MB update file. The parser never loads a DTD, never touches
the network and never expands entities, so a hostile reply cannot make it fetch or explode.

iter_records() also reads the MEDLINE text format (services.ingest.medline), told apart from XML
by its first bytes. Whatever the input, the only exception callers see is PubmedParseError.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import BinaryIO, Protocol

from lxml import etree

from services.ingest.medline import looks_like_medline, parse_medline
from services.ingest.records import (
    RETRACTED_TYPE,
    ArticleRecord,
    DeleteRecord,
    PubmedParseError,
    Record,
    date_from_text,
    make_date,
    normalise,
    pmid_or_none,
)

__all__ = ["ArticleRecord", "DeleteRecord", "PubmedParseError", "iter_pubmed", "iter_records", "parse_pubmed_bytes"]

_SAFE_PARSER_OPTIONS = {"load_dtd": False, "no_network": True, "resolve_entities": False}
_ARTICLE_ROOTS = ("PubmedArticleSet", "MedlineCitationSet")
_RECORD_TAGS = ("PubmedArticle", "MedlineCitation", "DeleteCitation", "PubmedBookArticle", "DeleteDocument")
# The root element's name, read from the first bytes past the prolog (declaration, comments,
# processing instructions, DOCTYPE with its internal subset). A prolog it cannot follow gives no
# match, and the parser's own view of the root decides instead. Each part can match in one way
# only ('[^?]|\?(?!>)' rather than '.*?'), so junk cannot make the regex backtrack exponentially.
_ROOT_NAME = re.compile(
    rb"(?:\s|<\?(?:[^?]|\?(?!>))*\?>|<!--(?:[^-]|-(?!->))*-->|<!DOCTYPE(?:[^\[\]>]|\[[^\]]*\])*>)*"
    rb"<([A-Za-z_][\w.:-]*)", re.I)
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_MATHML = "{http://www.w3.org/1998/Math/MathML}"

class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def iter_pubmed(source: str | os.PathLike[str] | BinaryIO) -> Iterator[Record]:
    """Yield records of a PubMed XML document in document order. A file object is read but not closed."""
    return _iter_source(source, medline=False)


def iter_records(source: str | os.PathLike[str] | BinaryIO) -> Iterator[Record]:
    """Like iter_pubmed, but also reads the MEDLINE text format (efetch rettype=medline).

    The format is told by the first non-blank bytes after gunzip, not by the file name: '<' starts
    XML, 'PMID-' starts MEDLINE; anything else is rejected with a PubmedParseError.
    """
    return _iter_source(source, medline=True)


def parse_pubmed_bytes(data: bytes, *, name: str = "<bytes>") -> list[Record]:
    return list(_iter_xml(*_decoded_head(io.BytesIO(data), name), name))


def _iter_source(source: str | os.PathLike[str] | BinaryIO, *, medline: bool) -> Iterator[Record]:
    with _opened(source) as (raw, name):
        stream, head = _decoded_head(raw, name)
        first = head.lstrip().removeprefix(_UTF8_BOM).lstrip()
        if first.startswith(b"<"):
            yield from _iter_xml(stream, head, name)
            return
        if looks_like_medline(first):
            if not medline:
                raise PubmedParseError(f"{name}: MEDLINE text, not PubMed XML (read it with iter_records)")
            yield from parse_medline(_chunks(_Replay(head, stream), name), name=name)
        elif medline:
            raise PubmedParseError(f"{name}: neither PubMed XML nor MEDLINE text (starts with {first[:32]!r})")
        else:  # keep lxml's own message (line, column) for XML that is broken from the start
            yield from _iter_xml(stream, head, name)


@contextmanager
def _opened(source: str | os.PathLike[str] | BinaryIO) -> Iterator[tuple[BinaryIO, str]]:
    if not isinstance(source, str | os.PathLike):
        yield source, "<stream>"
        return
    name = os.fspath(source)
    try:
        stream: BinaryIO = open(name, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise PubmedParseError(f"{name}: cannot open: {exc.strerror}") from exc
    with stream:
        yield stream, name


def _decoded_head(raw: BinaryIO, name: str) -> tuple[_Readable, bytes]:
    """The decompressed stream and its first non-blank chunk, already read from it."""
    # Sniff gzip by magic bytes rather than by file name, so '.xml.gz' downloads saved under
    # another name, and gzip bodies handed over as streams, work too.
    try:
        magic = raw.read(2)
    except OSError as exc:
        raise PubmedParseError(f"{name}: cannot read input: {_one_line(exc)}") from exc
    replay = _Replay(magic, raw)
    stream: _Readable = replay
    if magic == _GZIP_MAGIC:
        # The stubs ask for seek(), which GzipFile only uses to rewind; reading never needs it.
        stream = gzip.GzipFile(fileobj=replay, mode="rb")  # type: ignore[call-overload]
    return stream, _read_past_whitespace(stream, name)


def _chunks(stream: _Readable, name: str) -> Iterator[bytes]:
    try:
        while chunk := stream.read(64 * 1024):
            yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise PubmedParseError(f"{name}: cannot read input: {_one_line(exc)}") from exc


def _iter_xml(stream: _Readable, head: bytes, name: str) -> Iterator[Record]:
    sniffed = _ROOT_NAME.match(head.removeprefix(_UTF8_BOM))
    if sniffed:  # an esearch reply or an HTML page is named at once, even when cut short
        _check_root_tag(sniffed.group(1).decode("ascii", "replace"), name)
    # lxml filters by tag in C, so Python sees each record once rather than each of its ~200
    # elements (reference lists are long): about twice the throughput on real NLM files.
    context = etree.iterparse(_Replay(head, stream), events=("end",), tag=_RECORD_TAGS, **_SAFE_PARSER_OPTIONS)
    checked = False
    try:
        for _event, elem in context:
            parent = elem.getparent()
            if parent is None or parent.getparent() is not None:
                continue  # the MedlineCitation inside a PubmedArticle, or a record tag as the root
            if not checked:
                _check_root_tag(etree.QName(parent).localname, name)
                checked = True
            record = _record(elem, name)
            # Free the finished subtree and the siblings before it; the root itself stays tiny.
            elem.clear(keep_tail=False)
            while elem.getprevious() is not None:
                del parent[0]
            if record is not None:
                yield record
    except etree.XMLSyntaxError as exc:
        message = _one_line(exc.msg)
        raise PubmedParseError(f"{name}: malformed or truncated XML at line {exc.lineno}: {message}") from exc
    except (OSError, EOFError, zlib.error) as exc:  # mostly a corrupt or cut gzip stream
        raise PubmedParseError(f"{name}: cannot read input: {_one_line(exc)}") from exc
    if not checked and context.root is not None:  # no records at all: still say what the document was
        _check_root_tag(etree.QName(context.root).localname, name)


def _one_line(message: object) -> str:
    # libxml2 messages can end in a newline, which would split the single log line an ingest
    # failure gets.
    return " ".join(str(message).split())


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
        raise PubmedParseError(f"{name}: cannot read input: {_one_line(exc)}") from exc
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
        if size <= len(self._head):
            data, self._head = self._head[:size], self._head[size:]
            return data
        # Top up from the stream, so the first read after a 2-byte sniff is not a 2-byte read.
        data, self._head = self._head + self._rest.read(size - len(self._head)), b""
        return data


def _check_root_tag(tag: str, name: str) -> None:
    tag = tag.rpartition(":")[2]
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
    types = tuple(_text(p) for p in article.iterfind("PublicationTypeList/PublicationType"))
    links = mc.findall("CommentsCorrectionsList/CommentsCorrections")
    return ArticleRecord(
        pmid=pmid,
        title=title,
        abstract=_abstract(article, mc),
        journal=_text(article.find("Journal/Title")) or _text(mc.find("MedlineJournalInfo/MedlineTA")),
        pub_date=_pub_date(article.find("Journal/JournalIssue/PubDate")),
        entrez_date=entrez,
        revised_date=_date(mc.find("DateRevised")),
        mesh_terms=tuple(_text(d) for d in mc.iterfind("MeshHeadingList/MeshHeading/DescriptorName")),
        keywords=tuple(k for k in (_text(k) for k in mc.iterfind("KeywordList/Keyword")) if k),
        language=_text(article.find("Language")),
        publication_types=types,
        retracted=RETRACTED_TYPE in types or any(c.get("RefType") == "RetractionIn" for c in links),
        # A link with a broken PMID names nothing we could mark, so it is dropped, not fatal.
        retraction_of=tuple(p for c in links if c.get("RefType") == "RetractionOf"
                            and (p := pmid_or_none(c.findtext("PMID"))) is not None),
    )


def _abstract(article: etree._Element, mc: etree._Element) -> str:
    """The Abstract's sections; without one, an English OtherAbstract (a plain-language summary is
    often the only abstract a record has)."""
    text = "\n".join(_section(a) for a in article.iterfind("Abstract/AbstractText"))
    if text.strip():
        return text
    for other in mc.iterfind("OtherAbstract"):
        if (other.get("Language") or "eng").lower() == "eng":
            text = "\n".join(_section(a) for a in other.iterfind("AbstractText"))
            if text.strip():
                return text
    return ""


def _pmid(elem: etree._Element | None, name: str) -> int:
    pmid = pmid_or_none(_text(elem))
    if pmid is None:
        raise PubmedParseError(f"{name}: bad or missing PMID {_text(elem)[:40]!r}")
    return pmid


def _text(elem: etree._Element | None) -> str:
    """Plain text of an element: inline HTML (<i>, <sup>, ...) and MathML are flattened away."""
    if elem is None:
        return ""
    parts: list[str] = []
    _collect_text(elem, parts)
    return normalise("".join(parts))


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
    return make_date(elem.findtext("Year"), elem.findtext("Month"), elem.findtext("Day"))


def _pub_date(elem: etree._Element | None) -> date | None:
    """JournalIssue/PubDate: partial dates fall to the first month or day they could mean."""
    if elem is None:
        return None
    medline = elem.findtext("MedlineDate")
    if medline is not None:
        return date_from_text(medline)
    return make_date(elem.findtext("Year"), elem.findtext("Month") or elem.findtext("Season"),
                      elem.findtext("Day"))


