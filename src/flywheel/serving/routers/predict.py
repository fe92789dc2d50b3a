"""POST /v1/predict, in the form the project's task takes (documented per task in OpenAPI)."""

# No `from __future__ import annotations` here: the routes are built inside a function
# and FastAPI must see their annotations evaluated, closure variables included.

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from starlette.datastructures import UploadFile

from flywheel.data import tabular_bytes
from flywheel.errors import InputError
from flywheel.feedback.records import PredictionResult
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


def _public(r: PredictionResult, metrics: Metrics) -> Response:
    """The answer, serialised once: a Response is not re-validated against the route's
    ``response_model`` (which stays for the OpenAPI docs); this is the hot path."""
    version = str(r.model_version)
    metrics.predictions.labels(version, r.label if r.label is not None else "value").inc()
    metrics.prediction_seconds.labels(version).observe(r.latency_ms / 1000.0)
    body: dict[str, Any] = {"prediction_id": r.prediction_id, "model_version": r.model_version}
    if r.value is not None:
        body["value"] = r.value
    else:
        body["label"] = r.label
        body["probabilities"] = r.probabilities
    return Response(json.dumps(body), media_type="application/json")


async def _file_body(request: Request) -> bytes:
    """The uploaded file: a multipart field ``file``, or the whole body."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        content = await request.body()
        if not content and not ctype:
            raise InputError(
                "the request holds no file: send it as a multipart field named 'file' "
                "(curl -F file=@x.png) or as the raw body with its Content-Type "
                "(curl --data-binary @x.png -H 'Content-Type: image/png')"
            )
        return content
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InputError("the multipart body has no file field named 'file'")
        return await upload.read()


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
        raw = ["image/png", "image/jpeg"] if task.modality == "image" else ["audio/wav"]
        binary = {"schema": {"type": "string", "format": "binary"}}
        body_doc = {
            "requestBody": {
                "required": True,
                "description": f"{what[0].upper()}{what[1:]}: a multipart field named "
                "`file`, or the raw bytes as the body (faster: no multipart parsing).",
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                    **{ctype: binary for ctype in [*raw, "application/octet-stream"]},
                },
            }
        }

        @router.post(
            "/v1/predict",
            summary=f"Predict from {what} ({task.name})",
            openapi_extra=body_doc,
            **kwargs,
        )
        async def create_prediction(
            request: Request,
            predictor: PredictorDep,
            metrics: MetricsDep,
            x_user_id: UserHeader = None,
        ) -> Response:
            content = await _file_body(request)
            return _public(await predictor.predict(content, x_user_id), metrics)

    elif task.input == "text":

        @router.post("/v1/predict", summary=f"Classify a text ({task.name})", **kwargs)
        async def create_text_prediction(
            predictor: PredictorDep,
            metrics: MetricsDep,
            body: TextInput,
            x_user_id: UserHeader = None,
        ) -> Response:
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
        ) -> Response:
            result = await predictor.predict(tabular_bytes(body.features), x_user_id)
            return _public(result, metrics)

    return router
