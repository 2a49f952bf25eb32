"""Synthetic PubMed XML (and MEDLINE text) for fixtures and the demo.

Real NLM text may not be copied into the repo, so tests and the demo feed on this generator: its
vocabulary and sentence templates are our own, its element structure follows the NLM
PubmedArticleSet DTD closely enough that services.ingest.parser reads it like a real file, and it
is deterministic by seed. Each topic has its own diseases, drugs, outcomes and journals, so a shift
from one topic to another is a vocabulary drift that the monitor should detect.

An article is a plain dict whose 'title' and 'abstract' are exactly what the parser will return;
pubmed_xml() adds inline <i>/<sup>/<sub> markup on the way out, which the parser flattens back.
medline_text() writes the same dicts in the MEDLINE text format. Retracted articles and retraction
notices (retract(), retraction_notice()) carry the links NLM uses, so retraction handling is testable.
"""

from __future__ import annotations

import random
import re
import textwrap
import zlib
from collections.abc import Collection, Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from lxml import etree

__all__ = ["TOPICS", "generate_articles", "medline_text", "pubmed_xml", "retract", "retraction_notice",
           "write_corpus"]

TOPICS = ("cardiology", "oncology", "infectious", "endocrine", "neurology")

# Per topic: conditions (disease, its MeSH heading, an intervention, its MeSH heading, the usual
# comparator, outcomes that fit), measures with units, populations, keywords and journals
# (title, ISO abbreviation). Pairing keeps abstracts coherent (no valve implants for migraine).
# Journal names are invented; MeSH headings are the public controlled vocabulary.
_VOCAB: dict[str, dict[str, list]] = {
    "cardiology": {
        "conditions": [
            ("heart failure with reduced ejection fraction", "Heart Failure", "sacubitril-valsartan",
             "Angiotensin Receptor Antagonists", "enalapril",
             ["cardiovascular death or hospitalization for heart failure", "all-cause mortality",
              "worsening heart failure events"]),
            ("atrial fibrillation", "Atrial Fibrillation", "catheter ablation", "Catheter Ablation",
             "antiarrhythmic drug therapy",
             ["recurrent atrial arrhythmia", "stroke or systemic embolism",
              "arrhythmia-related hospitalization"]),
            ("acute myocardial infarction", "Myocardial Infarction", "high-intensity statin therapy",
             "Hydroxymethylglutaryl-CoA Reductase Inhibitors", "moderate-intensity statin therapy",
             ["major adverse cardiac events", "recurrent myocardial infarction", "cardiovascular death"]),
            ("resistant hypertension", "Hypertension", "renal denervation", "Sympathectomy",
             "a sham procedure",
             ["24-hour ambulatory systolic blood pressure", "office blood pressure control",
              "antihypertensive medication burden"]),
            ("severe aortic stenosis", "Aortic Valve Stenosis", "transcatheter valve implantation",
             "Transcatheter Aortic Valve Replacement", "surgical valve replacement",
             ["death or disabling stroke", "rehospitalization", "new-onset atrial fibrillation"]),
            ("stable coronary artery disease", "Coronary Artery Disease", "home-based cardiac rehabilitation",
             "Cardiac Rehabilitation", "centre-based rehabilitation",
             ["exercise capacity", "major adverse cardiac events", "health-related quality of life"]),
        ],
        "measures": [("left ventricular ejection fraction", "%"), ("NT-proBNP", "pg/mL"),
                     ("systolic blood pressure", "mm Hg"), ("body mass index", "kg/m2"),
                     ("6-minute walk distance", "m")],
        "populations": ["adults aged 65 years or older", "patients undergoing percutaneous intervention",
                        "ambulatory outpatients", "women after menopause", "patients receiving dialysis"],
        "keywords": ["cardiovascular outcomes", "echocardiography", "natriuretic peptides",
                     "secondary prevention", "arrhythmia"],
        "journals": [("Journal of Cardiovascular Outcomes", "J Cardiovasc Outcomes"),
                     ("Heart Rhythm and Failure Reports", "Heart Rhythm Fail Rep"),
                     ("Clinical Cardiology Practice", "Clin Cardiol Pract")],
    },
    "oncology": {
        "conditions": [
            ("metastatic non-small cell lung cancer", "Carcinoma, Non-Small-Cell Lung",
             "pembrolizumab plus chemotherapy", "Immune Checkpoint Inhibitors",
             "platinum doublet chemotherapy",
             ["progression-free survival", "overall survival", "objective response rate"]),
            ("HER2-positive breast cancer", "Breast Neoplasms", "trastuzumab deruxtecan", "Immunoconjugates",
             "trastuzumab emtansine",
             ["progression-free survival", "interstitial lung disease", "objective response rate"]),
            ("oligometastatic colorectal cancer", "Colorectal Neoplasms", "stereotactic body radiotherapy",
             "Radiosurgery", "systemic therapy alone",
             ["local control", "overall survival", "grade 3 or higher adverse events"]),
            ("relapsed diffuse large B-cell lymphoma", "Lymphoma, Large B-Cell, Diffuse",
             "CAR T-cell therapy", "Immunotherapy, Adoptive", "standard salvage therapy",
             ["event-free survival", "complete metabolic response", "cytokine release syndrome"]),
            ("locally advanced rectal cancer", "Rectal Neoplasms", "total neoadjuvant therapy",
             "Neoadjuvant Therapy", "chemoradiotherapy followed by surgery",
             ["pathological complete response", "disease-free survival", "organ preservation"]),
            ("advanced ovarian cancer", "Ovarian Neoplasms", "olaparib maintenance",
             "Poly(ADP-ribose) Polymerase Inhibitors", "placebo",
             ["progression-free survival", "time to first subsequent therapy", "overall survival"]),
        ],
        "measures": [("tumour mutational burden", "mutations per megabase"),
                     ("PD-L1 tumour proportion score", "%"), ("circulating tumour DNA fraction", "%"),
                     ("lactate dehydrogenase", "U/L")],
        "populations": ["previously untreated patients", "heavily pretreated patients", "fit ambulatory patients",
                        "elderly patients", "patients from community oncology practices"],
        "keywords": ["immunotherapy", "biomarkers", "survival analysis", "targeted therapy",
                     "tumour response"],
        "journals": [("Journal of Thoracic and Solid Tumour Research", "J Thorac Solid Tumour Res"),
                     ("Clinical Oncology Trials", "Clin Oncol Trials"),
                     ("Translational Cancer Medicine", "Transl Cancer Med")],
    },
    "infectious": {
        "conditions": [
            ("Staphylococcus aureus bacteremia", "Bacteremia", "early oral step-down therapy",
             "Administration, Oral", "continued intravenous therapy",
             ["90-day mortality", "microbiological relapse", "catheter-related complications"]),
            ("community-acquired pneumonia", "Community-Acquired Infections", "a 5-day antibiotic course",
             "Anti-Bacterial Agents", "a 10-day antibiotic course",
             ["clinical cure at the test-of-cure visit", "30-day mortality",
              "antibiotic-related adverse events"]),
            ("pulmonary tuberculosis", "Tuberculosis, Pulmonary", "a 4-month rifapentine-based regimen",
             "Antitubercular Agents", "the standard 6-month regimen",
             ["culture conversion at 8 weeks", "unfavourable outcome", "hepatotoxicity"]),
            ("HIV infection", "HIV Infections", "long-acting injectable antiretroviral therapy",
             "Anti-Retroviral Agents", "daily oral therapy",
             ["sustained virological suppression", "treatment satisfaction", "virological failure"]),
            ("recurrent Clostridioides difficile infection", "Clostridium Infections",
             "fecal microbiota transplantation", "Fecal Microbiota Transplantation", "vancomycin",
             ["recurrence within 8 weeks", "clinical resolution", "colectomy"]),
            ("complicated urinary tract infection", "Urinary Tract Infections",
             "procalcitonin-guided treatment", "Procalcitonin", "fixed-duration treatment",
             ["antibiotic days", "clinical failure", "infection with resistant Escherichia coli"]),
        ],
        "measures": [("C-reactive protein", "mg/L"), ("CD4+ cell count", "cells/uL"),
                     ("procalcitonin", "ng/mL"), ("white cell count", "10^9/L")],
        "populations": ["hospitalized adults", "people in low-income settings", "residents of long-term care",
                        "patients admitted to intensive care", "older adults"],
        "keywords": ["antimicrobial stewardship", "antibiotic resistance", "treatment duration",
                     "infection control", "pathogen surveillance"],
        "journals": [("Journal of Clinical Infection Research", "J Clin Infect Res"),
                     ("Antimicrobial Therapy Reports", "Antimicrob Ther Rep"),
                     ("Global Infectious Disease Practice", "Glob Infect Dis Pract")],
    },
    "endocrine": {
        "conditions": [
            ("type 2 diabetes", "Diabetes Mellitus, Type 2", "once-weekly semaglutide",
             "Glucagon-Like Peptide-1 Receptor Agonists", "sitagliptin",
             ["change in HbA1c", "body weight reduction of at least 5%", "severe hypoglycaemia"]),
            ("type 1 diabetes", "Diabetes Mellitus, Type 1", "a hybrid closed-loop insulin system",
             "Insulin Infusion Systems", "sensor-augmented pump therapy",
             ["time in glucose target range", "severe hypoglycaemia", "diabetic ketoacidosis"]),
            ("diabetic kidney disease", "Diabetic Nephropathies", "an SGLT2 inhibitor",
             "Sodium-Glucose Transporter 2 Inhibitors", "placebo",
             ["kidney disease progression", "hospitalization for heart failure",
              "doubling of serum creatinine"]),
            ("subclinical hypothyroidism", "Hypothyroidism", "levothyroxine", "Thyroxine", "placebo",
             ["thyroid-related quality of life", "fatigue score", "atrial fibrillation"]),
            ("obesity", "Obesity", "a low-carbohydrate dietary programme", "Diet, Carbohydrate-Restricted",
             "dietary advice alone",
             ["body weight reduction of at least 5%", "remission of prediabetes", "waist circumference"]),
            ("polycystic ovary syndrome", "Polycystic Ovary Syndrome", "metformin", "Metformin",
             "lifestyle modification alone",
             ["ovulation rate", "live birth", "insulin resistance"]),
        ],
        "measures": [("HbA1c", "%"), ("body mass index", "kg/m2"), ("fasting plasma glucose", "mmol/L"),
                     ("thyroid-stimulating hormone", "mIU/L"),
                     ("estimated glomerular filtration rate", "mL/min/1.73 m2")],
        "populations": ["overweight adults", "adolescents", "patients treated in primary care",
                        "South Asian adults", "women of reproductive age"],
        "keywords": ["glycaemic control", "incretin therapy", "insulin resistance", "metabolic syndrome",
                     "weight management"],
        "journals": [("Journal of Metabolic and Endocrine Care", "J Metab Endocr Care"),
                     ("Diabetes Therapy Reports", "Diabetes Ther Rep"),
                     ("Endocrine Practice Letters", "Endocr Pract Lett")],
    },
    "neurology": {
        "conditions": [
            ("acute ischaemic stroke", "Ischemic Stroke", "endovascular thrombectomy", "Thrombectomy",
             "best medical management",
             ["functional independence at 90 days", "symptomatic intracranial haemorrhage",
              "90-day mortality"]),
            ("relapsing multiple sclerosis", "Multiple Sclerosis, Relapsing-Remitting",
             "an anti-CD20 monoclonal antibody", "Antibodies, Monoclonal", "interferon beta",
             ["annualized relapse rate", "confirmed disability progression", "new T2 lesions"]),
            ("advanced Parkinson disease", "Parkinson Disease", "deep brain stimulation",
             "Deep Brain Stimulation", "best medical therapy",
             ["daily off time", "motor fluctuations", "quality of life"]),
            ("drug-resistant focal epilepsy", "Drug Resistant Epilepsy", "responsive neurostimulation",
             "Implantable Neurostimulators", "sham stimulation",
             ["seizure frequency", "seizure freedom", "sudden unexpected death in epilepsy"]),
            ("chronic migraine", "Migraine Disorders", "a CGRP receptor antagonist",
             "Calcitonin Gene-Related Peptide Receptor Antagonists", "placebo",
             ["monthly migraine days", "acute medication use", "headache-related disability"]),
            ("mild cognitive impairment", "Cognitive Dysfunction", "a multidomain lifestyle intervention",
             "Life Style", "general health advice",
             ["decline in global cognition", "progression to dementia", "executive function"]),
        ],
        "measures": [("NIHSS score", "points"), ("Expanded Disability Status Scale score", "points"),
                     ("MDS-UPDRS part III score", "points"),
                     ("Montreal Cognitive Assessment score", "points")],
        "populations": ["patients presenting within 24 hours of symptom onset", "adults aged 18 to 55 years",
                        "older adults living in the community", "patients treated in stroke units",
                        "treatment-naive patients"],
        "keywords": ["neuroimaging", "disease-modifying therapy", "functional outcome",
                     "neurodegeneration", "magnetic resonance imaging"],
        "journals": [("Journal of Clinical Neuroscience Trials", "J Clin Neurosci Trials"),
                     ("Neurology Practice and Research", "Neurol Pract Res"),
                     ("Brain and Stroke Reports", "Brain Stroke Rep")],
    },
}

_GENERIC_COMPARATORS = ["placebo", "usual care", "standard therapy"]
_REGIONS = ["Europe", "North America", "East Asia", "sub-Saharan Africa", "South America", "Australia",
            "the Nordic countries", "India"]
_SETTINGS = ["tertiary referral centres", "community hospitals", "primary care practices",
             "academic medical centres", "regional health networks"]
_FIRST = ["Anna", "Bilal", "Chen", "Daniela", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Julia", "Kenji",
          "Lucia", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tamar", "Uma", "Victor"]
_LAST = ["Abara", "Bergstrom", "Castillo", "Dimitrov", "Eriksen", "Fontaine", "Gupta", "Haddad", "Ikeda",
         "Jovanovic", "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quintero",
         "Rahman", "Santos", "Tanaka", "Urbina", "Vasquez", "Weber", "Xu", "Yilmaz", "Zielinski"]
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DESIGNS = ("rct", "rct", "cohort", "cross-sectional", "meta")
_RETRACTED = "Retracted Publication"
_RETRACTION_OF = "Retraction of Publication"
_RETRACTION_REASONS = [
    "An institutional audit could not verify the source data of the main outcome analysis.",
    "The authors found a coding error that reverses the direction of the reported effect.",
    "Images in the supplementary material were duplicated from an unrelated publication.",
    "Undisclosed competing interests of the corresponding author came to light after publication.",
]
_DESIGN_PUBLICATION_TYPES = {
    "rct": ["Randomized Controlled Trial", "Multicenter Study"],
    "cohort": ["Observational Study"],
    "cross-sectional": ["Observational Study"],
    "meta": ["Systematic Review", "Meta-Analysis"],
}
_DESIGN_MESH = {"rct": "Randomized Controlled Trials as Topic", "cohort": "Cohort Studies",
                "cross-sectional": "Cross-Sectional Studies", "meta": "Meta-Analysis as Topic"}

# Sentence templates. Fields come from _fields(); {Disease} etc. are capitalised variants.
_TITLES = {
    "rct": ["{Intervention} versus {comparator} in {population} with {disease}: "
            "a randomized controlled trial",
            "Effect of {intervention} on {outcome} in patients with {disease}",
            "{Intervention} for {disease}: results of a multicentre randomized trial"],
    "cohort": ["Association of {intervention} with {outcome} in {population} with {disease}: a cohort study",
               "Long-term outcomes after {intervention} for {disease} in {region}"],
    "cross-sectional": ["Prevalence and correlates of {outcome} among {population} with {disease} "
                        "in {region}",
                        "{Measure} and {outcome} in {disease}: a cross-sectional analysis"],
    "meta": ["{Intervention} for {disease}: a systematic review and meta-analysis",
             "Efficacy and safety of {intervention} in {disease}: a meta-analysis of randomized trials"],
}
_BACKGROUND = [
    "{Disease} remains a major cause of morbidity and health-care use among {population}.",
    "The benefit of {intervention} over {comparator} in {disease} has not been established in "
    "routine practice.",
    "Previous studies of {intervention} were small and reported conflicting effects on {outcome}.",
    "Guidelines make no firm recommendation on {intervention} in {disease}, and the evidence is of "
    "low certainty.",
    "Whether {measure} modifies the response to treatment in {disease} is unknown.",
    "Uptake of {intervention} varies widely between centres, and its effect on {outcome} is debated.",
]
_AIMS = [
    "We aimed to compare {intervention} with {comparator} with respect to {outcome}.",
    "This study assessed whether {intervention} improves {outcome} in {population} with {disease}.",
    "We therefore evaluated the effectiveness and safety of {intervention} in this population.",
]
_METHODS = {
    "rct": ["In this {blinding} trial conducted at {sites} {setting} in {region}, we randomly assigned {n} "
            "{population} with {disease} in a 1:1 ratio to {intervention} or {comparator}.",
            "Randomization was stratified by centre and baseline {measure}."],
    "cohort": ["We conducted a {direction} cohort study of {n} {population} with {disease} treated at "
               "{sites} {setting} in {region} between {year0} and {year1}.",
               "Exposure to {intervention} was compared with {comparator} using propensity-score weighting."],
    "cross-sectional": ["We performed a cross-sectional survey of {n} {population} with {disease} recruited "
                        "from {sites} {setting} in {region}.",
                        "Participants completed a structured interview, and {measure} was recorded at "
                        "enrolment."],
    "meta": ["We searched four bibliographic databases from inception to {year1} for randomized trials "
             "comparing {intervention} with {comparator} in {disease}.",
             "Two reviewers independently extracted data, and {k} trials including {n} participants were "
             "pooled with random-effects models."],
}
_METHODS_EXTRA = [
    "The primary outcome was {outcome}; secondary outcomes included {outcome2} and change in {measure}.",
    "Participants were followed for a median of {months} months.",
    "Analyses followed the intention-to-treat principle and were adjusted for age, sex and "
    "baseline {measure}.",
    "Baseline {measure} was measured by staff unaware of the group assignment.",
]
_RESULTS_OPEN = [
    "The mean age of participants was {age} years (SD {sd}), and {female}% were women.",
    "Baseline characteristics were similar between groups; median {measure} was {value} {unit}.",
]
_RESULTS_EFFECT = {
    "rct": ["{Outcome} occurred in {pct1}% of patients in the {intervention} group and in {pct2}% in the "
            "{comparator} group (hazard ratio {hr}; 95% CI, {lo} to {hi}; P {p}).",
            "At {months} months, {outcome} was observed in {pct1}% with {intervention} versus {pct2}% with "
            "{comparator} (relative risk {hr}; 95% CI, {lo}-{hi}; P {p})."],
    "cohort": ["During follow-up, {outcome} occurred in {pct1}% of exposed and {pct2}% of unexposed "
               "patients (adjusted hazard ratio {hr}; 95% CI, {lo} to {hi}; P {p})."],
    "cross-sectional": ["The prevalence of {outcome} was {pct1}% (95% CI, {pct_lo} to {pct_hi}), and "
                        "higher {measure} was associated with {outcome} (odds ratio {hr}; 95% CI, {lo} to "
                        "{hi}; P {p})."],
    "meta": ["Compared with {comparator}, {intervention} was associated with a pooled relative risk for "
             "{outcome} of {hr} (95% CI, {lo} to {hi}; P {p}; I2 = {i2}%)."],
}
_RESULTS_EXTRA = [
    "Mean {measure} changed by {delta} {unit} in the intervention group and by {delta2} {unit} in the "
    "control group.",
    "Serious adverse events were reported in {ae1}% and {ae2}% of participants, respectively.",
    "The effect was consistent across prespecified subgroups defined by age, sex and baseline {measure}.",
    "{Outcome2} did not differ significantly between groups (P = {p2}).",
]
_CONCLUSIONS = {
    True: ["In {population} with {disease}, {intervention} significantly improved {outcome} compared with "
           "{comparator}.",
           "These findings support the use of {intervention} for {disease} and warrant confirmation in "
           "larger populations.",
           "{Intervention} was associated with better {outcome} without an excess of serious adverse "
           "events."],
    False: ["Among {population} with {disease}, {intervention} did not significantly improve {outcome} "
            "compared with {comparator}.",
            "These results do not support routine use of {intervention} in {disease}.",
            "Larger trials with longer follow-up are needed before {intervention} can be recommended."],
}

# Inline markup that pubmed_xml() adds and the parser flattens away again: the plain text of the
# marked-up XML equals the dict's text exactly, which keeps the round trip testable.
_MARKUP = [
    (re.compile(r"\bP(?= [<=] )"), "i"),                     # P-values
    (re.compile(r"\b(?:Staphylococcus aureus|Clostridioides difficile|Escherichia coli)\b"), "i"),
    (re.compile(r"(?<=kg/m)2\b|(?<=1\.73 m)2\b"), "sup"),     # units
    (re.compile(r"(?<=CD4)\+"), "sup"),
    (re.compile(r"(?<=HbA)1c\b"), "sub"),
    (re.compile(r"(?<=\bI)2(?= =)"), "sup"),                 # heterogeneity I2
]


def generate_articles(
    n: int,
    *,
    seed: int = 0,
    start_pmid: int = 90_000_000,
    entrez_start: date = date(2024, 1, 1),
    days: int = 30,
    topics: Sequence[str] = TOPICS,
    retracted: Collection[int] = (),
) -> list[dict]:
    """n articles with consecutive PMIDs and entrez dates spread over [entrez_start, +days).

    PMIDs in `retracted` come out flagged "Retracted Publication" (see retract()); the rest of the
    output is the same as without them, so a seed gives the same texts either way.
    """
    unknown = set(topics) - set(_VOCAB)
    if unknown or not topics:
        raise ValueError(f"unknown or empty topics {sorted(unknown)}; choose from {TOPICS}")
    marked = set(retracted)
    outside = {p for p in marked if not start_pmid <= p < start_pmid + n}
    if outside:
        raise ValueError(f"retracted PMIDs {sorted(outside)} are not among the {n} generated ones")
    rng = random.Random(seed)
    # Sorted offsets: like PubMed, a higher PMID never entered earlier than a lower one.
    offsets = sorted(rng.randrange(max(days, 1)) for _ in range(n))
    articles = [_article(rng, start_pmid + i, entrez_start + timedelta(days=offsets[i]), rng.choice(topics))
                for i in range(n)]
    return [retract(a) if a["pmid"] in marked else a for a in articles]


def retract(article: dict, *, notice_pmid: int | None = None, flag_type: bool = True) -> dict:
    """A copy of `article` as NLM shows it once retracted: publication type "Retracted Publication"
    (unless flag_type=False) and, given the notice's PMID, a RetractionIn link to it."""
    if not flag_type and notice_pmid is None:
        raise ValueError("a retraction needs the publication type, a notice PMID, or both")
    types = tuple(article["publication_types"])
    if flag_type and _RETRACTED not in types:
        types += (_RETRACTED,)
    links = tuple(article.get("retraction_in", ())) + ((notice_pmid,) if notice_pmid is not None else ())
    return dict(article, retracted=True, publication_types=types, retraction_in=links)


def retraction_notice(
    retracts: int | Sequence[int],
    *,
    pmid: int,
    entrez_date: date = date(2024, 2, 1),
    title: str | None = None,
    topic: str = TOPICS[0],
    seed: int = 0,
) -> dict:
    """A "Retraction of Publication" notice for the PMID(s) in `retracts`, as an article dict.

    Like real notices it has a short unlabelled abstract, no MeSH terms, and a RetractionOf link
    per retracted PMID; `title` is the retracted article's title, when the caller has it.
    """
    targets = (retracts,) if isinstance(retracts, int) else tuple(retracts)
    rng = random.Random(seed)
    notice = _article(rng, pmid, entrez_date, topic)
    reason = rng.choice(_RETRACTION_REASONS)
    text = (f"This article has been retracted at the request of the editors. {reason} "
            "The retracted article should not be cited or used as evidence.")
    return dict(notice, design="notice", title=f"Retracted: {title}" if title else "Notice of retraction.",
                sections=[("", text)], abstract=text, mesh_terms=(), keywords=(),
                publication_types=(_RETRACTION_OF,), retraction_of=targets)


def _article(rng: random.Random, pmid: int, entrez: date, topic: str) -> dict:
    vocab = _VOCAB[topic]
    design = rng.choice(_DESIGNS)
    fields, disease_mesh, intervention_mesh = _fields(rng, vocab, design, entrez)
    significant = fields.pop("_significant")

    # Retry with fresh sentence choices until the abstract lands in the 120-250 word range.
    while True:
        sections = _sections(rng, design, significant, fields)
        if 120 <= sum(len(text.split()) for _, text in sections) <= 250:
            break
    title = _fill(rng.choice(_TITLES[design]), fields).rstrip(".") + "."
    pub_date, pub_style = _pub_date(rng, entrez)
    keywords = rng.sample(vocab["keywords"], 3) + [fields["disease"], fields["intervention"]]
    mesh = ["Humans", disease_mesh, intervention_mesh, _DESIGN_MESH[design],
            *rng.sample(["Male", "Female", "Aged", "Middle Aged", "Adult", "Treatment Outcome",
                         "Prospective Studies", "Risk Factors"], 3)]
    journal, iso = rng.choice(vocab["journals"])
    return {
        "pmid": pmid,
        "topic": topic,
        "design": design,
        "title": title,
        "sections": sections,
        "abstract": "\n".join(f"{label}: {text}" for label, text in sections),
        "journal": journal,
        "journal_iso": iso,
        "pub_date": pub_date,
        "pub_date_style": pub_style,
        "entrez_date": entrez,
        "revised_date": entrez + timedelta(days=rng.randrange(0, 6)),
        "received_date": entrez - timedelta(days=rng.randrange(60, 300)),
        "authors": [(rng.choice(_LAST), rng.choice(_FIRST)) for _ in range(rng.randint(2, 8))],
        "mesh_terms": tuple(dict.fromkeys(mesh)),   # dedupe, keep order
        "keywords": tuple(dict.fromkeys(keywords)),
        "language": "eng",
        "publication_types": ("Journal Article", *_DESIGN_PUBLICATION_TYPES[design]),
        "retracted": False,
        "retraction_of": (),  # set on retraction notices: the PMIDs they retract
        "retraction_in": (),  # set on retracted articles: their notices' PMIDs, where known
    }


def _fields(rng: random.Random, vocab: dict, design: str, entrez: date) -> tuple[dict, str, str]:
    condition = rng.choice(vocab["conditions"])
    disease, disease_mesh, intervention, intervention_mesh, comparator, outcomes = condition
    outcome, outcome2 = rng.sample(outcomes, 2)
    if rng.random() < 0.2:
        comparator = rng.choice(_GENERIC_COMPARATORS)
    measure, unit = rng.choice(vocab["measures"])
    n = int(10 ** rng.uniform(2, 4.2))
    # Effect sizes: a ratio and a CI that agree with the P value and with the conclusion.
    hr = round(rng.uniform(0.55, 1.2), 2)
    width = rng.uniform(0.08, 0.3)
    lo, hi = round(hr * (1 - width), 2), round(hr * (1 + width), 2)
    significant = hi < 1.0
    p_significant = rng.choice(["< 0.001", "= 0.002", "= 0.01", "= 0.03"])
    p = p_significant if significant else f"= {rng.uniform(0.08, 0.9):.2f}"
    pct2 = round(rng.uniform(8, 45), 1)
    year1 = entrez.year - rng.randint(1, 3)
    fields = {
        "disease": disease, "intervention": intervention, "outcome": outcome, "outcome2": outcome2,
        "measure": measure, "unit": unit,
        "comparator": comparator,
        "population": rng.choice(vocab["populations"]),
        "region": rng.choice(_REGIONS), "setting": rng.choice(_SETTINGS),
        "blinding": rng.choice(["double-blind", "open-label", "assessor-blinded"]),
        "direction": rng.choice(["prospective", "retrospective"]),
        "sites": rng.randint(3, 60), "n": f"{n:,}", "k": rng.randint(5, 24),
        "year0": year1 - rng.randint(3, 10), "year1": year1, "months": rng.randint(6, 60),
        "age": round(rng.uniform(35, 76), 1), "sd": round(rng.uniform(6, 14), 1),
        "female": rng.randint(20, 70), "value": round(rng.uniform(2, 400), 1),
        "pct1": round(pct2 * hr, 1), "pct2": pct2, "hr": f"{hr:.2f}", "lo": f"{lo:.2f}", "hi": f"{hi:.2f}",
        "pct_lo": round(pct2 * hr * 0.8, 1), "pct_hi": round(pct2 * hr * 1.2, 1), "i2": rng.randint(0, 70),
        "p": p, "p2": f"{rng.uniform(0.1, 0.9):.2f}",
        "delta": f"{-rng.uniform(0.5, 12):.1f}", "delta2": f"{-rng.uniform(0, 3):.1f}",
        "ae1": round(rng.uniform(2, 25), 1), "ae2": round(rng.uniform(2, 25), 1),
        "_significant": significant,
    }
    # '{Disease}' in a template asks for the capitalised form of '{disease}' at a sentence start.
    fields |= {k[0].upper() + k[1:]: _capitalise(v) for k, v in fields.items() if isinstance(v, str)}
    return fields, disease_mesh, intervention_mesh


def _sections(rng: random.Random, design: str, significant: bool, fields: dict) -> list[tuple[str, str]]:
    def pick(pool: list[str], k: int) -> list[str]:
        return rng.sample(pool, k)

    background = pick(_BACKGROUND, rng.randint(1, 2)) + pick(_AIMS, 1)
    methods = _METHODS[design] + pick(_METHODS_EXTRA, rng.randint(1, 2))
    results = pick(_RESULTS_OPEN, rng.randint(0, 1)) + pick(_RESULTS_EFFECT[design], 1)
    results += pick(_RESULTS_EXTRA, rng.randint(1, 3))
    conclusions = pick(_CONCLUSIONS[significant], rng.randint(1, 2))
    return [(label, " ".join(_fill(s, fields) for s in sentences))
            for label, sentences in (("BACKGROUND", background), ("METHODS", methods),
                                     ("RESULTS", results), ("CONCLUSIONS", conclusions))]


def _fill(template: str, fields: dict) -> str:
    return template.format_map(fields)


def _capitalise(text: str) -> str:
    # Keep acronyms and brand-like words (HER2, NT-proBNP, CAR) as they are.
    first = text.split(" ", 1)[0]
    if any(c.isupper() or c.isdigit() for c in first):
        return text
    return text[:1].upper() + text[1:]


def _pub_date(rng: random.Random, entrez: date) -> tuple[date, str]:
    """A print date near the entrez date, in one of the forms real PubDate elements use."""
    day = entrez + timedelta(days=rng.randrange(-30, 90))
    style = rng.choices(["ymd", "ym", "ym_num", "y", "medline"], weights=[40, 20, 15, 10, 15])[0]
    if style == "ymd":
        return day, style
    if style == "y":
        return date(day.year, 1, 1), style
    return date(day.year, day.month, 1), style  # the parser reads the first month of a range


def pubmed_xml(articles: Sequence[dict], *, delete_pmids: Sequence[int] = ()) -> bytes:
    """A PubmedArticleSet document in the NLM layout, with optional DeleteCitation PMIDs."""
    root = etree.Element("PubmedArticleSet")
    for article in articles:
        root.append(_article_element(article))
    if delete_pmids:
        deleted = etree.SubElement(root, "DeleteCitation")
        for pmid in delete_pmids:
            _sub(deleted, "PMID", str(pmid), Version="1")
    # Real files name a DTD by URL; keeping it proves the parser never fetches it.
    doctype = ('<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2024//EN" '
               '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_240101.dtd">')
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", doctype=doctype, pretty_print=True)


def _article_element(a: dict) -> etree._Element:
    pubmed_article = etree.Element("PubmedArticle")
    mc = _sub(pubmed_article, "MedlineCitation", Status="MEDLINE", Owner="NLM")
    _sub(mc, "PMID", str(a["pmid"]), Version="1")
    _date_element(mc, "DateRevised", a["revised_date"])
    _article_body(_sub(mc, "Article", PubModel="Print-Electronic"), a)
    _citation_lists(mc, a)
    _pubmed_data(_sub(pubmed_article, "PubmedData"), a)
    return pubmed_article


def _article_body(art: etree._Element, a: dict) -> None:
    """The Article element's children: journal, title, pages, abstract, authors, language, types."""
    journal = _sub(art, "Journal")
    issn = zlib.crc32(a["journal"].encode()) % 10**8  # stable per journal, like a real ISSN
    _sub(journal, "ISSN", f"{issn // 10**4:04d}-{issn % 10**4:04d}", IssnType="Electronic")
    issue = _sub(journal, "JournalIssue", CitedMedium="Internet")
    _sub(issue, "Volume", str(a["pub_date"].year - 1990))
    _sub(issue, "Issue", str(a["pub_date"].month))
    _pub_date_element(issue, a["pub_date"], a["pub_date_style"])
    _sub(journal, "Title", a["journal"])
    _sub(journal, "ISOAbbreviation", a["journal_iso"])
    _marked_up(_sub(art, "ArticleTitle"), a["title"])
    pagination = _sub(art, "Pagination")
    _sub(pagination, "MedlinePgn", f"e{a['pmid'] % 100000}")
    abstract = _sub(art, "Abstract")
    for label, text in a["sections"]:
        labels = {"Label": label, "NlmCategory": label} if label else {}
        _marked_up(_sub(abstract, "AbstractText", **labels), text)
    authors = _sub(art, "AuthorList", CompleteYN="Y")
    for last, first in a["authors"]:
        author = _sub(authors, "Author", ValidYN="Y")
        _sub(author, "LastName", last)
        _sub(author, "ForeName", first)
        _sub(author, "Initials", first[0])
    _sub(art, "Language", a["language"])
    types = _sub(art, "PublicationTypeList")
    for pt in a["publication_types"]:
        _sub(types, "PublicationType", pt)


def _citation_lists(mc: etree._Element, a: dict) -> None:
    """MedlineCitation's children after Article, in DTD order: journal info, retraction links, MeSH
    headings, keywords."""
    info = _sub(mc, "MedlineJournalInfo")
    _sub(info, "MedlineTA", a["journal_iso"])
    links = [("RetractionIn", p) for p in a.get("retraction_in", ())]
    links += [("RetractionOf", p) for p in a.get("retraction_of", ())]
    if links:  # the DTD puts CommentsCorrectionsList between MedlineJournalInfo and MeshHeadingList
        corrections = _sub(mc, "CommentsCorrectionsList")
        for ref_type, pmid in links:
            link = _sub(corrections, "CommentsCorrections", RefType=ref_type)
            _sub(link, "RefSource", f"{a['journal_iso']}. {a['pub_date'].year}")
            _sub(link, "PMID", str(pmid), Version="1")
    if a["mesh_terms"]:  # the DTD wants at least one heading in a list; notices have none
        mesh = _sub(mc, "MeshHeadingList")
        for i, term in enumerate(a["mesh_terms"]):
            heading = _sub(mesh, "MeshHeading")
            _sub(heading, "DescriptorName", term, MajorTopicYN="Y" if i in (1, 2) else "N")
    if a["keywords"]:
        keywords = _sub(mc, "KeywordList", Owner="NOTNLM")
        for kw in a["keywords"]:
            _sub(keywords, "Keyword", kw, MajorTopicYN="N")


def _pubmed_data(pubmed_data: etree._Element, a: dict) -> None:
    history = _sub(pubmed_data, "History")
    entrez = a["entrez_date"]
    for status, day in (("received", a["received_date"]), ("accepted", entrez - timedelta(days=14)),
                        ("entrez", entrez), ("pubmed", entrez), ("medline", entrez)):
        _date_element(history, "PubMedPubDate", day, PubStatus=status)
    _sub(pubmed_data, "PublicationStatus", "aheadofprint")
    ids = _sub(pubmed_data, "ArticleIdList")
    _sub(ids, "ArticleId", str(a["pmid"]), IdType="pubmed")
    _sub(ids, "ArticleId", f"10.5555/synth.{a['pmid']}", IdType="doi")  # 10.5555 is a test DOI prefix


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    elem = etree.SubElement(parent, tag, attrib)
    elem.text = text
    return elem


def _date_element(parent: etree._Element, tag: str, day: date, **attrib: str) -> None:
    elem = _sub(parent, tag, **attrib)
    _sub(elem, "Year", str(day.year))
    _sub(elem, "Month", f"{day.month:02d}")
    _sub(elem, "Day", f"{day.day:02d}")


def _pub_date_element(parent: etree._Element, day: date, style: str) -> None:
    pub = _sub(parent, "PubDate")
    month = _MONTH_NAMES[day.month - 1]
    if style == "medline":  # a two-month issue; may straddle the new year like real ones do
        following = _MONTH_NAMES[day.month % 12]
        end = f"{day.year + 1} {following}" if day.month == 12 else following
        _sub(pub, "MedlineDate", f"{day.year} {month}-{end}")
        return
    _sub(pub, "Year", str(day.year))
    if style in ("ymd", "ym"):
        _sub(pub, "Month", month)
    elif style == "ym_num":
        _sub(pub, "Month", f"{day.month:02d}")
    if style == "ymd":
        _sub(pub, "Day", f"{day.day:02d}")


def _marked_up(elem: etree._Element, text: str) -> None:
    """Set elem's text, wrapping the _MARKUP matches in <i>/<sup>/<sub> children."""
    spans = sorted({(m.start(), m.end(), tag) for pattern, tag in _MARKUP for m in pattern.finditer(text)})
    elem.text, cursor, last = "", 0, None
    for start, end, tag in spans:
        if start < cursor:  # overlapping matches: keep the first
            continue
        if last is None:
            elem.text = text[cursor:start]
        else:
            last.tail = text[cursor:start]
        last = _sub(elem, tag, text[start:end])
        cursor = end
    if last is None:
        elem.text = text
    else:
        last.tail = text[cursor:]


def medline_text(articles: Sequence[dict]) -> bytes:
    """The articles in the MEDLINE text format, laid out like an efetch rettype=medline reply."""
    return "".join("\n" + "\n".join(_medline_lines(a)) + "\n" for a in articles).encode("utf-8")


def _medline_lines(a: dict) -> list[str]:
    lines: list[str] = []

    def put(tag: str, value: str) -> None:
        # Values wrap onto 6-space continuation lines at spaces only, never inside a hyphenated word.
        parts = textwrap.wrap(value, width=76, break_long_words=False, break_on_hyphens=False) or [""]
        lines.append(f"{tag:<4}- {parts[0]}")
        lines.extend(" " * 6 + part for part in parts[1:])

    pub, iso, year = a["pub_date"], a["journal_iso"], a["pub_date"].year
    dp = _medline_dp(pub, a["pub_date_style"])
    put("PMID", str(a["pmid"]))
    put("OWN", "NLM")
    put("STAT", "MEDLINE")
    put("LR", f"{a['revised_date']:%Y%m%d}")
    put("VI", str(year - 1990))
    put("IP", str(pub.month))
    put("DP", dp)
    put("TI", a["title"])
    put("PG", f"e{a['pmid'] % 100000}")
    put("AB", " ".join(f"{label}: {text}" if label else text for label, text in a["sections"]))
    for last, first in a["authors"]:
        put("FAU", f"{last}, {first}")
        put("AU", f"{last} {first[0]}")
    put("LA", a["language"])
    for pt in a["publication_types"]:
        put("PT", pt)
    put("TA", iso)
    put("JT", a["journal"])
    for i, term in enumerate(a["mesh_terms"]):
        # Major topics carry a star, and the disease heading a qualifier: the reader strips both.
        put("MH", ("*" if i in (1, 2) else "") + term + ("/therapy" if i == 1 else ""))
    for kw in a["keywords"]:
        put("OT", kw)
    for pmid in a.get("retraction_in", ()):
        put("RIN", f"{iso}. {year}. PMID: {pmid}")
    for pmid in a.get("retraction_of", ()):
        put("ROF", f"{iso}. {year}. PMID: {pmid}")
    for tag in ("EDAT", "MHDA", "CRDT"):
        put(tag, f"{a['entrez_date']:%Y/%m/%d} 06:00")
    put("PST", "aheadofprint")
    put("SO", f"{iso}. {dp};{year - 1990}({pub.month}):e{a['pmid'] % 100000}.")
    return lines


def _medline_dp(day: date, style: str) -> str:
    """The DP field for the same date and style as _pub_date_element writes in XML."""
    month = _MONTH_NAMES[day.month - 1]
    if style == "medline":
        following = _MONTH_NAMES[day.month % 12]
        end = f"{day.year + 1} {following}" if day.month == 12 else following
        return f"{day.year} {month}-{end}"
    if style == "y":
        return str(day.year)
    if style == "ymd":
        return f"{day.year} {month} {day.day}"
    return f"{day.year} {month}"


def write_corpus(
    directory: Path,
    *,
    files: int = 3,
    per_file: int = 40,
    seed: int = 0,
    topics: Sequence[str] = TOPICS,
    start_pmid: int = 90_000_000,
    entrez_start: date = date(2024, 1, 1),
) -> list[Path]:
    """synth0001.xml, synth0002.xml, ...: like daily update files, each later file has later entrez
    dates and higher PMIDs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    days_per_file = 7
    paths = []
    for k in range(files):
        articles = generate_articles(
            per_file, seed=seed * 10_007 + k, start_pmid=start_pmid + k * per_file,
            entrez_start=entrez_start + timedelta(days=k * days_per_file), days=days_per_file,
            topics=topics)
        path = directory / f"synth{k + 1:04d}.xml"
        path.write_bytes(pubmed_xml(articles))
        paths.append(path)
    return paths


def write_medquad(directory: Path, *, n: int = 120, seed: int = 11) -> Path:
    """A MedQuAD-format collection (QAPair/Question/Answer XML) built from generated articles, for
    tests on machines without the real corpus; asked for by name, never a silent stand-in."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    root = etree.Element("Document", id="synthetic", source="medqa-cl devkit")
    pairs = _sub(root, "QAPairs")
    for k, a in enumerate(generate_articles(n, seed=seed, start_pmid=10_000_000), start=1):
        pair = _sub(pairs, "QAPair", pid=str(k))
        _sub(pair, "Question", f"What did the study '{a['title']}' find?", qid=f"synthetic-{k}")
        _sub(pair, "Answer", a["abstract"])
    path = directory / "synthetic_medquad.xml"
    path.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
    return path


VECTOR_CENTRES = 3000


def made_up_vectors(n: int, queries: int, seed: int = 0,
                    centres: int = VECTOR_CENTRES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Made-up unit 384-d vectors with the structure of sentence embeddings (bench/retrieval.py, tests):
    `centres` topical clusters in a 48-d latent space mapped to 384-d by one fixed random projection,
    plus noise; queries are stored vectors' latent points moved a little (a question near its own
    abstract). Returns (vectors [n, 384], queries [q, 384], the stored vector each query was made from)."""
    dim, latent = 384, 48
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(latent, dim)).astype(np.float32)
    centre_points = rng.normal(size=(centres, latent)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    latent_of = np.empty((n, latent), np.float32)
    for start in range(0, n, 100_000):  # in chunks: the full latent-noise matrices would double the peak
        m = min(100_000, n - start)
        z = centre_points[rng.integers(0, centres, m)] + 0.5 * rng.normal(size=(m, latent)).astype(np.float32)
        latent_of[start:start + m] = z
        x[start:start + m] = z @ projection + 0.3 * rng.normal(size=(m, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    origin = rng.integers(0, n, queries)
    qz = latent_of[origin] + 0.25 * rng.normal(size=(queries, latent)).astype(np.float32)
    q = qz @ projection + 0.3 * rng.normal(size=(queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q, origin
