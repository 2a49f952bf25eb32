"""What the monitor compares: abstracts and questions as texts, metadata columns and cached embeddings.

Metadata columns for abstracts: publication year (numeric), journal (the reference's 15 commonest
journals, else "other"), and the study subjects from MeSH check tags (humans / animals / both /
neither). PubMed XML carries MeSH descriptor names but not their tree numbers, so the top-level
MeSH categories (A Anatomy, C Diseases, ...) cannot be derived offline without the MeSH tree file;
the check tags are the category signal every record carries.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sqlmodel import Session, col, select

from services.trainer.data import abstract_text
from shared.embeddings import MODEL_NAME, embed, from_bytes, to_bytes
from shared.models import Abstract, AbstractEmbedding

TOP_JOURNALS = 15
ANIMALS = {"Animals", "Mice", "Rats", "Dogs", "Swine", "Cattle", "Rabbits", "Sheep", "Zebrafish", "Drosophila"}


def sample(pmids: Sequence[int], n: int, seed: int = 1234) -> list[int]:
    """At most n PMIDs, the same for the same inputs (a fixed seed, not the process's RNG)."""
    chosen = sorted(pmids)
    if len(chosen) > n:
        chosen = sorted(random.Random(seed).sample(chosen, n))
    return chosen


def live_abstracts(session: Session, pmids: Sequence[int]) -> list[Abstract]:
    rows = session.exec(select(Abstract).where(col(Abstract.pmid).in_(list(pmids))).order_by(col(Abstract.pmid)))
    return [r for r in rows if not r.deleted and not r.retracted]


def _subjects(mesh: Sequence[str]) -> str:
    humans, animals = "Humans" in mesh, bool(ANIMALS & set(mesh))
    return {(True, True): "both", (True, False): "humans", (False, True): "animals"}.get((humans, animals),
                                                                                          "neither")


def metadata(reference: Sequence[Abstract], current: Sequence[Abstract]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extra drift columns for both sides; the journal vocabulary comes from the reference alone."""
    top = {j for j, _ in Counter(r.journal for r in reference if r.journal).most_common(TOP_JOURNALS)}

    def frame(rows: Sequence[Abstract]) -> pd.DataFrame:
        return pd.DataFrame({
            "year": [float(d.year) if (d := r.entrez_date or r.pub_date) else np.nan for r in rows],
            "journal": [r.journal if r.journal in top else "other" for r in rows],
            "subjects": [_subjects(r.mesh_terms) for r in rows],
        })

    return frame(reference), frame(current)


def abstract_embeddings(session: Session, rows: Sequence[Abstract]) -> np.ndarray:
    """Vectors for `rows`, computed only where the store has none for the current text, and stored."""
    cached = {e.pmid: e for e in session.exec(select(AbstractEmbedding).where(
        col(AbstractEmbedding.pmid).in_([r.pmid for r in rows])))}
    missing = [r for r in rows if (e := cached.get(r.pmid)) is None or e.content_hash != r.content_hash
               or e.model != MODEL_NAME]
    if missing:
        vectors = embed([abstract_text(r) for r in missing])
        for r, v in zip(missing, vectors, strict=True):
            row = cached.get(r.pmid) or AbstractEmbedding(pmid=r.pmid, model=MODEL_NAME, content_hash="", vector=b"")
            row.model, row.content_hash, row.vector = MODEL_NAME, r.content_hash, to_bytes(v)
            session.add(row)
            cached[r.pmid] = row
        session.flush()
    return np.stack([from_bytes(cached[r.pmid].vector) for r in rows]) if rows else np.zeros((0, 384), np.float32)
