"""Referral rules: personal diagnosis, dosing and treatment questions get a clinician referral, not an answer.

Why: the answering model is small and reads only abstracts. It can report what studies found in a
population, but it knows nothing about the person asking (age, weight, other medicines, history), so
its answer to "how much should I take?" or "do I have diabetes?" would be a guess dressed as advice.
Such questions get a fixed message sending the asker to a clinician; one that sounds like an
emergency (suicidal thoughts, an overdose, a heart attack or stroke under way) gets an urgent message.

The boundary: a rule fires only when the question is about the asker or someone the asker names with
"my"/"our" (my son, our baby, my 3-year-old). The same question about a population ("What is the
recommended dose of vitamin D in older adults?", "Should patients with atrial fibrillation take
anticoagulants?") is a literature question and is answered with citations. So every rule needs a
first-person marker AND its topic pattern; rules are tried in order, emergency first, first hit wins.

Limits (what the rules cannot catch, or get wrong):
- Personal questions with no first-person word: "dose of ibuprofen for a 4 year old?", "chest pain
  and a rash, what is it?", "is 150/95 normal?" are answered as general questions.
- A third person not introduced with "my"/"our": "what dose should Tom take?", "does he have
  measles?". "My neighbour's son ..." counts as personal only through "my", so it is referred only
  when a topic pattern also matches ("... has spots, does he have measles?" is not).
- Other languages, and misspellings or text-speak of the trigger words: "shud i double it", "do u
  have diabetes", "can i take 2 tabs" are missed. Only English is handled (straight or curly quotes).
- Paraphrases outside the patterns: "would a bigger amount of it help me?", "is it time I saw someone
  about this?". Medicines are recognised only from a short word list and a few name endings (-statin,
  -pril, -profen, -cillin, ...): "can I take Zoloft with wine?" and "can I take sertraline with
  wine?" are missed.
- Long narratives: a question is referred if any trigger matches anywhere, but "how much" and "take"
  must be within 60 characters of each other, so a dosing question told as a story without a dose word
  (dose, mg, ml, "2 tablets") can be missed; when caught it may carry another rule's name.
- Emergencies described without the listed phrases ("my lips are turning blue", "he is slurring his
  words") get the ordinary referral or none: the rules are a net for common phrasings, not triage.
- Over-firing: a first-person word plus a symptom or dose word refers a question that is not about
  the asker's health: "I am a nurse; what dose of heparin is used in trials?", "What are the symptoms
  of my hard drive failing?". Politeness ("can you tell me", "I wonder") is not counted as personal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Referral:
    rule: str
    message: str


EMERGENCY_MESSAGE = (
    "This may be an emergency. Call your local emergency number now (911 in the US, 112 in the EU, "
    "999 in the UK) or go to the nearest emergency department. If you are thinking about suicide or "
    "harming yourself, call or text a crisis line now (988 in the US). This service cannot help in an emergency."
)
_SEE_CLINICIAN = "Please ask a doctor, nurse or pharmacist, who can take your history into account."
DOSAGE_MESSAGE = ("This service cannot say how much of a medicine you or someone in your care should take: the right "
                  "dose depends on age, weight, other medicines and health conditions. " + _SEE_CLINICIAN)
DIAGNOSIS_MESSAGE = ("This service cannot diagnose you or anyone else; it only summarises published studies. "
                     + _SEE_CLINICIAN + " If symptoms are severe or getting worse, seek care urgently.")
TREATMENT_MESSAGE = ("This service cannot advise on your own treatment. Do not start, stop or change a medicine or "
                     "treatment without talking to a clinician. " + _SEE_CLINICIAN)

_KIN = (r"(?:son|daughter|child|children|kids?|baby|babies|toddler|infant|newborn|teen(?:ager)?|boy|girl|wife|"
        r"husband|partner|boyfriend|girlfriend|spouse|mother|mom|mum|father|dad|parents?|grand\w+|brother|sister|"
        r"\d+[- ](?:year|month|week)s?[- ]old)")
# "I" counts only beside a verb: a bare "I" in a research title is a Roman numeral (stage I, troponin I).
_PERSONAL = re.compile(
    rf"\b(?:me(?!/)|my|myself|mine)\b|\bi(?:'m|'ve|'d|'ll| am)\b|\bour {_KIN}\b"
    r"|\b(?:should|can|could|do|did|am|may|might|must|will|would|shall|have|was) i\b(?!-)"
    r"|\bi (?:have|had|get|got|take|took|feel|felt|need|think|keep|was|just|still|also|started|stopped|missed|"
    r"forgot|accidentally|suffer|noticed|developed|want|gave|give|woke|ate|drank|can|should)\b",
    re.IGNORECASE)
# Words with an everyday sense are left out ("bleed the brakes", "lumps in the gravy", "temperature").
_SYMPTOM = (r"(?:pains?|painful|aches?|aching|hurts|hurting|sore|rash|lump|swollen|swelling|fever|cough\w*|"
            r"bleeding|bled|dizz\w*|faint(?:ed|ing)?|nause\w*|vomit\w*|headaches?|migraines?|itch\w*|numb(?:ness)?|"
            r"tingl\w*|fatigued?|short of breath|breathless\w*|palpitations?|diarrh\w*|constipat\w*|"
            r"blood pressure|blood sugar|glucose|cholesterol|heart ?rate|a temperature|high temperature|mole|"
            r"symptoms?|(?:lab|blood|scan) results?|x-rays?|mri|biopsy|tumou?rs?|cancer|infection|infected|"
            r"inr|hba1c|a1c|psa|tsh|ldl|hdl|creatinine|ha?emoglobin|ferritin|platelets?|bmi)")
_BODY = (r"(?:body|health|heart|head|knees?|back|eyes?|ears?|skin|stomach|chest|legs?|arms?|feet|foot|hands?|"
         r"neck|throat|teeth|tooth|kidneys?|liver|lungs?|bladder|breasts?|bowels?)")
_MEDICINE = (r"(?:medications?|medicines?|meds|drugs?|pills?|tablets|antibiotics?|vaccin\w*|jabs?|booster|"
             r"surgery|treatment|therapy|chemo\w*|radiotherapy|insulin|inhalers?|prescri\w*|doctor|gp|physician|"
             r"er|a&e|emergency (?:room|department|services)|hospital|clinic|urgent care|ambulance|911|aspirin|"
             r"paracetamol|acetaminophen|tylenol|advil|antidepressants?|steroids?|birth control|pregnan\w*|"
             r"breastfeeding|\w{3,}(?:formin|statin|pril|sartan|olol|prazole|cillin|mycin|cycline|floxacin|xaban|"
             r"parin|farin|oxetine|azepam|azolam|triptan|profen|gliptin|gliflozin|dronate|thyroxine))")
_NOT_ILLNESS = r"(?! to\b| enough\b| time\b| the right\b| a (?:right|choice|chance)\b)"  # "do I have to pay?"

_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE | re.DOTALL), message) for name, pattern, message in [
        ("emergency",
         r"\bsuicid\w*|\bkill(?:ing)? (?:my|him|her)sel(?:f|ves)|\bend(?:ing)? (?:my|his|her) (?:own )?life"
         r"|\bwants? to die\b|\bself[- ]harm|\b(?:hurt|harm|cut)(?:ting)? (?:my|him|her)self\b|\boverdos\w*"
         r"|\btook too many\b|\btook (?:a whole|the whole|all (?:of )?(?:my|the|his|her))\b(?: \w+){0,3} "
         r"(?:pills|tablets|medication|meds|bottle|pack|packet)\b"
         r"|\b(?:swallowed|ate|drank)\b.{0,30}\b(?:pills|tablets|bleach|poison|antifreeze|detergent|batter(?:y|ies))\b"
         r"|\b(?:having|is having) an? (?:heart attack|stroke|seizure)\b|\b(?:crushing|severe|sudden) chest pain"
         r"|\bchest (?:pain|pressure|tightness)\b.{0,40}\b(?:now|currently|at the moment|spreading|radiating|jaw)\b"
         r"|\bcan'?t breathe|\bcannot breathe|\b(?:not|stopped) breathing|\bunconscious|\bunresponsive"
         r"|\bwon'?t wake|\bpassed out\b|\b(?:throat|tongue) (?:is )?(?:closing|swelling)|\banaphyla\w*"
         r"|\bbleeding (?:heavily|a lot)|\bwon'?t stop bleeding",
         EMERGENCY_MESSAGE),
        ("personal_dosage",
         r"\b(?:doses?|dosages?|dosing|mg|milligrams?|mcg|micrograms?|ml|iu)\b|\d\s*(?:mg|mcg|ml|iu)\b"
         r"|\b(?:\d+|one|two|three|four|half(?: an?)?|another|extra|more|second)\s+(?:tablets?|pills?|capsules?|"
         r"puffs?|drops?|teaspoons?|spoonfuls?|sachets?)\b"
         r"|\bhow (?:much|many|often)\b.{0,60}\b(?:take|taking|give|giving|inject)\b"
         r"|\b(?:double|triple|halve|increase|decrease|lower|raise|up|reduce)\b.{0,15}\b(?:medication|meds|insulin)\b",
         DOSAGE_MESSAGE),
        ("personal_treatment",
         # \A: the medicine word may come before or after the verb ("on warfarin, can he eat spinach?").
         rf"\A(?=.*\b{_MEDICINE}\b)(?=.*\b(?:(?:should|can|could|may|must|do) (?:i|we|he|she|they|my {_KIN})"
         rf"|is it (?:safe|ok|okay|alright|bad|dangerous) for (?:me|my {_KIN}) to)\b(?: \w+){{0,3}}? (?:stop|start|"
         r"quit|continue|keep|resume|come|wean|switch|skip|miss|take|get|have|see|go|call|need|use|give|try|mix|"
         r"combine|drink|eat)\b)"
         rf"|\bwhat (?:\w+ )?(?:should|can|could) (?:i|we|he|she|they|my {_KIN}) take\b"
         rf"|\b(?:is|are) my {_KIN}\b.{{0,40}}\b{_MEDICINE}\b",
         TREATMENT_MESSAGE),
        ("personal_diagnosis",
         rf"\b(?:do|could|might) (?:i|my {_KIN}) have\b{_NOT_ILLNESS}|\bdoes my {_KIN} have\b{_NOT_ILLNESS}"
         rf"|\b(?:if|whether) (?:i|my {_KIN}) (?:have|has|had|might have|could have)\b{_NOT_ILLNESS}"
         rf"|\bwhat(?:'s| is) (?:wrong|going on|happening) with (?:me|myself|my {_KIN}|my {_BODY})\b"
         r"|\bam i (?:having|getting|developing|pregnant|sick|ill|dying|diabetic|anaemic|anemic|depressed|"
         r"infected|contagious|allergic|at risk|healthy|overweight|obese)\b"
         rf"|\bmy {_BODY}\b.{{0,20}}\b(?:hurts?|aches?|itch\w*|burn\w*|throb\w*|sting\w*)\b|\b{_SYMPTOM}\b",
         DIAGNOSIS_MESSAGE),
    ])

# Politeness that makes a general question look personal ("can you tell me the dose of X in adults?").
_POLITE = re.compile(r"\b(?:(?:can|could|would|will) you )?(?:please )?(?:tell|show|give|explain to|remind) me\b"
                     r"|\bi(?:'d| would) like to know\b|\bi want to know\b|\bi(?:'m| am| was)? wondering\b"
                     r"|\bi wonder\b|\bi'm curious\b", re.IGNORECASE)


def referral(question: str) -> Referral | None:
    """The referral for a personal medical question, or None when the question may be answered."""
    text = _POLITE.sub(" ", question.replace("\u2019", "'").replace("\u2018", "'"))
    if not _PERSONAL.search(text):
        return None
    for name, pattern, message in _RULES:
        if pattern.search(text):
            return Referral(name, message)
    return None
