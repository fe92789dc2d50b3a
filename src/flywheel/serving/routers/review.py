"""POST /v1/review-queue: hand out the predictions most worth a user's answer.

Handing items out writes: each item is recorded (so that an answer to it counts as
queue feedback) and golden probes are made among them. That is why the verb is POST;
``GET`` answers the same for clients written before, and is marked deprecated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from flywheel.serving.deps import ProjectDep
from flywheel.serving.routers.predict import UserHeader
from flywheel.serving.schemas import KEYED, ReviewQueuePublic, error, json_body

__all__ = ["router"]

router = APIRouter(tags=["review"], responses=KEYED)

ROUTE: dict[str, Any] = {
    "response_model": ReviewQueuePublic,
    "summary": "Unanswered predictions ranked by how much an answer would teach the model",
    "description": "Each item: prediction id, the model's top guesses, and why it was "
    "picked. Every item handed out is recorded, and a share of them are golden probes "
    "(inputs whose label is known, which measure answerers' trust). Answer an item with "
    "`POST /v1/feedback`; it is recorded as queue feedback. Send the answering user's "
    "`X-User-Id`: a new user then gets golden probes early (up to half the items until "
    "`golden_early` are answered), a known one second opinions on inputs another user "
    "answered alone (`second_opinion_share`), so that every user's answers overlap with "
    "something checkable.",
    "responses": {
        422: error(
            "A malformed query or X-User-Id, an unknown strategy, a limit out of range, "
            "or a regression project (nothing to rank)."
        ),
        503: error("No production model yet (the golden probes need it)."),
    },
}


@dataclass(frozen=True)
class QueueQuery:
    limit: int
    strategy: str | None
    spread: bool


def _query(
    limit: int = Query(20, ge=1, le=500),
    strategy: str | None = Query(
        None, description="margin (default), entropy, least_confidence or random"
    ),
    spread: bool = Query(False, description="Spread picks across classes and near-duplicates."),
) -> QueueQuery:
    return QueueQuery(limit, strategy, spread)


Params = Annotated[QueueQuery, Depends(_query)]


def _hand_out(project: ProjectDep, q: QueueQuery, user: str | None) -> JSONResponse:
    items = project.review_queue(limit=q.limit, strategy=q.strategy, spread=q.spread, user_id=user)
    strategy = q.strategy or project.settings.review_strategy
    return json_body({"strategy": strategy, "items": items})


@router.post("/v1/review-queue", **ROUTE)
def create_review_batch(
    project: ProjectDep, q: Params, x_user_id: UserHeader = None
) -> JSONResponse:
    return _hand_out(project, q, x_user_id)


@router.get("/v1/review-queue", deprecated=True, **ROUTE)
def read_review_queue(project: ProjectDep, q: Params, x_user_id: UserHeader = None) -> JSONResponse:
    """Deprecated: the same as ``POST /v1/review-queue``, which it writes like."""
    return _hand_out(project, q, x_user_id)
