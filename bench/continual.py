"""Benchmark: learning and forgetting over a time-ordered stream of increments (one JSON line last).

Run: .venv/bin/python bench/continual.py [--stream abstracts] [--steps 60] [--replay-ratio 0.3 0.5] [--threads 2]
     [--quick]

The stream (K increments), oldest first, all real text from ../shared/data.

With --stream abstracts (the default, K=3): what production trains on. The NLM PubMed samples
(pubmed_update_samples/*/*.xml, title + abstract as the trainer builds them), split by entrez year,
trained at the production increment budget (60 steps). Fine-tuning an instruct model on raw abstracts
erodes its answering, so forgetting is measured in QA form after every increment, against the base:

  * PubMedQA development share (the 20% that replay never trains on): decision accuracy and macro-F1,
    scored and calibrated as the gate scores them (shared.lm.decisions; --calibration, default prior);
  * MedQuAD retention half (never replayed): answer perplexity in the chat template, loss on the answer
    tokens (services.trainer.examples.tokenize), the goal's metric (GOAL_METRIC).

Replay there is drawn as services.trainer.data.build_manifest draws it: at most half past abstracts,
the rest general QA items (PubMedQA train share and MedQuAD's replay half, as QA examples with the
loss on the answer). Each strategy trains its own increment 0 (replay of general items starts there).
"replay@r no warm-up" replays at the first ratio with warmup_ratio 0: every increment starts at the
peak learning rate, against the default re-warm (10% of the steps) and linear re-decay.

With --stream years:

  * PubMedQA contexts (pubmedqa/pqal_trainval.json, the abstract minus its conclusion), split by the
    record's publication YEAR into K//2 slices (records without a year are left out);
  * then the NLM PubMed samples (pubmed_update_samples/*/*.xml, title + abstract as the trainer builds
    them), split by entrez year into the remaining slices.

With --stream domains: MedQuAD NIDDK answers, MedQuAD NINDS answers, PubMedQA contexts, NLM
abstracts (one slice each, K <= 4). The years stream drifts little (every slice is PubMed prose, and
no replay forgets nothing there, so it cannot rank replay ratios); the domains stream moves from
patient-facing answers to research abstracts, a shift a model can forget across. On these two,
increment 0 is shared by every strategy and forgetting is the slices' backward transfer.

Within a source, years are cut where the slices come out closest to equal size. Each slice is split
(seeded) into a held-out eval part (--eval-texts, default 24, at most a third of the slice) and a
train part. Held-out texts are never trained on, not even through replay.

Strategies, each a chain of K services.trainer.train.train_lora calls with the same TrainConfig:

  no_replay  increment i trains on slice i's train part only, warm-starting from adapter i-1;
  replay@r   the same, plus a replay buffer drawn from the train parts of slices 0..i-1, sized so
             that replay is the share r of all training examples (r = R / (N + R), as the trainer's
             manifest defines it), drawn with services.trainer.data.stratified_sample over time
             strata (--strata: the slice, default, or the record's year);
  joint      (--joint) increment i retrains a fresh adapter from the base on the train parts of
             slices 0..i, for steps * (i + 1) steps (the optimizer steps the chains spent up to i).

After increment i, each strategy's adapter is scored on the held-out part of every slice seen so
far: R[i][j] = perplexity on slice j (j <= i), token-weighted, texts cut at --max-length tokens, with
the same autocast as training. The base model's perplexity on each slice is reported as reference.

Summary per strategy:
  avg_ppl_last   mean_j R[K-1][j]                                  (all slices, after the last increment)
  forgetting     mean_{j<K-1} (R[K-1][j] - R[j][j]) / R[j][j]      (relative rise of held-out ppl on old
                                                                    slices since they were learned)
  new_slice_ppl  mean_i R[i][i]                                    (how well each new slice is learned)

Goal: no replay forgets at least 5% relative (abstracts stream: GOAL_METRIC since the base; other
streams: any backward-transfer loss), forgetting(replay) <= 25% of forgetting(no replay), and
new_slice_ppl(replay) within 5% of no replay. suggested_replay_ratio is the smallest ratio tested
(--replay-ratio takes several) that meets the goal. --quick is the short form CI runs (tests/).

Writes bench/out/continual.md (R matrices and summary), bench/out/continual.png (matplotlib when the
venv has it, else a plain stdlib PNG without text, whose colours the markdown lists) and
bench/out/continual.json. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/evaluate.py would shadow Hugging Face's `evaluate` (which the evaluator's metrics import) while
# bench/ is first on sys.path: run with the repository root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
SAMPLES = DATA / "pubmed_update_samples"
PUBMEDQA = DATA / "pubmedqa" / "pqal_trainval.json"
MEDQUAD = DATA / "medquad"
MODELS_DIR = ROOT / ".medqa" / "models"
OUT = ROOT / "bench" / "out"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
GOAL = {"no_replay_forgetting_min": 0.05, "forgetting_share_max": 0.25, "new_slice_ppl_rel_max": 0.05}
# The abstracts stream's forgetting is read on one retention metric, named before the run: MedQuAD answer
# perplexity (48 answers, thousands of tokens). PubMedQA accuracy on 100 items moves by +-0.05 between
# re-runs, 10% relative, so it is reported but does not decide.
GOAL_METRIC = "medquad_answer_ppl"
COLOURS = {"no_replay": (214, 39, 40), "joint": (44, 160, 44), "base": (127, 127, 127)}
REPLAY_COLOURS = [(31, 119, 180), (255, 127, 14), (148, 103, 189), (140, 86, 75), (23, 190, 207)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- data -------------------------------------------------------------------------------------------

@dataclass
class Doc:
    text: str
    year: int


@dataclass
class Slice:
    name: str
    source: str
    years: tuple[int, int]
    train: list[Doc] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)


def year_cuts(docs: list[Doc], n: int) -> list[list[Doc]]:
    """n groups of whole years, oldest first, each cut where the running count is nearest to an equal share."""
    by_year: dict[int, list[Doc]] = {}
    for d in docs:
        by_year.setdefault(d.year, []).append(d)
    years = sorted(by_year)
    if len(years) < n:
        raise SystemExit(f"only {len(years)} distinct years, cannot make {n} slices")
    cum, running = [], 0
    for y in years:
        running += len(by_year[y])
        cum.append(running)
    cuts, lo = [], 0  # cuts[b] = index of the last year in group b
    for b in range(1, n):
        target = b * running / n
        hi = len(years) - (n - b)  # leave at least one year to each later group
        best = min(range(lo, hi + 1), key=lambda i: (abs(cum[i] - target), i))
        cuts.append(best)
        lo = best + 1
    cuts.append(len(years) - 1)
    groups, start = [], 0
    for end in cuts:
        groups.append([d for y in years[start:end + 1] for d in by_year[y]])
        start = end + 1
    return groups


def load_pubmedqa_docs() -> list[Doc]:
    # shared.corpora.load_pubmedqa drops the YEAR field, so the raw JSON is read here.
    raw = json.loads(PUBMEDQA.read_text())
    return [Doc(" ".join(r["CONTEXTS"]), int(r["YEAR"])) for _, r in sorted(raw.items())
            if r.get("YEAR") and r.get("CONTEXTS")]


def load_nlm_docs() -> list[Doc]:
    from services.ingest.parser import ArticleRecord, iter_pubmed

    latest: dict[int, ArticleRecord] = {}  # a PMID repeated across files: the last file's version wins
    for path in sorted(SAMPLES.glob("*/*.xml"), key=lambda p: (p.name, p.parent.name)):
        for r in iter_pubmed(path):
            if isinstance(r, ArticleRecord) and r.abstract.strip() and (r.entrez_date or r.pub_date):
                latest[r.pmid] = r
    # Title + abstract, as services.trainer.data.abstract_text builds a training text.
    return [Doc(f"{r.title}\n{r.abstract}", (r.entrez_date or r.pub_date).year)  # type: ignore[union-attr]
            for _, r in sorted(latest.items())]


def load_medquad_docs(collection: str) -> list[Doc]:
    from shared.corpora import load_medquad

    return [Doc(g.text, 0) for g in load_medquad(MEDQUAD / collection)]


def _slice(name: str, source: str, group: list[Doc], eval_texts: int, rng: random.Random) -> Slice:
    years = (min(d.year for d in group), max(d.year for d in group))
    rng.shuffle(group)
    n_eval = min(eval_texts, len(group) // 3)
    return Slice(name=name, source=source, years=years, train=group[n_eval:], eval=[d.text for d in group[:n_eval]])


def build_stream(k: int, eval_texts: int, seed: int, kind: str = "years") -> list[Slice]:
    rng = random.Random(seed)
    if kind == "abstracts":
        # What production trains on: new PubMed abstracts, oldest entrez years first.
        if not SAMPLES.is_dir():
            raise SystemExit(f"--stream abstracts needs {SAMPLES}")
        out = []
        for group in year_cuts(load_nlm_docs(), k):
            years = (min(d.year for d in group), max(d.year for d in group))
            out.append(_slice(f"nlm {years[0]}-{years[1]}", "nlm", group, eval_texts, rng))
        return out
    if kind == "domains":
        # A shift the model must adapt to and can forget: consumer-health answers from two NIH
        # institutes, then research abstracts (PubMedQA contexts, then the NLM samples).
        plan = [("medquad NIDDK", "medquad", lambda: load_medquad_docs("5_NIDDK_QA")),
                ("medquad NINDS", "medquad", lambda: load_medquad_docs("6_NINDS_QA")),
                ("pubmedqa", "pubmedqa", load_pubmedqa_docs), ("nlm", "nlm", load_nlm_docs)][:k]
        if not (MEDQUAD.is_dir() and PUBMEDQA.is_file() and SAMPLES.is_dir()):
            raise SystemExit(f"--stream domains needs {MEDQUAD}, {PUBMEDQA} and {SAMPLES}")
        return [_slice(name, source, load(), eval_texts, rng) for name, source, load in plan]
    sources: list[tuple[str, list[Doc]]] = []
    if PUBMEDQA.is_file():
        sources.append(("pubmedqa", load_pubmedqa_docs()))
    if SAMPLES.is_dir():
        sources.append(("nlm", load_nlm_docs()))
    if not sources:
        raise SystemExit(f"no data: neither {PUBMEDQA} nor {SAMPLES} exists")
    counts = [k // 2, k - k // 2] if len(sources) == 2 else [k]
    stream: list[Slice] = []
    for (source, docs), n in zip(sources, counts, strict=True):
        for group in year_cuts(docs, n):
            years = (min(d.year for d in group), max(d.year for d in group))
            name = f"{source} {years[0]}-{years[1]}" if years[0] != years[1] else f"{source} {years[0]}"
            stream.append(_slice(name, source, group, eval_texts, rng))
    return stream


# --- QA-form retention ---------------------------------------------------------------------------------

@dataclass
class QASet:
    """The instruct model's answering, which raw-abstract increments can erode, and the general replay
    that should protect it: PubMedQA's development share (decisions, scored as the gate scores them)
    and MedQuAD's retention half (answer perplexity in the chat template); replay draws only from
    PubMedQA's train share and MedQuAD's replay half, so no measured item is ever trained on."""

    pubmedqa_dev: list[Any]
    prior: list[float]  # the train share's label shares, for "prior" calibration
    medquad_retention: list[Any]
    replay_pool: list[Any]  # ExampleSpecs: general QA items, as the trainer's replay_general builds them
    calibration: str


def load_qa_set(dev_items: int, medquad_items: int, calibration: str) -> QASet:
    from services.evaluator.suites import label_shares
    from services.trainer.examples import qa
    from shared.corpora import load_medquad, load_pubmedqa, split_general

    items = load_pubmedqa(PUBMEDQA)
    random.Random(1234).shuffle(items)  # shared.corpora.pubmedqa_split's seed and 80/20 share
    cut = int(len(items) * 0.8)
    train, dev = items[:cut], items[cut:][:dev_items]
    medquad = [g for g in load_medquad(MEDQUAD) if g.question]
    random.Random(1234).shuffle(medquad)
    replay_half, retention_half = split_general(tuple(medquad[:400]))
    pool = [qa(g.question, g.answer, g.context) for g in replay_half + train]
    return QASet(dev, label_shares(train), retention_half[:medquad_items], pool, calibration)


def qa_retention(net: Any, tokenizer: Any, qa_set: QASet) -> dict[str, float]:
    """PubMedQA dev-share accuracy and macro-F1 (calibrated decisions), MedQuAD answer perplexity."""
    from services.evaluator.qa import macro_f1
    from services.evaluator.suites import decision_of
    from shared.lm.decisions import DECISIONS, calibrate, decision_scores

    raw = decision_scores(net, tokenizer, [(i.question, i.context) for i in qa_set.pubmedqa_dev], batch_size=8,
                          max_length=512)
    scores = calibrate(raw, qa_set.calibration, prior=qa_set.prior)
    pred = [DECISIONS[max(range(len(DECISIONS)), key=row.__getitem__)] for row in scores]
    gold = [decision_of(i) for i in qa_set.pubmedqa_dev]
    return {"pubmedqa_acc": sum(g == q for g, q in zip(gold, pred, strict=True)) / len(gold),
            "pubmedqa_f1": macro_f1(gold, pred),
            "medquad_answer_ppl": answer_perplexity(net, tokenizer, qa_set.medquad_retention)}


def answer_perplexity(net: Any, tokenizer: Any, items: list[Any], max_length: int = 512) -> float:
    """Token-weighted perplexity of reference answers after their question, in the chat template the
    trainer teaches (services.trainer.examples.tokenize: loss on the answer tokens only)."""
    import torch

    from services.trainer.examples import IGNORE, qa, tokenize

    nll, n = 0.0, 0
    with torch.no_grad():
        for item in items:
            ids, labels = tokenize(tokenizer, qa(item.question, item.answer, item.context), max_length)
            logits = net(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            nll += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum"))
            n += int((target != IGNORE).sum())
    return math.exp(nll / n)


RETENTION_WORSE = {"pubmedqa_acc": -1, "pubmedqa_f1": -1, "medquad_answer_ppl": +1}  # sign of a worse value


def retention_forgetting(base: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Relative loss of each retention metric since the base model (positive = forgotten)."""
    return {k: round(sign * (after[k] - base[k]) / base[k], 5) for k, sign in RETENTION_WORSE.items()}


# --- training and scoring -----------------------------------------------------------------------------

@dataclass
class Runner:
    model: str
    models_dir: Path
    cfg: Any  # TrainConfig of one chain increment
    work: Path
    qa_set: QASet | None = None  # when set, every score also measures QA-form retention
    train_s: float = 0.0
    eval_s: float = 0.0
    trained_steps: int = 0
    _runs: int = 0
    _base: Any = None
    _peft: Any = None
    _tokenizer: Any = None

    def train(self, texts: list[Any], *, steps: int, parent: Path | None, label: str,
              warmup_ratio: float | None = None) -> Path:
        """One increment on `texts` (abstract strings or trainer ExampleSpecs)."""
        from services.trainer.train import train_lora

        self._runs += 1
        run_dir = self.work / f"run{self._runs:02d}"
        cfg = type(self.cfg).from_dict({**self.cfg.to_dict(), "max_steps": steps, "checkpoint_every": steps,
                                        **({} if warmup_ratio is None else {"warmup_ratio": warmup_ratio})})
        t0 = time.perf_counter()
        result = train_lora(base_spec=self.model, models_dir=self.models_dir, examples=texts, cfg=cfg,
                            out_dir=run_dir / "adapter", work_dir=run_dir / "work", parent_adapter=parent)
        took = time.perf_counter() - t0
        self.train_s += took
        self.trained_steps += steps
        log(f"  train {label}: {len(texts)} texts, {steps} steps, loss {result.final_loss:.3f}, "
            f"{result.tokens_per_s:.0f} tok/s, {took:.1f} s")
        return result.adapter_dir

    def _load(self) -> None:
        import torch

        from shared.lm.base_model import load_base_model

        if self._base is None:
            self._base, self._tokenizer = load_base_model(self.model, self.models_dir, torch_dtype=torch.float32)

    def score(self, adapter: Path | None, slices: list[Slice], label: str) -> tuple[list[float], dict[str, float]]:
        """Held-out perplexity of base + adapter (None: the bare base) on each slice, base loaded once,
        and the QA-form retention metrics when the runner has a QA set (else {})."""
        import torch
        from peft import PeftModel

        from services.evaluator.perplexity import perplexity
        from shared.lm.generation import use_bf16

        self._load()
        t0 = time.perf_counter()
        if adapter is None:
            if self._peft is not None:
                raise RuntimeError("score the bare base before any adapter is attached")
            net: Any = self._base
        else:
            name = f"a{len(self._peft.peft_config) if self._peft is not None else 0}"
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._base, str(adapter), adapter_name=name)
            else:
                self._peft.load_adapter(str(adapter), adapter_name=name)
            self._peft.set_adapter(name)
            net = self._peft
        autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                                  enabled=use_bf16(self.cfg.precision, torch.device("cpu")))
        with autocast:
            out = [perplexity(net, self._tokenizer, s.eval, max_length=self.cfg.max_length) for s in slices]
            retention = qa_retention(net, self._tokenizer, self.qa_set) if self.qa_set else {}
        took = time.perf_counter() - t0
        self.eval_s += took
        log(f"  eval {label}: " + ", ".join(f"{p:.2f}" for p in out)
            + "".join(f", {k} {v:.3f}" for k, v in retention.items()) + f" ({took:.1f} s)")
        return out, retention


def replay_texts(stream: list[Slice], i: int, ratio: float, strata: str, rng: random.Random,
                 general: list[Any] | None = None) -> list[Any]:
    """Replay for increment i, the share `ratio` of its examples. With a general pool (the QA set's),
    as services.trainer.data.build_manifest draws it: at most half past abstracts, the rest general
    QA items; without, past abstracts only."""
    from services.trainer.data import stratified_sample

    n_new = len(stream[i].train)
    n_replay = round(n_new * ratio / (1 - ratio))  # ratio = R / (N + R), as build_manifest sizes it
    tagged = [(j, d) for j, s in enumerate(stream[:i]) for d in s.train]
    pool = [d for _, d in tagged]
    items = [(idx, j if strata == "slice" else d.year) for idx, (j, d) in enumerate(tagged)]
    n_past = min(len(pool), n_replay // 2 if general else n_replay)
    past: list[Any] = [pool[idx].text for idx in stratified_sample(items, n_past, rng)]
    return past + (rng.sample(general, min(len(general), n_replay - n_past)) if general else [])


@dataclass
class Chain:
    R: list[list[float]]  # R[i][j]: held-out ppl on slice j after increment i
    retention: list[dict[str, float]]  # QA-form retention after each increment ({} without a QA set)


def run_chain(runner: Runner, stream: list[Slice], first: tuple[Path, list[float], dict] | None, *, label: str,
              build: Any, warmup_ratio: float | None = None) -> Chain:
    """One strategy: build(i, parent) -> (texts, steps, parent for train_lora). With `first` (increment
    0 shared by every strategy) the chain starts at increment 1; without, it trains its own increment 0."""
    chain, adapter = Chain([], []), None
    if first is not None:
        adapter, row0, retention0 = first
        chain.R.append(row0)
        chain.retention.append(retention0)
    for i in range(len(chain.R), len(stream)):
        texts, steps, parent = build(i, adapter)
        adapter = runner.train(texts, steps=steps, parent=parent, label=f"{label} #{i}", warmup_ratio=warmup_ratio)
        row, retention = runner.score(adapter, stream[:i + 1], f"{label} #{i}")
        chain.R.append(row)
        chain.retention.append(retention)
    return chain


def summarise(R: list[list[float]]) -> dict:
    k = len(R)
    forgetting = [(R[k - 1][j] - R[j][j]) / R[j][j] for j in range(k - 1)]
    return {
        "avg_ppl_last": round(sum(R[k - 1]) / k, 4),
        "forgetting": round(sum(forgetting) / len(forgetting), 5) if forgetting else 0.0,
        "forgetting_per_slice": [round(f, 5) for f in forgetting],
        "new_slice_ppl": round(sum(R[i][i] for i in range(k)) / k, 4),
    }


def goal_check(replay: dict, no_replay: dict, qa_mode: bool = False) -> dict:
    """Replay against no replay. On the abstracts stream forgetting is the retention metric's relative
    loss since the base (GOAL_METRIC); on the other streams it is the old slices' backward transfer. On
    every stream no replay must forget at least the goal's minimum for the comparison to mean anything."""
    if qa_mode:
        fn = no_replay["retention_forgetting"][GOAL_METRIC]
        fr = replay["retention_forgetting"][GOAL_METRIC]
    else:
        fn, fr = no_replay["forgetting"], replay["forgetting"]
    # Below the minimum, no replay forgets too little for "replay prevents it" to mean anything.
    forgets = fn >= GOAL["no_replay_forgetting_min"]
    limit = GOAL["forgetting_share_max"] * fn if fn > 0 else 0.0
    rel = replay["new_slice_ppl"] / no_replay["new_slice_ppl"] - 1
    forgetting_met = fr <= limit and forgets
    new_met = rel <= GOAL["new_slice_ppl_rel_max"]
    return {"forgetting_no_replay": fn, "forgetting_replay": fr,
            "forgetting_share": round(fr / fn, 4) if fn > 0 else None, "forgetting_limit": round(limit, 5),
            "no_replay_forgets": forgets, "forgetting_met": forgetting_met,
            "new_slice_ppl_rel": round(rel, 5), "new_slice_met": new_met, "met": forgetting_met and new_met}


# --- report -------------------------------------------------------------------------------------------

def matrix_md(R: list[list[float]], stream: list[Slice]) -> list[str]:
    head = "| after \\ on | " + " | ".join(f"{j}: {s.name}" for j, s in enumerate(stream)) + " |"
    lines = [head, "|---" * (len(stream) + 1) + "|"]
    for i, row in enumerate(R):
        cells = [f"{row[j]:.3f}" if j < len(row) else "" for j in range(len(stream))]
        lines.append(f"| #{i} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(path: Path, result: dict, stream: list[Slice], matrices: dict[str, list[list[float]]],
                   base: list[float], colours: dict[str, tuple[int, int, int]]) -> None:
    cfg = result["config"]
    lines = [
        "# Continual-learning benchmark (bench/continual.py)", "",
        f"Model `{result['model']}`, {cfg['steps']} steps per increment of {cfg['batch_size']} x {cfg['max_length']} "
        f"tokens, lr {cfg['learning_rate']}, precision {cfg['precision']}, LoRA r={cfg['lora_r']}, seed {cfg['seed']}, "
        f"replay strata: {cfg['strata']}. Wall time {result['wall_s']:.0f} s "
        f"(train {result['train_s']:.0f} s, eval {result['eval_s']:.0f} s).", "",
        "## Stream", "", "| # | slice | years | train texts | held-out texts |", "|---|---|---|---|---|",
    ]
    lines += [f"| {j} | {s.name} | {s.years[0]}-{s.years[1]} | {len(s.train)} | {len(s.eval)} |"
              for j, s in enumerate(stream)]
    lines += ["", "Base model perplexity on each held-out slice: "
              + ", ".join(f"{j}: {p:.3f}" for j, p in enumerate(base)), ""]
    for name, R in matrices.items():
        lines += [f"## R matrix: {name}", "", "R[i][j] = held-out perplexity on slice j after increment i.", ""]
        lines += matrix_md(R, stream) + [""]
    if result["retention"]:
        cfg_r = result["config"]
        lines += ["## QA-form retention", "",
                  f"PubMedQA development share ({cfg_r['qa_items']} items, decisions calibrated "
                  f"'{cfg_r['calibration']}'), accuracy and macro-F1; MedQuAD retention answers "
                  f"({cfg_r['medquad_items']}), answer perplexity in the chat template. Row 'base' is the model "
                  "before any increment.", "",
                  "| strategy | after | PubMedQA acc | PubMedQA macro-F1 | MedQuAD answer ppl |",
                  "|---|---|---|---|---|"]
        b = result["base_retention"]
        lines.append(f"| base | - | {b['pubmedqa_acc']:.2f} | {b['pubmedqa_f1']:.3f} | {b['medquad_answer_ppl']:.3f} |")
        for name, rows in result["retention"].items():
            lines += [f"| {name} | #{i} | {r['pubmedqa_acc']:.2f} | {r['pubmedqa_f1']:.3f} | "
                      f"{r['medquad_answer_ppl']:.3f} |" for i, r in enumerate(rows)]
        lines.append("")
    lines += ["## Summary", "",
              "| strategy | avg ppl after last | slice forgetting (BWT, relative) | new-slice ppl "
              f"| {GOAL_METRIC} forgetting since base | goal |",
              "|---|---|---|---|---|---|"]
    for name, s in result["strategies"].items():
        g = result["goal"].get(name)
        goal = ""
        if g is not None:
            share = (f"forgetting share {g['forgetting_share']}" if g["forgetting_share"] is not None
                     else "no-replay does not forget")
            goal = f"{'met' if g['met'] else 'not met'} ({share}, new-slice {g['new_slice_ppl_rel']:+.2%})"
        retained = s.get("retention_forgetting", {}).get(GOAL_METRIC)
        lines.append(f"| {name} | {s['avg_ppl_last']:.3f} | {s['forgetting']:+.4f} | {s['new_slice_ppl']:.3f} "
                     f"| {'' if retained is None else f'{retained:+.2%}'} | {goal} |")
    lines += ["", f"Goal: no replay forgets at least {GOAL['no_replay_forgetting_min']:.0%} (abstracts stream: "
              f"{GOAL_METRIC} since the base; other streams: old slices' held-out perplexity), "
              f"forgetting with replay <= {GOAL['forgetting_share_max']:.0%} of that, "
              f"new-slice perplexity within {GOAL['new_slice_ppl_rel_max']:.0%} of no replay. "
              f"Smallest tested replay ratio meeting the goal: {result['suggested_replay_ratio']}.", "",
              *(f"Note: {n}" for n in result["notes"]), "",
              f"Plot: `{Path(result['plot']['png']).name}` beside this file ({result['plot']['renderer']}). "
              "First panel: mean held-out perplexity "
              "over the slices seen so far, after each increment. Second: perplexity on slice 0 after each increment. "
              f"Third (abstracts stream): {GOAL_METRIC} of the base model, then after each increment.",
              ""]
    if result["plot"]["renderer"].startswith("stdlib"):
        lines += ["Colours (no text in the fallback plot): "
                  + ", ".join(f"{n} rgb{c}" for n, c in colours.items()), ""]
    path.write_text("\n".join(lines))


def plot_series(matrices: dict[str, list[list[float]]], base: list[float]) -> dict[str, list[list[float]]]:
    """Two panels: mean ppl over seen slices after each increment; ppl on slice 0 after each increment."""
    avg = {n: [sum(r) / len(r) for r in R] for n, R in matrices.items()}
    first = {n: [r[0] for r in R] for n, R in matrices.items()}
    avg["base"] = [sum(base[:i + 1]) / (i + 1) for i in range(len(base))]
    first["base"] = [base[0]] * len(base)
    return {"avg": [avg[n] for n in avg], "first": [first[n] for n in first], "names": list(avg)}  # type: ignore[dict-item]


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_plot(path: Path, matrices: dict[str, list[list[float]]], base: list[float],
               colours: dict[str, tuple[int, int, int]], retention: dict[str, list[float]] | None = None) -> dict:
    """Mean held-out ppl and slice-0 ppl after each increment; with `retention` (GOAL_METRIC from the
    base, then after each increment, per strategy) a third panel."""
    series = plot_series(matrices, base)
    names: list[str] = series["names"]  # type: ignore[assignment]
    panels = [("avg", "mean held-out ppl, slices seen so far", 0), ("first", "held-out ppl on slice 0", 0)]
    if retention:  # x = 0 is the base model here, so increment i sits at i + 1
        series["retention"] = [retention.get(n, [retention["no_replay"][0]] * (len(base) + 1)) for n in names]
        panels.append(("retention", f"retention: {GOAL_METRIC} (0 = base)", 1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _stdlib_png(path, [series[key] for key, _, _ in panels], [colours[n] for n in names])
        return {"png": _rel(path), "renderer": "stdlib fallback: matplotlib is not installed in .venv"}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (key, title, shift) in zip(axes, panels, strict=True):
        for name, ys in zip(names, series[key], strict=True):
            ax.plot(range(len(ys)), ys, marker="o", label=name, color=[c / 255 for c in colours[name]],
                    linestyle="--" if name == "base" else "-")
        ax.set_title(title)
        ax.set_xlabel("after increment" if not shift else "model (0 = base, i = after increment i-1)")
        ax.set_ylabel("perplexity")
        ax.set_xticks(range(len(base) + shift))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"png": _rel(path), "renderer": "matplotlib"}


def _stdlib_png(path: Path, panels: list[list[list[float]]], colours: list[tuple[int, int, int]]) -> None:
    """Line panels side by side on a white canvas with grey axes: no text, colours as listed."""
    pw, ph, pad = 480, 320, 30
    width, height = pw * len(panels), ph
    px = bytearray(b"\xff" * (width * height * 3))

    def dot(x: int, y: int, c: tuple[int, int, int]) -> None:
        for dx in (0, 1):
            for dy in (0, 1):
                if 0 <= x + dx < width and 0 <= y + dy < height:
                    o = ((y + dy) * width + x + dx) * 3
                    px[o:o + 3] = bytes(c)

    def line(x0: float, y0: float, x1: float, y1: float, c: tuple[int, int, int]) -> None:
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for t in range(n + 1):
            dot(round(x0 + (x1 - x0) * t / n), round(y0 + (y1 - y0) * t / n), c)

    for p, lines in enumerate(panels):
        ox = p * pw
        lo = min(v for ys in lines for v in ys)
        hi = max(v for ys in lines for v in ys)
        span = (hi - lo) or 1.0
        steps = max(len(ys) for ys in lines) - 1 or 1
        grey = (160, 160, 160)
        line(ox + pad, pad, ox + pad, ph - pad, grey)
        line(ox + pad, ph - pad, ox + pw - pad, ph - pad, grey)

        def xy(i: int, v: float, ox: int = ox, lo: float = lo, span: float = span,
               steps: int = steps) -> tuple[float, float]:
            return (ox + pad + 10 + i * (pw - 2 * pad - 20) / steps,
                    ph - pad - 10 - (v - lo) / span * (ph - 2 * pad - 20))

        for ys, c in zip(lines, colours, strict=True):
            pts = [xy(i, v) for i, v in enumerate(ys)]
            for a, b in zip(pts, pts[1:], strict=False):
                line(*a, *b, c)
            for x, y in pts:
                for d in range(-3, 3):
                    dot(round(x) + d, round(y) - 3, c)
                    dot(round(x) + d, round(y) + 2, c)
    raw = b"".join(b"\x00" + bytes(px[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# --- main ---------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default=MODEL, help=f"base model spec (default {MODEL}; tiny-gpt2 for a smoke run)")
    parser.add_argument("--models-dir", default=str(MODELS_DIR))
    parser.add_argument("--k", type=int, default=None,
                        help="increments in the stream (default 3 for abstracts, else 4)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per increment (default 60, the production budget, for abstracts; "
                             "8 for the other streams; 3 with --quick)")
    parser.add_argument("--replay-ratio", type=float, nargs="+", default=[0.3, 0.5],
                        help="replay share(s) of the training examples; several values run one chain each "
                             "(default 0.3 0.5)")
    parser.add_argument("--stream", choices=("abstracts", "years", "domains"), default="abstracts",
                        help="abstracts (default): the NLM samples by entrez year, as production trains, with "
                             "QA-form retention; domains: MedQuAD NIDDK, MedQuAD NINDS, PubMedQA, NLM; "
                             "years: PubMedQA then NLM samples by year")
    parser.add_argument("--strata", choices=("slice", "year"), default="slice",
                        help="time strata for the replay draw: the slice (increment) or the record's year")
    parser.add_argument("--eval-texts", type=int, default=None,
                        help="held-out texts per slice (default 24; 8 with --quick)")
    parser.add_argument("--qa-items", type=int, default=None,
                        help="PubMedQA development items scored for retention (default 100; 12 with --quick)")
    parser.add_argument("--medquad-items", type=int, default=None,
                        help="MedQuAD retention answers scored (default 48; 8 with --quick)")
    parser.add_argument("--calibration", choices=("none", "contextual", "prior"), default="prior",
                        help="PubMedQA decision calibration for the retention accuracy (default prior, the gate's)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per sequence (default 256; 128 with --quick)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default 2e-3 for abstracts, 4x the demo's, to push toward "
                             "forgetting; 1e-3 otherwise)")
    parser.add_argument("--no-rewarm-variant", action="store_true",
                        help="skip the chain that replays at the first ratio without a learning-rate warm-up")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; 0 = torch's choice). On the shared 2-core box, 2 threads "
                             "ran the eval 4.6x slower than 1 whenever another process held a core")
    parser.add_argument("--joint", action="store_true",
                        help="also retrain jointly from the base at each increment (the costliest strategy)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (CI): 3 steps, 8 held-out texts, 128 tokens, 12 QA items")
    parser.add_argument("--out", default=str(OUT), help="folder for the markdown, PNG and JSON (default bench/out)")
    args = parser.parse_args()
    qa_mode = args.stream == "abstracts"
    k = args.k or (3 if qa_mode else 4)
    steps = args.steps or (3 if args.quick else 60 if qa_mode else 8)
    eval_texts = args.eval_texts or (8 if args.quick else 24)
    max_length = args.max_length or (128 if args.quick else 256)
    lr = args.lr or (2e-3 if qa_mode else 1e-3)
    if k < 2:
        parser.error("--k must be >= 2 (forgetting needs an old slice)")
    if not all(0 < r < 1 for r in args.replay_ratio):
        parser.error("--replay-ratio values must be in (0, 1)")
    ratios = list(dict.fromkeys(args.replay_ratio))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()

    import torch
    from transformers.utils import logging as hf_logging

    from services.trainer.config import TrainConfig
    from shared.lm.generation import use_bf16

    hf_logging.set_verbosity_error()  # per-load progress bars and the pre-truncation length warning
    hf_logging.disable_progress_bar()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    stream = build_stream(k, eval_texts, args.seed, args.stream)
    for j, sl in enumerate(stream):
        log(f"slice {j}: {sl.name}: {len(sl.train)} train, {len(sl.eval)} held out")
    qa_set = None
    if qa_mode:
        if not (PUBMEDQA.is_file() and MEDQUAD.is_dir()):
            raise SystemExit(f"--stream abstracts needs {PUBMEDQA} and {MEDQUAD} for QA-form retention")
        qa_set = load_qa_set(args.qa_items or (12 if args.quick else 100),
                             args.medquad_items or (8 if args.quick else 48), args.calibration)
    cfg = TrainConfig(max_steps=steps, checkpoint_every=steps, batch_size=args.batch_size, grad_accum=1,
                      max_length=max_length, learning_rate=lr, precision=args.precision, seed=args.seed)
    cfg.precision = "bf16" if use_bf16(cfg.precision, torch.device("cpu")) else "fp32"  # resolved once, for all runs
    log(f"config: {steps} steps/increment of {cfg.batch_size} x {cfg.max_length}, lr {cfg.learning_rate}, "
        f"warm-up {cfg.warmup_ratio}, {cfg.precision}, LoRA r={cfg.lora_r}, replay {ratios} by {args.strata}")

    chains: dict[str, Chain] = {}
    with tempfile.TemporaryDirectory(prefix="medqa-bench-continual-") as tmp:
        if args.model == "tiny-gpt2":  # the dev kit's test model, built into a folder
            from services.devkit.tiny_model import tiny_gpt2

            args.model = tiny_gpt2(Path(args.models_dir))
        runner = Runner(model=args.model, models_dir=Path(args.models_dir), cfg=cfg, work=Path(tmp), qa_set=qa_set)
        base, base_retention = runner.score(None, stream, "base")
        first = None
        if not qa_mode:  # without general replay, increment 0 is the same run for every strategy
            a0 = runner.train([d.text for d in stream[0].train], steps=steps, parent=None, label="shared #0")
            first = (a0, *runner.score(a0, stream[:1], "shared #0"))
        general = qa_set.replay_pool if qa_set else None

        def new(i: int) -> list[Any]:
            return [d.text for d in stream[i].train]

        log("no_replay:")
        chains["no_replay"] = run_chain(runner, stream, first, label="no_replay",
                                        build=lambda i, parent: (new(i), steps, parent))
        variants = [(f"replay@{r:g}", r, None) for r in ratios]
        if not args.no_rewarm_variant:
            variants.append((f"replay@{ratios[0]:g} no warm-up", ratios[0], 0.0))
        for name, r, warmup in variants:
            log(f"{name}:")
            rng = random.Random(f"{args.seed}:replay:{r}")
            chains[name] = run_chain(runner, stream, first, label=name, warmup_ratio=warmup,
                                     build=lambda i, parent, r=r, rng=rng: (
                                         new(i) + replay_texts(stream, i, r, args.strata, rng, general), steps, parent))
        if args.joint:
            log("joint:")
            chains["joint"] = run_chain(runner, stream, first, label="joint", build=lambda i, parent: (
                [d.text for sl in stream[:i + 1] for d in sl.train], steps * (i + 1), None))

    matrices = {name: c.R for name, c in chains.items()}
    strategies = {name: summarise(c.R) for name, c in chains.items()}
    if qa_set is not None:
        for name, c in chains.items():
            strategies[name]["retention_last"] = {m: round(v, 4) for m, v in c.retention[-1].items()}
            strategies[name]["retention_forgetting"] = retention_forgetting(base_retention, c.retention[-1])
    goal = {name: goal_check(strategies[name], strategies["no_replay"], qa_mode)
            for name in chains if name.startswith("replay@")}
    meeting = [r for r in ratios if goal[f"replay@{r:g}"]["met"]]
    suggested = min(meeting) if meeting else None
    notes = []
    if goal and not any(g["no_replay_forgets"] for g in goal.values()):
        notes.append("no replay does not forget enough on this stream to rank replay ratios "
                     f"(goal: {GOAL['no_replay_forgetting_min']:.0%} relative on {GOAL_METRIC})" if qa_mode else
                     f"no replay forgets less than {GOAL['no_replay_forgetting_min']:.0%} on this stream (held-out "
                     "perplexity on old slices after later increments), too little to rank replay ratios; only the "
                     "new-slice cost can.")
    names = list(chains)
    colours = {"no_replay": COLOURS["no_replay"], "joint": COLOURS["joint"], "base": COLOURS["base"],
               **{n: REPLAY_COLOURS[i % len(REPLAY_COLOURS)] for i, n in enumerate(x for x in names if "replay@" in x)}}
    colours = {n: colours[n] for n in [*names, "base"]}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    retention_series = ({n: [base_retention[GOAL_METRIC]] + [r[GOAL_METRIC] for r in c.retention]
                         for n, c in chains.items()} if qa_set else None)
    plot = write_plot(out_dir / "continual.png", matrices, base, colours, retention_series)
    wall = time.perf_counter() - t_start
    result = {
        "bench": "continual",
        "device": "cpu",
        "model": args.model,
        "stream": [{"name": sl.name, "source": sl.source, "years": list(sl.years), "train": len(sl.train),
                    "eval": len(sl.eval)} for sl in stream],
        "config": {"k": len(stream), "stream": args.stream, "steps": steps,
                   "joint_steps": [steps * (i + 1) for i in range(len(stream))] if args.joint else None,
                   "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "max_length": cfg.max_length,
                   "learning_rate": cfg.learning_rate, "warmup_ratio": cfg.warmup_ratio, "precision": cfg.precision,
                   "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "replay_ratios": ratios,
                   "strata": args.strata, "seed": args.seed, "eval_texts": eval_texts, "quick": args.quick,
                   "calibration": args.calibration if qa_set else None,
                   "qa_items": len(qa_set.pubmedqa_dev) if qa_set else 0,
                   "medquad_items": len(qa_set.medquad_retention) if qa_set else 0,
                   "torch_threads": torch.get_num_threads()},
        "base_ppl": [round(v, 4) for v in base],
        "base_retention": {m: round(v, 4) for m, v in base_retention.items()},
        "R": {name: [[round(v, 4) for v in row] for row in R] for name, R in matrices.items()},
        "retention": {name: [{m: round(v, 4) for m, v in r.items()} for r in c.retention]
                      for name, c in chains.items()} if qa_set else {},
        "strategies": strategies,
        "goal": goal,
        "goal_definition": {**GOAL, "metric": GOAL_METRIC if qa_mode else "held-out slice perplexity",
                            "forgetting": ("relative worsening of the metric from the base model to after the last "
                                           "increment" if qa_mode else "mean_{j<K-1} (R[K-1][j]-R[j][j])/R[j][j]"),
                            "new_slice_ppl": "mean_i R[i][i]"},
        "suggested_replay_ratio": suggested,
        "notes": notes,
        "plot": plot,
        "train_s": round(runner.train_s, 1), "eval_s": round(runner.eval_s, 1),
        "trained_steps": runner.trained_steps,
        "wall_s": round(wall, 1),
    }
    write_markdown(out_dir / "continual.md", result, stream, matrices, base, colours)
    (out_dir / "continual.json").write_text(json.dumps(result, indent=2) + "\n")
    result["report"] = _rel(out_dir / "continual.md")
    if not all(math.isfinite(v) for R in matrices.values() for row in R for v in row):
        log("warning: non-finite perplexity in the R matrices")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
