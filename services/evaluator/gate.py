"""Score a candidate against the champion (or the base model) on the same slices, and decide.

The decision, its reasons, the status change and (with auto-promotion) the alias move are written
in one transaction: a crash leaves either all of them or none.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

from services.evaluator.perplexity import perplexity
from services.evaluator.policy import Policy
from services.trainer.data import texts_for
from shared import crud
from shared.corpora import general_texts, split_general
from shared.db import session_scope
from shared.model_store import load_base_model
from shared.models import Evaluation, ModelVersion, VersionStatus
from shared.settings import get_settings

log = logging.getLogger("medqa.evaluator")
SUITE = "perplexity-v1"


@dataclass
class Decision:
    version_id: int
    baseline_version_id: int | None
    candidate: dict[str, float]
    baseline: dict[str, float]
    passed: bool
    reasons: list[str]
    promoted: bool


def _suite_hash(slices: dict[str, list[str]]) -> str:
    h = hashlib.sha256(SUITE.encode())
    for name in sorted(slices):
        for text in slices[name]:
            h.update(name.encode() + b"\0" + text.encode())
    return h.hexdigest()


def score(base_spec: str, adapters: dict[str, Path | None], slices: dict[str, list[str]]) -> dict[str, dict]:
    """Metrics per adapter name (None = the bare base model), loading the base weights only once."""
    s = get_settings()
    model, tokenizer = load_base_model(base_spec, s.models_dir)
    peft_model: Any = None
    net: Any
    out: dict[str, dict] = {}
    for name, path in adapters.items():
        if path is not None:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            else:
                peft_model.load_adapter(str(path), adapter_name=name)
            peft_model.set_adapter(name)
            net = peft_model
        else:
            net = model
        ctx = peft_model.disable_adapter() if (path is None and peft_model is not None) else _Null()
        with ctx:
            out[name] = {f"ppl_{k}": perplexity(net, tokenizer, v, max_length=s.eval_max_length)
                         for k, v in slices.items()}
    return out


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def evaluate_version(version_id: int) -> Decision | None:
    s = get_settings()
    with session_scope() as session:
        version = crud.get_version(session, version_id=version_id)
        if version.status != VersionStatus.candidate:
            log.info("v%d is %s already; nothing to evaluate", version_id, version.status.value)
            return None
        run = crud.run_for_version(session, version=version)
        champ = crud.champion(session, model_line=version.model_line)
        slices = {
            "new": texts_for(session, run.manifest["holdout"])[: s.eval_max_texts],
            "retention": [g.text for g in split_general(general_texts(s.retention_corpus))[1]][: s.eval_max_texts],
        }
        base_spec = version.base_model
        cand_path = Path(version.adapter_path)
        champ_id = champ.id if champ is not None else None
        champ_path = Path(champ.adapter_path) if champ is not None else None
    if champ is not None and champ.base_model != base_spec:
        raise ValueError(f"v{version_id} and champion v{champ_id} have different base models")

    metrics = score(base_spec, {"candidate": cand_path, "baseline": champ_path}, slices)
    policy = Policy.load(s.policy_file)  # type: ignore[arg-type]
    passed, reasons = policy.judge(metrics["candidate"], metrics["baseline"], has_champion=champ is not None)

    with session_scope() as session:
        row = session.get(ModelVersion, version_id)
        assert row is not None
        version = row
        if version.status != VersionStatus.candidate:  # another worker decided meanwhile
            return None
        session.add(Evaluation(version_id=version_id, baseline_version_id=champ_id, suite=SUITE,
                               suite_hash=_suite_hash(slices), metrics=metrics["candidate"],
                               baseline_metrics=metrics["baseline"], passed=passed, reasons=reasons))
        version.status = VersionStatus.blessed if passed else VersionStatus.rejected
        version.metrics = {**version.metrics, **metrics["candidate"],
                           **{f"baseline_{k}": v for k, v in metrics["baseline"].items()}}
        session.add(version)
        promoted = False
        if passed and s.auto_promote:
            current = crud.champion(session, model_line=version.model_line, for_update=True)
            if current is None or current.id == champ_id:  # nobody moved the alias since we measured
                crud.set_champion(session, model_line=version.model_line, version=version, actor="policy",
                                  action="auto-promote", reason="; ".join(r for r in reasons if r.startswith("ok")))
                promoted = True
    log.info("v%d %s%s: %s", version_id, "blessed" if passed else "rejected",
             " and promoted" if promoted else "", "; ".join(reasons))
    return Decision(version_id, champ_id, metrics["candidate"], metrics["baseline"], passed, reasons, promoted)
