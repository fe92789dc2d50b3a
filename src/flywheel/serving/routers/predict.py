"""POST /v1/predict, in the form the project's task takes (documented per task in OpenAPI)."""

# No `from __future__ import annotations` here: the routes are built inside a function
# and FastAPI must see their annotations evaluated, closure variables included.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Header, UploadFile

from flywheel.data import tabular_bytes
from flywheel.project import PredictionResult
from flywheel.serving.deps import MetricsDep, PredictorDep, require
from flywheel.serving.metrics import Metrics
from flywheel.serving.schemas import FeaturesInput, PredictionPublic, TextInput
from flywheel.tasks import Task

__all__ = ["UserHeader", "build_router"]

UserHeader = Annotated[
    str | None, Header(alias="X-User-Id", description="The end user's pseudonymous id.")
]

RESPONSES: dict[int | str, dict[str, str]] = {
    413: {"description": "The body is over the size limit."},
    422: {"description": "The input is missing, empty or unreadable for this task."},
    503: {"description": "No production model yet."},
}


def _public(r: PredictionResult, metrics: Metrics) -> PredictionPublic:
    version = str(r.model_version)
    metrics.predictions.labels(version, r.label if r.label is not None else "value").inc()
    metrics.prediction_seconds.labels(version).observe(r.latency_ms / 1000.0)
    return PredictionPublic(
        prediction_id=r.prediction_id,
        model_version=r.model_version,
        label=r.label,
        probabilities=r.probabilities,
        value=r.value,
    )


def build_router(task: Task) -> APIRouter:
    router = APIRouter(tags=["predict"])
    kwargs: dict[str, Any] = {
        "response_model": PredictionPublic,
        "response_model_exclude_none": True,
        "dependencies": [Depends(require("predict"))],
        "responses": RESPONSES,
    }
    if task.input == "file":
        what = "an image (PNG or JPEG)" if task.modality == "image" else "a WAV recording"

        @router.post("/v1/predict", summary=f"Predict from {what} ({task.name})", **kwargs)
        async def create_prediction(
            predictor: PredictorDep,
            metrics: MetricsDep,
            file: Annotated[UploadFile, File(description=f"{what[0].upper()}{what[1:]}.")],
            x_user_id: UserHeader = None,
        ) -> PredictionPublic:
            return _public(await predictor.predict(await file.read(), x_user_id), metrics)

    elif task.input == "text":

        @router.post("/v1/predict", summary=f"Classify a text ({task.name})", **kwargs)
        async def create_text_prediction(
            predictor: PredictorDep,
            metrics: MetricsDep,
            body: TextInput,
            x_user_id: UserHeader = None,
        ) -> PredictionPublic:
            result = await predictor.predict(body.text.encode("utf-8"), x_user_id)
            return _public(result, metrics)

    else:

        @router.post(
            "/v1/predict", summary=f"Predict a value from features ({task.name})", **kwargs
        )
        async def create_value_prediction(
            predictor: PredictorDep,
            metrics: MetricsDep,
            body: FeaturesInput,
            x_user_id: UserHeader = None,
        ) -> PredictionPublic:
            result = await predictor.predict(tabular_bytes(body.features), x_user_id)
            return _public(result, metrics)

    return router
