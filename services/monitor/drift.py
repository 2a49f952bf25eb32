"""Drift between a reference and a current set of texts (abstracts or questions), with calibrated verdicts.

Columns checked: the text itself (Evidently's TF-IDF domain classifier), three offline descriptors
(length, word count, sentence count), any extra columns the caller passes (year, journal, subjects,
...), and optionally sentence embeddings (Evidently's EmbeddingsDrift, a classifier told to separate
reference from current vectors).

Every column gets a two-sample p-value, computed here:
- categorical columns: chi-square test of independence on the 2 x k table of counts (sparse
  categories merged, Fisher's exact test when too few rows are left for a chi-square);
- identity columns (`journal_name`: the raw journal, most of which appear once in a few hundred
  abstracts, so no count test sees them): a permutation test of familiarity, whether rows find their
  value on the other side less often than on their own;
- numeric columns (descriptors, extra numeric columns): two-sample Kolmogorov-Smirnov;
- text and embeddings: Evidently's domain-classifier ROC AUC on its held-out half, turned into a
  one-sided p-value with the exact null variance of a Mann-Whitney AUC, (n1 + n2 + 1) / (12 n1 n2).
Each score entry says its unit: a p-value column's threshold is alpha, an AUC column's threshold is
the AUC whose p-value is alpha (never Evidently's 0.95 percentile beside an AUC).

Verdict: drift when Holm-Bonferroni over the voting columns' p-values rejects at least one at the
family alpha (MEDQA_DRIFT_ALPHA, 0.05): the chance of a false alarm is at most alpha whatever the
dependence between columns (the descriptors move together). Informational columns (`year`: a pure
time advance always moves it) are scored but do not vote. A window smaller than `min_rows` a side
gets status "not_enough_data" and `needed_rows` instead of a verdict it cannot support.

Evidently still draws the HTML report (per-column distributions, our tests where it can run them);
our verdict is written at its top.
"""

from __future__ import annotations

import hashlib
import html
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.descriptors import SentenceCount, TextLength, WordCount
from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
from evidently.legacy.core import ColumnType
from evidently.legacy.metrics.data_drift import embeddings_drift as _evidently_embeddings
from evidently.metrics import EmbeddingsDrift, ValueDrift
from evidently.metrics.embeddings import ModelDriftMethod
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

TEXT_COLUMN = "text"
# OOV and Sentiment are left out: they download NLTK data and fail offline.
DESCRIPTOR_COLUMNS = ("text_length", "word_count", "sentence_count")
EMBEDDINGS = "embeddings"  # the name of the embedding block in scores
# Reported but never voting: a window of later abstracts always has later years.
INFORMATIONAL = ("year",)
# Columns of identities (every value rare) tested for familiarity, not counts.
IDENTITY_COLUMNS = ("journal_name",)
PERMUTATIONS = 2000
FAMILY_ALPHA = 0.05
# Rows a side below which the monitor declines a verdict. Measured, not assumed: bench/drift.py
# ("target_shift") runs the shift the monitor is for, a complete year-and-journal shift (NLM abstracts
# of the 2019-2021 files as the reference, abstracts of 2023-2025 from journals those files never
# have as the current window), over 10 seeds at current sizes 30, 40, 55, 60, 75: detected in 1, 2
# and then 10 of 10 seeds from 55 on (the journal_name familiarity test carries it: most journals
# appear once, and year does not vote); 60 keeps a margin over the measured 55. It assumes a reference
# at least twice as large, as the champion's training data is; two windows of 55 each found such a
# shift in under a third of seeds.
# MEDQA_DRIFT_MIN_ROWS (shared/settings.py) carries the same number.
NEEDED_ROWS = 60
# Cochran's rule for a chi-square approximation: at least 5 expected rows in every cell.
MIN_EXPECTED = 5.0
# Evidently's domain classifiers (text and embeddings) test on this held-out share with this seed.
_CLASSIFIER_SPLIT = {"test_size": 0.5, "random_state": 42, "shuffle": True}

# Our verdict line at the top of the HTML report.
HTML_VERDICT = {True: "MedQA-CL verdict: drift", False: "MedQA-CL verdict: no drift"}

_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_EMBEDDINGS_DRIFT = "evidently:metric_v2:EmbeddingsDrift"
# Evidently draws the embedding widget of its HTML report from a t-SNE of up to 2,500 points a side:
# 30 s of a 2,000 x 2,000 check on a 2-core CPU, for a picture. 300 a side draws the same picture in
# about a second. The drift score itself still uses every row.
_evidently_embeddings.SAMPLE_CONSTANT = 300


@dataclass
class DriftResult:
    status: str  # "drift" | "no_drift" | "not_enough_data"
    detected: bool
    # column -> {"method", "score", "threshold", "drifted", "unit", "p_value", "holm_p" | "informational"}
    scores: dict[str, dict[str, Any]]
    n_reference: int
    n_current: int
    html_path: Path | None  # the HTML report; None when not_enough_data
    family_alpha: float = FAMILY_ALPHA
    needed_rows: int | None = None  # rows a side a verdict needs; set when not_enough_data
    drifted_columns: list[str] = field(default_factory=list)  # rejected by Holm at family_alpha

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "detected": self.detected,
            "rule": "holm",
            "family_alpha": self.family_alpha,
            "drifted_columns": self.drifted_columns,
            "needed_rows": self.needed_rows,
            "scores": self.scores,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "html_path": None if self.html_path is None else str(self.html_path),
        }


def text_drift(
    reference: Sequence[str],
    current: Sequence[str],
    *,
    html_path: Path,
    min_rows: int = NEEDED_ROWS,
    family_alpha: float = FAMILY_ALPHA,
    extra_reference: pd.DataFrame | None = None,
    extra_current: pd.DataFrame | None = None,
    embeddings_reference: np.ndarray | None = None,
    embeddings_current: np.ndarray | None = None,
    informational: Iterable[str] = INFORMATIONAL,
) -> DriftResult:
    """Score every column with a two-sample test, decide by Holm at `family_alpha`, write the HTML.

    Fewer than `min_rows` on either side: status "not_enough_data", needed_rows=min_rows, no report.

    Raises ValueError on mismatched extra columns, and (from scikit-learn, inside Evidently) when every
    non-stop-word term is in over half the texts: its TF-IDF has max_df=0.5 and then has no terms left.
    """
    n_ref, n_cur = len(reference), len(current)
    # Inputs are checked first, so a caller's mistake shows on small windows too.
    ref_df, cur_df, emb_cols = _frames(reference, current, extra_reference, extra_current,
                                       embeddings_reference, embeddings_current)
    if min(n_ref, n_cur) < min_rows:
        return DriftResult("not_enough_data", False, {}, n_ref, n_cur, None, family_alpha, needed_rows=min_rows)
    definition = _definition(ref_df, emb_cols)
    ref_ds, cur_ds = _dataset(ref_df, definition), _dataset(cur_df, definition)
    html_path = Path(html_path)
    snapshot = _run_report(_metrics(definition, family_alpha, n_ref, n_cur), ref_ds, cur_ds)
    scores = {**_classifier_scores(snapshot.dict(), n_ref, n_cur, family_alpha),
              **_column_scores(ref_ds.as_dataframe(), cur_ds.as_dataframe(), definition, family_alpha)}
    drifted = holm(scores, family_alpha, informational=set(informational))
    detected = bool(drifted)
    result = DriftResult("drift" if detected else "no_drift", detected, scores, n_ref, n_cur, html_path,
                         family_alpha, drifted_columns=drifted)
    _save_html(snapshot, result, html_path)
    return result


# -- the tests ---------------------------------------------------------------------------------------


def chi2_two_sample(reference: Iterable[Any], current: Iterable[Any], *, min_expected: float = MIN_EXPECTED,
                    permutations: int = PERMUTATIONS, seed: int | None = None) -> float:
    """p-value that two samples of a categorical variable come from one distribution.

    The chi-square statistic of independence on the 2 x k table (sample x category): unlike a
    goodness-of-fit test against the reference's counts, it counts the reference's own sampling noise.
    Its p-value comes from permuting the side labels (seeded by the data, the observed split counted in), not
    from the chi-square curve: on 1,000 halves of pooled NLM files the asymptotic p-value flagged
    journal 5.2% and subjects 5.1% of the time at 0.05, a permutation p-value is exact by
    construction. Categories too rare for `min_expected` rows in each cell are merged into one (which
    looks only at pooled counts, so it cannot bias the test); where that leaves fewer than two
    columns, Fisher's exact test on the commonest category vs the rest.
    """
    ref = [str(v) for v in reference if v is not None and not (isinstance(v, float) and math.isnan(v))]
    cur = [str(v) for v in current if v is not None and not (isinstance(v, float) and math.isnan(v))]
    codes, categories = pd.factorize(pd.Series(ref + cur, dtype=object))
    if len(categories) < 2 or not ref or not cur:
        return 1.0
    is_ref = np.r_[np.ones(len(ref), bool), np.zeros(len(cur), bool)]
    table = np.stack([np.bincount(codes[is_ref], minlength=len(categories)),
                      np.bincount(codes[~is_ref], minlength=len(categories))]).astype(float)
    column = _merge_columns(table, min_expected)
    merged_codes = column[codes]
    k = int(column.max()) + 1
    if k < 2:
        top = int(np.argmax(table.sum(axis=0)))
        two_by_two = np.stack([table[:, top], table.sum(axis=1) - table[:, top]], axis=1)
        return float(stats.fisher_exact(two_by_two).pvalue)
    onehot = np.eye(k)[merged_codes]  # rows x merged categories
    totals = onehot.sum(axis=0)
    expected_ref = totals * len(ref) / len(codes)
    expected_cur = totals - expected_ref

    def statistic(ref_counts: np.ndarray) -> np.ndarray:
        cur_counts = totals - ref_counts
        return (((ref_counts - expected_ref) ** 2 / expected_ref).sum(-1)
                + ((cur_counts - expected_cur) ** 2 / expected_cur).sum(-1))

    observed = statistic(is_ref @ onehot)
    rng = np.random.default_rng(_data_seed(ref, cur) if seed is None else seed)
    shuffled = rng.permuted(np.tile(is_ref, (permutations, 1)), axis=1)
    null = statistic(shuffled.astype(float) @ onehot)
    return float((1 + np.sum(null >= observed - 1e-9)) / (1 + permutations))


def _data_seed(reference: list[str], current: list[str]) -> int:
    """A permutation seed drawn from the data: the same windows give the same p-value, and different
    windows get independent permutations. One fixed seed would reuse one set of permutations for every
    window of a size, so one unlucky draw of the null's tail would bias every verdict the same way (on
    2,000 NLM halves the subjects column flagged 5.2% with seed 0)."""
    digest = hashlib.blake2b(digest_size=8)
    for side in (reference, current):
        digest.update(b"\x1e".join(v.encode() for v in side))
        digest.update(b"\x1d")
    return int.from_bytes(digest.digest(), "little")


def _merge_columns(table: np.ndarray, min_expected: float) -> np.ndarray:
    """Merged column index per category: the categories whose expected count in the smaller sample is
    under `min_expected` are pooled into one; a pool still under it joins the smallest kept category."""
    n = table.sum()
    totals = table.sum(axis=0)
    smaller_share = table.sum(axis=1).min() / n
    keep = totals * smaller_share >= min_expected
    column = np.full(len(totals), -1)
    column[keep] = np.arange(int(keep.sum()))
    pool = totals[~keep].sum()
    if pool == 0:
        return column
    if pool * smaller_share >= min_expected or not keep.any():
        column[~keep] = int(keep.sum())
    else:
        kept = np.flatnonzero(keep)
        column[~keep] = column[kept[int(np.argmin(totals[kept]))]]
    return column


def familiarity_two_sample(reference: Iterable[Any], current: Iterable[Any], *, permutations: int = PERMUTATIONS,
                           seed: int | None = None) -> float:
    """One-sided p-value that the two sides' values are strangers to each other (a journal shift).

    Statistic, over every row: the share whose value recurs on its own side minus the share whose value
    appears on the other side. Rows of one source find partners on either side about equally; after a
    complete journal shift no row finds one across, while the journals that recur (on both sides) still
    find partners at home. Rows sharing a value are not independent, so the null distribution comes from
    permuting the side labels (exact whatever the clustering), seeded by the data, the observed split
    counted in it.
    """
    ref = [str(v) for v in reference if isinstance(v, str) and v]
    cur = [str(v) for v in current if isinstance(v, str) and v]
    if not ref or not cur:
        return 1.0
    codes = pd.factorize(pd.Series(ref + cur))[0]
    is_ref = np.r_[np.ones(len(ref), bool), np.zeros(len(cur), bool)]
    observed = _familiarity_gap(codes, is_ref)
    rng = np.random.default_rng(_data_seed(ref, cur) if seed is None else seed)
    null = np.array([_familiarity_gap(codes, rng.permutation(is_ref)) for _ in range(permutations)])
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))


def _familiarity_gap(codes: np.ndarray, is_ref: np.ndarray) -> float:
    size = codes.max() + 1
    in_ref = np.bincount(codes[is_ref], minlength=size)[codes]
    in_cur = np.bincount(codes[~is_ref], minlength=size)[codes]
    at_home = np.where(is_ref, in_ref >= 2, in_cur >= 2)  # another row of its own side has it
    across = np.where(is_ref, in_cur >= 1, in_ref >= 1)
    return float(at_home.mean() - across.mean())


def ks_two_sample(reference: Iterable[float], current: Iterable[float]) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (missing values dropped; 1.0 when a side is empty).
    Counts have ties, which make K-S conservative: never more false flags than alpha."""
    ref = pd.to_numeric(pd.Series(list(reference)), errors="coerce").dropna().to_numpy()
    cur = pd.to_numeric(pd.Series(list(current)), errors="coerce").dropna().to_numpy()
    if len(ref) == 0 or len(cur) == 0:
        return 1.0
    return float(stats.ks_2samp(ref, cur).pvalue)


def classifier_null_se(n_ref: int, n_cur: int) -> float:
    """Standard error of a chance ROC AUC on the held-out half Evidently scores its domain classifier
    on. The split is reproduced (same sizes, seed and order: reference rows first), so the counts of
    each side in it are exact; the classifier never saw these rows, so under no drift its AUC is a
    Mann-Whitney statistic of exchangeable labels, with variance (n1 + n2 + 1) / (12 n1 n2)."""
    labels = np.r_[np.zeros(n_ref), np.ones(n_cur)]
    _, test = train_test_split(labels, **_CLASSIFIER_SPLIT)
    pos = max(1, int(test.sum()))
    neg = max(1, len(test) - pos)
    return math.sqrt((pos + neg + 1) / (12 * pos * neg))


def auc_p_value(auc: float, n_ref: int, n_cur: int) -> float:
    """One-sided p-value of a domain-classifier AUC (only AUC above 0.5 means the sides differ)."""
    return float(stats.norm.sf((auc - 0.5) / classifier_null_se(n_ref, n_cur)))


def auc_threshold(alpha: float, n_ref: int, n_cur: int) -> float:
    """The AUC whose p-value is `alpha`: the threshold in the unit of the classifier's score."""
    return float(0.5 + stats.norm.isf(alpha) * classifier_null_se(n_ref, n_cur))


def holm(scores: dict[str, dict[str, Any]], family_alpha: float, *, informational: set[str]) -> list[str]:
    """Holm-Bonferroni over the voting columns: writes each one's adjusted p-value ("holm_p") and marks
    informational ones; returns the columns rejected at `family_alpha` (the family-wise error rate)."""
    voting = sorted((c for c in scores if c not in informational), key=lambda c: (scores[c]["p_value"], c))
    m, running = len(voting), 0.0
    for rank, column in enumerate(voting):
        # Adjusted p-values are monotone: a column is rejected only if every smaller one is.
        running = max(running, min(1.0, (m - rank) * scores[column]["p_value"]))
        scores[column]["holm_p"] = running
    for column in informational & set(scores):
        scores[column]["informational"] = True
    return sorted(c for c in voting if scores[c]["holm_p"] < family_alpha)


# -- columns and their scores ------------------------------------------------------------------------


def _column_scores(ref: pd.DataFrame, cur: pd.DataFrame, definition: DataDefinition,
                   alpha: float) -> dict[str, dict[str, Any]]:
    """Our own tests of the descriptor and extra columns (descriptor values as Evidently computed them)."""
    scores: dict[str, dict[str, Any]] = {}
    for column in [*DESCRIPTOR_COLUMNS, *(definition.numerical_columns or [])]:
        scores[column] = _p_entry("ks", ks_two_sample(ref[column], cur[column]), alpha)
    for column in definition.categorical_columns or []:
        if column in IDENTITY_COLUMNS:
            scores[column] = _p_entry("familiarity_permutation", familiarity_two_sample(ref[column], cur[column]),
                                      alpha)
        else:
            scores[column] = _p_entry("chi2_contingency", chi2_two_sample(ref[column], cur[column]), alpha)
    return scores


def _p_entry(method: str, p: float, alpha: float) -> dict[str, Any]:
    return {"method": method, "score": p, "threshold": alpha, "drifted": p < alpha, "unit": "p-value",
            "p_value": p}


def _auc_entry(method: str, auc: float, n_ref: int, n_cur: int, alpha: float) -> dict[str, Any]:
    p = auc_p_value(auc, n_ref, n_cur)
    return {"method": method, "score": auc, "threshold": auc_threshold(alpha, n_ref, n_cur), "drifted": p < alpha,
            "unit": "roc_auc", "p_value": p}


def _classifier_scores(snap: dict[str, Any], n_ref: int, n_cur: int, alpha: float) -> dict[str, dict[str, Any]]:
    """The text and embedding classifiers' AUCs from Evidently's snapshot, with our p-values."""
    scores: dict[str, dict[str, Any]] = {}
    for metric in snap["metrics"]:
        config = metric["config"]
        if config["type"] == _EMBEDDINGS_DRIFT:
            scores[EMBEDDINGS] = _auc_entry("embeddings_domain_classifier", float(metric["value"]), n_ref, n_cur,
                                            alpha)
        elif config["type"] == _VALUE_DRIFT and config["column"] == TEXT_COLUMN:
            scores[TEXT_COLUMN] = _auc_entry("text_domain_classifier", float(metric["value"]), n_ref, n_cur, alpha)
    if TEXT_COLUMN not in scores:
        raise RuntimeError("Evidently snapshot has no text drift result")
    return scores


# -- Evidently: the classifiers and the picture ------------------------------------------------------


def _chi2_for_evidently(reference: pd.Series, current: pd.Series, feature_type: ColumnType,
                        threshold: float) -> tuple[float, bool]:
    p = chi2_two_sample(reference, current)
    return p, p < threshold


# Registered so that Evidently's HTML shows the same categorical test as our scores, not its
# goodness-of-fit chi-square (which ignores the reference's sampling noise).
register_stattest(StatTest(name="chi2_contingency", display_name="chi-square test of independence (2 x k)",
                           allowed_feature_types=[ColumnType.Categorical], default_threshold=FAMILY_ALPHA),
                  _chi2_for_evidently)


def _metrics(definition: DataDefinition, alpha: float, n_ref: int, n_cur: int) -> list[Any]:
    """Evidently's metrics: the text classifier (its AUC is read back) and, for the picture, each
    column under the test we score it with."""
    metrics: list[Any] = [ValueDrift(column=TEXT_COLUMN)]
    metrics += [ValueDrift(column=c, method="ks", threshold=alpha)
                for c in [*DESCRIPTOR_COLUMNS, *(definition.numerical_columns or [])]]
    # Identity columns are left out of the picture: a histogram of hundreds of one-row journals says nothing.
    metrics += [ValueDrift(column=c, method="chi2_contingency", threshold=alpha)
                for c in definition.categorical_columns or [] if c not in IDENTITY_COLUMNS]
    if definition.embeddings:
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDINGS,
                                       drift_method=ModelDriftMethod(threshold=auc_threshold(alpha, n_ref, n_cur))))
    return metrics


def _run_report(metrics: list[Any], ref_ds: Dataset, cur_ds: Dataset) -> Snapshot:
    """Run the report and return Evidently's snapshot."""
    # Results are deterministic because Evidently fixes its own seeds (random_state=42 for the split and
    # the classifier). Its bootstrap reseeds the global NumPy RNG, so restore the caller's state afterwards.
    rng_state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            # Evidently's domain classifier is an SGDClassifier fixed at max_iter=50: its
            # ConvergenceWarning is noise we cannot act on.
            warnings.simplefilter("ignore", ConvergenceWarning)
            return Report(metrics).run(current_data=cur_ds, reference_data=ref_ds)  # Evidently's argument order
    finally:
        np.random.set_state(rng_state)


def _save_html(snapshot: Snapshot, result: DriftResult, html_path: Path) -> None:
    """Evidently's HTML with our verdict and score table at the top of its body."""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    page = html_path.read_text(encoding="utf-8")
    at = page.find(">", page.find("<body")) + 1 if "<body" in page else 0
    html_path.write_text(page[:at] + _verdict_html(result) + page[at:], encoding="utf-8")


def _verdict_html(result: DriftResult) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{html.escape(v['method'])}</td><td>{v['score']:.4g} {v['unit']}</td>"
        f"<td>{v['threshold']:.4g}</td><td>{v['p_value']:.3g}</td>"
        f"<td>{'informational' if v.get('informational') else format(v['holm_p'], '.3g')}</td></tr>"
        for c, v in sorted(result.scores.items()))
    return (f'<div id="medqa-verdict" style="font-family:sans-serif;margin:1em">'
            f"<h2>{HTML_VERDICT[result.detected]}</h2>"
            f"<p>Holm-Bonferroni over the voting columns at family alpha {result.family_alpha:g}; "
            f"drifted: {html.escape(', '.join(result.drifted_columns) or 'none')}. The per-column widgets below "
            f"are Evidently's pictures at the unadjusted threshold.</p>"
            f"<table><tr><th>column</th><th>method</th><th>score</th><th>threshold</th><th>p-value</th>"
            f"<th>Holm p</th></tr>{rows}</table></div>")


# -- frames -------------------------------------------------------------------------------------------


def _frames(reference: Sequence[str], current: Sequence[str], extra_reference: pd.DataFrame | None,
            extra_current: pd.DataFrame | None, embeddings_reference: np.ndarray | None,
            embeddings_current: np.ndarray | None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(reference frame, current frame, embedding column names): texts, extra columns, and one column
    per embedding dimension when both embedding sets are given."""
    ref_df = _frame(reference, extra_reference)
    cur_df = _frame(current, extra_current)
    if list(ref_df.columns) != list(cur_df.columns):
        raise ValueError(f"extra columns differ: {list(ref_df.columns)} vs {list(cur_df.columns)}")
    emb_cols: list[str] = []
    if embeddings_reference is not None and embeddings_current is not None:
        if (len(embeddings_reference), len(embeddings_current)) != (len(reference), len(current)):
            raise ValueError("embeddings must have one row per text")
        emb_cols = [f"emb_{i}" for i in range(embeddings_reference.shape[1])]
        ref_df = pd.concat([ref_df, pd.DataFrame(embeddings_reference, columns=emb_cols)], axis=1)
        cur_df = pd.concat([cur_df, pd.DataFrame(embeddings_current, columns=emb_cols)], axis=1)
    return ref_df, cur_df, emb_cols


def _frame(texts: Sequence[str], extra: pd.DataFrame | None) -> pd.DataFrame:
    df = pd.DataFrame({TEXT_COLUMN: ["" if t is None else str(t) for t in texts]})
    if extra is None:
        return df
    if len(extra) != len(df):
        raise ValueError(f"extra columns have {len(extra)} rows, texts have {len(df)}")
    clash = {TEXT_COLUMN, EMBEDDINGS, *DESCRIPTOR_COLUMNS} & set(extra.columns)
    if clash:
        raise ValueError(f"extra column names are reserved: {sorted(clash)}")
    return pd.concat([df, extra.reset_index(drop=True)], axis=1)


def _definition(df: pd.DataFrame, emb_cols: list[str]) -> DataDefinition:
    # Declare every column's type: Evidently's inference depends on the values (an int year column with
    # few distinct years becomes categorical, a string column with mostly unique values becomes text).
    # Embedding columns are declared only as the embedding block: one classifier over the vectors,
    # not 384 per-dimension tests.
    extra = [c for c in df.columns if c != TEXT_COLUMN and c not in set(emb_cols)]
    numeric = [c for c in extra if _is_number(df[c])]
    return DataDefinition(
        text_columns=[TEXT_COLUMN],
        numerical_columns=numeric,
        categorical_columns=[c for c in extra if c not in numeric],
        embeddings={EMBEDDINGS: emb_cols} if emb_cols else None,
    )


def _is_number(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _dataset(df: pd.DataFrame, definition: DataDefinition) -> Dataset:
    descriptors = [
        TextLength(TEXT_COLUMN, alias="text_length"),
        WordCount(TEXT_COLUMN, alias="word_count"),
        SentenceCount(TEXT_COLUMN, alias="sentence_count"),
    ]
    return Dataset.from_pandas(df, data_definition=definition, descriptors=descriptors)
