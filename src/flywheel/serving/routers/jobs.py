"""GET /v1/jobs/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from flywheel.serving.deps import ProjectDep, require
from flywheel.serving.schemas import JobPublic

__all__ = ["router"]

router = APIRouter(tags=["jobs"])


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobPublic,
    dependencies=[Depends(require("admin"))],
    responses={404: {"description": "Unknown job."}},
)
def read_job(project: ProjectDep, job_id: str) -> JobPublic:
    return JobPublic(**project.job(job_id))
