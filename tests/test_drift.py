"""Text drift with Evidently: synthetic topic shifts written here, plus MedQuAD when ../shared/data exists."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from services.monitor.drift import (
    HTML_VERDICT,
    NEEDED_ROWS,
    PERMUTATIONS,
    DriftResult,
    _data_seed,
    auc_p_value,
    auc_threshold,
    chi2_two_sample,
    familiarity_two_sample,
    holm,
    text_drift,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def words(text: str) -> list[str]:
    return text.split()


# Our own vocabularies. Lists are long enough that no term sits in over half the documents: Evidently's
# TF-IDF uses max_df=0.5 and raises "no terms remain" on a tiny vocabulary.
COMMON = words(
    "patients study group risk compared clinical trial outcome years treatment mean associated cohort "
    "baseline follow hospital analysis results significant higher lower increased reduced therapy age"
)
CARDIOLOGY = words(
    "heart cardiac coronary artery atrial fibrillation ventricular myocardial infarction stent "
    "angioplasty hypertension valve aortic arrhythmia ejection statin anticoagulation pacemaker "
    "echocardiography cardiomyopathy angina thrombosis bypass graft mitral stenosis regurgitation "
    "tachycardia bradycardia syncope defibrillator catheterization troponin cholesterol endocarditis "
    "pericarditis aneurysm"
)
ONCOLOGY = words(
    "tumor carcinoma metastasis chemotherapy lymphoma biopsy radiotherapy malignant leukemia melanoma "
    "immunotherapy neoplasm staging remission cytotoxic mastectomy sarcoma adjuvant neoadjuvant resection "
    "glioma myeloma oncogene mutation kinase inhibitor checkpoint antibody recurrence survival "
    "progression palliative cisplatin tamoxifen trastuzumab mammography adenocarcinoma squamous blastoma"
)

N = 200  # below Evidently's 1000-row switch, so the bootstrap ("percentile") text test is the one exercised


def abstracts(topic: list[str], n: int, seed: int, sentences: tuple[int, int] = (4, 10)) -> list[str]:
    """n pseudo-abstracts: sentences of common words with about 30% topic words."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sents = []
        for _ in range(rng.randint(*sentences)):
            words = [rng.choice(topic if rng.random() < 0.3 else COMMON) for _ in range(rng.randint(8, 16))]
            sents.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sents))
    return docs


def metadata(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame(
        {
            "year": [rng.randint(2015, 2024) for _ in range(n)],
            "journal": [rng.choice(["Circulation", "JACC", "Eur Heart J"]) for _ in range(n)],
        }
    )


def shifted_years(n: int, seed: int) -> pd.DataFrame:
    """The same journals as metadata(), years of a later period only (a pure time advance)."""
    frame = metadata(n, seed)
    frame["year"] = frame["year"] + 10
    return frame


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DriftResult]:
    """Each Evidently run below 1000 rows takes seconds, so the tests share these."""
    out = tmp_path_factory.mktemp("drift")
    cardio = abstracts(CARDIOLOGY, N, seed=1)
    return {
        # Same generator, other seed, with extra metadata columns of the same distribution.
        "same": text_drift(
            cardio,
            abstracts(CARDIOLOGY, N, seed=2),
            html_path=out / "same.html",
            extra_reference=metadata(N, 1),
            extra_current=metadata(N, 2),
        ),
        # Same texts and journals, every year moved on: year drifts, alone.
        "year_only": text_drift(
            cardio,
            abstracts(CARDIOLOGY, N, seed=2),
            html_path=out / "year.html",
            extra_reference=metadata(N, 1),
            extra_current=shifted_years(N, 2),
        ),
        # A new field usually brings its own style too: oncology texts, written longer.
        "topic_and_style": text_drift(
            cardio, abstracts(ONCOLOGY, N, seed=2, sentences=(8, 14)), html_path=out / "shift.html"
        ),
        # Vocabulary only: same lengths, so only the text column can drift.
        "vocabulary": text_drift(cardio, abstracts(ONCOLOGY, N, seed=2), html_path=out / "vocab.html"),
    }


def assert_consistent(result: DriftResult) -> None:
    """detected agrees with the Holm rule over the voting columns, and with the HTML's verdict line."""
    assert result.detected == (result.status == "drift")
    voting = {c: v for c, v in result.scores.items() if not v.get("informational")}
    assert result.drifted_columns == sorted(c for c, v in voting.items() if v["holm_p"] < result.family_alpha)
    assert result.detected == bool(result.drifted_columns)
    for v in voting.values():
        assert v["p_value"] <= v["holm_p"] <= 1.0  # an adjusted p-value is never smaller
    assert result.html_path is not None and result.html_path.is_file()
    html = result.html_path.read_text(encoding="utf-8")
    assert HTML_VERDICT[result.detected] in html
    assert HTML_VERDICT[not result.detected] not in html
    assert json.loads(json.dumps(result.to_json()))["status"] == result.status


def test_same_distribution_is_no_drift(runs: dict[str, DriftResult]) -> None:
    result = runs["same"]
    assert result.status == "no_drift" and not result.detected
    assert set(result.scores) == {"text", "text_length", "word_count", "sentence_count", "year", "journal"}
    assert not result.scores["text"]["drifted"]
    assert result.scores["journal"]["method"] == "chi2_contingency"
    # Evidently's picture runs our contingency test for the categorical column, not its goodness of fit.
    assert "chi-square test of independence" in result.html_path.read_text(encoding="utf-8")
    assert_consistent(result)


def test_year_alone_does_not_make_drift(runs: dict[str, DriftResult]) -> None:
    result = runs["year_only"]
    year = result.scores["year"]
    assert year["drifted"] and year["score"] < 1e-10  # scored, and plainly moved
    assert year["informational"] and "holm_p" not in year
    assert result.status == "no_drift" and "year" not in result.drifted_columns
    assert_consistent(result)


def test_thresholds_are_in_the_unit_of_the_score(runs: dict[str, DriftResult]) -> None:
    for result in runs.values():
        for column, v in result.scores.items():
            assert {"method", "score", "threshold", "drifted", "unit", "p_value"} <= set(v), column
            if v["unit"] == "p-value":
                assert v["threshold"] == result.family_alpha and v["score"] == v["p_value"]
                assert v["drifted"] == (v["score"] < v["threshold"])
            else:
                # An AUC threshold: above chance, below perfect, and crossing it is the column's drift.
                assert v["unit"] == "roc_auc" and column == "text"
                assert 0.5 < v["threshold"] < 0.7
                assert v["drifted"] == (v["score"] > v["threshold"]) == (v["p_value"] < result.family_alpha)


def test_topic_and_style_shift_is_drift(runs: dict[str, DriftResult]) -> None:
    result = runs["topic_and_style"]
    assert result.status == "drift" and result.detected
    assert set(result.drifted_columns) == {"text", "text_length", "word_count", "sentence_count"}
    assert result.scores["text"]["method"] == "text_domain_classifier"
    assert (result.n_reference, result.n_current) == (N, N)
    assert_consistent(result)


def test_vocabulary_shift_alone_is_drift(runs: dict[str, DriftResult]) -> None:
    # One column rejected by Holm is enough: no share of columns has to move together.
    result = runs["vocabulary"]
    assert result.drifted_columns == ["text"]
    assert result.status == "drift"
    assert_consistent(result)


def test_deterministic_and_leaves_numpy_rng_alone(runs: dict[str, DriftResult], tmp_path: Path) -> None:
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    again = text_drift(
        abstracts(CARDIOLOGY, N, seed=1),
        abstracts(ONCOLOGY, N, seed=2, sentences=(8, 14)),
        html_path=tmp_path / "again.html",
    )
    assert np.random.rand() == expected_next
    first = runs["topic_and_style"].to_json()
    assert {**again.to_json(), "html_path": None} == {**first, "html_path": None}


def test_small_window_is_not_enough_data_with_needed_rows(tmp_path: Path) -> None:
    html = tmp_path / "small.html"
    # Even a complete topic shift: 30 rows a side is below what a verdict needs, so none is given.
    result = text_drift(abstracts(CARDIOLOGY, 30, 1), abstracts(ONCOLOGY, 50, 2), html_path=html, min_rows=40)
    assert result.status == "not_enough_data" and not result.detected
    assert result.needed_rows == 40 and result.to_json()["needed_rows"] == 40
    assert result.html_path is None and not html.exists()
    assert result.to_json()["n_reference"] == 30
    # The default is the measured size (bench/drift.py), and it is what the monitor's setting uses.
    default = text_drift(abstracts(CARDIOLOGY, 50, 1), abstracts(ONCOLOGY, 50, 2), html_path=html)
    assert default.status == "not_enough_data" and default.needed_rows == NEEDED_ROWS
    from shared.settings import Settings

    assert Settings.model_fields["drift_min_rows"].default == NEEDED_ROWS


def test_contingency_false_flags_stay_near_alpha() -> None:
    """Random halves of one categorical distribution (a few common, many rare categories, as journals
    are): the two-sample test flags about alpha of them; the goodness-of-fit test that took the
    reference's counts as truth flagged far more."""
    rng = np.random.default_rng(0)
    probs = np.r_[[0.3, 0.2, 0.1], np.full(40, 0.4 / 40)]
    trials, contingency, goodness = 600, 0, 0
    for _ in range(trials):
        ref, cur = rng.choice(len(probs), 60, p=probs), rng.choice(len(probs), 60, p=probs)
        contingency += chi2_two_sample(ref, cur) < 0.05
        goodness += _goodness_of_fit_p(ref, cur) < 0.05
    assert 0.02 <= contingency / trials <= 0.075
    assert goodness / trials > 2 * contingency / trials


def _goodness_of_fit_p(ref: np.ndarray, cur: np.ndarray) -> float:
    """The old test: current counts against the reference's shares, categories of the reference."""
    cats = np.unique(ref)
    expected = np.array([(ref == c).mean() for c in cats]) * np.isin(cur, cats).sum()
    observed = np.array([(cur == c).sum() for c in cats])
    return float(stats.chisquare(observed, expected).pvalue) if len(cats) > 1 else 1.0


def test_contingency_detects_a_shift_and_handles_tiny_tables() -> None:
    rng = np.random.default_rng(1)
    ref = rng.choice(["a", "b", "c", "d"], 80, p=[0.4, 0.3, 0.2, 0.1])
    cur = rng.choice(["a", "b", "c", "d"], 80, p=[0.1, 0.2, 0.3, 0.4])
    # A permutation p-value is at least 1 / (permutations + 1): no permutation reached the observed split.
    assert chi2_two_sample(ref, cur) == pytest.approx(1 / (PERMUTATIONS + 1))
    assert chi2_two_sample(ref, ref[::-1]) > 0.5  # the same values on both sides
    assert chi2_two_sample(["a"] * 5, ["a"] * 5) == 1.0  # one category: nothing to test
    # Too few rows for a chi-square: Fisher's exact test on commonest category vs the rest.
    assert chi2_two_sample(["a"] * 6, ["b"] * 6) == pytest.approx(stats.fisher_exact([[6, 0], [0, 6]]).pvalue)


def test_permutation_p_values_are_reproducible_and_drawn_per_window() -> None:
    """The permutations are seeded by the data: the same windows always give the same p-value, while
    another window gets its own permutations (one fixed seed reused one draw of the null for all)."""
    rng = np.random.default_rng(5)
    ref, cur = list(rng.choice(["a", "b", "c"], 70)), list(rng.choice(["a", "b", "c"], 70))
    assert chi2_two_sample(ref, cur) == chi2_two_sample(list(ref), list(cur))
    assert familiarity_two_sample(ref, cur) == familiarity_two_sample(list(ref), list(cur))
    # Between two explicit seeds the Monte Carlo p-value moves a little; the data's seed is one of many.
    explicit = {chi2_two_sample(ref, cur, permutations=200, seed=s) for s in range(6)}
    assert len(explicit) > 1
    assert _data_seed(ref, cur) != _data_seed(cur, ref)


def test_familiarity_flags_new_journals_and_stays_near_alpha_on_one_source() -> None:
    rng = np.random.default_rng(3)
    # Journals as in a PubMed window: a few recur, most appear once.
    def window(names: list[str], n: int) -> list[str]:
        common = [f"{names[0]}-{i}" for i in range(5)]
        return [rng.choice(common) if rng.random() < 0.35 else f"{names[1]}-{rng.integers(10**9)}" for _ in range(n)]

    flags = 0
    for _ in range(100):
        pool = window(["common", "rare"], 120)
        flags += familiarity_two_sample(pool[:60], pool[60:], permutations=400, seed=1) < 0.05
    assert flags / 100 <= 0.10  # ~alpha: the permutation null is exact
    # Every current journal new to the reference: detected.
    p = familiarity_two_sample(window(["common", "rare"], 80), window(["other", "new"], 80))
    assert p < 0.001


def test_classifier_auc_p_value_is_calibrated() -> None:
    """A classifier that learned nothing scores the held-out half at random: its p-value flags ~alpha."""
    rng = np.random.default_rng(2)
    n_ref, n_cur = 120, 90
    labels = np.r_[np.zeros(n_ref), np.ones(n_cur)]
    _, test = train_test_split(labels, test_size=0.5, random_state=42, shuffle=True)
    flags = [auc_p_value(roc_auc_score(test, rng.random(len(test))), n_ref, n_cur) < 0.05 for _ in range(1000)]
    assert 0.03 <= np.mean(flags) <= 0.07
    # The threshold is the AUC at which the p-value crosses alpha.
    assert auc_p_value(auc_threshold(0.05, n_ref, n_cur), n_ref, n_cur) == pytest.approx(0.05)


def test_holm_controls_the_family_and_skips_informational_columns() -> None:
    scores = {c: {"p_value": p} for c, p in {"a": 0.01, "b": 0.04, "c": 0.3, "year": 1e-12}.items()}
    assert holm(scores, 0.05, informational={"year"}) == ["a"]  # b alone would pass 0.05, not after Holm
    assert scores["a"]["holm_p"] == pytest.approx(0.03) and scores["b"]["holm_p"] == pytest.approx(0.08)
    assert scores["year"]["informational"] and "holm_p" not in scores["year"]


def test_rejects_mismatched_extra_columns(tmp_path: Path) -> None:
    texts = abstracts(CARDIOLOGY, 30, 1)
    with pytest.raises(ValueError, match="rows"):
        text_drift(texts, texts, html_path=tmp_path / "x.html", extra_reference=metadata(10, 1))
    with pytest.raises(ValueError, match="differ"):
        text_drift(texts, texts, html_path=tmp_path / "x.html", extra_reference=metadata(30, 1))


def medquad_answers(collection: str) -> list[str]:
    answers = []
    for path in sorted((DATA / "medquad" / collection).glob("*.xml")):
        answers += [a.text.strip() for a in ET.parse(path).iter("Answer") if a.text and a.text.strip()]
    return answers


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "medquad").is_dir(), reason=f"MedQuAD not found at {DATA / 'medquad'}")
def test_medquad_niddk_vs_ninds_is_drift(tmp_path: Path) -> None:
    niddk, ninds = medquad_answers("5_NIDDK_QA"), medquad_answers("6_NINDS_QA")
    assert len(niddk) > 1000 and len(ninds) > 1000  # 1192 and 1088 answers in the copied collections
    result = text_drift(niddk, ninds, html_path=tmp_path / "medquad.html")
    assert result.status == "drift"
    assert result.scores["text"]["drifted"]
    assert result.scores["text"]["unit"] == "roc_auc"
    assert_consistent(result)
