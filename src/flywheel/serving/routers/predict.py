"""POST /v1/predict, in the form the project's task takes (documented per task in OpenAPI)."""

# No `from __future__ import annotations` here: the routes are built inside a function
# and FastAPI must see their annotations evaluated, closure variables included.

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from python_multipart.exceptions import FormParserError, MultipartParseError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from flywheel.data import tabular_bytes
from flywheel.errors import InputError, UnsupportedMediaError
from flywheel.feedback.records import PredictionResult
from flywheel.serving.deps import MetricsDep, PredictorDep
from flywheel.serving.metrics import Metrics
from flywheel.serving.schemas import KEYED, ErrorPublic, FeaturesInput, PredictionPublic, TextInput
from flywheel.tasks import Task

__all__ = ["UserHeader", "build_router"]

UserHeader = Annotated[
    str | None, Header(alias="X-User-Id", description="The end user's pseudonymous id.")
]

RESPONSES: dict[int | str, dict[str, Any]] = {
    **KEYED,
    408: {"description": "The body did not arrive within body_timeout_s.", "model": ErrorPublic},
    413: {"description": "The body is over the size limit.", "model": ErrorPublic},
    415: {
        "description": "A file type this task does not take, or bytes that are not the "
        "declared type.",
        "model": ErrorPublic,
    },
    422: {
        "description": "The input is missing, empty or unreadable for this task.",
        "model": ErrorPublic,
    },
    503: {"description": "No production model yet.", "model": ErrorPublic},
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


#: what each task's files are, by their first bytes (declared types are checked too)
FORMATS = {
    "image": {"image/png": (b"\x89PNG\r\n\x1a\n",), "image/jpeg": (b"\xff\xd8\xff",)},
    "audio": {"audio/wav": (b"RIFF",), "audio/x-wav": (b"RIFF",), "audio/wave": (b"RIFF",)},
}
ANY_FILE = "application/octet-stream"


def _media(ctype: str) -> str:
    return ctype.split(";", 1)[0].strip().lower()


def check_format(modality: str, declared: str, content: bytes) -> None:
    """Refuse a file whose declared type this task does not take, or whose bytes are not
    what it declares (a GIF sent as image/png): 415 either way."""
    formats = FORMATS[modality]
    media = _media(declared)
    if media and media != ANY_FILE and media not in formats:
        takes = ", ".join(sorted({*formats, ANY_FILE}))
        raise UnsupportedMediaError(
            f"this task takes files of type {takes}; got Content-Type {media!r}"
        )
    if not content:
        return  # nothing to sniff: the codec says the file is empty
    signatures = formats[media] if media in formats else tuple(sum(formats.values(), ()))
    not_wave = modality == "audio" and content[8:12] != b"WAVE"
    if not content.startswith(signatures) or not_wave:
        what = media if media in formats else " or ".join(sorted(formats))
        raise UnsupportedMediaError(f"the file's bytes are not {what}")


async def _file_body(request: Request, modality: str) -> bytes:
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
        check_format(modality, ctype, content)
        return content
    try:
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InputError("the multipart body has no file field named 'file'")
            content = await upload.read()
            declared = upload.content_type or ""
    except (HTTPException, MultipartParseError, FormParserError) as exc:
        # Starlette answers a malformed multipart body with its own 400; say it our way.
        why = exc.detail if isinstance(exc, HTTPException) else str(exc)
        raise InputError(f"the multipart body cannot be read: {why}") from None
    check_format(modality, declared, content)
    return content


def _features_doc(columns: list[str]) -> dict[str, Any]:
    """The request body of a regression project, with its feature columns named."""
    features = {
        "type": "object",
        "additionalProperties": False,
        "required": columns,
        "properties": {c: {"type": "number"} for c in columns},
    }
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["features"],
        "properties": {"features": features},
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def build_router(task: Task, columns: list[str] | None = None) -> APIRouter:
    """``/v1/predict`` in the form ``task`` takes (``columns``: a regression project's
    feature columns, named in the OpenAPI document)."""
    router = APIRouter(tags=["predict"])
    kwargs: dict[str, Any] = {
        "response_model": PredictionPublic,
        "response_model_exclude_none": True,
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
            content = await _file_body(request, task.modality)
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
            "/v1/predict",
            summary=f"Predict a value from features ({task.name})",
            openapi_extra=_features_doc(columns) if columns else None,
            **kwargs,
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
