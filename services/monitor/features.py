"""What the monitor compares besides texts and embeddings: metadata columns of abstracts.

Metadata columns for abstracts: publication year (numeric), journal (the reference's 15 commonest
journals, else "other"), and the study subjects from MeSH check tags (humans / animals / both /
neither). PubMed XML carries MeSH descriptor names but not their tree numbers, so the top-level
MeSH categories (A Anatomy, C Diseases, ...) cannot be derived offline without the MeSH tree file;
the check tags are the category signal every record carries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from shared.tables import Abstract

TOP_JOURNALS = 15
ANIMALS = {"Animals", "Mice", "Rats", "Dogs", "Swine", "Cattle", "Rabbits", "Sheep", "Zebrafish", "Drosophila"}


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
