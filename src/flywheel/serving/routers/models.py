"""GET /v1/models, promote, rollback, retrain."""

from __future__ import annotations

from fastapi import APIRouter

from flywheel.registry import VersionInfo
from flywheel.serving.deps import ProjectDep, RunnerDep, VersionPath
from flywheel.serving.schemas import (
    BODY,
    KEYED,
    JobAccepted,
    ModelPublic,
    RetrainRequest,
    RollbackPublic,
    error,
)

__all__ = ["router"]

router = APIRouter(tags=["models"], responses=KEYED)


def _public(v: VersionInfo) -> ModelPublic:
    return ModelPublic(
        version=v.version,
        arch=v.arch,
        aliases=v.aliases,
        metrics=v.metrics,
        created_at=v.created_at.isoformat(),
        parent=v.parent,
        dataset_version=v.dataset_version,
        gate=v.gate,
        training_config=v.training_config,
    )


@router.get("/v1/models", response_model=list[ModelPublic])
def list_models(project: ProjectDep) -> list[ModelPublic]:
    return [_public(v) for v in project.models()]


@router.post(
    "/v1/models/{version}/promote",
    response_model=ModelPublic,
    responses={
        404: error("Unknown model version."),
        409: error("The version is out of service (withdrawn)."),
        503: error(
            "The version's files do not verify, or it failed its self-check: production is "
            "unchanged."
        ),
    },
)
def promote_model(project: ProjectDep, version: VersionPath) -> ModelPublic:
    # This worker serves it from the next request on (other workers: within
    # reload_interval_s).
    return _public(project.promote(version, reason="promoted through the API"))


@router.post(
    "/v1/rollback",
    response_model=RollbackPublic,
    responses={
        409: error("Nothing to roll back to."),
        503: error(
            "The version before does not verify, or failed its self-check: production is unchanged."
        ),
    },
)
def rollback_model(project: ProjectDep) -> RollbackPublic:
    old, new = project.rollback(reason="rolled back through the API")
    return RollbackPublic(from_version=old, to_version=new)


@router.post(
    "/v1/retrain",
    status_code=202,
    response_model=JobAccepted,
    summary="Curate feedback, train a challenger, gate it and promote it, as a background job",
    responses={**BODY, 409: error("A retrain with other options is already queued.")},
)
def create_retrain(runner: RunnerDep, body: RetrainRequest | None = None) -> JobAccepted:
    overrides = {} if body is None else body.model_dump(exclude_none=True)
    return JobAccepted(job_id=runner.submit_retrain(overrides))
