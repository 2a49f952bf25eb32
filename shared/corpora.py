"""Fixed general-medical text: the replay set the trainer mixes in and the evaluator's retention slice.

It is read from a MedQuAD folder when one is configured (`MEDQA_RETENTION_CORPUS`; the demo and CI
point at ../shared/data/medquad). Without one, the project's synthetic PubMed generator supplies a
fixed, seeded stand-in, so the loop still runs on a bare machine.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

from lxml import etree


@dataclass(frozen=True, slots=True)
class GeneralText:
    item_id: str  # stable id recorded in training manifests
    text: str


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
                items.append(GeneralText(item_id=f"medquad:{qid}", text=f"{q}\n{a}"))
    return items


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
