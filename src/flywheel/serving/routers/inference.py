"""The Open Inference Protocol (KServe V2 REST) beside ``/v1``: health, metadata, infer.

The model's name is the project's (``model_name``, else its folder's); its versions are
the registry's. ``infer`` takes what ``/v1/predict`` takes, as tensors: an encoded image
or WAV as ``BYTES``, or an ``FP32`` tensor in the model's input shape (images: pixels in
[0, 1], ``[N, C, H, W]``); text as ``BYTES``; tabular as ``FP32`` ``[N, F]`` in the order
of the feature names the metadata gives (or one ``[N]`` input per feature, by name).
Every element is one prediction through the same micro-batcher and log as ``/v1``: its
id comes back as the ``prediction_id`` output, so ``/v1/feedback`` can follow. Errors are
``{"error": ...}`` with a 4xx (the app's error handlers write them for ``/v2`` paths).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from flywheel import __version__
from flywheel.data import tabular_bytes
from flywheel.data.images import encode_png
from flywheel.errors import InputError, UnsupportedMediaError
from flywheel.feedback.records import PredictionResult
from flywheel.serving.deps import MetricsDep, PredictorDep
from flywheel.serving.metrics import Metrics
from flywheel.serving.predictor import Predictor
from flywheel.serving.routers.predict import UserHeader, check_format
from flywheel.serving.tensors import HEADER, InferRequest, Tensor, read_request, write_response

__all__ = ["EXTENSIONS", "router"]

router = APIRouter(tags=["inference (Open Inference Protocol v2)"])

EXTENSIONS = ["binary_tensor_data"]
#: the name the metadata gives the one input (any single input's name is accepted)
INPUT = "input"
#: elements (predictions) in one request, at most
MAX_ITEMS = 1024

ModelName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
ModelVersion = Annotated[str, Path(min_length=1, max_length=10, pattern=r"^[0-9]+$")]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size (the first dimension is the batch).")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str] = Field(
        description="task, serving_version, labels (comma-separated, the order of "
        "'probabilities'), feature_names (tabular: the order of the input's columns), "
        "bytes_input (images: BYTES of encoded files are taken too)."
    )


class TensorOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float | str] | None = Field(default=None, description="Row-major (JSON).")
    parameters: dict[str, int] | None = Field(
        default=None, description="binary_data_size: its bytes after the JSON (binary)."
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, str] = Field(
        description="prediction_id (one element) or prediction_ids (comma-separated): "
        "what POST /v1/feedback answers about."
    )
    outputs: list[TensorOutput]


_ERROR = {"content": {"application/json": {"example": {"error": "what went wrong"}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such model or version.", **_ERROR},
    413: {"description": "The body is over the size limit.", **_ERROR},
    415: {"description": "A file type this task does not take.", **_ERROR},
    422: {"description": "The tensors cannot be read, or do not fit the model.", **_ERROR},
    503: {"description": "No production model yet.", **_ERROR},
}


def _served(predictor: Predictor, name: str, version: str | None, request: Request) -> Any:
    """The backend that answers for ``name`` (and ``version``, which must be the one in
    service: only the production version is loaded)."""
    project = request.app.state.project
    served_name: str = request.app.state.model_name
    if name != served_name:
        raise HTTPException(404, f"unknown model {name!r}: this server serves {served_name!r}")
    backend = predictor.backend
    if version is not None and int(version) != backend.version:
        if int(version) not in {v.version for v in project.models()}:
            raise HTTPException(404, f"model {name!r} has no version {version}")
        raise HTTPException(
            404,
            f"version {version} of {name!r} is not loaded: v{backend.version} is in service "
            "(promote a version to serve it)",
        )
    return backend


def _outputs(labels: list[str]) -> list[dict[str, Any]]:
    if not labels:
        return [
            {"name": "value", "datatype": "FP32", "shape": [-1]},
            {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
        ]
    return [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
    ]


def _metadata(request: Request, backend: Any, name: str) -> ModelMetadata:
    project = request.app.state.project
    task = project.task
    shape = [-1, *backend.input_shape]
    params: dict[str, Any] = {"task": task.name, "serving_version": str(backend.version)}
    if task.modality in ("image", "audio"):
        kind = "encoded image (PNG or JPEG)" if task.modality == "image" else "WAV recording"
        params["bytes_input"] = f"BYTES [-1]: each element an {kind}"
        inputs = [{"name": INPUT, "datatype": "FP32", "shape": shape}]
        if task.modality == "audio":
            inputs = [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]
    elif task.modality == "text":
        inputs = [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]
    else:
        columns: list[str] = request.app.state.columns
        params["feature_names"] = ",".join(columns)
        inputs = [{"name": INPUT, "datatype": "FP32", "shape": [-1, len(columns)]}]
    if backend.labels:
        params["labels"] = ",".join(backend.labels)
    return ModelMetadata.model_validate(
        {
            "name": name,
            "versions": [str(v.version) for v in project.models() if not v.withdrawn],
            "platform": f"flywheel_{backend.name}",
            "inputs": inputs,
            "outputs": _outputs(backend.labels),
            "parameters": params,
        }
    )


# -- health and metadata ------------------------------------------------------------------


@router.get("/v2", summary="Server metadata")
async def read_server_metadata() -> ServerMetadata:
    return ServerMetadata(name="flywheel", version=__version__, extensions=EXTENSIONS)


@router.get("/v2/health/live", summary="Liveness (200 while the process answers)")
async def read_live() -> Live:
    return Live(live=True)


@router.get(
    "/v2/health/ready",
    summary="Readiness: 200 when a production model is loaded, else 503",
    response_model=Ready,
    responses={503: {"description": "No model loaded yet.", "model": Ready}},
)
async def read_ready(request: Request) -> Response:
    predictor = getattr(request.app.state, "predictor", None)
    ready = predictor is not None and predictor.serving_version() is not None
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/v2/models/{model_name}", summary="Model metadata", responses=RESPONSES)
async def read_model_metadata(
    request: Request, predictor: PredictorDep, model_name: ModelName
) -> ModelMetadata:
    return _metadata(request, _served(predictor, model_name, None, request), model_name)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    summary="Model version metadata (the version in service)",
    responses=RESPONSES,
)
async def read_version_metadata(
    request: Request, predictor: PredictorDep, model_name: ModelName, model_version: ModelVersion
) -> ModelMetadata:
    backend = _served(predictor, model_name, model_version, request)
    return _metadata(request, backend, model_name)


@router.get("/v2/models/{model_name}/ready", summary="Model readiness", responses=RESPONSES)
async def read_model_ready(
    request: Request, predictor: PredictorDep, model_name: ModelName
) -> ModelReady:
    _served(predictor, model_name, None, request)
    return ModelReady(name=model_name, ready=True)


@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    summary="Model version readiness (only the version in service is loaded)",
    responses=RESPONSES,
)
async def read_version_ready(
    request: Request, predictor: PredictorDep, model_name: ModelName, model_version: ModelVersion
) -> ModelReady:
    _served(predictor, model_name, model_version, request)
    return ModelReady(name=model_name, version=model_version, ready=True)


# -- infer --------------------------------------------------------------------------------


def _the_input(req: InferRequest) -> Tensor:
    if len(req.inputs) != 1:
        raise InputError(
            f"this model takes one input ({INPUT!r}); got {[t.name for t in req.inputs]}"
        )
    return req.inputs[0]


def _items_of(tensor: Tensor) -> int:
    if not tensor.shape:
        raise InputError(f"input {tensor.name!r}: a scalar; the first dimension is the batch")
    n = tensor.shape[0]
    if not 1 <= n <= MAX_ITEMS:
        raise InputError(f"input {tensor.name!r}: a batch of 1 to {MAX_ITEMS}; got {n}")
    return n


def _bytes_items(tensor: Tensor) -> list[bytes]:
    n = _items_of(tensor)
    assert tensor.items is not None
    if len(tensor.items) != n:  # [N, 1] is the same as [N]
        raise InputError(f"input {tensor.name!r}: one element per item; shape {tensor.shape}")
    return tensor.items


def _pixels(tensor: Tensor, shape: tuple[int, ...]) -> list[tuple[bytes, np.ndarray]]:
    """FP32 images in the model's input shape: each (its PNG, to keep; the pixels)."""
    if tensor.array is None or tensor.datatype != "FP32":
        raise InputError(f"input {tensor.name!r}: pixels are FP32; got {tensor.datatype}")
    n = _items_of(tensor)
    if tensor.shape[1:] != shape:
        raise InputError(
            f"input {tensor.name!r}: the model takes [N, {', '.join(map(str, shape))}] "
            f"(channels, height, width); got {list(tensor.shape)}"
        )
    x = tensor.array
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise InputError(f"input {tensor.name!r}: pixels are in [0, 1]; some are not")
    out = []
    for i in range(n):
        px = np.rint(x[i] * 255.0).astype(np.uint8)
        px = px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)
        out.append((encode_png(px), np.ascontiguousarray(x[i], np.float32)))
    return out


def _features(req: InferRequest, columns: list[str]) -> list[bytes]:
    """Tabular rows: one ``[N, F]`` input in the columns' order, or one ``[N]`` input
    per column by name."""
    numeric = [t for t in req.inputs if t.array is not None]
    if len(numeric) != len(req.inputs):
        raise InputError("features are numbers (FP32, FP64 or integers); got BYTES")
    if len(req.inputs) == 1 and req.inputs[0].name not in columns:
        t = req.inputs[0]
        n = _items_of(t)
        assert t.array is not None
        if len(t.shape) != 2 or t.shape[1] != len(columns):
            raise InputError(
                f"input {t.name!r}: the model takes [N, {len(columns)}] (features "
                f"{', '.join(columns)}); got {list(t.shape)}"
            )
        table = t.array.astype(np.float64)
    else:
        by_name = {t.name: t for t in req.inputs}
        missing, unknown = sorted(set(columns) - set(by_name)), sorted(set(by_name) - set(columns))
        if missing or unknown:
            raise InputError(
                f"inputs must be the features {columns}: missing {missing}, unknown {unknown}"
            )
        n = _items_of(by_name[columns[0]])
        cols = []
        for c in columns:
            a = by_name[c].array
            assert a is not None
            if a.size != n:
                raise InputError(f"input {c!r}: {a.size} values; {columns[0]!r} has {n}")
            cols.append(a.reshape(-1).astype(np.float64))
        table = np.stack(cols, axis=1)
    if not np.isfinite(table).all():
        raise InputError("features must be finite numbers")
    return [tabular_bytes(dict(zip(columns, map(float, row), strict=True))) for row in table]


def _inputs(req: InferRequest, request: Request, backend: Any) -> list[Any]:
    """Each item of the request as (what is kept, the decoded input or None)."""
    task = request.app.state.project.task
    if task.modality == "tabular":
        return [(c, None) for c in _features(req, request.app.state.columns)]
    tensor = _the_input(req)
    if tensor.datatype == "BYTES":
        items = _bytes_items(tensor)
        if task.modality in ("image", "audio"):
            for i, content in enumerate(items):
                try:
                    check_format(task.modality, "", content)
                except UnsupportedMediaError as exc:
                    raise UnsupportedMediaError(f"input {tensor.name!r}[{i}]: {exc}") from None
        return [(c, None) for c in items]
    if task.modality == "image":
        return _pixels(tensor, tuple(backend.input_shape))
    what = "WAV recordings" if task.modality == "audio" else "UTF-8 strings"
    raise InputError(
        f"input {tensor.name!r}: this model takes BYTES ({what}); got {tensor.datatype}"
    )


def _answer(
    req: InferRequest, name: str, results: list[PredictionResult], metrics: Metrics
) -> Response:
    version = str(results[0].model_version)
    ids = [r.prediction_id for r in results]
    outputs: list[tuple[str, str, Any]]
    if results[0].value is not None:
        values = np.array([r.value for r in results], np.float32)
        outputs = [("value", "FP32", values)]
        for _ in results:
            metrics.predictions.labels(version, "value").inc()
    else:
        labels = list(results[0].probabilities or {})
        probs = np.array([[(r.probabilities or {})[k] for k in labels] for r in results])
        outputs = [
            ("probabilities", "FP32", probs.astype(np.float32)),
            ("label", "BYTES", [str(r.label).encode() for r in results]),
        ]
        for r in results:
            metrics.predictions.labels(version, str(r.label)).inc()
    for r in results:
        metrics.prediction_seconds.labels(version).observe(r.latency_ms / 1000.0)
    outputs.append(("prediction_id", "BYTES", [i.encode() for i in ids]))
    params = {"prediction_id": ids[0]} if len(ids) == 1 else {"prediction_ids": ",".join(ids)}
    head: dict[str, Any] = {"model_name": name, "model_version": version}
    if req.id is not None:
        head["id"] = req.id
    head["parameters"] = params
    body, json_length = write_response(head, outputs, req)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER: str(json_length)})


def _check_outputs(req: InferRequest, labels: list[str]) -> None:
    """Refuse unknown outputs before anything is predicted (and logged)."""
    have = [o["name"] for o in _outputs(labels)]
    unknown = sorted(set(req.outputs or ()) - set(have))
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; this model has {have}")


async def _infer(
    request: Request,
    predictor: Predictor,
    metrics: Metrics,
    name: str,
    version: str | None,
    user: str | None,
) -> Response:
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("identity", ""):
        raise UnsupportedMediaError(f"Content-Encoding {encoding!r} is not taken: send it plain")
    backend = _served(predictor, name, version, request)
    req = read_request(await request.body(), request.headers.get(HEADER))
    _check_outputs(req, backend.labels)
    items = _inputs(req, request, backend)
    results = await asyncio.gather(
        *(predictor.predict(content, user, array=x) for content, x in items)
    )
    return _answer(req, name, list(results), metrics)


_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An inference request: JSON, or (binary tensor extension) JSON of "
        f"`{HEADER.title()}` bytes followed by the inputs' raw data.",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/v2/models/{model_name}/infer",
    summary="Infer (Open Inference Protocol): every element one logged prediction",
    response_model=InferResponse,
    responses={**RESPONSES, 200: {"description": "The outputs, and each prediction's id."}},
    openapi_extra=_INFER_DOC,
)
async def create_inference(
    request: Request,
    predictor: PredictorDep,
    metrics: MetricsDep,
    model_name: ModelName,
    x_user_id: UserHeader = None,
) -> Response:
    return await _infer(request, predictor, metrics, model_name, None, x_user_id)


@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    summary="Infer on a version (the one in service)",
    response_model=InferResponse,
    responses={**RESPONSES, 200: {"description": "The outputs, and each prediction's id."}},
    openapi_extra=_INFER_DOC,
)
async def create_version_inference(
    request: Request,
    predictor: PredictorDep,
    metrics: MetricsDep,
    model_name: ModelName,
    model_version: ModelVersion,
    x_user_id: UserHeader = None,
) -> Response:
    return await _infer(request, predictor, metrics, model_name, model_version, x_user_id)
