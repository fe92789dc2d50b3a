"""Request and response bodies of the HTTP API (v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

__all__ = [
    "BODY",
    "ID_PATTERN",
    "KEYED",
    "STRICT",
    "TEXT_PATTERN",
    "ErrorPublic",
    "ExplanationPublic",
    "FeaturesInput",
    "FeedbackCreate",
    "FeedbackPublic",
    "ForgetPublic",
    "Health",
    "JobAccepted",
    "JobPublic",
    "KeyCreated",
    "KeyPublic",
    "KeyRequest",
    "LedgerPublic",
    "ModelPublic",
    "PredictionPublic",
    "RetrainRequest",
    "ReviewQueuePublic",
    "RollbackPublic",
    "StatsPublic",
    "TextInput",
    "UserPublic",
    "error",
    "json_body",
]


#: an id flywheel made (a UUID) or a client may name things by: no spaces, no controls
ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
#: a label or a target: any printable text (no control characters: the store refuses NUL)
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true or false")
    return value


#: a finite JSON number (``true``/``false`` are not numbers; NaN and ±Infinity refused)
Number = Annotated[float, BeforeValidator(_not_a_bool)]

#: what every request body refuses: unknown fields, NaN and ±Infinity
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorPublic(BaseModel):
    """Every 4xx and 5xx: what went wrong. Malformed fields give FastAPI's list of the
    problems (``loc``, ``msg``, ``type``); other refusals one sentence."""

    detail: str | list[dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    """An error status as OpenAPI documents it: its meaning and the body sent."""
    return {"description": description, "model": ErrorPublic}


#: what every route behind a key can answer besides its own statuses
KEYED: dict[int | str, dict[str, Any]] = {
    401: error("No API key, or an unknown, revoked or expired one."),
    403: error("The key lacks the route's scope."),
    429: error("Too many failed authentications from this address: wait Retry-After seconds."),
    422: error("A malformed request: the problems, field by field."),
}
#: what a route that takes a body can answer too
BODY: dict[int | str, dict[str, Any]] = {
    408: error("The body did not arrive within body_timeout_s."),
    413: error("The body is over max_body_bytes."),
}


def json_body(content: Any) -> JSONResponse:
    """The answer as every route's body is written (``json.dumps``, non-finite numbers
    refused); the route's ``response_model`` documents its schema in OpenAPI."""
    return JSONResponse(jsonable_encoder(content))


class PredictionPublic(BaseModel):
    """Classification: ``label`` and ``probabilities``; regression: ``value``."""

    prediction_id: str
    model_version: int
    label: str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


class TextInput(BaseModel):
    model_config = STRICT
    text: str = Field(
        min_length=1,
        max_length=100_000,
        pattern=r"^[^\x00]+$",
        description="The text to classify (no NUL characters).",
    )


class FeaturesInput(BaseModel):
    model_config = STRICT
    features: dict[Annotated[str, Field(max_length=256)], Number] = Field(
        min_length=1, max_length=10_000, description="One number per feature column of the model."
    )


class FeedbackCreate(BaseModel):
    """The true label (or value) of a prediction, or whether the prediction was correct."""

    model_config = STRICT
    prediction_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    label: str | None = Field(default=None, min_length=1, max_length=256, pattern=TEXT_PATTERN)
    value: Number | None = Field(
        default=None,
        description="Regression: the true value (within max_value_z standard deviations of "
        "the model's training targets).",
    )
    correct: StrictBool | None = None

    @model_validator(mode="after")
    def _one_answer(self) -> FeedbackCreate:
        if self.label is None and self.correct is None and self.value is None:
            raise ValueError(
                "give 'label' (the true label), 'value' (the true value, regression) "
                "or 'correct' (true or false)"
            )
        return self


class FeedbackPublic(BaseModel):
    feedback_id: str


class ModelPublic(BaseModel):
    version: int
    arch: str
    aliases: list[str]
    metrics: dict[str, Any]
    created_at: str
    parent: int | None
    dataset_version: int
    gate: dict[str, Any] | None
    training_config: dict[str, Any]


class RollbackPublic(BaseModel):
    from_version: int
    to_version: int


class RetrainRequest(BaseModel):
    model_config = STRICT
    epochs: StrictInt | None = Field(default=None, ge=1, le=10_000)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**32 - 1)


class JobAccepted(BaseModel):
    job_id: str


class KeyPublic(BaseModel):
    """An API key as listed: never the key itself."""

    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    status: Literal["live", "expired", "revoked"]


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown this once, only its hash is stored.")


class KeyRequest(BaseModel):
    model_config = STRICT
    scopes: list[Literal["predict", "feedback", "admin"]] = Field(min_length=1, max_length=3)
    name: str = Field(default="", max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")
    expires_days: float | None = Field(
        default=None, gt=0, le=36500, description="Refuse the key after this many days."
    )


class JobPublic(BaseModel):
    job_id: str
    kind: str
    status: str
    trigger: str = Field(
        "manual", description="What asked for it: manual, feedback, schedule, drift, forget."
    )
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    log: list[str] = []  # progress lines, readable while the job runs
    progress: dict[str, Any] | None = Field(
        default=None,
        description="While it runs: phase (fit, refit, or the stage between epochs: "
        "preparing, decoding, the gate ...), and in fit and refit step, steps, fraction "
        "and eta_s (seconds left in the phase, from its pace; an upper bound while early "
        "stopping may end it sooner).",
    )
    attempts: int = Field(
        0, description="Claims so far: a job whose worker died is queued again (job_attempts)."
    )
    owner: str | None = Field(
        None, description="The worker (host:pid:tag) running it, or that ran it last."
    )
    tries: list[dict[str, Any]] = Field(
        default=[],
        description="Each attempt: attempt, owner, started_at, ended_at, outcome (running, "
        "succeeded, failed, or stopped: its worker died, and why).",
    )
    created_at: str
    started_at: str | None
    finished_at: str | None


class RetrainPolicyPublic(BaseModel):
    """The server's retrain policy (``retrain_min_feedback``, ``retrain_interval_s``,
    ``retrain_cooldown_s``) and where it stands."""

    on: bool
    new_answers: int = Field(description="Answers since the last retrain was asked for.")
    min_feedback: int | None
    interval_s: float | None
    cooldown_s: float
    last_retrain_at: str | None
    next_scheduled_at: str | None
    cooldown_until: str | None
    busy: bool = Field(description="A retrain is queued or running, in any process.")
    due: str | None = Field(description="The trigger due now (feedback, schedule), if any.")
    why: str


class WebhookDeliveryPublic(BaseModel):
    id: str = Field(description="The delivery id (X-Flywheel-Delivery), the same on retries.")
    event: str
    url: str
    status: str = Field(description="pending, delivered or failed (given up on).")
    attempts: int
    last_status: int | None = Field(description="The HTTP status of the last attempt.")
    last_error: str | None
    created_at: str
    next_at: str | None
    delivered_at: str | None


class JobsPublic(BaseModel):
    jobs: list[JobPublic] = Field(description="The newest first.")
    policy: RetrainPolicyPublic


class Health(BaseModel):
    status: str
    production_version: int | None = Field(description="The version the alias names.")
    serving_version: int | None = Field(
        description="The version this process answers with (it differs from production "
        "while a promotion made elsewhere loads, or when that version cannot load)."
    )


class QueueItemPublic(BaseModel):
    prediction_id: str
    score: float = Field(description="How much an answer is worth, on the strategy's scale.")
    strategy: str
    top: list[tuple[str, float]] = Field(description="The top guesses: [label, probability].")
    reason: str = Field(description="Why it was picked, in one sentence.")


class ReviewQueuePublic(BaseModel):
    strategy: str
    items: list[QueueItemPublic]


class UserPublic(BaseModel):
    user_id: str = Field(description="The pseudonym (a keyed hash of the id the client sent).")
    trust: float | None = Field(description="Estimated reliability in (0, 1); null: not yet.")
    trust_detail: dict[str, Any] | None = Field(description="The counts behind the estimate.")
    answers: int
    rows_used: int = Field(description="Training rows made from this user's answers.")
    quarantined: bool
    quarantine_reason: str | None
    created_at: str


class LedgerRun(BaseModel):
    model_version: int
    epsilon: float
    delta: float
    rows: int
    at: str


class LedgerPublic(BaseModel):
    user_id: str
    epsilon: float = Field(description="ε spent across private runs (basic composition).")
    delta: float
    runs: list[LedgerRun]
    budget: float
    remaining: float


class ForgetPublic(BaseModel):
    """The audit record of a forget: what was erased and which versions were withdrawn."""

    audit_id: int
    action: str
    subject: str | None = Field(description="A digest of the pseudonym (never the pseudonym).")
    created_at: str
    counts_before: dict[str, int]
    erased: dict[str, int]
    inputs_digest: str
    table_rows_before: dict[str, int]
    dataset_versions_marked: list[int]
    dataset_version_new: int | None
    versions_affected: list[int]
    aliases_moved: dict[str, Any]
    production_before: int | None
    blobs_deleted: int
    inputs_kept_shared: int
    spill_rows_deleted: int = Field(
        description="The user's rows dropped from the prediction log's journal (rows a "
        "killed server left for replay) and from older versions' spill files."
    )
    counts_after: dict[str, int]
    table_rows_after: dict[str, int]
    production_after: int | None
    needs_retrain: bool
    withdrawn_production_score: dict[str, Any] | None
    retrain: dict[str, Any] | None
    seconds: float
    retrain_job: str | None = Field(
        description="The job retraining production without the user; null when not needed."
    )


class CallStats(BaseModel):
    total: int
    per_version: dict[str, int]
    per_label: dict[str, int]
    per_minute: dict[str, int] = Field(description="Calls per minute (UTC) in the window.")


class FeedbackStats(BaseModel):
    total: int
    agreed: int
    disagreed: int


class VersionStats(BaseModel):
    version: int
    aliases: list[str]
    holdout_accuracy: float | None
    holdout_mse: float | None
    calls: int
    feedback: int
    live_accuracy: float | None = Field(description="Share of judged answers that agreed.")
    live_mse: float | None


class StatsPublic(BaseModel):
    task: str
    calls: CallStats
    feedback: FeedbackStats
    versions: list[VersionStats]


class DriftWindowPublic(BaseModel):
    """One closed window of production calls."""

    window: int
    model_version: int
    calls: int
    first_at: str
    last_at: str
    scores: dict[str, float] | None = Field(
        description="Each drift test's statistic (None: no test, see unavailable)."
    )
    thresholds: dict[str, float] | None = Field(
        description="Each test's alarm threshold, calibrated on reference windows."
    )
    p_values: dict[str, float] | None = Field(
        description="Each test's calibrated p-value: the share of reference windows as far."
    )
    drift_score: float | None = Field(description="The largest score / threshold (> 1: alarm).")
    alarm: bool
    unavailable: str | None = Field(description="Why the window has no drift test, if not.")
    estimated_accuracy: float | None = Field(
        description="Label-free: the mean temperature-scaled confidence of its calls."
    )
    estimates: dict[str, float | None] | None = Field(
        default=None,
        description="The label-free estimates: 'confidence' (the one above) and 'atc' "
        "(average thresholded confidence).",
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description="The estimate's temperature and the rows it was fitted on (the "
        "calls answered before the window, pooled with the reference rows while few).",
    )
    observed_accuracy: float | None = Field(
        description="From the answers its calls got outside the review queue so far."
    )
    answered: int
    estimate_error: float | None = Field(description="estimated - observed accuracy.")


class MonitoringPublic(BaseModel):
    window: int = Field(description="drift_window: calls per window.")
    window_s: float | None
    alpha: float = Field(description="drift_alpha: false alarms allowed per window.")
    min_reference: int = Field(description="Untrained rows a drift test needs.")
    reference: dict[str, Any] | None = Field(
        description="What production's windows are compared with (once this process built it)."
    )
    closed: list[int]
    windows: list[DriftWindowPublic]


class ExplanationItem(BaseModel):
    name: str
    score: float


class ExplanationPublic(BaseModel):
    """A map (images, audio) or one score per token or feature (text, tables)."""

    prediction_id: str
    model_version: int
    method: str
    target: str | None
    shape: list[int] | None = None
    map: list[list[float]] | None = Field(default=None, description="Attribution in [0, 1].")
    items: list[ExplanationItem] | None = None
    overlay: bool = Field(description="Whether /v1/explain/{prediction_id}.png has a picture.")
