"""Text drift between a reference and a current set of texts (abstracts or questions), with Evidently 0.7.

Columns checked: the text itself (Evidently's TF-IDF domain classifier), three offline descriptors
(length, word count, sentence count), any extra columns the caller passes (year, journal, ...), and
optionally sentence embeddings through Evidently's EmbeddingsDrift (a classifier told to separate
reference from current vectors; drift when its ROC AUC exceeds 0.55).
The verdict and the per-column scores are read from Evidently's snapshot, never recomputed here:
drift = Evidently's dataset-drift test fails (share of drifted columns >= drift_share), or its
embedding drift score passes the method's threshold.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.descriptors import SentenceCount, TextLength, WordCount
from evidently.legacy.metrics.data_drift import embeddings_drift as _evidently_embeddings
from evidently.metrics import EmbeddingsDrift
from evidently.metrics.embeddings import ModelDriftMethod
from evidently.presets import DataDriftPreset
from sklearn.exceptions import ConvergenceWarning

TEXT_COLUMN = "text"
# OOV and Sentiment are left out: they download NLTK data and fail offline.
DESCRIPTOR_COLUMNS = ("text_length", "word_count", "sentence_count")

# Evidently's own verdict line in its HTML report, e.g. "Dataset Drift is NOT detected. Dataset drift ...".
HTML_VERDICT = {True: "Dataset Drift is detected", False: "Dataset Drift is NOT detected"}

_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_EMBEDDINGS_DRIFT = "evidently:metric_v2:EmbeddingsDrift"
EMBEDDINGS = "embeddings"  # the name of the embedding block in scores
EMBEDDING_THRESHOLD = 0.55  # ROC AUC floor of Evidently's domain classifier over the vectors (its default)
# Evidently draws the embedding widget of its HTML report from a t-SNE of up to 2,500 points a side:
# 30 s of a 2,000 x 2,000 check on a 2-core CPU, for a picture. 300 a side draws the same picture in
# about a second. The drift score itself still uses every row.
_evidently_embeddings.SAMPLE_CONSTANT = 300
_DRIFTED_COLUMNS = "evidently:metric_v2:DriftedColumnsCount"


@dataclass
class DriftResult:
    status: str  # "drift" | "no_drift" | "not_enough_data"
    detected: bool
    share_drifted: float  # share of drifted columns
    scores: dict[str, dict[str, Any]]  # column -> {"method", "score", "threshold", "drifted"}
    n_reference: int
    n_current: int
    html_path: Path | None  # Evidently's HTML report; None when not_enough_data

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "detected": self.detected,
            "share_drifted": self.share_drifted,
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
    min_rows: int = 20,
    extra_reference: pd.DataFrame | None = None,
    extra_current: pd.DataFrame | None = None,
    drift_share: float = 0.5,
    embeddings_reference: np.ndarray | None = None,
    embeddings_current: np.ndarray | None = None,
) -> DriftResult:
    """Run Evidently's DataDriftPreset (with tests) on texts plus descriptors and write its HTML report.

    Dataset drift means: share of drifted columns >= drift_share (Evidently's rule). A pure vocabulary
    shift drifts only the text column, i.e. 1 of 4 columns, so it stays below the default 0.5.

    Raises ValueError on mismatched extra columns, and (from scikit-learn, inside Evidently) when every
    non-stop-word term is in over half the texts: its TF-IDF has max_df=0.5 and then has no terms left.
    """
    n_ref, n_cur = len(reference), len(current)
    if min(n_ref, n_cur) < min_rows:
        return DriftResult("not_enough_data", False, 0.0, {}, n_ref, n_cur, None)
    ref_df, cur_df, emb_cols = _frames(reference, current, extra_reference, extra_current,
                                       embeddings_reference, embeddings_current)
    html_path = Path(html_path)
    snapshot = _run_report(_metrics(n_ref, n_cur, drift_share, embeddings=bool(emb_cols)),
                           ref_df, cur_df, _definition(ref_df, emb_cols), html_path)
    detected, share, scores = _read_snapshot(snapshot.dict())
    return DriftResult("drift" if detected else "no_drift", detected, share, scores, n_ref, n_cur, html_path)


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


def _metrics(n_ref: int, n_cur: int, drift_share: float, *, embeddings: bool) -> list[Any]:
    # Length, word and sentence counts move together: at Evidently's K-S p < 0.05 one chance wobble
    # drifts three columns at once (3 of 4: a false alarm in bench/drift.py's same-distribution
    # splits). p < 0.01 for numeric columns where Evidently uses K-S (reference <= 1,000 rows; above,
    # it switches to a Wasserstein distance, whose own 0.1 threshold stays).
    num_threshold = 0.01 if n_ref <= 1000 else None
    metrics: list[Any] = [DataDriftPreset(drift_share=drift_share, num_threshold=num_threshold)]
    if embeddings:
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDINGS,
                                       drift_method=ModelDriftMethod(threshold=embedding_threshold(n_ref, n_cur))))
    return metrics


def _run_report(metrics: list[Any], ref_df: pd.DataFrame, cur_df: pd.DataFrame, definition: DataDefinition,
                html_path: Path) -> Snapshot:
    """Run the report (with tests), write its HTML to `html_path`, and return Evidently's snapshot."""
    # Results are deterministic because Evidently fixes its own seeds (random_state=42 for the split and
    # the classifier, np.random.seed(42) for the bootstrap). That last one reseeds the global NumPy RNG,
    # so restore the caller's state afterwards.
    rng_state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            # Evidently's domain classifier is an SGDClassifier fixed at max_iter=50: its
            # ConvergenceWarning is noise we cannot act on.
            warnings.simplefilter("ignore", ConvergenceWarning)
            snapshot = Report(metrics, include_tests=True).run(
                current_data=_dataset(cur_df, definition),  # current first: Evidently's argument order
                reference_data=_dataset(ref_df, definition),
            )
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
    finally:
        np.random.set_state(rng_state)
    return snapshot


def embedding_threshold(n_ref: int, n_cur: int) -> float:
    """ROC AUC above which the embedding classifier means drift: Evidently's 0.55, raised to three
    standard errors of a chance AUC where samples are small. Evidently tests its classifier on half
    the rows; at 300 a side a chance AUC spreads +-0.033, so a flat 0.55 false-alarms ~7% of the time,
    while at 2,000 a side 0.55 is already 5 standard errors out."""
    pos, neg = max(1, n_ref // 2), max(1, n_cur // 2)
    se = ((pos + neg + 1) / (12 * pos * neg)) ** 0.5  # Hanley & McNeil's SE of AUC = 0.5
    return max(EMBEDDING_THRESHOLD, 0.5 + 3 * se)


def _frame(texts: Sequence[str], extra: pd.DataFrame | None) -> pd.DataFrame:
    df = pd.DataFrame({TEXT_COLUMN: ["" if t is None else str(t) for t in texts]})
    if extra is None:
        return df
    if len(extra) != len(df):
        raise ValueError(f"extra columns have {len(extra)} rows, texts have {len(df)}")
    clash = {TEXT_COLUMN, *DESCRIPTOR_COLUMNS} & set(extra.columns)
    if clash:
        raise ValueError(f"extra column names are reserved: {sorted(clash)}")
    return pd.concat([df, extra.reset_index(drop=True)], axis=1)


def _definition(df: pd.DataFrame, emb_cols: list[str]) -> DataDefinition:
    # Declare every column's type: Evidently's inference depends on the values (an int year column with
    # few distinct years becomes categorical, a string column with mostly unique values becomes text).
    # Embedding columns are declared only as the embedding block: 384 per-column tests would drown the
    # share-of-drifted-columns rule.
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


def _read_snapshot(snap: dict[str, Any]) -> tuple[bool, float, dict[str, dict[str, Any]]]:
    """Verdict, drifted share and per-column scores, as Evidently reported them."""
    # Tests point at their metric by id; a failed test is a drift.
    failed = {t["metric_config"]["metric_id"]: t["status"] == "FAIL" for t in snap["tests"]}
    detected: bool | None = None
    share = 0.0
    scores: dict[str, dict[str, Any]] = {}
    for metric in snap["metrics"]:
        config = metric["config"]
        if config["type"] == _EMBEDDINGS_DRIFT:
            method = config["drift_method"]
            score = float(metric["value"])
            scores[EMBEDDINGS] = {"method": method["type"].rsplit(":", 1)[-1], "score": score,
                                  "threshold": float(method["threshold"]), "drifted": score > method["threshold"]}
        elif config["type"] == _DRIFTED_COLUMNS:
            # Its test is "share < drift_share"; failing it is Evidently's dataset drift.
            detected = failed[metric["id"]]
            share = float(metric["value"]["share"])
        elif config["type"] == _VALUE_DRIFT:
            scores[config["column"]] = {
                "method": config["method"],
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
                "drifted": failed[metric["id"]],
            }
    if detected is None:
        raise RuntimeError("Evidently snapshot has no DriftedColumnsCount result")
    return detected or scores.get(EMBEDDINGS, {}).get("drifted", False), share, scores
