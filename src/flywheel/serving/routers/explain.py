"""POST /v1/explain and its PNG overlay: why the model said what it said."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from flywheel.serving.deps import PredictionIdPath, ProjectDep
from flywheel.serving.schemas import (
    BODY,
    ID_PATTERN,
    KEYED,
    STRICT,
    TEXT_PATTERN,
    ExplanationPublic,
    error,
    json_body,
)

__all__ = ["router"]

router = APIRouter(tags=["explain"], responses=KEYED)


class ExplainRequest(BaseModel):
    model_config = STRICT
    prediction_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    target: str | None = Field(
        default=None,
        max_length=256,
        pattern=TEXT_PATTERN,
        description="A label to explain (default: the answer).",
    )


@router.post(
    "/v1/explain",
    response_model=ExplanationPublic,
    responses={
        **BODY,
        404: error("Unknown prediction, or its input expired."),
        422: error("A malformed request, or a target outside the model's labels."),
        503: error("The model version that made the prediction is not available."),
    },
)
def create_explanation(project: ProjectDep, body: ExplainRequest) -> JSONResponse:
    """Attributions for a logged prediction, by the model version that made it: a map in
    [0, 1] at the model's input resolution (images: Integrated Gradients; audio: the same
    over log-mel frames), token scores (text: feature ablation) or feature scores
    (regression). Cached per input, model version and target; ``overlay`` says whether
    ``GET /v1/explain/{prediction_id}.png`` has a picture."""
    return json_body(project.explain(body.prediction_id, body.target))


@router.get(
    "/v1/explain/{prediction_id}.png",
    response_class=Response,
    responses={
        200: {
            "description": "The overlay.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        404: error(
            "Unknown prediction, its input expired, or this task's explanations have no overlay."
        ),
        503: error("The model version that made the prediction is not available."),
    },
)
def explanation_png(
    project: ProjectDep,
    prediction_id: PredictionIdPath,
    target: str | None = Query(None, max_length=256, pattern=TEXT_PATTERN),
) -> Response:
    """The attribution map over the input as a PNG (images: at the input's own size)."""
    return Response(
        project.explanation_png(prediction_id, target),
        media_type="image/png",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )
