"""GET /v1/jobs (with the retrain policy's state) and GET /v1/jobs/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Query

from flywheel.serving.deps import JobIdPath, ProjectDep
from flywheel.serving.schemas import (
    KEYED,
    JobPublic,
    JobsPublic,
    RetrainPolicyPublic,
    WebhookDeliveryPublic,
    error,
)

__all__ = ["router"]

router = APIRouter(tags=["jobs"], responses=KEYED)


@router.get("/v1/jobs", response_model=JobsPublic)
def list_jobs(
    project: ProjectDep,
    limit: int = Query(50, ge=1, le=1000, description="How many of the newest jobs."),
) -> JobsPublic:
    """Jobs, newest first (status, trigger, times, result), and the retrain policy."""
    _, policy = project.retrain_policy()
    return JobsPublic(
        jobs=[JobPublic(**j) for j in project.jobs(limit)], policy=RetrainPolicyPublic(**policy)
    )


@router.get("/v1/webhooks/deliveries", response_model=list[WebhookDeliveryPublic])
def webhook_deliveries(
    project: ProjectDep,
    limit: int = Query(50, ge=1, le=1000, description="How many of the newest."),
) -> list[WebhookDeliveryPublic]:
    """Every webhook delivery, newest first: its event, status, attempts, last error."""
    return [WebhookDeliveryPublic(**d) for d in project.webhook_deliveries(limit)]


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobPublic,
    responses={404: error("Unknown job.")},
)
def read_job(project: ProjectDep, job_id: JobIdPath) -> JobPublic:
    return JobPublic(**project.job(job_id))
