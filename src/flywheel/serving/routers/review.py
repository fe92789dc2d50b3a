"""GET /v1/review-queue: the predictions most worth a user's answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from flywheel.serving.deps import ProjectDep, require

__all__ = ["router"]

router = APIRouter(tags=["review"])


@router.get(
    "/v1/review-queue",
    dependencies=[Depends(require("feedback"))],
    summary="Unanswered predictions ranked by how much an answer would teach the model",
    responses={422: {"description": "Unknown strategy or a limit out of range."}},
)
def read_review_queue(
    project: ProjectDep,
    limit: int = Query(20, ge=1, le=500),
    strategy: str | None = Query(
        None, description="margin (default), entropy, least_confidence or random"
    ),
    spread: bool = Query(False, description="Spread picks across classes and near-duplicates."),
) -> dict[str, Any]:
    """Each item: prediction id, the model's top guesses, and why it was picked.

    Answer an item with `POST /v1/feedback`; it is recorded as queue feedback.
    """
    items = project.review_queue(limit=limit, strategy=strategy, spread=spread)
    return {"strategy": strategy or project.settings.review_strategy, "items": items}
