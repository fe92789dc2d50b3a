"""GET /v1/users; quarantine and release; privacy ledger; forget a user (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from flywheel.serving.deps import ProjectDep, RunnerDep, UserIdPath
from flywheel.serving.schemas import (
    BODY,
    KEYED,
    STRICT,
    TEXT_PATTERN,
    ForgetPublic,
    LedgerPublic,
    UserPublic,
    error,
    json_body,
)

__all__ = ["router"]

router = APIRouter(tags=["users"], responses=KEYED)


class QuarantineRequest(BaseModel):
    model_config = STRICT
    reason: str = Field(
        default="quarantined by an admin", min_length=1, max_length=500, pattern=TEXT_PATTERN
    )


@router.get("/v1/users", response_model=list[UserPublic])
def list_users(project: ProjectDep) -> JSONResponse:
    """Users with their trust, the counts behind it, contributions and quarantine."""
    return json_body(project.users())


@router.post(
    "/v1/users/{user_id}/quarantine",
    response_model=UserPublic,
    responses={**BODY, 404: error("Unknown user.")},
)
def quarantine_user(
    project: ProjectDep, user_id: UserIdPath, body: QuarantineRequest | None = None
) -> JSONResponse:
    """Hold the user's feedback back from training (kept, listed, reversible)."""
    return json_body(project.quarantine(user_id, (body or QuarantineRequest()).reason))


@router.delete(
    "/v1/users/{user_id}/quarantine",
    response_model=UserPublic,
    responses={404: error("Unknown user.")},
)
def release_user(project: ProjectDep, user_id: UserIdPath) -> JSONResponse:
    """Release the user; their held-back feedback is used by the next retrain."""
    return json_body(project.release(user_id))


@router.get(
    "/v1/users/{user_id}/privacy",
    response_model=LedgerPublic,
    responses={404: error("Unknown user.")},
)
def user_privacy(project: ProjectDep, user_id: UserIdPath) -> JSONResponse:
    """The user's privacy ledger: ε and δ spent across private runs, the runs, the budget."""
    return json_body(project.privacy_ledger(user_id)[0])


@router.get(
    "/v1/privacy/ledger",
    response_model=list[LedgerPublic],
)
def privacy_ledger(project: ProjectDep) -> JSONResponse:
    """Every user on the privacy ledger."""
    return json_body(project.privacy_ledger())


@router.delete(
    "/v1/users/{user_id}",
    response_model=ForgetPublic,
    responses={404: error("Unknown user.")},
)
def forget_user(runner: RunnerDep, user_id: UserIdPath) -> JSONResponse:
    """Forget a user (right to erasure). Answered once the erasure is committed: their
    predictions, feedback, examples, inputs and ledger rows are gone, every model version
    trained on their rows is out of service (in this process at once; in others within
    ``reload_interval_s``, as for any promotion). Retraining production without them
    runs as a job (``retrain_job``; null when production did not use their rows)."""
    return json_body(runner.forget(user_id))
