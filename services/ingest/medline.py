"""The MEDLINE text format (efetch rettype=medline, PubMed's "PubMed format" download) as ArticleRecords.

A record is a run of tagged lines, 'TAG - value' with the tag padded to four columns, and long values
go on in lines indented by six spaces; blank lines separate records, and each starts with PMID.
Records come out field for field like the XML parser's, so both formats dedup by the same PMID and
content hash. Use parser.iter_records to read a file or stream of either format; this module only
turns bytes into records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import date

from services.ingest.records import RETRACTED_TYPE, ArticleRecord, PubmedParseError, date_from_text, pmid_or_none

__all__ = ["looks_like_medline", "parse_medline", "parse_medline_bytes"]

_START = re.compile(rb"PMID- ?\d")
_TAG = re.compile(r"[A-Z0-9]{2,4} {0,2}")
_CONTINUATION = " " * 6
# C0 controls other than tab/newline never occur in MEDLINE text; NUL in particular would be
# refused by PostgreSQL at insert time, long after parsing said the file was fine.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MAX_LINE = 64 * 1024  # real lines are under 100 characters; a longer one is binary or hostile
_MAX_RECORD_LINES = 20_000  # real records have tens to a few hundred lines; this bounds memory
# 'EDAT- 2002/09/17 10:00', 'LR  - 20041117'
_SLASH_DATE = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})")
_COMPACT_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_LINKED_PMID = re.compile(r"PMID: ?(\d+)")
# MEDLINE inlines structured-abstract labels ('... groups. RESULTS: We found ...'). Splitting there
# gives the XML parser's 'LABEL: text' lines. Labels are upper-case phrases after a sentence end;
# a stray match only costs a line break, and the content hash ignores whitespace anyway.
_LABEL_BREAK = re.compile(r"(?<=[.?!]) (?=[A-Z][A-Z/&,-]*(?: [A-Z/&,-]+)*: )")
_MIN_LABEL = 3


def looks_like_medline(head: bytes) -> bool:
    """Whether the first non-blank bytes of an input open a MEDLINE record."""
    return _START.match(head) is not None


def parse_medline_bytes(data: bytes, *, name: str = "<bytes>") -> list[ArticleRecord]:
    return list(parse_medline([data], name=name))


def parse_medline(chunks: Iterable[bytes], *, name: str = "<stream>") -> Iterator[ArticleRecord]:
    """Records from MEDLINE text arriving as byte chunks (any split), one record in memory at a time."""
    # tag -> one list of line pieces per value; pieces are joined once the record is complete, so a
    # value that runs over many lines costs linear, not quadratic, time.
    fields: dict[str, list[list[str]]] = {}
    tag = ""
    start = 0
    for number, line in enumerate(_lines(chunks, name), start=1):
        if not line.strip():
            if fields:
                yield _article(fields, name, start)
                fields, tag = {}, ""
            continue
        if number - start >= _MAX_RECORD_LINES and fields:
            raise PubmedParseError(f"{name}: the record at line {start} runs over {_MAX_RECORD_LINES} lines")
        if line.startswith(_CONTINUATION) and tag:
            fields[tag][-1].append(line.strip())
            continue
        if not _is_tag_line(line):
            raise PubmedParseError(f"{name}: line {number} is not MEDLINE text: {line[:40]!r}")
        tag = line[:4].rstrip()
        if not fields:
            if tag != "PMID":
                raise PubmedParseError(f"{name}: record at line {number} starts with {tag}, not PMID")
            start = number
        fields.setdefault(tag, []).append([line[6:].strip()])
    if fields:
        yield _article(fields, name, start)


def _is_tag_line(line: str) -> bool:
    # 'AB  - text', or a bare 'AB  -' whose value starts on the continuation lines
    return _TAG.fullmatch(line[:4]) is not None and (line[4:6] == "- " or line[4:].rstrip() == "-")


def _lines(chunks: Iterable[bytes], name: str) -> Iterator[str]:
    pending = b""
    number = 0
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            yield _decode(raw, name, number)
        if len(pending) > _MAX_LINE:  # checked before the line ends, so one never fills memory
            raise PubmedParseError(f"{name}: line {number + 1} is over {_MAX_LINE} bytes: not MEDLINE text")
    if pending.strip():
        # efetch and PubMed downloads end with a newline; without one the last record may be cut
        # mid-value, and a shortened abstract must not pass for the real one.
        raise PubmedParseError(f"{name}: truncated MEDLINE text (line {number + 1} has no line end)")


def _decode(raw: bytes, name: str, number: int) -> str:
    if len(raw) > _MAX_LINE:
        raise PubmedParseError(f"{name}: line {number} is over {_MAX_LINE} bytes: not MEDLINE text")
    try:
        line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise PubmedParseError(f"{name}: line {number} is not UTF-8 text ({exc.reason})") from exc
    if _CONTROL.search(line):
        raise PubmedParseError(f"{name}: line {number} holds control characters: not MEDLINE text")
    return line


def _article(pieces: dict[str, list[list[str]]], name: str, line: int) -> ArticleRecord:
    # Whitespace-normalised like the XML parser's text: continuation breaks become single spaces.
    fields = {tag: [" ".join(" ".join(value).split()) for value in values] for tag, values in pieces.items()}

    def first(tag: str) -> str:
        return fields.get(tag, [""])[0]

    def every(tag: str) -> tuple[str, ...]:
        return tuple(v for v in fields.get(tag, ()) if v)

    pmid = pmid_or_none(first("PMID"))
    if pmid is None:
        raise PubmedParseError(f"{name}: bad PMID {first('PMID')[:40]!r} in the record at line {line}")
    types = every("PT")
    return ArticleRecord(
        pmid=pmid,
        title=first("TI") or first("TT"),  # TT: the transliterated title of a non-English article
        abstract=_sections(first("AB")),
        journal=first("JT") or first("TA"),
        pub_date=date_from_text(first("DP")),
        entrez_date=_date(first("EDAT"), _SLASH_DATE) or _date(first("CRDT"), _SLASH_DATE)
        or _date(first("DA"), _COMPACT_DATE),
        revised_date=_date(first("LR"), _COMPACT_DATE),
        mesh_terms=tuple(d for d in (_descriptor(term) for term in every("MH")) if d),
        keywords=every("OT"),
        language=first("LA"),
        publication_types=types,
        retracted=RETRACTED_TYPE in types or "RIN" in fields,
        retraction_of=tuple(p for ref in fields.get("ROF", ()) for m in _LINKED_PMID.finditer(ref)
                            if (p := pmid_or_none(m.group(1))) is not None),
    )


def _descriptor(heading: str) -> str:
    """'Sequence Alignment/*methods' -> 'Sequence Alignment': the XML DescriptorName, without the
    major-topic star and the qualifiers."""
    return heading.split("/", 1)[0].lstrip("*").strip()


def _sections(abstract: str) -> str:
    parts = _LABEL_BREAK.split(abstract)
    # Join back any piece whose 'label' is too short to be one ('... 2 groups. A: ...').
    out = [parts[0]]
    for part in parts[1:]:
        if len(part.split(":", 1)[0]) >= _MIN_LABEL:
            out.append(part)
        else:
            out[-1] += " " + part
    return "\n".join(out)


def _date(text: str, pattern: re.Pattern[str]) -> date | None:
    match = pattern.match(text)
    if match is None:
        return None
    try:
        return date(*(int(g) for g in match.groups()))
    except ValueError:
        return None
