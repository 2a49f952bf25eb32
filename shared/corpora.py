"""The reference corpora: PubMedQA (labelled), MedQuAD and TREC LiveQA Medical.

Each is a setting (MEDQA_PUBMEDQA_SOURCE, MEDQA_MEDQUAD_SOURCE, MEDQA_LIVEQA_SOURCE) naming either a
hub dataset id, loaded through `datasets` and kept in <data_dir>/corpora (`medqa data pull` fills
that cache ahead of time), or a local path: the corpus's original format (PubMedQA JSON, MedQuAD
XML folder, TREC XML), a `datasets` folder (save_to_disk) or a parquet file. The value `none` turns
a corpus off on purpose, and what depends on it says so where it is skipped.

A corpus that is configured but cannot be had raises `CorpusUnavailable`, whose message names the
setting: nothing here ever stands in synthetic text for a missing corpus.

Uses: MedQuAD is the general-medical replay set and the retention slice; PubMedQA's train share is
replayed and its held-out share scored; LiveQA's consumer questions are scored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from shared.lm.prompts import qa_answer
from shared.settings import ENV_PREFIX, get_settings

OFF = "none"
SPLIT = "split"  # MEDQA_PUBMEDQA_EVAL_SOURCE's default: evaluate on the training source's held-out share
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CorpusUnavailable(RuntimeError):
    """A configured corpus cannot be loaded; the message names the setting and how to fix it."""


@dataclass(frozen=True)
class Corpus:
    name: str  # "pubmedqa", "medquad", "liveqa"
    setting: str  # the Settings field holding its source
    hub_config: str | None  # the hub dataset's config name, if it has several
    hub_split: str
    read_local: Callable[[Path], list[GeneralText]]  # the original format
    from_rows: Callable[[Iterable[dict[str, Any]]], list[GeneralText]]  # hub / datasets / parquet rows

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.setting.upper()}"


@dataclass(frozen=True, slots=True)
class GeneralText:
    item_id: str  # stable id recorded in training manifests
    text: str  # the whole item as plain text (perplexity slices, drift)
    question: str = ""  # set for QA items: the trainer then takes the loss on the answer only
    answer: str = ""
    context: str | None = None


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
                items.append(GeneralText(item_id=f"medquad:{qid}", text=f"{q}\n{a}", question=q, answer=a))
    return items


def load_liveqa(source: Path) -> list[GeneralText]:
    """Consumer-health questions from TREC 2017 LiveQA Medical XML (a file, or every *.xml in a folder).

    Reads both layouts the track published: training files (SUBJECT and MESSAGE under NLM-QUESTION,
    answers under SUB-QUESTIONS) and test files (Original-Question with SUBJECT/Subject and
    MESSAGE/Message, answers under ReferenceAnswers). Tags are matched without regard to case. The
    question is subject + message as the patient wrote them; the answer is the first reference answer.
    """
    paths = sorted(source.glob("*.xml")) if source.is_dir() else [source]
    items: list[GeneralText] = []
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    for path in paths:
        try:
            root = etree.parse(str(path), parser).getroot()  # lxml skips the UTF-8 byte-order mark
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"{path}: not LiveQA XML: {exc}") from None
        for n, q in enumerate(el for el in root.iter() if _tag(el) == "nlm-question"):
            def first(name: str, q: etree._Element = q) -> str:
                el = next((e for e in q.iter() if _tag(e) == name), None)
                return " ".join("".join(el.itertext()).split()) if el is not None else ""

            subject, message = first("subject"), first("message")
            answers = [" ".join("".join(a.itertext()).split()) for a in q.iter() if _tag(a) == "answer"]
            answers = [a for a in answers if a]
            question = ". ".join(x for x in (subject, message) if x)
            if not question:
                continue
            qid = q.get("qid") or q.get("questionid") or f"{path.stem}-{n}"
            answer = answers[0] if answers else ""
            items.append(GeneralText(item_id=f"liveqa:{path.stem}:{qid}", text=f"{question}\n{answer}".strip(),
                                     question=question, answer=answer))
    return items


def _tag(el: etree._Element) -> str:
    return el.tag.lower() if isinstance(el.tag, str) else ""


def load_pubmedqa(source: str | Path) -> list[GeneralText]:
    """PubMedQA items from a local JSON file in the original format
    ({pmid: {QUESTION, CONTEXTS, LONG_ANSWER, final_decision, ...}})."""
    raw = json.loads(Path(source).read_text())
    return _pubmedqa_items({"pmid": k, "QUESTION": v["QUESTION"], "CONTEXTS": v["CONTEXTS"],
                            "LONG_ANSWER": v["LONG_ANSWER"], "final_decision": v["final_decision"]}
                           for k, v in raw.items())


def _pubmedqa_rows(rows: Iterable[dict[str, Any]]) -> list[GeneralText]:
    """Rows in the hub's schema (qiaojin/PubMedQA: pubid, question, context.contexts, long_answer,
    final_decision)."""
    return _pubmedqa_items({"pmid": r["pubid"], "QUESTION": r["question"], "CONTEXTS": r["context"]["contexts"],
                            "LONG_ANSWER": r["long_answer"], "final_decision": r["final_decision"]} for r in rows)


def _pubmedqa_items(rows: Iterable[dict[str, Any]]) -> list[GeneralText]:
    items = []
    for r in sorted(rows, key=lambda r: str(r["pmid"])):
        context = " ".join(r["CONTEXTS"])
        answer = qa_answer(r["LONG_ANSWER"], r["final_decision"])
        items.append(GeneralText(item_id=f"pubmedqa:{r['pmid']}", text=f"{r['QUESTION']}\n{context}\n{answer}",
                                 question=r["QUESTION"], answer=answer, context=context))
    return items


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((row[n] for n in names if row.get(n) not in (None, "", [])), None)


def _as_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = next((v for v in value if v), "")
    if isinstance(value, dict):
        value = _first(value, ("answer", "text", "ANSWER"))
    return " ".join(str(value or "").split())


def _qa_rows(prefix: str, rows: Iterable[dict[str, Any]], *, min_answer: int) -> list[GeneralText]:
    """Question/answer rows of a table (hub, datasets folder or parquet); column names vary between
    copies of the same corpus, so the usual spellings are accepted."""
    items = []
    for n, row in enumerate(rows):
        subject = _as_text(_first(row, ("subject", "SUBJECT", "ORIGINAL_QUESTION_SUBJECT")))
        body = _as_text(_first(row, ("question", "QUESTION", "message", "MESSAGE", "ORIGINAL_QUESTION_MESSAGE")))
        answer = _as_text(_first(row, ("answer", "ANSWER", "answers", "reference_answers", "REFERENCE_ANSWERS")))
        question = ". ".join(x for x in (subject, body) if x)
        if not question or len(answer) < min_answer:
            continue
        qid = _first(row, ("qid", "question_id", "QUESTION_ID", "document_id", "id")) or n
        items.append(GeneralText(item_id=f"{prefix}:{qid}", text=f"{question}\n{answer}".strip(),
                                 question=question, answer=answer))
    return items


CORPORA = {
    "pubmedqa": Corpus("pubmedqa", "pubmedqa_source", "pqa_labeled", "train", load_pubmedqa, _pubmedqa_rows),
    # A PubMedQA-format source scored by the evaluator and kept out of training (pubmedqa_split).
    "pubmedqa_eval": Corpus("pubmedqa", "pubmedqa_eval_source", "pqa_labeled", "train", load_pubmedqa,
                            _pubmedqa_rows),
    "medquad": Corpus("medquad", "medquad_source", None, "train", load_medquad,
                      lambda rows: _qa_rows("medquad", rows, min_answer=81)),
    "liveqa": Corpus("liveqa", "liveqa_source", None, "test", load_liveqa,
                     lambda rows: _qa_rows("liveqa", rows, min_answer=0)),
}


def source_of(name: str) -> str:
    return str(getattr(get_settings(), CORPORA[name].setting))


def corpus_items(name: str) -> tuple[GeneralText, ...]:
    """Every item of the configured corpus `name` in a stable order; () when its source is `none`."""
    return _load(name, source_of(name), get_settings().data_dir)


def load_corpus(name: str, source: str | None) -> tuple[GeneralText, ...]:
    """Items of corpus `name` (its format) from `source`, a local path or hub id; None = the configured
    source. Raises CorpusUnavailable naming the source when it cannot be read."""
    return corpus_items(name) if source is None else _load(name, source, get_settings().data_dir)


@functools.cache
def _load(name: str, source: str, data_dir: Path) -> tuple[GeneralText, ...]:
    corpus = CORPORA[name]
    if source.strip().lower() == OFF:
        return ()
    local = Path(source).expanduser()
    try:
        if local.exists():
            items = _read_local(corpus, local)
        elif _HUB_ID.match(source):
            items = corpus.from_rows(_hub_dataset(corpus, source, data_dir))
        else:
            raise CorpusUnavailable(f"{local} does not exist")
    except CorpusUnavailable as exc:
        raise CorpusUnavailable(f"{corpus.env}={source}: {exc}. Fix: run `medqa data pull` where the hub is "
                                f"reachable, point {corpus.env} at a local copy (original format, a `datasets` "
                                f"folder or parquet), or set it to '{OFF}' to run without it") from None
    except (OSError, ValueError, KeyError, TypeError, etree.XMLSyntaxError) as exc:
        raise CorpusUnavailable(f"{corpus.env}={source}: not a readable {name} corpus: {exc}") from None
    if not items:
        raise CorpusUnavailable(f"{corpus.env}={source}: no {name} items found there")
    return tuple(items)


def _read_local(corpus: Corpus, path: Path) -> list[GeneralText]:
    if path.is_file() and path.suffix == ".parquet":
        return corpus.from_rows(_rows(_datasets().Dataset.from_parquet(str(path))))
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        return corpus.from_rows(_rows(_datasets().load_from_disk(str(path))))
    parquet = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if parquet and not any(path.rglob("*.xml")):
        return corpus.from_rows(_rows(_datasets().Dataset.from_parquet([str(p) for p in parquet])))
    return corpus.read_local(path)


def _rows(dataset: Any) -> list[dict[str, Any]]:
    if hasattr(dataset, "keys") and not hasattr(dataset, "column_names"):  # a DatasetDict: its first split
        dataset = dataset[sorted(dataset.keys())[0]]
    return list(dataset)


def _datasets() -> Any:
    import datasets  # slow to import; only the datasets paths need it

    return datasets


def cache_folder(data_dir: Path, name: str, source: str) -> Path:
    return data_dir / "corpora" / f"{name}--{source.replace('/', '--')}"


def _hub_dataset(corpus: Corpus, source: str, data_dir: Path) -> list[dict[str, Any]]:
    """The hub dataset from the data directory's cache, fetched into it first if it is not there."""
    folder = cache_folder(data_dir, corpus.name, source)
    if (folder / "dataset_info.json").is_file():
        return _rows(_datasets().load_from_disk(str(folder)))
    try:
        dataset = _datasets().load_dataset(source, corpus.hub_config, split=corpus.hub_split,
                                           cache_dir=str(data_dir / "corpora" / "hf-cache"))
    except Exception as exc:  # offline, unknown id, gated: all mean "not from the hub"
        raise CorpusUnavailable(f"not cached in {folder} and the hub gave no copy "
                                f"({type(exc).__name__}: {str(exc)[:200]})") from None
    # Written beside the cache and renamed into place: an interrupted pull leaves no half-written
    # copy that a later load would take for the corpus.
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    dataset.save_to_disk(str(partial))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return _rows(dataset)


def pull(name: str) -> dict[str, Any]:
    """Load corpus `name` (fetching a hub copy into the cache) and describe it."""
    return describe(name)


def describe(name: str, *, offline: bool = False) -> dict[str, Any]:
    """Source, kind, item count and content hash of a configured corpus (error text if unavailable).
    `offline`: a hub corpus is read from the cache only, never fetched."""
    source = source_of(name)
    corpus = CORPORA[name]
    named = source.strip().lower()
    kind = "off" if named == OFF else "split" if named == SPLIT else \
        "local" if Path(source).expanduser().exists() else "hub"
    out: dict[str, Any] = {"corpus": name, "setting": corpus.env, "source": source, "kind": kind}
    if kind in ("off", "split"):  # off, or the held-out share of another corpus (described there)
        return out
    if kind == "hub":
        folder = cache_folder(get_settings().data_dir, name, source)
        out["cache"] = str(folder)
        if offline and not (folder / "dataset_info.json").is_file():
            return {**out, "available": False, "error": f"{corpus.env}={source}: not cached in {folder}; "
                    "run `medqa data pull` where the hub is reachable"}
    try:
        items = corpus_items(name)
    except CorpusUnavailable as exc:
        return {**out, "available": False, "error": str(exc)}
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.item_id.encode())
        digest.update(item.text.encode())
    return {**out, "available": True, "items": len(items), "sha256": digest.hexdigest()}


def general_texts(*, limit: int = 400, seed: int = 1234) -> tuple[GeneralText, ...]:
    """A fixed, seeded sample of MedQuAD: the same corpus and seed always give the same items."""
    items = list(corpus_items("medquad"))
    random.Random(seed).shuffle(items)
    return tuple(items[:limit])


def split_general(items: tuple[GeneralText, ...]) -> tuple[list[GeneralText], list[GeneralText]]:
    """Disjoint halves: replay draws from the first, the retention slice is the second, so the
    retention perplexity is never measured on text the model was trained on."""
    half = len(items) // 2
    return list(items[:half]), list(items[half:])


def pubmedqa_split(*, seed: int = 1234, train_share: float = 0.8,
                   ) -> tuple[tuple[GeneralText, ...], tuple[GeneralText, ...]]:
    """(train, evaluation) PubMedQA items: replay uses the first, the pubmedqa suite the second.

    With an evaluation source of its own, every item of it is scored and none is trained on: the
    training source loses each item with the same PMID (a test file named for evaluation is not split
    into training). Otherwise the training source is split, fixed by seed."""
    items = list(corpus_items("pubmedqa"))
    if source_of("pubmedqa_eval").strip().lower() != SPLIT:
        evaluation = corpus_items("pubmedqa_eval")
        scored = {i.item_id for i in evaluation}
        return tuple(i for i in items if i.item_id not in scored), evaluation
    random.Random(seed).shuffle(items)
    cut = int(len(items) * train_share)
    return tuple(items[:cut]), tuple(items[cut:])
