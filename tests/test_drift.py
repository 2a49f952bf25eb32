"""Text drift with Evidently: synthetic topic shifts written here, plus MedQuAD when ../shared/data exists."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.monitor.drift import HTML_VERDICT, DriftResult, text_drift

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
        # A new field usually brings its own style too: oncology texts, written longer.
        "topic_and_style": text_drift(
            cardio, abstracts(ONCOLOGY, N, seed=2, sentences=(8, 14)), html_path=out / "shift.html"
        ),
        # Vocabulary only: same lengths, so only the text column can drift.
        "vocabulary": text_drift(cardio, abstracts(ONCOLOGY, N, seed=2), html_path=out / "vocab.html"),
        "vocabulary_share_025": text_drift(
            cardio, abstracts(ONCOLOGY, N, seed=2), html_path=out / "vocab25.html", drift_share=0.25
        ),
    }


def assert_consistent(result: DriftResult, drift_share: float = 0.5) -> None:
    """detected agrees with every Evidently output: its rule, its per-column tests and its HTML."""
    assert result.detected == (result.status == "drift")
    assert result.detected == (result.share_drifted >= drift_share)
    drifted = [s["drifted"] for s in result.scores.values()]
    assert result.share_drifted == pytest.approx(sum(drifted) / len(drifted))
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
    assert_consistent(result)


def test_topic_and_style_shift_is_drift(runs: dict[str, DriftResult]) -> None:
    result = runs["topic_and_style"]
    assert result.status == "drift" and result.detected
    assert all(s["drifted"] for s in result.scores.values())
    assert result.scores["text"]["method"] == "Percentile text content drift"
    assert (result.n_reference, result.n_current) == (N, N)
    assert_consistent(result)


def test_vocabulary_shift_drifts_text_column_only(runs: dict[str, DriftResult]) -> None:
    # 1 drifted column of 4 is below the default drift_share=0.5: Evidently says no dataset drift.
    result = runs["vocabulary"]
    assert result.scores["text"]["drifted"]
    assert result.share_drifted == pytest.approx(0.25)
    assert result.status == "no_drift"
    assert_consistent(result)
    # With drift_share=0.25 the same share is a dataset drift.
    lowered = runs["vocabulary_share_025"]
    assert lowered.status == "drift" and lowered.share_drifted == pytest.approx(0.25)
    assert_consistent(lowered, drift_share=0.25)


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


def test_not_enough_data_skips_evidently(tmp_path: Path) -> None:
    html = tmp_path / "small.html"
    result = text_drift(abstracts(CARDIOLOGY, 5, 1), abstracts(ONCOLOGY, 50, 2), html_path=html, min_rows=20)
    assert result.status == "not_enough_data" and not result.detected
    assert result.html_path is None and not html.exists()
    assert result.to_json()["n_reference"] == 5


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
    assert result.scores["text"]["method"] == "Absolute text content drift"  # over 1000 reference rows
    assert_consistent(result)
