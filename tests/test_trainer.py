"""The LoRA increment on the tiny GPT-2: what changes, what must not, packing, exact resume."""

import pytest
import torch
from peft import get_peft_model_state_dict

from services.trainer.config import TrainConfig
from services.trainer.train import TrainingFailed, batch_indices, build_model, pack, train_lora
from shared.model_store import load_base_model

TEXTS = [f"Patient cohort {i} received treatment {i % 7} and showed outcome {i % 5} after follow-up." * 3
         for i in range(60)]


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 8, "batch_size": 2, "max_length": 64, "learning_rate": 5e-3,
                          "checkpoint_every": 3, "precision": "fp32", **kw})


def test_lora_weights_change_and_base_weights_do_not(model_cache, tmp_path):
    base, _ = load_base_model("tiny-gpt2", model_cache)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    res = train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=TEXTS, cfg=_cfg(),
                     out_dir=tmp_path / "adapter", work_dir=tmp_path / "work")
    model, _ = build_model("tiny-gpt2", model_cache, _cfg(), res.adapter_dir)
    trained = get_peft_model_state_dict(model)
    fresh = get_peft_model_state_dict(build_model("tiny-gpt2", model_cache, _cfg(), None)[0])
    assert any(not torch.allclose(trained[k], fresh[k]) for k in trained if "lora_B" in k)
    merged_base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                   for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in base_before.items():
        assert torch.equal(merged_base[k], v), f"base weight {k} changed"
    assert len(res.sha256) == 64 and res.tokens == 8 * 2 * 64


def test_packing_has_no_padding(model_cache):
    _, tok = load_base_model("tiny-gpt2", model_cache)
    blocks = pack(tok, TEXTS, 64)
    assert blocks.shape[1] == 64
    n_eos = int((blocks == tok.eos_token_id).sum())
    assert 0 < n_eos <= len(TEXTS)  # separators only: one per example, no pad runs
    assert not (blocks.view(-1)[1:] == tok.eos_token_id).logical_and(blocks.view(-1)[:-1] == tok.eos_token_id).any()


def test_batch_order_is_a_function_of_seed_and_step():
    seen = [i for step in range(5) for i in batch_indices(10, 2, step, seed=1)]
    assert sorted(seen) == list(range(10))  # one epoch covers every block once
    assert batch_indices(10, 2, 7, seed=1) == batch_indices(10, 2, 7, seed=1)


def test_resume_matches_uninterrupted_run(model_cache, tmp_path):
    straight = train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=TEXTS, cfg=_cfg(lora_dropout=0.0),
                          out_dir=tmp_path / "a", work_dir=tmp_path / "wa")

    class Killed(Exception):
        pass

    def die_at_5(step, total, loss, tps):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=TEXTS, cfg=_cfg(lora_dropout=0.0),
                   out_dir=tmp_path / "b", work_dir=tmp_path / "wb", progress=die_at_5)
    resumed = train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=TEXTS, cfg=_cfg(lora_dropout=0.0),
                         out_dir=tmp_path / "b", work_dir=tmp_path / "wb")
    assert resumed.resumed_from == 3
    a = get_peft_model_state_dict(build_model("tiny-gpt2", model_cache, _cfg(), straight.adapter_dir)[0])
    b = get_peft_model_state_dict(build_model("tiny-gpt2", model_cache, _cfg(), resumed.adapter_dir)[0])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_too_little_text_is_a_clear_failure(model_cache, tmp_path):
    with pytest.raises(TrainingFailed, match="not enough text"):
        train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=["short"], cfg=_cfg(),
                   out_dir=tmp_path / "a", work_dir=tmp_path / "w")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    assert TrainConfig().targets_for("gpt2") == ["c_attn"]
    with pytest.raises(ValueError, match="no default LoRA targets"):
        TrainConfig().targets_for("bert")


def test_gradient_checkpointing_trains_and_kbit_needs_cuda(model_cache, tmp_path):
    res = train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=TEXTS,
                     cfg=_cfg(gradient_checkpointing=True, max_steps=3), out_dir=tmp_path / "a", work_dir=tmp_path / "w")
    assert res.steps == 3 and res.skipped_steps == 0
    if not torch.cuda.is_available():
        with pytest.raises(TrainingFailed, match="needs CUDA"):
            train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=TEXTS, cfg=_cfg(quantization="4bit"),
                       out_dir=tmp_path / "b", work_dir=tmp_path / "w2")


def test_a_non_finite_gradient_is_skipped_not_applied(model_cache, tmp_path, monkeypatch):
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def flaky_clip(params, max_norm):
        calls["n"] += 1
        norm = real_clip(params, max_norm)
        return torch.tensor(float("inf")) if calls["n"] == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", flaky_clip)
    res = train_lora(base_spec="tiny-gpt2", models_dir=model_cache, texts=TEXTS, cfg=_cfg(max_steps=4),
                     out_dir=tmp_path / "a", work_dir=tmp_path / "w")
    assert res.skipped_steps == 1 and res.final_loss == res.final_loss  # finite, not NaN
