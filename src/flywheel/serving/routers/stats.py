"""GET /v1/stats and /healthz."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flywheel.serving.deps import MetricsDep, ProjectDep
from flywheel.serving.schemas import KEYED, Health, MonitoringPublic, StatsPublic, json_body

__all__ = ["router"]

router = APIRouter(tags=["stats"])


@router.get(
    "/v1/stats",
    response_model=StatsPublic,
    responses=KEYED,
)
def read_stats(
    project: ProjectDep,
    minutes: int = Query(60, ge=1, le=7 * 24 * 60, description="Window of the per-minute counts."),
) -> JSONResponse:
    """Call frequency per model version, label and minute; feedback counts; accuracy per version."""
    return json_body(project.stats(minutes=minutes))


@router.get("/v1/monitoring", response_model=MonitoringPublic, responses=KEYED)
def read_monitoring(
    project: ProjectDep,
    limit: int = Query(100, ge=1, le=10_000, description="The newest windows to list."),
) -> JSONResponse:
    """Production's calls in windows of `drift_window`: each window's drift tests against
    the project's untrained rows (scores, calibrated thresholds, `alarm`) and its
    label-free accuracy estimate beside the accuracy its answers show so far. Windows
    are closed by the server's ticker (every `policy_check_s`)."""
    return json_body(project.monitoring(limit))


@router.get("/healthz", response_model=Health)
def read_health(project: ProjectDep, request: Request) -> Health:
    predictor = getattr(request.app.state, "predictor", None)
    serving = None if predictor is None else predictor.serving_version()
    return Health(
        status="ok", production_version=project.production_version(), serving_version=serving
    )


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
        },
        401: KEYED[401],
        403: KEYED[403],
        429: KEYED[429],
    },
)
def read_metrics(metrics: MetricsDep) -> Response:
    """Requests and latency per route, predictions per version and label, feedback."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
