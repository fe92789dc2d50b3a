"""Request and response bodies of the HTTP API (v1)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FeaturesInput",
    "FeedbackCreate",
    "FeedbackPublic",
    "Health",
    "JobAccepted",
    "JobPublic",
    "ModelPublic",
    "PredictionPublic",
    "RetrainRequest",
    "RollbackPublic",
    "TextInput",
]


class PredictionPublic(BaseModel):
    """Classification: ``label`` and ``probabilities``; regression: ``value``."""

    prediction_id: str
    model_version: int
    label: str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


class TextInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=100_000, description="The text to classify.")


class FeaturesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: dict[str, float] = Field(
        min_length=1, description="One number per feature column of the model."
    )


class FeedbackCreate(BaseModel):
    """The true label (or value) of a prediction, or whether the prediction was correct."""

    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(min_length=1, max_length=64)
    label: str | None = Field(default=None, min_length=1, max_length=256)
    value: float | None = Field(default=None, description="Regression: the true value.")
    correct: bool | None = None

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
    model_config = ConfigDict(extra="forbid")
    epochs: int | None = Field(default=None, ge=1, le=10_000)
    seed: int | None = None


class JobAccepted(BaseModel):
    job_id: str


class JobPublic(BaseModel):
    job_id: str
    kind: str
    status: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    log: list[str] = []  # progress lines, readable while the job runs
    created_at: str
    started_at: str | None
    finished_at: str | None


class Health(BaseModel):
    status: str
    production_version: int | None
