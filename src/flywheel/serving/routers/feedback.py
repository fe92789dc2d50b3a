"""POST /v1/feedback."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flywheel.serving.deps import MetricsDep, ProjectDep, require
from flywheel.serving.routers.predict import UserHeader
from flywheel.serving.schemas import FeedbackCreate, FeedbackPublic

__all__ = ["router"]

router = APIRouter(tags=["feedback"])


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=FeedbackPublic,
    dependencies=[Depends(require("feedback"))],
    summary="Record a user's answer about a prediction (sent after the row is committed)",
    responses={
        404: {"description": "Unknown prediction."},
        422: {"description": "Malformed body, or a label outside the model's labels."},
    },
)
def create_feedback(
    project: ProjectDep, metrics: MetricsDep, body: FeedbackCreate, x_user_id: UserHeader = None
) -> FeedbackPublic:
    result = project.record_feedback(
        body.prediction_id,
        label=body.label,
        correct=body.correct,
        value=body.value,
        user_id=x_user_id,
    )
    metrics.feedback.labels(str(result.agreed).lower()).inc()
    return FeedbackPublic(feedback_id=result.feedback_id)
