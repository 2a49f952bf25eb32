"""Evidence quotes: the sentences of an abstract that best support an answer, quoted exactly.

A quote is a span of the stored abstract (text[start:end]), never a rewrite, so a reader can find it
in the source. Abstracts are stored as "Title\\nBody"; a structured body has one section per line,
each led by its label ("RESULTS: ..."), and older ones carry the labels inline.

Pure Python and fast (well under a millisecond an abstract): the QA API quotes every cited abstract.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, TypeVar

from shared.search import query_terms

QUOTES_PER_ABSTRACT = 2  # sentences quoted from each cited abstract, at most
# A quote longer than this is skipped, not cut: a cut sentence is no longer verbatim.
MAX_QUOTE_CHARS = 400
# Results and conclusions say what was found, so they slightly outrank background sentences that
# share as many words with the question.
FINDINGS_BOOST = 1.2
FINDINGS_SECTIONS = re.compile(r"RESULT|FINDING|CONCLUSION|INTERPRETATION")


@dataclass(frozen=True)
class Quote:
    pmid: int
    text: str  # exactly abstract[start:end]
    start: int
    end: int


@dataclass(frozen=True)
class _Sentence:
    start: int
    end: int
    line: int  # index of the line it starts on; line 0 is the title
    section: str  # upper-case label of the section it belongs to, "" before any label


# -- splitting ---------------------------------------------------------------------------------------

# A section label word; the other words of a label may be anything in capitals ("MAIN OUTCOME MEASURES").
_SECTION_WORD = re.compile(
    r"(?:BACKGROUND|INTRODUCTION|CONTEXT|OBJECTIVE|AIM|PURPOSE|GOAL|HYPOTHES|RATIONALE|METHOD|DESIGN|SETTING"
    r"|PARTICIPANT|PATIENT|SUBJECT|POPULATION|SAMPLE|INTERVENTION|MEASURE|OUTCOME|EXPOSURE|MATERIAL|PROCEDURE"
    r"|RESULT|FINDING|CONCLUSION|INTERPRETATION|DISCUSSION|SUMMARY|IMPORTANCE|SIGNIFICANCE|LIMITATION|RELEVANCE"
    r"|IMPLICATION|CASE|REPORT|EVIDENCE|STUDY|DATA|ANALYS|SOURCE|SELECTION|EXTRACTION|SYNTHESIS|REVIEW|TRIAL"
    r"|REGISTRATION|APPROACH|PROBLEM|EXPERIMENT|PRINCIPAL|MAIN|KEY|SEARCH|ELIGIBILITY|ANIMAL|OBSERVATION)S?$"
)
_LABEL_CONNECTOR = frozenset({"AND", "OF", "&", "THE", "IN", "FOR"})
# A candidate label: up to six words and a colon, at a line start or after whitespace. Whether it is one
# is decided by _is_label: "HIV: a review" in a title is not.
_LABEL = re.compile(r"(?<!\S)([A-Z][A-Za-z'-]*(?:(?:[ \t]+|[ \t]*[,&/][ \t]*)[A-Za-z&][A-Za-z'-]*){0,5})"
                    r"[ \t]*:(?=\s|$)")
# A sentence ends at . ! or ? (closing quotes and brackets included) followed by whitespace; a full
# stop inside a number ("2.5", "P < .05") is never followed by whitespace, so never ends one.
_TERMINAL = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
# Words a full stop follows without ending the sentence ("et al." ends in "al").
_ABBREVIATIONS = frozenset({
    "e.g", "i.e", "al", "vs", "fig", "figs", "approx", "cf", "viz", "dr", "mr", "mrs", "prof", "eq", "ref",
    "refs", "resp", "incl", "dept", "univ", "vol", "pp",
})
# "No." is an abbreviation before a number ("No. 5") and a word at a sentence's end otherwise.
_NUMBER_ABBREVIATIONS = frozenset({"no", "nos"})
_DOTTED = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")  # e.g, i.e, U.S, a.m: letters with inner stops
_BRACKET = re.compile(r"[()\[\]{}]")
_OPENERS = "([{"


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of `text`; text[start:end] is the sentence with surrounding
    whitespace stripped."""
    return [(s.start, s.end) for s in _sentences(text)]


def _sentences(text: str) -> list[_Sentence]:
    sentences = []
    section = ""
    for line, (start, end) in enumerate(_lines(text)):
        for block_start, block_end, label in _sections_of_line(text, start, end, first_line=line == 0):
            section = label or section
            sentences += [_Sentence(s, e, line, section) for s, e in _split_block(text, block_start, block_end)]
    return sentences


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of the lines of `text`; a newline inside a running sentence (the line before ends
    mid-sentence and the next starts in lower case: hard-wrapped text) does not end a line."""
    lines = []
    start = 0
    for newline in re.finditer(r"\n", text):
        before = text[start:newline.start()].rstrip()
        after = text[newline.end():newline.end() + 1]
        if before and before[-1] not in ".!?:;" and after.islower() and after.isascii():
            continue
        lines.append((start, newline.start()))
        start = newline.end()
    lines.append((start, len(text)))
    return lines


def _sections_of_line(text: str, start: int, end: int, *, first_line: bool) -> list[tuple[int, int, str]]:
    """The line cut at its section labels: (start, end, label) per part, the label itself left out;
    label "" for the part before the first label."""
    parts = []
    cursor, label = start, ""
    for match in _LABEL.finditer(text, start, end):
        if not _is_label(text, start, match, first_line=first_line):
            continue
        parts.append((cursor, match.start(), label))
        cursor, label = match.end(), " ".join(match.group(1).upper().split())
    parts.append((cursor, end, label))
    return [(s, e, lab) for s, e, lab in parts if e > s or lab]


def _is_label(text: str, line_start: int, match: re.Match[str], *, first_line: bool) -> bool:
    """A section label: at the line's start, or after a sentence's end; in capitals with a section word
    ("DATA SOURCES"), or at a line's start in any case with section words only ("Methods and results").
    A title (first line) carries no label at its start unless it is in capitals: "Background noise: ..."."""
    before = text[line_start:match.start()].rstrip()
    at_line_start = not before
    if not at_line_start and before[-1] not in ".!?;:)]":
        return False
    words = re.split(r"[ \t,/]+", match.group(1))
    if match.group(1).isupper():
        return any(_SECTION_WORD.match(w) for w in words)
    return at_line_start and not first_line and all(
        _SECTION_WORD.match(w.upper()) or w.upper() in _LABEL_CONNECTOR for w in words if w)


def _split_block(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence spans of text[start:end], stripped, none empty."""
    inside = _bracketed(text, start, end)
    spans = []
    cursor = start
    for match in _TERMINAL.finditer(text, start, end):
        if match.end() <= cursor or not _ends_sentence(text, cursor, match, end, inside):
            continue
        spans.append((cursor, match.end()))
        cursor = match.end()
    spans.append((cursor, end))
    return [stripped for s, e in spans if (stripped := _strip(text, s, e)) is not None]


def _ends_sentence(text: str, sentence_start: int, match: re.Match[str], block_end: int,
                   inside: list[tuple[int, int]]) -> bool:
    if any(o < match.end() <= c for o, c in inside):  # "(n = 12; see Fig. 2. Others ...)" is one clause
        return False
    following = text[match.end():block_end].split(maxsplit=1)
    if not following:
        return True
    next_word = following[0]
    # "vs. placebo", "E. coli": a sentence does not start in lower case, unless with a word such as
    # "mRNA" or "p53" that is written so.
    if next_word[0].isascii() and next_word[0].islower() and not any(c.isupper() or c.isdigit() for c in next_word):
        return False
    if not match.group().startswith(".") or match.group().startswith(".."):
        return True  # ! ? or an ellipsis
    before = text[sentence_start:match.start()]
    word = _last_word(before)
    if word.lower() in _NUMBER_ABBREVIATIONS:
        return not next_word[0].isdigit()
    if word[-1:].isdigit() and next_word[0].isdigit():  # "14. 1%": a decimal with a stray space
        return False
    previous_word = _last_word(before[: -len(word)]).rstrip(".")
    if _is_initial(word) and (_is_initial(next_word.rstrip(".")) or _is_initial(previous_word)):
        return False  # "M. D. Anderson": a run of initials, where "vitamin D. The" ends a sentence
    return not (word.lower() in _ABBREVIATIONS or _DOTTED.match(word))


def _is_initial(word: str) -> bool:
    return len(word) == 1 and word.isupper()


def _last_word(text: str) -> str:
    """The word before a full stop, without the brackets or quotes that open it: "(e.g" -> "e.g"."""
    words = text.rsplit(maxsplit=1)
    return words[-1].lstrip(_OPENERS + "\"'") if words else ""


def _bracketed(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(open, close) offsets of the matched brackets in text[start:end]; an unmatched one is ignored."""
    pairs, stack = [], []
    for bracket in _BRACKET.finditer(text, start, end):
        if bracket.group() in _OPENERS:
            stack.append(bracket.start())
        elif stack:
            pairs.append((stack.pop(), bracket.start()))
    return pairs


def _strip(text: str, start: int, end: int) -> tuple[int, int] | None:
    """(start, end) without surrounding whitespace; None where nothing worth a sentence is left (no
    letter or digit)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if any(c.isalnum() for c in text[start:end]) else None


# -- ranking -----------------------------------------------------------------------------------------

# Function words and question words: overlap on them says nothing about support.
_STOPWORD_LIST = (
    "a about above after again against all also am an and any are as at be been before being below between both"
    " but by can could did do does doing down during each either few for from further had has have having he her"
    " here hers him his how however i if in into is it its itself just may me might more most must my neither no"
    " nor not now of off on once only or other our out over own same she should so some such than that the their"
    " them then there these they this those through thus to too under until up upon very via was we were what"
    " when where whether which while who whom why will with within without would yet you your"
)
_STOPWORDS = frozenset(_STOPWORD_LIST.split())
_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("ations", "ation", "ments", "ment", "ness", "ities", "ity", "ings", "ing", "ions", "ion", "ives",
             "ive", "ically", "ical", "ally", "ly", "al", "ic", "ied", "ies", "ed", "es", "s")


@lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    """A light suffix-stripping stem: reduces, reduced, reducing, reduction -> "reduc"."""
    for _ in range(3):  # "clinically" -> "clinical" -> "clinic" -> "clin"
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not _keeps_s(word, suffix):
                word = word[: -len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
                break
        else:
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if word.endswith("uct"):  # reduction / reduce, production / produce
        word = word[:-1]
    return word


def _keeps_s(word: str, suffix: str) -> bool:
    """A final s that is no plural: "mass", "virus", "diagnosis"."""
    return suffix == "s" and word.endswith(("ss", "us", "is"))


def _content_words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower())
            if w not in _STOPWORDS and len(w) > 1 and not w.isdigit()}


def supporting_quotes(question: str, pmid: int, text: str, *, k: int = 2) -> list[Quote]:
    """Up to k sentences of `text` that best match `question`, in their order in the text."""
    wanted = _content_words(question)
    sentences = _sentences(text)
    if not wanted or not sentences or k <= 0:
        return []
    words = [_content_words(text[s.start:s.end]) & wanted for s in sentences]
    idf = _idf(words, len(sentences))
    scores = [sum(idf[w] for w in ws) * (FINDINGS_BOOST if _is_finding(i, s, len(sentences)) else 1.0)
              for i, (s, ws) in enumerate(zip(sentences, words, strict=True))]
    has_title = "\n" in text
    candidates = [i for i, s in enumerate(sentences) if scores[i] > 0 and s.end - s.start <= MAX_QUOTE_CHARS]
    body = [i for i in candidates if not (has_title and sentences[i].line == 0)]
    best = sorted(body or candidates, key=lambda i: (-scores[i], i))[:k]
    return [Quote(pmid, text[sentences[i].start:sentences[i].end], sentences[i].start, sentences[i].end)
            for i in sorted(best)]


def _idf(words: list[set[str]], n_sentences: int) -> dict[str, float]:
    """Inverse sentence frequency within the abstract: a word in every sentence counts little."""
    df: dict[str, int] = {}
    for ws in words:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    return {w: math.log(1 + n_sentences / d) for w, d in df.items()}


def _is_finding(index: int, sentence: _Sentence, n_sentences: int) -> bool:
    return index >= n_sentences - 2 or bool(FINDINGS_SECTIONS.search(sentence.section))


class Document(Protocol):
    @property
    def pmid(self) -> int: ...

    @property
    def title(self) -> str: ...

    @property
    def text(self) -> str: ...


D = TypeVar("D", bound=Document)


def term_coverage(question: str, text: str) -> float:
    """Share of the question's search terms (shared/search.query_terms, stemmed) that `text` contains."""
    asked = {_stem(w) for w in query_terms(question) if not w.isdigit()}
    return len(asked & _content_words(text)) / len(asked) if asked else 0.0


def grounded(question: str, hits: Sequence[D], quotes_per_abstract: int, *,
             min_coverage: float = 0.0) -> tuple[list[D], list[Quote]]:
    """The hits that have a sentence supporting the answer, and those sentences, verbatim (quoted from
    "title\ntext", the abstract as stored and shown). An abstract over the relevance floor is not cited
    when it has nothing to quote, or when it names less than `min_coverage` of the question's terms:
    a question about metformin and cancer is close in meaning to any diabetes abstract, but an abstract
    that never says "metformin" or "cancer" cannot answer it. The QA API answers this way and the
    evaluator's grounding suite measures it."""
    cited, quotes = [], []
    for hit in hits:
        text = f"{hit.title}\n{hit.text}"
        if term_coverage(question, text) < min_coverage:
            continue
        found = supporting_quotes(question, hit.pmid, text, k=quotes_per_abstract)
        if found:
            cited.append(hit)
            quotes.extend(found)
    return cited, quotes
