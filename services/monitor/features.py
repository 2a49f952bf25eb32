"""What the monitor compares besides texts and embeddings: metadata columns of abstracts.

Metadata columns for abstracts: publication year (numeric), journal (the 15 commonest journals of
both sides pooled, else "other"), the journal's name itself (for services.monitor.drift's familiarity
test), and the study subjects from MeSH check tags (humans / animals / both /
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
    """Extra drift columns for both sides.

    The journal vocabulary comes from both sides pooled, ties broken by name. Taken from the reference
    alone it made every reference row a "known" journal and most current rows "other" wherever journals
    rarely repeat (most of them, in a few hundred abstracts): random halves of one file looked shifted.
    Pooled counts do not depend on which side a row is on, so the two-sample test stays exact.
    """
    counts = Counter(r.journal for r in [*reference, *current] if r.journal)
    top = set(sorted(counts, key=lambda j: (-counts[j], j))[:TOP_JOURNALS])

    def frame(rows: Sequence[Abstract]) -> pd.DataFrame:
        return pd.DataFrame({
            "year": [float(d.year) if (d := r.entrez_date or r.pub_date) else np.nan for r in rows],
            "journal": [r.journal if r.journal in top else "other" for r in rows],
            # The journal itself, for the familiarity test: most journals appear once in a window, so
            # only whether the current window's journals are known to the reference can show a shift.
            "journal_name": [r.journal or None for r in rows],
            "subjects": [_subjects(r.mesh_terms) for r in rows],
        })

    return frame(reference), frame(current)
