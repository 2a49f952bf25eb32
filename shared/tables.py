"""Every table of the store, in one module.

The database is the source of truth: a Celery message only says "look at row X", and each task
guards on the status it finds here. Times are aware UTC (SQLModel stores them so on both databases).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(default: Any = None) -> Any:
    factory = (lambda: {}) if default is None else default
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class VersionStatus(StrEnum):
    candidate = "candidate"
    blessed = "blessed"
    rejected = "rejected"
    retired = "retired"


class Abstract(SQLModel, table=True):
    pmid: int = Field(primary_key=True)
    title: str = Field(sa_column=Column(Text, nullable=False))
    text: str = Field(sa_column=Column(Text, nullable=False))
    journal: str = ""
    pub_date: date | None = None
    entrez_date: date | None = Field(default=None, index=True)
    revised_date: date | None = None
    mesh_terms: list[str] = _json(list)
    language: str = "eng"
    content_hash: str = Field(index=True, max_length=64)
    source: str = Field(max_length=200)
    ingested_at: datetime = Field(default_factory=utcnow, index=True)
    deleted: bool = False
    # Retracted articles stay stored (lineage of past runs must resolve) but never train again.
    retracted: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    # The run that took this abstract as new data. NULL = not yet trained on: the trigger counts these,
    # and claiming them in the run's own transaction is what makes the trigger idempotent.
    train_run_id: int | None = Field(default=None, foreign_key="trainingrun.id", index=True)


class Tombstone(SQLModel, table=True):
    """A deletion or retraction that named a PMID before its record was stored.

    Update files arrive in any order: a DeleteCitation or a retraction notice can be imported before
    the article it names. The tombstone is applied when that article arrives, so it never goes live."""

    pmid: int = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=16)  # "deleted" or "retracted"
    source: str = Field(max_length=200)  # the file or query that named it
    recorded_at: datetime = Field(default_factory=utcnow)


class MinedQA(SQLModel, table=True):
    """A PubMedQA-format item mined from a stored abstract (services/ingest/mining): its title as the
    question, the abstract without its conclusion as context, the conclusion as long answer, and the
    rule's yes/no decision. Mined again when the abstract is revised; trained only while the abstract
    is live (a retracted or deleted paper's item is never read)."""

    pmid: int = Field(primary_key=True, foreign_key="abstract.pmid")
    question: str = Field(sa_column=Column(Text, nullable=False))
    context: str = Field(sa_column=Column(Text, nullable=False))
    long_answer: str = Field(sa_column=Column(Text, nullable=False))
    decision: str = Field(max_length=8)
    confidence: float  # the rule's measured precision for this label
    rule_version: int
    content_hash: str = Field(max_length=64)  # of the abstract it was mined from
    mined_at: datetime = Field(default_factory=utcnow)


class AbstractEmbedding(SQLModel, table=True):
    """all-MiniLM-L6-v2 vector of an abstract (float16 bytes), for embedding drift and retrieval.
    content_hash ties it to the text it was computed from: a revised abstract is embedded again."""

    pmid: int = Field(primary_key=True, foreign_key="abstract.pmid")
    model: str = Field(max_length=64)
    content_hash: str = Field(max_length=64)
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class QuestionLog(SQLModel, table=True):
    """A question the QA API received, for question drift. `text` is NULL when the deployment keeps
    descriptors only (no question text stored)."""

    id: int | None = Field(default=None, primary_key=True)
    asked_at: datetime = Field(default_factory=utcnow, index=True)
    text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    n_chars: int = 0
    n_words: int = 0
    version_id: int | None = None


class CitationLog(SQLModel, table=True):
    """A PMID the QA API cited in an answer, by the version that answered (subject to the question
    log's retention): `medqa lineage` says whether users were shown a paper that is retracted later."""

    id: int | None = Field(default=None, primary_key=True)
    pmid: int = Field(index=True)
    version_id: int | None = None
    asked_at: datetime = Field(default_factory=utcnow, index=True)


class LineageItem(SQLModel, table=True):
    """One item of a run's manifest, copied into an indexed table when the run is queued: which runs
    trained on (or held out) a paper is one index lookup, not a scan of every manifest's JSON.

    role: new | holdout | replay (abstracts) | mined | replay_mined (QA items mined from those
    abstracts) | general (general-medical replay items, which have no PMID)."""

    run_id: int = Field(primary_key=True, foreign_key="trainingrun.id")
    role: str = Field(primary_key=True, max_length=16)
    ref: str = Field(primary_key=True, max_length=64)  # the PMID as text, or a general item's id
    pmid: int | None = Field(default=None, index=True)


class IngestCursor(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("source", "query"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=50)
    query: str = Field(max_length=500)
    watermark: str | None = None
    last_success: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    stored: int = 0
    skipped: int = 0  # duplicates + filtered, kept for the first schema's readers
    duplicates: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    filtered: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    errors: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class TrainingRun(SQLModel, table=True):
    # One active run per model line, enforced by the database itself: two triggers racing on two
    # hosts cannot both queue a run; the loser's insert fails and it backs off.
    __table_args__ = (
        Index("one_active_run_per_line", "model_line", unique=True,
              sqlite_where=text("status IN ('queued', 'running')"),
              postgresql_where=text("status IN ('queued', 'running')")),
    )
    id: int | None = Field(default=None, primary_key=True)
    model_line: str = Field(index=True, max_length=64)
    status: RunStatus = Field(default=RunStatus.queued, index=True)
    base_model: str
    # No foreign key: runs and versions point at each other, and a cycle of constraints breaks
    # table ordering on create and drop. The version row carries the enforced link.
    parent_version_id: int | None = None
    config: dict = _json()
    manifest: dict = _json()
    # The last checkpoint published to the artifact store (its location, sha256 and step): a worker on
    # another host resumes from it. On a local store the location is the work folder's own file.
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = Field(default=None, max_length=64)
    checkpoint_step: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    tokens_per_s: float | None = None
    deliveries: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    # A clean rebuild (services/trainer/rebuild): this run re-trains `replaces_version_id` without its
    # retracted and deleted items, as one step of rebuilding `rebuild_of` (the version asked for).
    replaces_version_id: int | None = None
    rebuild_of: int | None = None


class ModelVersion(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    model_line: str = Field(index=True, max_length=64)
    # unique: a redelivered training task can never make a second version for the same run.
    run_id: int = Field(foreign_key="trainingrun.id", unique=True)
    parent_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    base_model: str
    adapter_path: str
    sha256: str = Field(max_length=64)
    status: VersionStatus = Field(default=VersionStatus.candidate, index=True)
    metrics: dict = _json()
    created_at: datetime = Field(default_factory=utcnow)
    # A clean rebuild's version names the one it replaces (same config, seed and data minus retracted
    # and deleted items); the gate never auto-promotes it: an operator does.
    replaces_version_id: int | None = Field(default=None, foreign_key="modelversion.id")


class Evaluation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="modelversion.id", index=True)
    baseline_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    suite: str = Field(max_length=64)
    suite_hash: str = Field(max_length=64)
    metrics: dict = _json()
    baseline_metrics: dict = _json()
    passed: bool
    reasons: list[str] = _json(list)
    # One entry per check (services/evaluator/judge.Guard): estimate, interval, margin, verdict,
    # items and the smallest effect the suite could detect, so a decision can be re-read later.
    guards: list[dict] = _json(list)
    created_at: datetime = Field(default_factory=utcnow)


class SuiteResult(SQLModel, table=True):
    """One model scored on one suite. The champion's results are reused by suite hash, so a candidate
    pays only for itself; `subject` is "v<id>" or "base:<spec>" (no version yet). `items` holds the
    per-item series (services/evaluator/suites.SuiteScores), which paired tests and reports read."""

    __table_args__ = (UniqueConstraint("subject", "suite_hash"),)
    id: int | None = Field(default=None, primary_key=True)
    subject: str = Field(max_length=300)
    suite: str = Field(max_length=64)
    suite_hash: str = Field(max_length=64)
    metrics: dict = _json()
    items: dict = _json()
    seconds: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)


class Alias(SQLModel, table=True):
    model_line: str = Field(primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=32)
    version_id: int = Field(foreign_key="modelversion.id")
    updated_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    actor: str = Field(max_length=100)
    action: str = Field(max_length=32, index=True)
    subject: str = Field(max_length=100)
    from_version_id: int | None = None
    to_version_id: int | None = None
    reason: str = Field(sa_column=Column(Text, nullable=False))
    metrics: dict = _json()
    at: datetime = Field(default_factory=utcnow, index=True)


class DriftReport(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    reference_window: str = ""
    current_window: str = ""
    status: str = Field(max_length=32)
    drift_detected: bool = False
    scores: dict = _json()
    html_path: str | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Alert(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    severity: str = Field(max_length=16)
    dedup_key: str = Field(max_length=200, index=True)
    message: str = Field(sa_column=Column(Text, nullable=False))
    channels: list[str] = _json(list)
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None  # when every channel had delivered it
    acknowledged: bool = False
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = Field(default=None, max_length=100)


class DeliveryStatus(StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"


class AlertDelivery(SQLModel, table=True):
    """One alert on one channel. Stored with the alert, so an alert that cannot go out yet is kept and
    retried (by the sweeper) until it is sent, or `failed` after the configured number of attempts."""

    __table_args__ = (UniqueConstraint("alert_id", "channel"),)
    id: int | None = Field(default=None, primary_key=True)
    alert_id: int = Field(foreign_key="alert.id", index=True)
    channel: str = Field(max_length=16)
    # A plain string, not a database enum: a new status needs no type migration on PostgreSQL.
    status: str = Field(default=DeliveryStatus.pending, max_length=16, index=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    next_attempt_at: datetime | None = Field(default_factory=utcnow)
    sent_at: datetime | None = None


# ------------------------------------------------------------------------------- people in the loop
# An answer the API gave, what users and reviewers said of it, and what the reviewers' verdicts teach.
# Feedback and ratings never train anything by themselves: only a correction an expert rated
# "correct" becomes a training example (ReviewedExample), listed in the next run's manifest.


class AnswerLog(SQLModel, table=True):
    """One answer, by its public id (random, not guessable), under the question log's retention.
    `question` and `answer` are NULL when the deployment keeps no question text
    (MEDQA_API_LOG_QUESTION_TEXT=false): feedback still counts, but nothing can be reviewed."""

    id: int | None = Field(default=None, primary_key=True)
    answer_id: str = Field(max_length=32, unique=True, index=True)
    asked_at: datetime = Field(default_factory=utcnow, index=True)
    question: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    answer: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    outcome: str = Field(max_length=16)
    version_id: int | None = None
    citations: list[int] = _json(list)
    evidence: list[dict] = _json(list)  # [{pmid, quote}]
    verdict: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Feedback(SQLModel, table=True):
    """A user's thumbs up or down on an answer, with an optional correction and reason."""

    id: int | None = Field(default=None, primary_key=True)
    answer_id: str = Field(max_length=32, index=True)
    rating: str = Field(max_length=8)  # up | down
    correction: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    client: str = Field(max_length=64)  # a hash of the client's address, for the rate limit and abuse
    created_at: datetime = Field(default_factory=utcnow, index=True)


class ReviewItem(SQLModel, table=True):
    """One thing for an expert to judge, put in the queue by the active-learning policy (shared/review.py).

    kind: "single" (rate one answer: correct, partly correct, wrong, harmful) or "pair" (a blind choice
    between a candidate's and the champion's answers to the same question, shown in `candidate_first`
    order). source: why it is queued: uncertain | disagreement | thumbs_down | correction | uniform.
    Each answer is {text, evidence: [{pmid, quote}], verdict}."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=8)
    source: str = Field(max_length=16, index=True)
    priority: float = 0.0  # higher first: entropy, disagreement, thumbs-down; uniform items are drawn apart
    question: str = Field(sa_column=Column(Text, nullable=False))
    answer: dict = _json()  # the rated answer (single), or the candidate's (pair)
    other: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))  # the champion's (pair)
    candidate_first: bool = True
    candidate_version_id: int | None = Field(default=None, index=True)
    champion_version_id: int | None = None
    answer_log_id: int | None = None
    feedback_id: int | None = None
    written_by: str | None = Field(default=None, max_length=64)  # a reviewer's correction: never theirs to check
    dedup_key: str = Field(max_length=120, unique=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class ReviewRating(SQLModel, table=True):
    """A reviewer's judgement of a review item. rating: correct | partly | wrong | harmful (single);
    preference: candidate | champion | tie (pair, mapped back from the blind order)."""

    __table_args__ = (UniqueConstraint("item_id", "reviewer"),)
    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="reviewitem.id", index=True)
    reviewer: str = Field(max_length=64, index=True)
    rating: str | None = Field(default=None, max_length=8)
    preference: str | None = Field(default=None, max_length=10)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    correction: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class ReviewedExample(SQLModel, table=True):
    """A correction an expert rated "correct": a QA training example with its provenance. The next
    training run lists it in its manifest (`reviewed`), and lineage indexes it as `reviewed:<id>`."""

    id: int | None = Field(default=None, primary_key=True)
    question: str = Field(sa_column=Column(Text, nullable=False))
    answer: str = Field(sa_column=Column(Text, nullable=False))
    context: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    pmids: list[int] = _json(list)  # the abstracts the answer's evidence came from
    reviewer: str = Field(max_length=64)
    reviewed_at: datetime = Field(default_factory=utcnow)
    item_id: int = Field(foreign_key="reviewitem.id", unique=True)
    feedback_id: int | None = None
    withdrawn: bool = False  # an operator can take it back before it trains again


# ------------------------------------------------------------------------------------ fan-out ingest


class IngestFileStatus(StrEnum):
    queued = "queued"
    importing = "importing"
    done = "done"
    failed = "failed"


class IngestFile(SQLModel, table=True):
    """One NLM file queued for import, keyed by its content (sha256): `medqa ingest files` and the
    beat's watch folder queue one `ingest.file` task per file, so N ingest workers import N files at
    once. The row turns `done`, with the file's counts, in the import's own transaction; a worker
    killed mid-file leaves it `importing` with nothing of the file stored, and importable again. A file
    whose content is `done` already is skipped, wherever it lies."""

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(max_length=64, unique=True, index=True)
    path: str = Field(sa_column=Column(Text, nullable=False))  # where it was found (first seen)
    # A plain string, not a database enum (as AlertDelivery.status): a new status needs no type migration.
    status: str = Field(default=IngestFileStatus.queued, max_length=16, index=True)
    attempts: int = 0  # imports begun: more than one means a worker died or the file failed before
    importer: str | None = Field(default=None, max_length=100)  # host:pid of the process that took it last
    stored: int = 0
    updated: int = 0
    duplicates: int = 0
    filtered: int = 0
    deleted: int = 0
    retracted: int = 0
    mined: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    queued_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RetrievalIndexVersion(SQLModel, table=True):
    """A published version of the shared ANN retrieval index (shared/ann.py, services/monitor/index.py):
    an immutable file named by its sha256 under the artifact store, and what it holds."""

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(max_length=500)
    sha256: str = Field(max_length=64)
    vectors: int
    trained_on: int  # vectors its inverted lists were trained on (a fresh build past 4x growth)
    embedding_model: str = Field(max_length=64)
    added: int = 0  # abstracts new or revised since the previous version
    rebuilt: bool = False
    created_at: datetime = Field(default_factory=utcnow, index=True)
