"""Fixed general-medical text: the replay set the trainer mixes in and the evaluator's retention slice.

It is read from a MedQuAD folder when one is configured (`MEDQA_RETENTION_CORPUS`; the demo and CI
point at ../shared/data/medquad). Without one, the project's synthetic PubMed generator supplies a
fixed, seeded stand-in, so the loop still runs on a bare machine.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from lxml import etree


@dataclass(frozen=True, slots=True)
class GeneralText:
    item_id: str  # stable id recorded in training manifests
    text: str  # the whole item as plain text (perplexity slices, drift)
    question: str = ""  # set for QA items: the trainer then takes the loss on the answer only
    answer: str = ""
    context: str | None = None


def load_medquad(folder: Path) -> list[GeneralText]:
    """Question + answer pairs from every MedQuAD collection XML under `folder`, in a stable order."""
    items: list[GeneralText] = []
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    for path in sorted(folder.rglob("*.xml")):
        root = etree.parse(str(path), parser).getroot()
        for pair in root.iter("QAPair"):
            q = " ".join((pair.findtext("Question") or "").split())
            a = " ".join((pair.findtext("Answer") or "").split())
            if q and len(a) > 80:
                qid = pair.find("Question").get("qid") or f"{path.stem}-{pair.get('pid')}"
                items.append(GeneralText(item_id=f"medquad:{qid}", text=f"{q}\n{a}", question=q, answer=a))
    return items


def load_liveqa(source: Path) -> list[GeneralText]:
    """Consumer-health questions from TREC 2017 LiveQA Medical XML (a file, or every *.xml in a folder).

    Reads both layouts the track published: training files (SUBJECT and MESSAGE under NLM-QUESTION,
    answers under SUB-QUESTIONS) and test files (Original-Question with SUBJECT/Subject and
    MESSAGE/Message, answers under ReferenceAnswers). Tags are matched without regard to case. The
    question is subject + message as the patient wrote them; the answer is the first reference answer.
    """
    paths = sorted(source.glob("*.xml")) if source.is_dir() else [source]
    items: list[GeneralText] = []
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    for path in paths:
        try:
            root = etree.parse(str(path), parser).getroot()  # lxml skips the UTF-8 byte-order mark
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"{path}: not LiveQA XML: {exc}") from None
        for n, q in enumerate(el for el in root.iter() if _tag(el) == "nlm-question"):
            def first(name: str, q: etree._Element = q) -> str:
                el = next((e for e in q.iter() if _tag(e) == name), None)
                return " ".join("".join(el.itertext()).split()) if el is not None else ""

            subject, message = first("subject"), first("message")
            answers = [" ".join("".join(a.itertext()).split()) for a in q.iter() if _tag(a) == "answer"]
            answers = [a for a in answers if a]
            question = ". ".join(x for x in (subject, message) if x)
            if not question:
                continue
            qid = q.get("qid") or q.get("questionid") or f"{path.stem}-{n}"
            answer = answers[0] if answers else ""
            items.append(GeneralText(item_id=f"liveqa:{path.stem}:{qid}", text=f"{question}\n{answer}".strip(),
                                     question=question, answer=answer))
    return items


def _tag(el: etree._Element) -> str:
    return el.tag.lower() if isinstance(el.tag, str) else ""


def load_pubmedqa(source: str | Path) -> list[GeneralText]:
    """PubMedQA items from a local JSON file in the original format ({pmid: {QUESTION, CONTEXTS,
    LONG_ANSWER, final_decision, ...}}), or a hub id such as qiaojin/PubMedQA when a hub is reachable."""
    path = Path(source)
    if path.is_file():
        raw = json.loads(path.read_text())
        rows = [{"pmid": k, **v} for k, v in raw.items()]
    else:
        from datasets import load_dataset  # hub only; offline this raises and names the id

        rows = [{"pmid": r["pubid"], "QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"],
                 "LONG_ANSWER": r["long_answer"], "final_decision": r["final_decision"]}
                for r in load_dataset(str(source), "pqa_labeled", split="train")]
    items = []
    for r in sorted(rows, key=lambda r: str(r["pmid"])):
        context = " ".join(r["CONTEXTS"])
        answer = f"{r['LONG_ANSWER']}\nAnswer: {r['final_decision']}"
        items.append(GeneralText(item_id=f"pubmedqa:{r['pmid']}", text=f"{r['QUESTION']}\n{context}\n{answer}",
                                 question=r["QUESTION"], answer=answer, context=context))
    return items


@functools.cache
def pubmedqa_split(source: str | None, *, seed: int = 1234, train_share: float = 0.8,
                   ) -> tuple[tuple[GeneralText, ...], tuple[GeneralText, ...]]:
    """(train, held-out) PubMedQA items, fixed by seed: replay uses the first, evaluation the second."""
    if not source:
        return (), ()
    items = load_pubmedqa(source)
    random.Random(seed).shuffle(items)
    cut = int(len(items) * train_share)
    return tuple(items[:cut]), tuple(items[cut:])


@functools.cache
def general_texts(corpus: Path | None, *, limit: int = 400, seed: int = 1234) -> tuple[GeneralText, ...]:
    """A fixed, seeded sample: the same corpus and seed always give the same items."""
    if corpus is not None and corpus.is_dir():
        items = load_medquad(corpus)
    else:
        from services.ingest.parser import ArticleRecord, parse_pubmed_bytes
        from services.ingest.synth import generate_articles, pubmed_xml

        xml = pubmed_xml(generate_articles(limit, seed=seed, start_pmid=10_000_000))
        items = [GeneralText(item_id=f"synth:{r.pmid}", text=f"{r.title}\n{r.abstract}")
                 for r in parse_pubmed_bytes(xml, name="synthetic") if isinstance(r, ArticleRecord)]
    rng = random.Random(seed)
    items = list(items)
    rng.shuffle(items)
    return tuple(items[:limit])


def split_general(items: tuple[GeneralText, ...]) -> tuple[list[GeneralText], list[GeneralText]]:
    """Disjoint halves: replay draws from the first, the retention slice is the second, so the
    retention perplexity is never measured on text the model was trained on."""
    half = len(items) // 2
    return list(items[:half]), list(items[half:])
