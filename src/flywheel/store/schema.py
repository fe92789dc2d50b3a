"""The SQL schema (SQLAlchemy 2 declarative). Changes go through an Alembic migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "JSON_SUMMARIES",
    "RETRAIN_KINDS",
    "AliasEvent",
    "ApiKey",
    "AuditRecord",
    "Base",
    "DatasetVersion",
    "DatasetVersionExample",
    "Example",
    "Explanation",
    "Feedback",
    "Job",
    "Lease",
    "ModelAlias",
    "ModelVersion",
    "Prediction",
    "PrivacyCharge",
    "ReviewItem",
    "StoreMeta",
    "UiSession",
    "User",
    "WebhookDelivery",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC on every backend.

    SQLite keeps no offset and hands back naive values; this attaches UTC on the way
    out and refuses naive values on the way in, so SQLite and PostgreSQL agree.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware UTC timestamps")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


TS = UTCDateTime()


class User(Base):
    """An end user, known only by the pseudonymous id the client sends."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    #: estimated reliability in (0, 1); None until estimated
    trust: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: the counts behind the estimate
    trust_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    trust_updated_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    #: a quarantined user's feedback is kept and listed but not trained on
    quarantined_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    quarantine_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class ApiKey(Base):
    """An API key; only its SHA-256 is stored, the key itself is shown once."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class Example(Base):
    """One labelled input. ``origin`` is ``base`` (imported data) or ``feedback``."""

    __tablename__ = "examples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    input_hash: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str | None] = mapped_column(String(256), nullable=True)  # classification
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # regression target
    split: Mapped[str] = mapped_column(String(16))  # "train" or "holdout"
    origin: Mapped[str] = mapped_column(String(16))  # "base" or "feedback"
    feedback_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("feedback.id"), nullable=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("users.id"), nullable=True, index=True
    )
    source_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: training weight (trust of the user who gave it); None means 1
    weight: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class DatasetVersion(Base):
    """An immutable set of examples, identified by the hash of its content."""

    __tablename__ = "dataset_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("dataset_versions.id"), nullable=True
    )
    source: Mapped[str] = mapped_column(Text)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    #: set when rows were erased from it (forget a user): how many, when, the audit id;
    #: the version no longer holds what its content hash says
    erased: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class DatasetVersionExample(Base):
    __tablename__ = "dataset_version_examples"
    dataset_version_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("dataset_versions.id"), primary_key=True
    )
    example_id: Mapped[int] = mapped_column(Integer, ForeignKey("examples.id"), primary_key=True)


class ModelVersion(Base):
    """A trained model: its lineage, the whole training config, metrics and gate decision."""

    __tablename__ = "model_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    arch: Mapped[str] = mapped_column(String(64))
    parent_version: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_versions.version"), nullable=True
    )
    dataset_version_id: Mapped[int] = mapped_column(Integer, ForeignKey("dataset_versions.id"))
    training_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: the artifact folder, relative to the project folder (``models/v3``)
    artifact_dir: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    #: the spec file's SHA-256 (None: registered before spec hashes were kept)
    spec_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: the serving graph's SHA-256, once it was exported (None: not yet)
    graph_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    #: out of service (its training rows were erased): weights deleted, no alias may
    #: point to it
    withdrawn_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    withdrawn_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class ModelAlias(Base):
    """A name (``production``, ``candidate``) pointing at one model version."""

    __tablename__ = "model_aliases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, ForeignKey("model_versions.version"))
    updated_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AliasEvent(Base):
    """Every move of an alias, so that a rollback knows where to go back to."""

    __tablename__ = "alias_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_versions.version"), nullable=True
    )
    previous_version: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_versions.version"), nullable=True
    )
    action: Mapped[str] = mapped_column(String(16))  # promote, rollback
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Prediction(Base):
    """One logged call of /v1/predict."""

    __tablename__ = "predictions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    model_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_versions.version"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("users.id"), nullable=True, index=True
    )
    input_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)


class Feedback(Base):
    """An end user's answer about one prediction: the true label, or correct/incorrect."""

    __tablename__ = "feedback"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    prediction_id: Mapped[str] = mapped_column(String(36), ForeignKey("predictions.id"), index=True)
    user_id: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("users.id"), nullable=True, index=True
    )
    label: Mapped[str | None] = mapped_column(String(256), nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # regression: true value
    correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    #: the prediction had been handed out by the review queue
    via_queue: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: the client's own key of this answer, unique: an ``Idempotency-Key`` (scoped by
    #: who sent it) or a Label Studio annotation's id; None for most answers
    external_id: Mapped[str | None] = mapped_column(
        String(200), nullable=True, unique=True, index=True
    )
    #: the SHA-256 of the request that stored it under ``external_id`` (a key reused
    #: with another body is refused)
    body_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class ReviewItem(Base):
    """A prediction handed out by the review queue, with why it was picked."""

    __tablename__ = "review_items"
    prediction_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("predictions.id"), primary_key=True
    )
    strategy: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    #: a golden probe: a prediction on an example whose label is known
    golden_example_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("examples.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


#: the jobs that run one at a time everywhere (their claim is refused while one runs)
RETRAIN_KINDS = ("retrain", "forget-retrain")
_ONE_RUNNING = "status = 'running' AND kind IN ('retrain', 'forget-retrain')"
_ONE_WAITING = "status = 'queued' AND kind = 'retrain' AND attempts = 0"


class Job(Base):
    """A background job (retrain) and its outcome: the queue every server and worker on
    the database takes work from (``kind`` and ``params`` describe the work whole)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        # The database itself keeps one retrain running at a time, and one fresh retrain
        # waiting (others asked for join it or are refused): a unique index over the
        # rows where ``status`` is the same value admits one of them.
        Index(
            "ux_jobs_one_retrain_running", "status", unique=True,
            sqlite_where=text(_ONE_RUNNING), postgresql_where=text(_ONE_RUNNING),
        ),
        Index(
            "ux_jobs_one_retrain_waiting", "status", unique=True,
            sqlite_where=text(_ONE_WAITING), postgresql_where=text(_ONE_WAITING),
        ),
    )  # fmt: skip
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # queued, running, succeeded, failed
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: progress lines (one per epoch of a retrain), readable while it runs
    log: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: what asked for it: manual, feedback, schedule, drift, forget
    trigger: Mapped[str] = mapped_column(String(16), default="manual", server_default="manual")
    #: the process running it (host:pid:nonce) and its last sign of life
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    #: claims so far; a job whose worker stopped is queued again until ``job_attempts``
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: one entry per claim: attempt, owner, started_at, ended_at, outcome (running,
    #: succeeded, failed, stopped: its worker died) and, when stopped, why
    tries: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class DriftWindow(Base):
    """One closed window of production calls: its drift tests against the reference,
    the label-free accuracy estimate, and the accuracy its answers showed since."""

    __tablename__ = "drift_windows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_versions.version"), index=True
    )
    calls: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(TS)
    last_at: Mapped[datetime] = mapped_column(TS)
    #: the window's first and last calls (windows follow (created_at, id) order)
    first_id: Mapped[str] = mapped_column(String(36))
    last_id: Mapped[str] = mapped_column(String(36))
    #: scores, thresholds, calibrated p-values, the reference it was compared with
    tests: Mapped[dict[str, Any]] = mapped_column(JSON)
    alarm: Mapped[bool] = mapped_column(Boolean)
    estimated_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    observed_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    answered: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: pending until delivered (2xx) or given up on."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    #: a sender holds it until then (several processes never send one twice at once)
    claimed_until: Mapped[datetime | None] = mapped_column(TS, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(TS, nullable=True)


class Lease(Base):
    """A named lease held by one process until ``expires_at`` (renewed while it works):
    at most one retrain at a time across every process and machine on one database."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(TS)


class PrivacyCharge(Base):
    """One DP training run's charge to one user (the per-user privacy ledger)."""

    __tablename__ = "privacy_ledger"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), ForeignKey("users.id"), index=True)
    model_version: Mapped[int] = mapped_column(Integer, ForeignKey("model_versions.version"))
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AuditRecord(Base):
    """What a privacy action did (forget a user, rotate the key, retention), for proof.

    ``subject`` is a digest of the pseudonym, never the pseudonym itself: the record
    proves that a given user was forgotten without keeping their id.
    """

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    subject: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Explanation(Base):
    """A cached explanation of one input by one model version (and target class)."""

    __tablename__ = "explanations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    input_hash: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[int] = mapped_column(Integer, ForeignKey("model_versions.version"))
    target: Mapped[str] = mapped_column(String(256))  # "" for regression
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the PNG overlay in the blob folder (None: no map, e.g. text)
    png_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class UiSession(Base):
    """A dashboard sign-in: the cookie carries a random token, only its SHA-256 is here,
    with the API key it stands for (checked live on every request) and its CSRF token."""

    __tablename__ = "ui_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, ForeignKey("api_keys.id"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(TS)


class StoreMeta(Base):
    """Small facts about the store itself (the fingerprint of the user-id key chain)."""

    __tablename__ = "store_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


Index("ix_examples_origin_split", Example.origin, Example.split)
Index(
    "ux_explanations_input_version_target",
    Explanation.input_hash,
    Explanation.model_version,
    Explanation.target,
    unique=True,
)


#: JSON columns that summarise rows (top contributors, per-user caps, label issues,
#: cleaning reports with file names, job results): they may name users, so a forget
#: redacts them and a key rotation re-keys them.
JSON_SUMMARIES: tuple[tuple[Any, tuple[str, ...]], ...] = (
    (DatasetVersion, ("stats",)),
    (ModelVersion, ("metrics", "gate")),
    (Job, ("params", "result")),
)
