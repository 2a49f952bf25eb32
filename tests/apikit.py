"""Helpers for the QA API tests: a store with synthetic abstracts, and model versions whose adapters
are made directly with peft (random LoRA weights, so two versions answer differently) instead of
trained, which keeps these tests to seconds. tests/test_api_e2e.py goes through the real loop."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_GPT2
from sqlmodel import col, select

from services.devkit.local import register_version
from shared import registry
from shared.db import session_scope
from shared.tables import Abstract, AuditEvent, VersionStatus

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API_ENV = dict(api_token=TOKEN, api_champion_poll_s="3600", api_refresh_s="3600", api_default_new_tokens="4",
               api_batch_wait_ms="5", trigger_min_new="100000")


def ingest_synth(folder: Path, **kwargs: object) -> None:
    from services.devkit.synth import write_corpus
    from services.ingest.tasks import ingest_path

    for path in write_corpus(folder, **kwargs):  # type: ignore[arg-type]
        ingest_path(path)


def make_version(tmp_path: Path, *, seed: int, status: VersionStatus = VersionStatus.blessed,
                 champion: bool = False) -> int:
    """A version with a random (non-zero) LoRA adapter on tiny-gpt2, registered like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model

    from shared.lm.base_model import load_base_model
    from shared.settings import get_settings

    model, _ = load_base_model(TINY_GPT2, get_settings().models_dir)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["c_attn"], init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path / f"adapter-{seed}"
    get_peft_model(model, lora).save_pretrained(out)
    return register_version(out, TINY_GPT2, status=status, champion=champion, actor="test")


def registry_state() -> tuple[int | None, list[tuple]]:
    """(champion id, audit rows) to compare before and after a refused request."""
    with session_scope() as s:
        champ = registry.champion(s, model_line="default")
        audit = [(e.id, e.actor, e.action, e.to_version_id) for e in s.exec(select(AuditEvent).order_by(
            col(AuditEvent.id)))]
        return (champ.id if champ else None), audit


def live_abstracts() -> list[Abstract]:
    with session_scope() as s:
        return [a for a in s.exec(select(Abstract).order_by(col(Abstract.pmid))) if not a.deleted and not a.retracted]
