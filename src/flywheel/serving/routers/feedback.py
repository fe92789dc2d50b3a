"""POST /v1/feedback."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flywheel.feedback.records import FeedbackIn
from flywheel.serving.deps import MetricsDep, PredictorDep, require
from flywheel.serving.routers.predict import UserHeader
from flywheel.serving.schemas import BODY, KEYED, FeedbackCreate, FeedbackPublic, error

__all__ = ["router"]

router = APIRouter(tags=["feedback"], responses=KEYED)


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=FeedbackPublic,
    dependencies=[Depends(require("feedback"))],
    summary="Record a user's answer about a prediction (sent after the row is committed)",
    responses={
        **BODY,
        404: error("Unknown prediction."),
        422: error(
            "A malformed body, a label outside the model's labels, or a value out of range."
        ),
    },
)
async def create_feedback(
    predictor: PredictorDep, metrics: MetricsDep, body: FeedbackCreate, x_user_id: UserHeader = None
) -> FeedbackPublic:
    result = await predictor.feedback(
        FeedbackIn(body.prediction_id, body.label, body.correct, body.value, x_user_id)
    )
    metrics.feedback.labels(str(result.agreed).lower()).inc()
    return FeedbackPublic(feedback_id=result.feedback_id)
