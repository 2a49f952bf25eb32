"""What a run trains on: mined QA items join the manifest and the training examples, answer-only loss."""

import dataclasses

from services.devkit.synth import generate_articles, pubmed_xml
from services.ingest.parser import parse_pubmed_bytes
from services.ingest.store import _mark, store_records
from services.trainer.data import build_manifest, training_examples
from services.trainer.examples import IGNORE, tokenize
from shared.db import session_scope
from shared.lm.base_model import load_base_model
from shared.settings import get_settings

RESULTS = ("METHODS: We followed 120 adults for two years in a cohort study of daily habits, diet and sleep, "
           "with visits every three months.\nRESULTS: {} ")


def _asked(record, i):  # type: ignore[no-untyped-def]
    verb = "did not lower" if i % 2 else "significantly lowered"
    text = RESULTS.format(f"Outcome {i} was measured.") + f"\nCONCLUSIONS: Habit {i} {verb} the outcome."
    return dataclasses.replace(record, title=f"Does habit {i} lower the outcome?", abstract=text)


def test_mined_items_of_trained_papers_are_trained_as_qa_and_held_out_or_retracted_ones_are_not(store_env):
    store_env(holdout_fraction="0.25", replay_ratio="0.0")
    records = [_asked(r, i) for i, r in enumerate(parse_pubmed_bytes(pubmed_xml(generate_articles(12, seed=41))))]
    with session_scope() as s:
        assert store_records(s, records, source="t").mined == 12
        retracted = records[0].pmid
        _mark(s, {retracted}, "retracted")
    pmids = [r.pmid for r in records if r.pmid != retracted]
    with session_scope() as s:
        manifest = build_manifest(s, new_pmids=pmids, model_line="default", settings=get_settings())
        assert manifest.mined == sorted(manifest.new) and manifest.counts["mined"] == len(manifest.new)
        assert not set(manifest.mined) & set(manifest.holdout) and retracted not in manifest.mined
        specs = training_examples(s, manifest=manifest, settings=get_settings())
    qa_specs = [x for x in specs if x.kind == "qa"]
    assert len(qa_specs) == len(manifest.mined) and len(specs) == 2 * len(manifest.mined)
    by_question = {x.question: x for x in qa_specs}
    one = by_question["Does habit 1 lower the outcome?"]
    assert one.answer == "Habit 1 did not lower the outcome.\nAnswer: no" and "CONCLUSIONS" not in one.context
    _, tok = load_base_model(get_settings().base_model, get_settings().models_dir)
    ids, labels = tokenize(tok, one, 256)
    answer = tok.decode([t for t in labels if t != IGNORE])
    assert answer.startswith("Habit 1 did not lower") and "Answer: no" in answer and "METHODS" not in answer


def test_a_paper_retracted_after_its_run_was_queued_is_not_trained_on(store_env):
    store_env(holdout_fraction="0.25", replay_ratio="0.0")
    records = [_asked(r, i) for i, r in enumerate(parse_pubmed_bytes(pubmed_xml(generate_articles(8, seed=43))))]
    with session_scope() as s:
        store_records(s, records, source="t")
        manifest = build_manifest(s, new_pmids=[r.pmid for r in records], model_line="default",
                                  settings=get_settings())
        _mark(s, {manifest.mined[0]}, "retracted")
    with session_scope() as s:
        specs = training_examples(s, manifest=manifest, settings=get_settings())
    assert sum(x.kind == "qa" for x in specs) == len(manifest.mined) - 1
