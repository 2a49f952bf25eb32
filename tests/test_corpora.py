"""Reference corpora: hub ids through `datasets` (from the data directory's cache), local paths in the
original format, `datasets` folders and parquet files, `none`, and a clear error for a corpus that is
configured but unavailable. Every fixture here is written by the test itself."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from sqlmodel import func, select
from typer.testing import CliRunner

from services.cli import app
from services.devkit.synth import write_corpus, write_medquad
from services.ingest.tasks import ingest_path
from shared.corpora import CorpusUnavailable, cache_folder, corpus_items, general_texts, pubmedqa_split
from shared.db import session_scope
from shared.settings import Settings, get_settings
from shared.tables import TrainingRun

PUBMEDQA_ROWS = [
    {"pubid": 100 + k, "question": f"Does treatment {k} lower blood pressure in adults?",
     "context": {"contexts": [f"We randomised {40 + k} adults to treatment {k} or placebo.",
                              f"Systolic pressure fell by {k + 3} mmHg."], "labels": ["METHODS", "RESULTS"]},
     "long_answer": f"Treatment {k} lowered systolic pressure modestly.",
     "final_decision": ("yes", "no", "maybe")[k % 3]}
    for k in range(6)
]
QA_ROWS = [{"question_id": f"q{k}", "question": f"What is condition {k}?",
            "answer": f"Condition {k} is a long-term illness of the kidneys that many adults live with " * 2}
           for k in range(5)]


def _hub_style_dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows)


@pytest.fixture
def env(medqa_env, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return medqa_env


def _original_json(path: Path) -> Path:
    path.write_text(json.dumps({str(r["pubid"]): {
        "QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"], "LONG_ANSWER": r["long_answer"],
        "final_decision": r["final_decision"]} for r in PUBMEDQA_ROWS}))
    return path


def test_pubmedqa_reads_alike_from_json_datasets_folder_and_parquet(env, tmp_path):
    folder, parquet = tmp_path / "pqa-folder", tmp_path / "pqa.parquet"
    _hub_style_dataset(PUBMEDQA_ROWS).save_to_disk(str(folder))
    _hub_style_dataset(PUBMEDQA_ROWS).to_parquet(str(parquet))
    seen = []
    for source in (_original_json(tmp_path / "pqa.json"), folder, parquet):
        env(pubmedqa_source=str(source))
        items = corpus_items("pubmedqa")
        seen.append([(i.item_id, i.question, i.context, i.answer) for i in items])
    assert seen[0] == seen[1] == seen[2]
    assert len(seen[0]) == 6 and seen[0][0][0] == "pubmedqa:100"
    assert seen[0][0][3].endswith("Answer: yes")
    train, held_out = pubmedqa_split()
    assert len(train) + len(held_out) == 6 and not {i.item_id for i in train} & {i.item_id for i in held_out}


def test_medquad_and_liveqa_read_from_parquet_and_datasets_folders(env, tmp_path):
    _hub_style_dataset(QA_ROWS).to_parquet(str(tmp_path / "medquad.parquet"))
    _hub_style_dataset([{**r, "answer": [r["answer"]]} for r in QA_ROWS]).save_to_disk(str(tmp_path / "liveqa"))
    env(medquad_source=str(tmp_path / "medquad.parquet"), liveqa_source=str(tmp_path / "liveqa"))
    medquad, liveqa = corpus_items("medquad"), corpus_items("liveqa")
    assert [i.item_id for i in medquad] == [f"medquad:q{k}" for k in range(5)]
    assert [i.answer for i in liveqa] == [i.answer for i in medquad]  # a list of answers: the first one
    assert {i.item_id for i in general_texts()} == {i.item_id for i in medquad}


def test_a_hub_id_is_read_from_the_cache_that_data_pull_fills(env, tmp_path):
    env(medquad_source="example-org/medquad-copy")
    settings = get_settings()
    _hub_style_dataset(QA_ROWS).save_to_disk(str(cache_folder(settings.data_dir, "medquad", settings.medquad_source)))
    assert len(corpus_items("medquad")) == 5  # offline: from the cache, not the hub
    status = CliRunner().invoke(app, ["data", "status", "--json"])
    assert status.exit_code == 0, status.output
    medquad = next(d for d in json.loads(status.stdout) if d["corpus"] == "medquad")
    assert medquad["kind"] == "hub" and medquad["available"] and medquad["items"] == 5
    assert len(medquad["sha256"]) == 64


def test_an_unavailable_corpus_is_a_clear_error_naming_its_setting(env, tmp_path):
    env(medquad_source="example-org/not-here", pubmedqa_source=str(tmp_path / "missing.json"))
    with pytest.raises(CorpusUnavailable, match=r"MEDQA_MEDQUAD_SOURCE=example-org/not-here.*medqa data pull"):
        corpus_items("medquad")
    with pytest.raises(CorpusUnavailable, match=r"MEDQA_PUBMEDQA_SOURCE=.*missing.json does not exist"):
        corpus_items("pubmedqa")
    pulled = CliRunner().invoke(app, ["data", "pull"])
    assert pulled.exit_code == 1 and "MEDQA_MEDQUAD_SOURCE" in pulled.output
    status = CliRunner().invoke(app, ["data", "status", "--json"])  # never reaches for the hub
    medquad = next(d for d in json.loads(status.stdout) if d["corpus"] == "medquad")
    assert medquad["available"] is False and "not cached" in medquad["error"]


def test_none_turns_a_corpus_off_on_purpose(env):
    env(liveqa_source="none")
    assert corpus_items("liveqa") == ()
    status = json.loads(CliRunner().invoke(app, ["data", "status", "--json"]).stdout)
    assert next(d for d in status if d["corpus"] == "liveqa")["kind"] == "off"


def test_production_settings_without_corpora_stop_training_with_the_setting_named(medqa_env, tmp_path, monkeypatch,
                                                                                caplog):
    """The defaults name hub datasets; offline with an empty cache nothing can be loaded, and the trigger
    refuses to queue a run instead of training on anything else."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    defaults = {k: Settings.model_fields[k].default for k in ("pubmedqa_source", "medquad_source", "liveqa_source")}
    medqa_env(trigger_min_new="30", **defaults)
    settings = get_settings()
    assert settings.medquad_source == "lavita/MedQuAD" and settings.pubmedqa_source == "qiaojin/PubMedQA"
    with pytest.raises(CorpusUnavailable, match="MEDQA_MEDQUAD_SOURCE=lavita/MedQuAD"):
        general_texts()
    write_corpus(tmp_path / "xml", files=1, per_file=40, seed=2)
    ingest_path(tmp_path / "xml")  # abstracts.stored -> the trigger, which cannot build a manifest
    with session_scope() as session:
        assert session.exec(select(func.count()).select_from(TrainingRun)).one() == 0
    assert any("MEDQA_MEDQUAD_SOURCE" in r.getMessage() for r in caplog.records)


def test_the_dev_kits_synthetic_medquad_reads_as_a_medquad_folder(env, tmp_path):
    write_medquad(tmp_path / "mq", n=12)
    env(medquad_source=str(tmp_path / "mq"))
    items = corpus_items("medquad")
    assert len(items) == 12 and all(i.question.startswith("What did the study") and i.answer for i in items)


def test_a_fetched_dataset_is_cached_whole_and_read_back_without_fetching(env, tmp_path):
    """The fetch path of a hub id, fed from a local folder in the hub's layout (`load_dataset` takes
    both): the copy lands in the cache by rename, and the next load reads only the cache."""
    from shared.corpora import CORPORA, _hub_dataset

    hub_copy = tmp_path / "hub-copy" / "data"
    hub_copy.mkdir(parents=True)
    _hub_style_dataset(QA_ROWS).to_parquet(str(hub_copy / "train-00000-of-00001.parquet"))
    env()
    data_dir = get_settings().data_dir
    rows = _hub_dataset(CORPORA["medquad"], str(tmp_path / "hub-copy"), data_dir)
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in QA_ROWS]
    cached = cache_folder(data_dir, "medquad", str(tmp_path / "hub-copy"))
    assert (cached / "dataset_info.json").is_file() and not cached.with_name(cached.name + ".partial").exists()
    for parquet in hub_copy.glob("*.parquet"):
        parquet.unlink()  # the "hub" is gone: the cache alone must answer
    assert len(_hub_dataset(CORPORA["medquad"], str(tmp_path / "hub-copy"), data_dir)) == 5


def test_an_evaluation_source_is_scored_whole_and_never_trained_on(env, tmp_path):
    """A PubMedQA file named for evaluation is not split into training: its items are the suite, and
    the training source loses every item with the same PMID, so no manifest can list one."""
    from services.evaluator.gate import pubmedqa_suite
    from services.trainer.data import replay_general_pool

    train_file = _original_json(tmp_path / "train.json")  # PMIDs 100..105
    eval_file = tmp_path / "eval.json"
    eval_file.write_text(json.dumps({k: v for k, v in json.loads(train_file.read_text()).items()
                                     if k in ("101", "104")}))
    env(pubmedqa_source=str(train_file), pubmedqa_eval_source=str(eval_file), eval_qa_items="50",
        replay_ratio="0.9")
    train, scored = pubmedqa_split()
    assert [i.item_id for i in scored] == ["pubmedqa:101", "pubmedqa:104"]
    assert {i.item_id for i in train} == {f"pubmedqa:{k}" for k in (100, 102, 103, 105)}
    pool = {g.item_id for g in replay_general_pool(get_settings())}
    assert pool >= {i.item_id for i in train} and not pool & {i.item_id for i in scored}
    suite = pubmedqa_suite(get_settings())
    assert [i.item_id for i in suite.items] == ["pubmedqa:101", "pubmedqa:104"]
    env(pubmedqa_source=str(train_file), pubmedqa_eval_source="split")  # the default: the training file's share
    train, scored = pubmedqa_split()
    assert len(train) + len(scored) == 6 and not {i.item_id for i in train} & {i.item_id for i in scored}
