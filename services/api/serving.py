"""The served model, and its hot swap when the champion alias moves.

The base model is loaded once; each champion is a LoRA adapter on it (peft). On an alias change the
new adapter is loaded under its own name beside the old one, made active, and the old one deleted.
All three steps happen under the generation lock, between two batches: a batch that started on
the old adapter finishes on it, the next one starts on the new one, and no request fails or sees a
half-loaded model. peft keeps the active adapter as model-wide state, so the lock (not a reference
swap) is what makes the switch atomic; the pause it costs is the adapter's load time, logged per
swap. The adapter's files are checked against the version's sha256 before the lock is taken: a
corrupt or missing adapter is refused and the old one keeps serving.

Quantized serving (MEDQA_API_QUANTIZATION=int8/nf4) merges the adapter into a copy of the base
(peft merge_and_unload) and quantizes the result: on CPU int8 is torch's dynamic int8 Linear
(quantize_dynamic, on float32 weights); on CUDA int8 and nf4 are bitsandbytes weights, loaded from the
merged model saved once per version (keyed by its sha256). A quantized merged model has no adapter to
swap in place, so a swap builds the new model whole beside the old one and swaps the references under
the generation lock (memory holds both for that moment).

Merged snapshots: each version's adapter merged into its base is saved once, in float32, under
<artifacts>/merged/<the version's sha256> with a checksum manifest (written after the first answer,
in the background, or while building a quantized model). A start that finds a verified snapshot of its
version loads it directly: no base + adapter + merge, and no peft import (seconds of a start on a CPU:
bench/cold_start.py). A model started from a snapshot has no adapter to swap in place, so its next swap
builds the new version whole, as a new base would; later swaps are in place again.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from shared import registry
from shared.artifacts import local_adapter
from shared.checksums import sha256_folder
from shared.db import session_scope
from shared.lm import generation  # the module, not the function: tests spy on generation.generate
from shared.lm.base_model import (
    bnb_quantization_config,
    ensure_built,
    load_base_model,
    manifest_source,
    quantize_dynamic_int8,
    release_freed_memory,
    verify_manifest,
)
from shared.lm.decisions import DECISIONS, verdicts
from shared.lm.generation import use_bf16
from shared.queries import VerdictCalibration, verdict_calibration
from shared.settings import Settings, SettingsError
from shared.tables import ModelVersion

log = logging.getLogger("medqa.api.serving")
KEEP_SNAPSHOTS = 3  # merged snapshots kept (newest first): the champion and the versions a rollback may want


def _peft_model() -> Any:
    """peft's PeftModel, imported on first use: importing peft costs seconds (it loads bitsandbytes where
    installed), which a start from a merged snapshot never needs."""
    from peft import PeftModel

    return PeftModel


def _merged(base: Any, adapter: Path) -> Any:
    """`adapter` merged into `base` (peft merge_and_unload): a plain model again."""
    return _peft_model().from_pretrained(base, str(adapter)).merge_and_unload()


@dataclass(frozen=True)
class Served:
    version_id: int | None  # None: the bare base model (no champion yet)
    base_model: str
    adapter: str | None


@dataclass(frozen=True)
class _Target:
    """What the alias points at, read in one short transaction."""

    version_id: int
    base_model: str
    adapter_path: Path
    sha256: str
    calibration: VerdictCalibration | None  # its verdicts' calibration, from its gate decision
    location: str = ""  # the adapter as the version row names it: a path, or a URL in the artifact store

    @classmethod
    def of(cls, v: ModelVersion, calibration: VerdictCalibration | None) -> _Target:
        assert v.id is not None
        # adapter_path becomes this host's verified copy when the target is switched to (_switch).
        return cls(v.id, v.base_model, Path(v.adapter_path), v.sha256, calibration, location=v.adapter_path)


def check_quantization(mode: str, device: torch.device) -> None:
    """Refuse, naming the setting, a quantization this machine cannot serve."""
    if mode == "none":
        return
    if mode == "nf4" and device.type != "cuda":
        raise SettingsError("bad setting: MEDQA_API_QUANTIZATION='nf4': bitsandbytes 4-bit needs CUDA and this "
                            "machine has none; use int8 (dynamic int8 on CPU) or none")
    if device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SettingsError(f"bad setting: MEDQA_API_QUANTIZATION={mode!r}: on CUDA it needs the bitsandbytes "
                                "package (pip install bitsandbytes), or use none") from None


class ModelServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.quantization = settings.api_quantization
        check_quantization(self.quantization, self.device)
        # bf16 wherever the trainer would use it (CUDA, CPUs with native bf16): same numerics, half the memory.
        # Dynamic int8 quantizes float32 weights and takes float32 activations.
        cpu_int8 = self.quantization == "int8" and self.device.type == "cpu"
        self.dtype = torch.bfloat16 if not cpu_int8 and use_bf16(settings.api_precision, self.device) \
            else torch.float32
        self._gen_lock = threading.Lock()   # one forward at a time; a swap waits between batches
        self._swap_lock = threading.Lock()  # one swap at a time: the poller and an operator request
        self._net: Any = None
        self._peft: Any = None  # the PeftModel whose adapters swap in place; None: a base or merged model
        self.tokenizer: Any = None
        self.max_length = settings.api_max_length
        self.served: Served | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self.last_swap_pause_ms: float | None = None
        self._failed: tuple[int, str] | None = None  # (version, error) already logged once
        self._calibration: VerdictCalibration | None = None  # the served version's verdict calibration
        self._target: _Target | None = None  # the served version's row, for its merged snapshot
        self.fast_start = settings.api_fast_start
        self.first_answer = threading.Event()  # set once a batch has been answered (deferred start-up work waits)

    # ----------------------------------------------------------------------------------- serving
    def generate(self, items: Sequence[tuple[str, str | None]], max_new_tokens: int) -> tuple[list[str], int | None]:
        """Greedy answers for a batch, and the version that produced them."""
        with self._gen_lock:
            served = self.served
            assert served is not None, "start() first"
            # The prompt needs room: an answer may take at most half the window.
            new = max(1, min(max_new_tokens, self.max_length // 2))
            answers = generation.generate(self._net, self.tokenizer, items, max_new_tokens=new, batch_size=len(items),
                                  max_length=self.max_length)
        self.first_answer.set()
        return answers, served.version_id

    def decide(self, items: Sequence[tuple[str, str | None]],
               ) -> tuple[list[tuple[str, dict[str, float]]], VerdictCalibration | None]:
        """Yes/no/maybe verdicts with their probabilities, and the calibration they used: the offsets the
        gate fitted for the served version, with the accuracy it measured (None: the bare base, or a
        version gated before offsets were stored, answers with raw likelihoods)."""
        with self._gen_lock:
            calibration = self._calibration
            offsets = calibration.offsets if calibration is not None else None
            found = verdicts(self._net, self.tokenizer, items, offsets=offsets, max_length=self.max_length)
        self.first_answer.set()
        return ([(label, {d: round(p, 4) for d, p in zip(DECISIONS, probs, strict=True)}) for label, probs in found],
                calibration)

    # ------------------------------------------------------------------------------------- swaps
    def start(self) -> ModelServer:
        """Load what the alias names (or the bare base before the first champion); errors here are fatal,
        since there would be nothing to serve."""
        target = self._read_champion()
        with self._swap_lock:
            if target is None:
                self._load_base(self.settings.base_model)
            else:
                self._switch(target)
        release_freed_memory()  # what loading left in this thread's heap
        return self

    def sync_champion(self) -> bool:
        """Swap to the alias's version if it moved; True when a swap happened. A failed swap keeps
        the old model serving and is retried on the next poll."""
        try:
            target = self._read_champion()
        except Exception as exc:  # store briefly unreachable: keep serving, try again next poll
            log.warning("cannot read the champion alias: %s", exc)
            return False
        with self._swap_lock:
            current = self.served.version_id if self.served else None
            if target is None or target.version_id == current:
                return False
            try:
                self._switch(target)
            except Exception as exc:
                self.last_error = f"cannot serve v{target.version_id}: {exc}"
                if self._failed != (target.version_id, str(exc)):  # once per cause, not every poll
                    log.error("%s; still serving v%s", self.last_error, current)
                self._failed = (target.version_id, str(exc))
                return False
            self.last_error, self._failed = None, None
            return True

    def _read_champion(self) -> _Target | None:
        with session_scope() as session:
            champion = registry.champion(session, model_line=self.settings.model_line)
            if champion is None or champion.id is None:
                return None
            return _Target.of(champion, verdict_calibration(session, champion.id))

    def _build(self, spec: str, target: _Target | None = None) -> tuple[Any, Any, int]:
        """The served network for `spec`: unquantized, the plain base (the caller wraps it in peft); with
        quantization the base with `target`'s adapter merged into it (when given), quantized."""
        model: Any
        if self.quantization == "none":
            model, tokenizer = load_base_model(spec, self.settings.models_dir, torch_dtype=self.dtype)
            model = model.to(self.device).eval()
        elif self.device.type == "cpu":
            snapshot = self.snapshot(target) if target is not None and self.fast_start else None
            if snapshot is not None:
                assert target is not None
                log.info("building v%d from its merged snapshot %s", target.version_id, snapshot)
                model, tokenizer = load_base_model(str(snapshot), self.settings.models_dir, torch_dtype=torch.float32)
            else:
                model, tokenizer = load_base_model(spec, self.settings.models_dir, torch_dtype=torch.float32)
                if target is not None:
                    model = _merged(model, target.adapter_path)
                    if self.fast_start:  # saved before it is quantized in place: the next start loads it
                        self._save_snapshot(target, model, tokenizer)
            model = quantize_dynamic_int8(model.eval())
        else:
            folder = spec if target is None else str(self.snapshot(target, build=True))
            model, tokenizer = load_base_model(folder, self.settings.models_dir,
                                               quantization_config=bnb_quantization_config(self.quantization))
            model = model.eval()
        return model, tokenizer, self._window(model)

    # ---------------------------------------------------------------------------- merged snapshots
    def _snapshot_dir(self, target: _Target) -> Path:
        return self.settings.artifacts / "merged" / target.sha256

    @staticmethod
    def _snapshot_source(target: _Target) -> str:
        return f"merged:{target.base_model}+sha256:{target.sha256}"

    def snapshot(self, target: _Target, *, build: bool = False) -> Path | None:
        """`target`'s verified merged snapshot (its adapter merged into its base, float32), built first when
        `build`; None when there is none (or it fails its checksums, or merges another base)."""
        folder = self._snapshot_dir(target)
        if verify_manifest(folder) and manifest_source(folder) == self._snapshot_source(target):
            return folder
        if not build:
            return None

        def write(dest: Path) -> None:
            model, tokenizer = load_base_model(target.base_model, self.settings.models_dir, torch_dtype=torch.float32)
            merged = _merged(model, target.adapter_path)
            merged.save_pretrained(dest)
            tokenizer.save_pretrained(dest)

        started = time.perf_counter()
        self._write_snapshot(target, write)
        log.info("merged snapshot of v%d saved in %.1f s", target.version_id, time.perf_counter() - started)
        return folder

    def _save_snapshot(self, target: _Target, model: Any, tokenizer: Any) -> None:
        """Save an already merged float32 model as `target`'s snapshot (best effort: serving goes on)."""
        def write(dest: Path) -> None:
            model.save_pretrained(dest)
            tokenizer.save_pretrained(dest)

        try:
            self._write_snapshot(target, write)
        except Exception as exc:
            log.warning("cannot save the merged snapshot of v%d: %s", target.version_id, exc)

    def _write_snapshot(self, target: _Target, write: Any) -> None:
        folder = self._snapshot_dir(target)
        if folder.exists() and manifest_source(folder) != self._snapshot_source(target):
            # ensure_built keeps a folder whose manifest verifies: drop the manifest of another base's merge
            log.warning("merged snapshot %s is not v%d's merge; rebuilding it", folder, target.version_id)
            (folder / "medqa-checksums.json").unlink(missing_ok=True)
        ensure_built(folder, write, self._snapshot_source(target))  # rebuilt too where a checksum fails
        self._prune_snapshots(keep=folder)

    def keep_snapshot(self) -> Path | None:
        """Build the served version's merged snapshot if it has none (run after the first answer: the next
        start of this version, a restart or another replica, then loads it directly). Under the swap lock:
        a swap waits for it, since two model loads at once are not safe in one process (transformers patches
        process-wide state while it loads)."""
        with self._swap_lock:
            target = self._target
            if target is None or self.served is None or self.served.version_id != target.version_id:
                return None
            if self.snapshot(target) is not None:
                return None
            if sha256_folder(target.adapter_path) != target.sha256:
                raise ValueError(f"adapter files at {target.adapter_path} do not match the version's sha256")
            return self.snapshot(target, build=True)

    def _prune_snapshots(self, keep: Path) -> None:
        """Keep the KEEP_SNAPSHOTS newest snapshots (`keep` among them); a start whose snapshot is gone
        merges again."""
        folders = sorted((p for p in keep.parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [p for p in folders if p != keep][KEEP_SNAPSHOTS - 1:]:
            shutil.rmtree(old, ignore_errors=True)
            log.info("removed the merged snapshot %s (the %d newest are kept)", old.name, KEEP_SNAPSHOTS)

    def _window(self, model: Any) -> int:
        cfg = model.config
        positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        return min(self.settings.api_max_length, positions or self.settings.api_max_length)

    def _load_base(self, spec: str) -> None:
        model, tokenizer, max_length = self._build(spec)  # quantized too, with quantization on
        with self._gen_lock:
            self._net, self._peft, self.tokenizer, self.max_length = model, None, tokenizer, max_length
            self.served = Served(None, spec, None)
            self._calibration = None

    def _switch(self, target: _Target) -> None:
        # Local files that hash to the version's sha256: fetched from object storage into this host's cache,
        # or checked in place on a local path (shared/artifacts.py). Refused, and the old version keeps
        # serving, when they are missing or differ.
        local = local_adapter(target.location or str(target.adapter_path), target.sha256, self.settings)
        target = replace(target, adapter_path=local)
        name = f"v{target.version_id}"
        if self.quantization != "none":
            self._replace(target, name)
            return
        snapshot = self.snapshot(target) if self.fast_start and self.served is None else None
        if snapshot is not None:  # a start that finds its version merged: no base + adapter + merge, no peft
            model: Any
            model, tokenizer = load_base_model(str(snapshot), self.settings.models_dir, torch_dtype=self.dtype)
            model = model.to(self.device).eval()
            with self._gen_lock:
                self._net, self._peft, self.tokenizer = model, None, tokenizer
                self.max_length = self._window(model)
                self.served = Served(target.version_id, target.base_model, name)
                self._calibration, self._target = target.calibration, target
            self.swaps += 1
            log.info("serving v%d from its merged snapshot %s", target.version_id, snapshot)
            return
        merged_now = self._peft is None and self.served is not None and self.served.version_id is not None
        if self.served is None or self.served.base_model != target.base_model or merged_now:
            # A new base (first load, or a line moved to another base model) is built whole beside the
            # old model, then swapped in by reference; memory holds both for a moment.
            # A model started from a merged snapshot has no adapter to swap: the same, for the same reason.
            model, tokenizer, max_length = self._build(target.base_model)
            peft = _peft_model().from_pretrained(model, str(target.adapter_path), adapter_name=name)
            peft = peft.to(self.device).eval()
            with self._gen_lock:
                self._net, self._peft, self.tokenizer, self.max_length = peft, peft, tokenizer, max_length
                self.served = Served(target.version_id, target.base_model, name)
                self._calibration, self._target = target.calibration, target
            self.swaps += 1
            log.info("serving v%d on a freshly loaded %s", target.version_id, target.base_model)
            return
        started = time.perf_counter()
        with self._gen_lock:
            old = self.served.adapter
            if self._peft is None:  # the bare base until now: wrap it in place
                self._peft = _peft_model().from_pretrained(self._net, str(target.adapter_path), adapter_name=name)
                self._peft.to(self.device).eval()
            else:
                if name in self._peft.peft_config:  # left over from a failed swap: load it afresh
                    self._peft.delete_adapter(name)
                self._peft.load_adapter(str(target.adapter_path), adapter_name=name)
            self._peft.set_adapter(name, inference_mode=True)
            if old is not None and old != name:
                self._peft.delete_adapter(old)
            self._net = self._peft
            self.served = Served(target.version_id, target.base_model, name)
            self._calibration, self._target = target.calibration, target
        self.last_swap_pause_ms = (time.perf_counter() - started) * 1000
        self.swaps += 1
        log.info("serving v%d (%s); generation paused %.0f ms for the swap", target.version_id, target.base_model,
                 self.last_swap_pause_ms)

    def _replace(self, target: _Target, name: str) -> None:
        """Quantized serving: the new version merged and quantized beside the old model, then swapped in by
        reference between two batches (a quantized merged model has no adapter to swap in place)."""
        started = time.perf_counter()
        model, tokenizer, max_length = self._build(target.base_model, target)
        built_s = time.perf_counter() - started
        paused = time.perf_counter()
        with self._gen_lock:
            self._net, self._peft, self.tokenizer, self.max_length = model, None, tokenizer, max_length
            self.served = Served(target.version_id, target.base_model, name)
            self._calibration, self._target = target.calibration, target
        self.last_swap_pause_ms = (time.perf_counter() - paused) * 1000
        self.swaps += 1
        release_freed_memory()  # the old model sits in reference cycles: free its memory now, not some time later
        log.info("serving v%d (%s, %s); built in %.1f s, generation paused %.1f ms for the swap", target.version_id,
                 target.base_model, self.quantization, built_s, self.last_swap_pause_ms)
