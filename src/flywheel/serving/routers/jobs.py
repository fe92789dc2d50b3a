"""GET /v1/jobs/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from flywheel.serving.deps import JobIdPath, ProjectDep
from flywheel.serving.schemas import KEYED, JobPublic, error

__all__ = ["router"]

router = APIRouter(tags=["jobs"], responses=KEYED)


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobPublic,
    responses={404: error("Unknown job.")},
)
def read_job(project: ProjectDep, job_id: JobIdPath) -> JobPublic:
    return JobPublic(**project.job(job_id))
