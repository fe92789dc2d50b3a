"""GET /v1/users; quarantine and release; privacy ledger; forget a user (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from flywheel.serving.deps import ProjectDep, RunnerDep, require
from flywheel.serving.schemas import ForgetPublic, LedgerPublic, UserPublic, json_body

__all__ = ["router"]

router = APIRouter(tags=["users"])


class QuarantineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="quarantined by an admin", min_length=1, max_length=500)


@router.get("/v1/users", response_model=list[UserPublic], dependencies=[Depends(require("admin"))])
def list_users(project: ProjectDep) -> JSONResponse:
    """Users with their trust, the counts behind it, contributions and quarantine."""
    return json_body(project.users())


@router.post(
    "/v1/users/{user_id}/quarantine",
    response_model=UserPublic,
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "Unknown user."}},
)
def quarantine_user(
    project: ProjectDep, user_id: str, body: QuarantineRequest | None = None
) -> JSONResponse:
    """Hold the user's feedback back from training (kept, listed, reversible)."""
    return json_body(project.quarantine(user_id, (body or QuarantineRequest()).reason))


@router.delete(
    "/v1/users/{user_id}/quarantine",
    response_model=UserPublic,
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "Unknown user."}},
)
def release_user(project: ProjectDep, user_id: str) -> JSONResponse:
    """Release the user; their held-back feedback is used by the next retrain."""
    return json_body(project.release(user_id))


@router.get(
    "/v1/users/{user_id}/privacy",
    response_model=LedgerPublic,
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "Unknown user."}},
)
def user_privacy(project: ProjectDep, user_id: str) -> JSONResponse:
    """The user's privacy ledger: ε and δ spent across private runs, the runs, the budget."""
    return json_body(project.privacy_ledger(user_id)[0])


@router.get(
    "/v1/privacy/ledger",
    response_model=list[LedgerPublic],
    dependencies=[Depends(require("admin"))],
)
def privacy_ledger(project: ProjectDep) -> JSONResponse:
    """Every user on the privacy ledger."""
    return json_body(project.privacy_ledger())


@router.delete(
    "/v1/users/{user_id}",
    response_model=ForgetPublic,
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "Unknown user."}},
)
def forget_user(runner: RunnerDep, user_id: str) -> JSONResponse:
    """Forget a user (right to erasure). Answered once the erasure is committed: their
    predictions, feedback, examples, inputs and ledger rows are gone, every model version
    trained on their rows is out of service (in this process at once; in others within
    ``reload_interval_s``, as for any promotion). Retraining production without them
    runs as a job (``retrain_job``; null when production did not use their rows)."""
    return json_body(runner.forget(user_id))
