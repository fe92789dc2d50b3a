"""GET /v1/stats and /healthz."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from flywheel.serving.deps import ProjectDep, require
from flywheel.serving.schemas import Health

__all__ = ["router"]

router = APIRouter(tags=["stats"])


@router.get("/v1/stats", dependencies=[Depends(require("read"))])
def read_stats(
    project: ProjectDep,
    minutes: int = Query(60, ge=1, le=7 * 24 * 60, description="Window of the per-minute counts."),
) -> dict[str, Any]:
    """Call frequency per model version, label and minute; feedback counts; accuracy per version."""
    return project.stats(minutes=minutes)


@router.get("/healthz", response_model=Health)
def read_health(project: ProjectDep) -> Health:
    return Health(status="ok", production_version=project.production_version())
