"""POST /v1/feedback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from flywheel.feedback.records import (
    IDEMPOTENCY_KEY_MAX,
    FeedbackIn,
    idempotency_id,
    idempotency_key,
)
from flywheel.serving.deps import MetricsDep, PredictorDep, ProjectDep
from flywheel.serving.routers.predict import UserHeader
from flywheel.serving.schemas import BODY, KEYED, FeedbackCreate, FeedbackPublic, error
from flywheel.serving.scopes import Caller, caller

__all__ = ["router"]

router = APIRouter(tags=["feedback"], responses=KEYED)

#: the response header of an answer replayed from an earlier request with the same key
REPLAYED = "Idempotent-Replayed"

IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A key of the client's choosing (a UUID is usual; 1 to "
        f"{IDEMPOTENCY_KEY_MAX} printable ASCII characters without spaces, bare or quoted) "
        "that makes the request safe to retry: the same key with the same body is answered "
        f"with the answer stored the first time (201, the same `feedback_id`, `{REPLAYED}: "
        "true`) and stores nothing; with another body, 409. Keys are kept per API key "
        "name (a keyless caller: per `X-User-Id`), as long as the answer is.",
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ),
]


def _scope(project: ProjectDep, who: Caller, user_id: str | None) -> str:
    """Whose keys an ``Idempotency-Key`` is among: the API key's name, or a keyless
    caller's pseudonym (loopback callers without a key tell users apart by X-User-Id)."""
    if who.key is not None:
        return f"key:{who.key}"
    return f"user:{project.pseudonym(user_id) or ''}"


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=FeedbackPublic,
    summary="Record a user's answer about a prediction (sent after the row is committed)",
    responses={
        **BODY,
        201: {
            "description": "Stored (or, with an Idempotency-Key sent before with the same "
            "body, stored before: the same feedback_id).",
            "headers": {
                REPLAYED: {
                    "description": "`true` when the answer is the one stored by an earlier "
                    "request with the same Idempotency-Key.",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            },
        },
        404: error(
            "Unknown prediction; without a key, also one made for another user (another "
            "X-User-Id, or one sent with none)."
        ),
        409: error("The Idempotency-Key was sent before with another body."),
        422: error(
            "A malformed body or Idempotency-Key, a label outside the model's labels, or a "
            "value out of range."
        ),
    },
)
async def create_feedback(
    request: Request,
    response: Response,
    project: ProjectDep,
    predictor: PredictorDep,
    metrics: MetricsDep,
    body: FeedbackCreate,
    x_user_id: UserHeader = None,
    idempotency: IdempotencyHeader = None,
) -> FeedbackPublic:
    """Without a key (a loopback server's open door) only about the caller's own
    predictions: those made with the same ``X-User-Id`` (or, sent with none, with none).
    A key with the ``feedback`` scope answers about any prediction."""
    who = caller(request)
    external_id = None
    if idempotency is not None:
        external_id = idempotency_id(idempotency_key(idempotency), _scope(project, who, x_user_id))
    result = await predictor.feedback(
        FeedbackIn(
            body.prediction_id,
            body.label,
            body.correct,
            body.value,
            x_user_id,
            only_own=who.keyless,
            external_id=external_id,
        )
    )
    if result.replayed:
        response.headers[REPLAYED] = "true"
    else:
        metrics.feedback.labels(str(result.agreed).lower()).inc()
    return FeedbackPublic(feedback_id=result.feedback_id)
