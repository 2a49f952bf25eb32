"""The LoRA increment on the tiny GPT-2: what changes, what must not, packing, exact resume."""

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_GPT2
from peft import get_peft_model_state_dict

from services.trainer.config import TrainConfig
from services.trainer.examples import IGNORE, lm, pack, qa, tokenize
from services.trainer.train import LOSS_CHUNK, TrainingFailed, batch_indices, build_model, lm_loss_backward, train_lora
from shared.lm.base_model import load_base_model
from shared.lm.prompts import chat_prompt

TEXTS = [f"Patient cohort {i} received treatment {i % 7} and showed outcome {i % 5} after follow-up." * 3
         for i in range(60)]


def _cfg(**kw):
    return TrainConfig(**{"max_steps": 8, "batch_size": 2, "grad_accum": 1, "max_length": 64, "learning_rate": 5e-3,
                          "checkpoint_every": 3, "precision": "fp32", **kw})


def test_lora_weights_change_and_base_weights_do_not(model_cache, tmp_path):
    base, _ = load_base_model(TINY_GPT2, model_cache)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    res = train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=_cfg(),
                     out_dir=tmp_path / "adapter", work_dir=tmp_path / "work")
    model, _ = build_model(TINY_GPT2, model_cache, _cfg(), res.adapter_dir)
    trained = get_peft_model_state_dict(model)
    fresh = get_peft_model_state_dict(build_model(TINY_GPT2, model_cache, _cfg(), None)[0])
    assert any(not torch.allclose(trained[k], fresh[k]) for k in trained if "lora_B" in k)
    merged_base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                   for k, v in model.state_dict().items() if "lora_" not in k}
    for k, v in base_before.items():
        assert torch.equal(merged_base[k], v), f"base weight {k} changed"
    assert len(res.sha256) == 64 and res.tokens == 8 * 2 * 64


def test_gradient_accumulation_matches_the_bigger_batch(model_cache, tmp_path):
    one = train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS,
                     cfg=_cfg(batch_size=4, grad_accum=1, lora_dropout=0.0, max_steps=3),
                     out_dir=tmp_path / "a", work_dir=tmp_path / "wa")
    two = train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS,
                     cfg=_cfg(batch_size=2, grad_accum=2, lora_dropout=0.0, max_steps=3),
                     out_dir=tmp_path / "b", work_dir=tmp_path / "wb")
    # Same blocks seen (micro-step s*accum+k covers the same positions as step s of the big batch);
    # weights are not compared exactly: Adam's first steps amplify float-order differences.
    assert one.tokens == two.tokens == 3 * 4 * 64
    assert abs(one.final_loss - two.final_loss) / one.final_loss < 0.02


def test_packing_has_no_padding_and_restarts_positions(model_cache):
    _, tok = load_base_model(TINY_GPT2, model_cache)
    packed = pack(tok, [lm(t) for t in TEXTS], 64)
    ids, pos = packed.input_ids, packed.position_ids
    assert ids.shape[1] == 64 and pos.shape == ids.shape
    n_eos = int((ids == tok.eos_token_id).sum())
    assert 0 < n_eos <= len(TEXTS)  # separators only: one per example, no pad runs
    assert not (ids.view(-1)[1:] == tok.eos_token_id).logical_and(ids.view(-1)[:-1] == tok.eos_token_id).any()
    flat_ids, flat_pos = ids.view(-1), pos.view(-1)
    starts = (flat_pos == 0).nonzero().view(-1)[1:]  # every example after the first starts at position 0...
    assert (flat_ids[starts - 1] == tok.eos_token_id).all()  # ...right after the previous one's EOS
    assert (packed.labels.view(-1)[starts] == IGNORE).all()  # no loss across the example boundary


def test_qa_examples_take_loss_on_the_answer_only(model_cache):
    _, tok = load_base_model(TINY_GPT2, model_cache)
    ids, labels = tokenize(tok, qa("Does aspirin help?", "It lowers the risk.\nAnswer: yes", "Trial text."), 256)
    answer = tok("It lowers the risk.\nAnswer: yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n_prompt = len(ids) - len(answer)
    assert labels[:n_prompt] == [IGNORE] * n_prompt and labels[n_prompt:] == answer == ids[n_prompt:]
    long_ids, long_labels = tokenize(tok, qa("Q?", "short answer", "context " * 500), 64)
    assert len(long_ids) <= 64 and long_labels[-1] == tok.eos_token_id  # context truncated, answer kept
    # ...and the prompt still ends as the evaluator's does (the template's answer cue survives)
    n_answer = sum(label != IGNORE for label in long_labels)
    tail = tok(chat_prompt(tok, "Q?", "context"), add_special_tokens=False)["input_ids"][-3:]
    assert long_ids[len(long_ids) - n_answer - 3: len(long_ids) - n_answer] == tail


def test_an_over_long_answer_keeps_its_decision_line(model_cache):
    """A long answer is cut in its body, never in its last line: the decision is what QA trains."""
    _, tok = load_base_model(TINY_GPT2, model_cache)
    decision = tok("\nAnswer: maybe", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids, labels = tokenize(tok, qa("Q?", "word " * 300 + "\nAnswer: maybe", "ctx"), 64)
    answer = [t for t in labels if t != IGNORE]
    assert len(ids) <= 64 and ids[-len(decision):] == decision and labels[-len(decision):] == decision
    assert len(answer) < 300 and tok.decode(answer[:3]).startswith("word")  # body cut, its start kept
    plain_ids, _ = tokenize(tok, qa("Q?", "x" * 900, "ctx"), 64)  # one line: plain truncation
    assert len(plain_ids) <= 64


def test_packed_attention_stays_within_an_example(model_cache):
    """With position ids restarting, transformers masks attention across the example boundary: the
    second example's logits do not depend on the first example's tokens."""
    model, tok = load_base_model(TINY_GPT2, model_cache)
    model.eval()
    a, b, c = [tok(t, add_special_tokens=False)["input_ids"] for t in ("alpha beta gamma", "delta epsilon",
                                                                        "totally different words here")]
    def logits(first):
        ids = torch.tensor([first + b])
        pos = torch.tensor([list(range(len(first))) + list(range(len(b)))])
        with torch.no_grad():
            return model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, -len(b):]
    assert torch.allclose(logits(a), logits(c[: len(a)] if len(c) >= len(a) else c), atol=1e-5)


def test_chunked_loss_equals_the_full_logits_loss_and_gradients(model_cache):
    cfg = _cfg(lora_dropout=0.0)
    model, tok = build_model(TINY_GPT2, model_cache, cfg, None)
    with torch.no_grad():  # LoRA B starts at zero: give it weights so its gradient path is exercised
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    specs = [lm(t) for t in TEXTS[:20]] + [qa("What was given?", "A treatment.", "Cohort notes.")]
    batch = pack(tok, specs, 160).batch(list(range(4)), torch.device("cpu"))  # 4x159 tokens > LOSS_CHUNK
    assert batch["input_ids"].numel() > LOSS_CHUNK
    params = [p for p in model.parameters() if p.requires_grad]
    full = model(**batch, use_cache=False).loss
    (full * 0.5).backward()
    expected = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    chunked = lm_loss_backward(model, batch, 0.5, torch.autocast("cpu", enabled=False))
    assert torch.allclose(chunked, full.detach(), rtol=1e-5)
    for got, want in zip((p.grad for p in params), expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_batch_order_is_a_function_of_seed_and_step():
    seen = [i for step in range(5) for i in batch_indices(10, 2, step, seed=1)]
    assert sorted(seen) == list(range(10))  # one epoch covers every block once
    assert batch_indices(10, 2, 7, seed=1) == batch_indices(10, 2, 7, seed=1)


def test_resume_matches_uninterrupted_run(model_cache, tmp_path):
    straight = train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=_cfg(lora_dropout=0.0),
                          out_dir=tmp_path / "a", work_dir=tmp_path / "wa")

    class Killed(Exception):
        pass

    def die_at_5(step, total, loss, tps):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=_cfg(lora_dropout=0.0),
                   out_dir=tmp_path / "b", work_dir=tmp_path / "wb", progress=die_at_5)
    resumed = train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=_cfg(lora_dropout=0.0),
                         out_dir=tmp_path / "b", work_dir=tmp_path / "wb")
    assert resumed.resumed_from == 3
    a = get_peft_model_state_dict(build_model(TINY_GPT2, model_cache, _cfg(), straight.adapter_dir)[0])
    b = get_peft_model_state_dict(build_model(TINY_GPT2, model_cache, _cfg(), resumed.adapter_dir)[0])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_too_little_text_is_a_clear_failure(model_cache, tmp_path):
    with pytest.raises(TrainingFailed, match="not enough text"):
        train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=["short"], cfg=_cfg(),
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
    res = train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS,
                     cfg=_cfg(gradient_checkpointing=True, max_steps=3), out_dir=tmp_path / "a",
                     work_dir=tmp_path / "w")
    assert res.steps == 3 and res.skipped_steps == 0
    if not torch.cuda.is_available():
        with pytest.raises(TrainingFailed, match="needs CUDA"):
            train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=_cfg(quantization="4bit"),
                       out_dir=tmp_path / "b", work_dir=tmp_path / "w2")


def test_a_non_finite_gradient_is_skipped_not_applied(model_cache, tmp_path, monkeypatch):
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def flaky_clip(params, max_norm):
        calls["n"] += 1
        norm = real_clip(params, max_norm)
        return torch.tensor(float("inf")) if calls["n"] == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", flaky_clip)
    res = train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=_cfg(max_steps=4),
                     out_dir=tmp_path / "a", work_dir=tmp_path / "w")
    assert res.skipped_steps == 1 and res.final_loss == res.final_loss  # finite, not NaN


def test_out_of_memory_fails_the_run_with_a_clear_reason(model_cache, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", oom)
    with pytest.raises(TrainingFailed, match="out of memory at batch 2x64"):
        train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=_cfg(),
                   out_dir=tmp_path / "a", work_dir=tmp_path / "w")


def test_oom_in_the_task_marks_the_run_failed_once(medqa_env, synth_dir, monkeypatch):
    from sqlmodel import select

    from services.ingest.tasks import ingest_path
    from shared.db import session_scope
    from shared.tables import ModelVersion, RunStatus, TrainingRun

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", oom)
    ingest_path(synth_dir)  # eager: trigger -> train -> OOM
    with session_scope() as s:
        run = s.exec(select(TrainingRun)).one()
        assert run.status == RunStatus.failed and "out of memory" in run.error and run.deliveries == 1
        assert s.exec(select(ModelVersion)).first() is None


def test_a_failed_run_releases_its_abstracts_and_retry_trains_them(medqa_env, synth_dir, monkeypatch):
    """Before: a failed run kept its claim on its abstracts, `medqa train --force` in eager mode exited 0
    saying "queued" while the run failed, and nothing retried it. After: the claim is released, eager
    `train` exits 1 with the run's error, and `medqa runs retry N` trains the same abstracts."""
    from sqlmodel import col, func, select
    from typer.testing import CliRunner

    from services.cli import app
    from services.ingest.tasks import ingest_path
    from shared.db import session_scope
    from shared.manifest import RunManifest
    from shared.tables import Abstract, ModelVersion, RunStatus, TrainingRun

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    def claimed() -> int:
        with session_scope() as s:
            query = select(func.count()).select_from(Abstract).where(col(Abstract.train_run_id).is_not(None))
            return s.exec(query).one()

    with monkeypatch.context() as m:
        m.setattr(torch.nn.utils, "clip_grad_norm_", oom)
        ingest_path(synth_dir)  # eager: trigger -> train -> OOM
        assert claimed() == 0  # released with the failure: they count as new again
        res = CliRunner().invoke(app, ["train", "--force"])  # fails the same way, and says so
        assert res.exit_code == 1 and "failed" in res.output and "out of memory" in res.output
    res = CliRunner().invoke(app, ["runs", "retry", "1", "--json"])
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        first, _second, third = s.exec(select(TrainingRun).order_by(col(TrainingRun.id))).all()
        assert third.status == RunStatus.succeeded and s.exec(select(ModelVersion)).one().run_id == third.id
        # The retry trained what the failed run had claimed (its new and held-out papers).
        old, new = RunManifest.from_json(first.manifest), RunManifest.from_json(third.manifest)
        assert set(old.new) | set(old.holdout) <= set(new.new) | set(new.holdout)
    assert claimed() > 0
    res = CliRunner().invoke(app, ["runs", "retry", "3"])
    assert res.exit_code == 1 and "is succeeded; only a failed run is retried" in res.output
    assert CliRunner().invoke(app, ["runs", "retry", "99"]).exit_code == 1


def test_a_full_disk_is_named_and_leaves_no_temporary_files(model_cache, tmp_path, monkeypatch):
    """Before: "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ..." with no word
    of the disk, and runs/N/checkpoint.tmp left behind."""
    import shutil
    from collections import namedtuple

    import services.trainer.train as train_module

    def full_disk_save(obj, path, *a, **k):  # torch's failure on a full disk, after a partial write
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 4032")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(train_module.torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 4096, 4096))
    cfg = TrainConfig(max_steps=2, batch_size=2, grad_accum=1, max_length=64, checkpoint_every=1, precision="fp32")
    with pytest.raises(TrainingFailed, match="could not write the checkpoint .* no space left on device"):
        train_lora(base_spec=TINY_GPT2, models_dir=model_cache, examples=TEXTS, cfg=cfg, out_dir=tmp_path / "a",
                   work_dir=tmp_path / "w")
    assert not list((tmp_path / "w").glob("*.tmp")) and not (tmp_path / "a").exists()


def test_checkpoints_of_finished_runs_are_pruned_beyond_the_setting(medqa_env, synth_dir):
    from services.ingest.tasks import ingest_path
    from services.trainer.tasks import prune_checkpoints
    from shared.settings import get_settings

    medqa_env(keep_run_checkpoints="0")
    ingest_path(synth_dir)  # eager: one run trains to the end
    runs = get_settings().artifacts / "runs"
    assert not (runs / "1").exists()  # pruned when the run finished
    (runs / "1").mkdir(parents=True)  # as a finished run's folder would be with the old code
    (runs / "77").mkdir()  # no such run: not ours to judge, kept
    medqa_env(keep_run_checkpoints="1")
    assert prune_checkpoints(get_settings()) == [] and (runs / "1").exists()
    medqa_env(keep_run_checkpoints="0")
    assert prune_checkpoints(get_settings()) == [1] and not (runs / "1").exists() and (runs / "77").exists()


def test_a_block_opening_with_a_lone_zero_embedding_token_keeps_finite_gradients():
    """The H200 check's 3 skipped steps in every mode, fp32 included (bench/results/gpu_check_h200_2026-11-26.json).
    Random init zeroes the embedding of the pad token, which is SmolLM2's EOS; a block that opens
    with the previous example's EOS then holds an all-zero hidden state at position 0 through every
    layer. RMSNorm's derivative at zero is weight / sqrt(eps) (316 here), so any gradient reaching that
    row grows tens of times a layer and overflows float32 within 30 layers. The trainer of that run
    sent it gradient (plain causal attention over the whole block, a loss on every token); this
    trainer sends none (position ids restart at each example, so no token attends to the fragment,
    and no loss is taken across the boundary). Trained weights have no zero row."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_hidden_layers=30,
                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=2, eos_token_id=2,
                         bos_token_id=1, tie_word_embeddings=True)  # SmolLM2's depth, norm and token ids
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(LlamaForCausalLM(config), lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    assert not model.get_input_embeddings().weight[2].any()  # the EOS row, zeroed as padding_idx
    ids = torch.randint(3, 64, (1, 32), generator=torch.Generator().manual_seed(1))
    ids[0, 0] = 2  # the block opens with the end of the previous example
    labels = ids.clone()
    labels[0, 1] = IGNORE  # a new example starts at position 1, as pack() writes it
    packed = {"input_ids": ids, "labels": labels, "position_ids": torch.tensor([[17] + list(range(31))])}
    params = [p for p in model.parameters() if p.requires_grad]

    def grad_norm() -> float:
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1e30))
        model.zero_grad(set_to_none=True)
        return norm

    model(input_ids=ids, labels=ids).loss.backward()  # the H200 run's trainer
    assert not math.isfinite(grad_norm())
    lm_loss_backward(model, packed, 1.0, torch.autocast("cpu", enabled=False))  # this trainer
    assert math.isfinite(grad_norm())
    with torch.no_grad():  # bench/gpu_check.py now draws that row like the others
        model.get_input_embeddings().weight[2].normal_(0, 0.02)
    model(input_ids=ids, labels=ids).loss.backward()
    assert math.isfinite(grad_norm())
