"""GET /v1/users; quarantine and release (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from flywheel.serving.deps import ProjectDep, require

__all__ = ["router"]

router = APIRouter(tags=["users"])


class QuarantineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="quarantined by an admin", min_length=1, max_length=500)


@router.get("/v1/users", dependencies=[Depends(require("admin"))])
def list_users(project: ProjectDep) -> list[dict[str, Any]]:
    """Users with their trust, the counts behind it, contributions and quarantine."""
    return project.users()


@router.post(
    "/v1/users/{user_id}/quarantine",
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "Unknown user."}},
)
def quarantine_user(
    project: ProjectDep, user_id: str, body: QuarantineRequest | None = None
) -> dict[str, Any]:
    """Hold the user's feedback back from training (kept, listed, reversible)."""
    return project.quarantine(user_id, (body or QuarantineRequest()).reason)


@router.delete(
    "/v1/users/{user_id}/quarantine",
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "Unknown user."}},
)
def release_user(project: ProjectDep, user_id: str) -> dict[str, Any]:
    """Release the user; their held-back feedback is used by the next retrain."""
    return project.release(user_id)
