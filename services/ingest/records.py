"""The records every PubMed reader yields (XML and MEDLINE text alike), and the field parsers they share.

Below both readers (parser.py, medline.py), so neither has to import the other for them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
# PubDate may carry a Season instead of a Month; map it to the season's first month so that
# ordering by pub_date stays roughly right.
_SEASONS = {"spring": 3, "summer": 6, "fall": 9, "autumn": 9, "winter": 12}
# MedlineDate is free text: '1998 Dec-1999 Jan', '2019 May - Jun', '2000 Spring', '1975-1976'.
_MEDLINE_DATE = re.compile(r"(\d{4})(?:\s+([A-Za-z]+)(?:\s+(\d{1,2})\b)?)?")
# PMIDs are 8 digits today; the store keeps them in a 32-bit integer column, so anything outside
# that range is a corrupt record, not a future PMID.
MAX_PMID = 2**31 - 1
RETRACTED_TYPE = "Retracted Publication"



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
    # NLM flags a retracted article both by publication type and by a RetractionIn link to the
    # notice; either one is enough, since the two are not always updated in the same file.
    retracted: bool = False
    retraction_of: tuple[int, ...] = ()  # a "Retraction of Publication" notice: the PMIDs it retracts

    @property
    def content_hash(self) -> str:
        # Lower-cased and whitespace-normalised so that a revision that only reflows text or
        # changes case does not count as new content.
        text = normalise(self.title).lower() + "\n" + normalise(self.abstract).lower()
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    pmids: tuple[int, ...]


Record = ArticleRecord | DeleteRecord


def pmid_or_none(text: str | None) -> int | None:
    value = ascii_int(text, 10)
    return value if value is not None and 0 < value <= MAX_PMID else None


def ascii_int(text: str | None, max_digits: int) -> int | None:
    """int() of plain ASCII digits only: str.isdigit() also accepts '²', which int() refuses, and
    int() of thousands of digits raises instead of returning."""
    text = (text or "").strip()
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def normalise(text: str) -> str:
    return " ".join(text.split())


def date_from_text(text: str) -> date | None:
    """A free-text publication date ('1998 Dec-1999 Jan', '2000 Spring', '2006 Mar 1', '1975-1976'),
    as in MedlineDate and in the MEDLINE DP field: the first day it could mean."""
    match = _MEDLINE_DATE.search(text)
    return make_date(*match.groups()) if match else None


def make_date(year: str | None, month: str | None, day: str | None) -> date | None:
    y = ascii_int(year, 4)
    if y is None:
        return None
    m = month_number(month)
    d = ascii_int(day, 2) or 1
    try:
        return date(y, m, d)
    except ValueError:  # e.g. a Day that does not exist in that month: keep year and month
        try:
            return date(y, m, 1)
        except ValueError:
            return None


def month_number(month: str | None) -> int:
    if not month:
        return 1
    month = month.strip().lower()
    number = ascii_int(month, 2)
    if number is not None:
        return number
    return _MONTHS.get(month[:3]) or _SEASONS.get(month, 1)
