"""POST /v1/feedback."""

from __future__ import annotations

from fastapi import APIRouter, Request

from flywheel.feedback.records import FeedbackIn
from flywheel.serving.deps import MetricsDep, PredictorDep
from flywheel.serving.routers.predict import UserHeader
from flywheel.serving.schemas import BODY, KEYED, FeedbackCreate, FeedbackPublic, error
from flywheel.serving.scopes import caller

__all__ = ["router"]

router = APIRouter(tags=["feedback"], responses=KEYED)


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=FeedbackPublic,
    summary="Record a user's answer about a prediction (sent after the row is committed)",
    responses={
        **BODY,
        404: error(
            "Unknown prediction; without a key, also one made for another user (another "
            "X-User-Id, or one sent with none)."
        ),
        422: error(
            "A malformed body, a label outside the model's labels, or a value out of range."
        ),
    },
)
async def create_feedback(
    request: Request,
    predictor: PredictorDep,
    metrics: MetricsDep,
    body: FeedbackCreate,
    x_user_id: UserHeader = None,
) -> FeedbackPublic:
    """Without a key (a loopback server's open door) only about the caller's own
    predictions: those made with the same ``X-User-Id`` (or, sent with none, with none).
    A key with the ``feedback`` scope answers about any prediction."""
    only_own = caller(request).keyless
    result = await predictor.feedback(
        FeedbackIn(body.prediction_id, body.label, body.correct, body.value, x_user_id, only_own)
    )
    metrics.feedback.labels(str(result.agreed).lower()).inc()
    return FeedbackPublic(feedback_id=result.feedback_id)
