"""Quantized serving (MEDQA_API_QUANTIZATION) on tiny-gpt2: the int8 server answers from dynamically
quantized Linear layers (GPT-2's Conv1D layers included), verdicts still work, a champion swap serves the
new version, and nf4 without CUDA is refused naming the setting. bench/serve.py --precisions measures
speed, memory and accuracy on SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from apikit import API_ENV, AUTH, ingest_synth, live_abstracts, make_version
from conftest import TINY_GPT2
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.serving import ModelServer
from shared.lm.decisions import DECISIONS
from shared.settings import SettingsError, get_settings, load_settings

DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture
def int8_env(medqa_env, tmp_path):  # type: ignore[no-untyped-def]
    medqa_env(**API_ENV, api_quantization="int8")
    ingest_synth(tmp_path / "corpus", files=1, per_file=30, seed=7)
    return medqa_env


def float_layers(net: torch.nn.Module) -> list[str]:
    """Modules that still multiply by float weights: nn.Linear, or GPT-2's Conv1D."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, m in net.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)]


def ready(c: TestClient) -> None:
    """Every abstract in the index (the refresher's first pass runs in the background)."""
    c.app.state.runtime.index.refresh()  # type: ignore[attr-defined]


def ask(c: TestClient, question: str) -> dict:
    r = c.post("/v1/answer", json={"question": question})
    assert r.status_code == 200, r.text
    return r.json()


def test_conv1d_becomes_an_equivalent_linear():
    from shared.lm.base_model import _conv1d_to_linear, load_base_model

    model, tok = load_base_model(TINY_GPT2, get_settings().models_dir, torch_dtype=torch.float32)
    ids = tok("Does metformin lower HbA1c in older adults?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert _conv1d_to_linear(model) == 8  # 2 layers x (c_attn, c_proj, mlp.c_fc, mlp.c_proj)
        after = model(input_ids=ids).logits
    from transformers.pytorch_utils import Conv1D

    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert len(float_layers(model)) == 9  # the 8 converted and the LM head
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_int8_server_answers_from_dynamically_quantized_linear_layers(int8_env, tmp_path):
    v1 = make_version(tmp_path, seed=1, champion=True)
    with TestClient(create_app()) as c:
        ready(c)
        server = c.app.state.runtime.server  # type: ignore[attr-defined]
        assert server.dtype == torch.float32  # quantize_dynamic takes float32, whatever the CPU's bf16
        net = server._net
        assert float_layers(net) == []  # every projection and the tied LM head
        quantized = [n for n, m in net.named_modules() if isinstance(m, DynamicLinear)]
        assert len(quantized) == 9 and "lm_head" in quantized  # 8 former Conv1D layers and the head
        assert not hasattr(net, "peft_config")  # the adapter is merged, not wrapped
        target = live_abstracts()[5]
        doc = ask(c, target.title)
        assert doc["model_version"] == v1 and doc["answer"] and doc["citations"][0]["pmid"] == target.pmid
        found, calibration = server.decide([("Does aspirin prevent stroke in older adults?", None),
                                            ("Is metformin safe in chronic kidney disease?", "Metformin was safe.")])
        assert [label for label, _ in found] == [max(probs, key=probs.__getitem__) for _, probs in found]
        assert all(set(probs) == set(DECISIONS) and abs(sum(probs.values()) - 1) < 1e-3 for _, probs in found)
        assert calibration is None  # no gate decision stored for this version


def test_int8_merge_matches_the_adapter_it_merged(int8_env, tmp_path):
    """The merged model scores like base + adapter before quantization (merge_and_unload on Conv1D)."""
    from peft import PeftModel

    from shared.lm.base_model import load_base_model

    make_version(tmp_path, seed=1)
    base, tok = load_base_model(TINY_GPT2, get_settings().models_dir, torch_dtype=torch.float32)
    wrapped = PeftModel.from_pretrained(base, str(tmp_path / "adapter-1")).eval()
    ids = tok("Is aspirin safe for older adults?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = wrapped(input_ids=ids).logits
        merged = wrapped.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_a_champion_swap_on_the_int8_server_serves_the_new_version(int8_env, tmp_path):
    v1 = make_version(tmp_path, seed=1, champion=True)
    v2 = make_version(tmp_path, seed=2)
    question = live_abstracts()[5].title
    with TestClient(create_app()) as c:
        ready(c)
        server = c.app.state.runtime.server  # type: ignore[attr-defined]
        first = ask(c, question)
        old_net = server._net
        assert first["model_version"] == v1 and first["citations"]
        r = c.post("/v1/promote", json={"version": f"v{v2}", "reason": "try v2"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["serving_version"] == v2, r.text
        assert server._net is not old_net and float_layers(server._net) == []  # built anew, quantized
        assert ask(c, question)["model_version"] == v2
        r = c.post("/v1/rollback", json={"reason": "back"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["serving_version"] == v1, r.text
        again = ask(c, question)
        assert again["model_version"] == v1 and again["answer"] == first["answer"]  # the same model again
        assert server.swaps == 3 and server.last_error is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="nf4 is served on CUDA")
def test_nf4_without_cuda_is_refused_naming_the_setting(medqa_env):
    medqa_env(**API_ENV, api_quantization="nf4")
    with pytest.raises(SettingsError, match=r"MEDQA_API_QUANTIZATION='nf4'.*needs CUDA"):
        ModelServer(get_settings())
    with pytest.raises(SettingsError, match="MEDQA_API_QUANTIZATION"), TestClient(create_app()):
        pass


def test_an_unknown_quantization_is_refused_naming_the_setting():
    with pytest.raises(SettingsError, match="MEDQA_API_QUANTIZATION='int4'"):
        load_settings(api_quantization="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes serving needs CUDA")
@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_bitsandbytes_serving_on_cuda(medqa_env, tmp_path, mode):
    medqa_env(**API_ENV, api_quantization=mode)
    ingest_synth(tmp_path / "corpus", files=1, per_file=30, seed=7)
    v1 = make_version(tmp_path, seed=1, champion=True)
    with TestClient(create_app()) as c:
        assert ask(c, "Is aspirin safe for older adults?")["model_version"] == v1
        net = c.app.state.runtime.server._net  # type: ignore[attr-defined]
        assert type(net.transformer.h[0].attn.c_attn).__module__.startswith("bitsandbytes")


# -------------------------------------------------------------------- merged snapshots (fast start)


def wait_for_snapshot(server: ModelServer, timeout: float = 60) -> Path:
    """The served version's merged snapshot, which the deferred start-up work writes after the first answer."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = server.snapshot(server._target) if server._target else None  # type: ignore[arg-type]
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError("no merged snapshot was written")


def test_a_restart_loads_the_merged_snapshot_and_answers_alike(medqa_env, tmp_path):
    medqa_env(**API_ENV, api_precision="fp32")
    ingest_synth(tmp_path / "corpus", files=1, per_file=30, seed=7)
    v1 = make_version(tmp_path, seed=1, champion=True)
    v2 = make_version(tmp_path, seed=2)
    items = [("Does aspirin prevent stroke in older adults?", "Aspirin lowered stroke rates.")]
    with TestClient(create_app()) as c:
        server = c.app.state.runtime.server  # type: ignore[attr-defined]
        assert server._peft is not None  # no snapshot yet: base + adapter
        before, _ = server.decide(items)
        snapshot = wait_for_snapshot(server)
    assert snapshot == get_settings().artifacts / "merged" / server._target.sha256
    with TestClient(create_app()) as c:
        server = c.app.state.runtime.server  # type: ignore[attr-defined]
        assert server._peft is None and not hasattr(server._net, "peft_config")  # the merged model itself
        after, _ = server.decide(items)
        assert [label for label, _ in after] == [label for label, _ in before]
        for (_, p), (_, q) in zip(after, before, strict=True):
            assert p == pytest.approx(q, abs=2e-3)
        # A model started merged has no adapter to swap in place: the swap builds v2 whole, then back.
        r = c.post("/v1/promote", json={"version": f"v{v2}", "reason": "try v2"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["serving_version"] == v2, r.text
        assert server._peft is not None and server.served.adapter == f"v{v2}"
        r = c.post("/v1/rollback", json={"reason": "back"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["serving_version"] == v1, r.text
        again, _ = server.decide(items)
        assert [label for label, _ in again] == [label for label, _ in before]


def test_a_damaged_snapshot_is_not_loaded(medqa_env, tmp_path):
    medqa_env(**API_ENV, api_precision="fp32")
    ingest_synth(tmp_path / "corpus", files=1, per_file=30, seed=7)
    make_version(tmp_path, seed=1, champion=True)
    with TestClient(create_app()) as c:
        c.post("/v1/answer", json={"question": "Is aspirin safe?"})
        snapshot = wait_for_snapshot(c.app.state.runtime.server)  # type: ignore[attr-defined]
    weights = snapshot / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with TestClient(create_app()) as c:
        server = c.app.state.runtime.server  # type: ignore[attr-defined]
        assert server._peft is not None  # base + adapter, not the damaged merge
        ask(c, "Is aspirin safe?")
        assert wait_for_snapshot(server) == snapshot  # rebuilt after the first answer


def test_an_abstention_is_a_first_answer_for_the_deferred_work(medqa_env, tmp_path):
    """The merge and the index backlog wait for the first answer, not only for the first generated one:
    before, a first question answered "no evidence" left them waiting out the 30 s grace."""
    medqa_env(**API_ENV, api_precision="fp32")
    ingest_synth(tmp_path / "corpus", files=1, per_file=30, seed=7)
    make_version(tmp_path, seed=1, champion=True)
    with TestClient(create_app()) as c:
        server = c.app.state.runtime.server  # type: ignore[attr-defined]
        assert not server.first_answer.is_set()
        assert ask(c, "Is aspirin safe?")["outcome"] == "no_evidence"
        assert server.first_answer.is_set()
        assert wait_for_snapshot(server, timeout=15).is_dir()  # well inside the grace


def test_the_sequential_start_writes_no_snapshot(medqa_env, tmp_path):
    medqa_env(**API_ENV, api_fast_start="false")
    ingest_synth(tmp_path / "corpus", files=1, per_file=30, seed=7)
    make_version(tmp_path, seed=1, champion=True)
    with TestClient(create_app()) as c:
        ask(c, "Is aspirin safe?")
        runtime = c.app.state.runtime  # type: ignore[attr-defined]
        assert runtime.server._peft is not None
        assert [t.name for t in runtime._threads] == ["medqa-champion-poll", "medqa-refresh"]  # nothing deferred
    assert not (get_settings().artifacts / "merged").exists()


def test_an_int8_start_saves_the_merge_and_the_next_start_loads_it(int8_env, tmp_path):
    make_version(tmp_path, seed=1, champion=True)
    question = live_abstracts()[5].title
    with TestClient(create_app()) as c:
        ready(c)
        first = ask(c, question)
        server = c.app.state.runtime.server  # type: ignore[attr-defined]
        assert server.snapshot(server._target) is not None  # saved while building, before quantizing
    with TestClient(create_app()) as c:
        ready(c)
        assert float_layers(c.app.state.runtime.server._net) == []  # type: ignore[attr-defined]
        assert ask(c, question)["answer"] == first["answer"]
