"""A tiny GPT-2 for tests and smoke runs: a random 2-layer model and a BPE tokenizer trained locally.

It learns nothing useful; it exists so tests exercise the real Auto*/peft code paths in seconds. It is
a dev tool: production names its base model by hub id or local folder, and this builder writes one
such folder (`tiny_gpt2(models_dir)`), checksummed and built once like any converted base model.
"""

from __future__ import annotations

import random
from pathlib import Path

from shared.lm.base_model import ensure_built

NAME = "tiny-gpt2"
EOS = "<|endoftext|>"

# Renders exactly the plain fallback format of chat_prompt, so both paths give the tiny model one format.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Answer: {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)


def tiny_gpt2(models_dir: Path) -> str:
    """The tiny model's folder under `models_dir` (built once, verified by checksum after): use it as
    MEDQA_BASE_MODEL or as `base_spec`."""
    return str(ensure_built(Path(models_dir) / NAME, build_tiny_gpt2, "devkit:tiny-gpt2"))


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


