"""Label Studio's ML backend: /label-studio/health, setup, versions, predict, webhook,
train (the URL Label Studio is given is ``http://HOST:PORT/label-studio``).

Label Studio sends a key as HTTP Basic's password (its ML backend connection) or a
bearer key (a webhook created with an Authorization header); never without one. Its
auto-created webhook to ``/webhook`` carries no header and is refused (401): give it
``Authorization: Bearer <feedback key>`` (README "Label Studio").

- ``/predict`` logs each task's prediction as ``/v1/predict`` does (batched, through the
  app's predictor) and answers a pre-annotation whose result id is the prediction id,
  and whose score is the review queue's priority (lower: ask sooner).
- ``/webhook``: ANNOTATION_CREATED (and the bulk ANNOTATIONS_CREATED) stores the
  annotation as feedback from its annotator (user ``label-studio:<user id>``, hashed as
  any user id), kept under ``label-studio:<project id>:<annotation id>``; about the
  prediction its result (or parent prediction) names, else a prediction made then from
  the task's data. ANNOTATION_UPDATED changes that answer, ANNOTATIONS_DELETED (or an
  update that leaves no answer, or skips the task) withdraws it
  (``flywheel.feedback.revisions``). START_TRAINING (an admin key) queues a retrain, as
  ``/train`` (Label Studio's older path) and ``POST /v1/retrain`` do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from flywheel.errors import ConflictError, InputError, NotFoundError
from flywheel.feedback.records import FeedbackIn, FeedbackResult
from flywheel.project import Project
from flywheel.serving.deps import MetricsDep, PredictorDep, ProjectDep, RunnerDep
from flywheel.serving.jobs import JobRunner
from flywheel.serving.label_studio import (
    LabelConfig,
    Media,
    is_id,
    model_version,
    parse_config,
    pre_annotation,
    prediction_ids,
    queue_score,
    read_answer,
)
from flywheel.serving.metrics import Metrics
from flywheel.serving.predictor import Predictor
from flywheel.serving.schemas import BODY, KEYED, error
from flywheel.serving.scopes import caller

__all__ = ["router"]

router = APIRouter(prefix="/label-studio", tags=["label-studio"], responses={**KEYED, **BODY})

#: Label Studio's events that carry nothing flywheel learns from
IGNORED = {
    "PROJECT_CREATED",
    "PROJECT_UPDATED",
    "PROJECT_DELETED",
    "TASKS_CREATED",
    "TASKS_DELETED",
    "LABEL_LINK_CREATED",
    "LABEL_LINK_UPDATED",
    "LABEL_LINK_DELETED",
}
HANDLED = (
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "START_TRAINING",
)
#: tasks fetched from Label Studio and predicted at once, per request
FETCHES = 16


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class SetupRequest(_Loose):
    """What Label Studio sends when it connects (its access token is not kept)."""

    project: str | None = Field(default=None, description="Label Studio's '<id>.<created>'.")
    label_config: str = Field(alias="schema", description="The project's labelling config.")


class PredictRequest(_Loose):
    tasks: list[dict[str, Any]] = Field(max_length=10_000, description="Tasks: id, data.")
    label_config: str = Field(description="The project's labelling config.")
    project: str | None = None


class TrainRequest(_Loose):
    annotations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Label Studio's annotated tasks: not read (flywheel trains on the "
        "feedback its webhook stored).",
    )


class WebhookEvent(_Loose):
    action: str = Field(description=f"One of {', '.join(HANDLED)}; others are ignored or refused.")


def _media(request: Request, project: Project) -> Media:
    """The app's one media reader (it keeps an exchanged access token)."""
    media: Media | None = getattr(request.app.state, "label_studio_media", None)
    if media is None:
        media = request.app.state.label_studio_media = Media(project.settings)
    return media


def _columns(project: Project) -> list[str]:
    if not project.task.is_regression:
        return []
    return list(project.dataset().preprocessing.get("columns") or [])


def _config(xml: str, project: Project, predictor: Predictor) -> LabelConfig:
    """The labelling config, checked against the model in service: every model label
    must be one of its choices (extra choices are fine; answers with them are refused)."""
    cfg = parse_config(xml, project.task)
    labels = list(predictor.backend.labels)
    missing = [label for label in labels if label not in cfg.choices]
    if cfg.kind == "choices" and missing:
        raise InputError(
            f"the labelling config's <Choices name={cfg.control!r}> lacks the model's labels "
            f'{missing}: add each as <Choice value="..."/> (the model\'s labels: {labels})'
        )
    return cfg


class HealthPublic(BaseModel):
    status: str
    model_class: str
    model_version: str | None


class SetupPublic(BaseModel):
    model_version: str


class VersionsPublic(BaseModel):
    versions: list[str]


class PreAnnotation(BaseModel):
    result: list[dict[str, Any]] = Field(
        description="One region: {id (the prediction's), from_name, to_name, type, value}."
    )
    score: float | None = Field(
        description="1 - the review queue's priority: lowest asks first (None: regression)."
    )
    model_version: str


class PredictionsPublic(BaseModel):
    results: list[PreAnnotation]


class TrainingPublic(BaseModel):
    job: str = Field(description="The retrain job's id, where Label Studio keeps it.")
    job_id: str
    status: str


class EventPublic(BaseModel):
    """What an event did (the fields of its kind)."""

    action: str
    ignored: bool | None = None
    job: str | None = None
    job_id: str | None = None
    status: str | None = None
    annotations: list[dict[str, Any]] | None = Field(
        default=None, description="Per annotation: stored, changed or withdrawn, and its ids."
    )
    withdrawn: int | None = None
    unknown: int | None = None
    dataset_version: int | None = None


@router.get("/health", summary="Label Studio's connection check", response_model=HealthPublic)
@router.post(
    "/health",
    summary="Label Studio's connection check",
    response_model=HealthPublic,
    include_in_schema=False,
)
async def read_health(project: ProjectDep, predictor: PredictorDep) -> dict[str, Any]:
    version = predictor.serving_version()
    return {
        "status": "UP",
        "model_class": f"flywheel ({project.task.name})",
        "model_version": None if version is None else model_version(version),
    }


@router.post(
    "/setup",
    response_model=SetupPublic,
    summary="Connect a Label Studio project: its labelling config is checked",
    responses={
        422: error("A labelling config flywheel's model cannot answer."),
        503: error("No production model yet."),
    },
)
async def create_setup(
    body: SetupRequest, project: ProjectDep, predictor: PredictorDep
) -> dict[str, Any]:
    _config(body.label_config, project, predictor)
    return {"model_version": model_version(predictor.backend.version)}


@router.get(
    "/versions",
    summary="The model versions, as Label Studio names them",
    response_model=VersionsPublic,
)
def list_versions(project: ProjectDep) -> dict[str, Any]:
    return {"versions": [model_version(v.version) for v in project.models()]}


@router.post(
    "/predict",
    response_model=PredictionsPublic,
    summary="Pre-annotations: one logged prediction per task, in order",
    responses={
        415: error("A task's file is not of a type the model takes."),
        422: error("A task without the config's data key, media off Label Studio, a bad config."),
        503: error("No production model yet."),
    },
)
async def create_predictions(
    request: Request,
    body: PredictRequest,
    project: ProjectDep,
    predictor: PredictorDep,
    metrics: MetricsDep,
) -> dict[str, Any]:
    cfg = _config(body.label_config, project, predictor)
    media, columns = _media(request, project), request.app.state.columns
    # Every task is checked before anything is fetched or predicted; then a few at a time
    # are fetched and predicted (Label Studio sends all the tasks it wants predicted at
    # once: their media are not all held at once).
    found = [media.locate(cfg, t, project.task, columns) for t in body.tasks]
    results = []
    async with media.client() as client:
        for i in range(0, len(found), FETCHES):
            part = found[i : i + FETCHES]
            contents = await asyncio.gather(*(media.read(client, project.task, w) for w in part))
            results += await asyncio.gather(*(predictor.predict(c, None) for c in contents))
    st = project.settings
    out = []
    for r in results:
        metrics.predictions.labels(str(r.model_version), r.label or "value").inc()
        score = queue_score(r.probabilities, st.review_strategy, st.seed, r.prediction_id)
        out.append(pre_annotation(cfg, r, score))
    return {"results": out}


@router.post(
    "/train",
    status_code=200,
    response_model=TrainingPublic,
    summary="Label Studio's Start Training (its older path): queue a retrain",
    responses={409: error("A retrain with other options is already queued.")},
)
def create_training(runner: RunnerDep, body: TrainRequest | None = None) -> dict[str, Any]:
    return _retrain(runner)


def _retrain(runner: JobRunner) -> dict[str, Any]:
    job_id = runner.submit_retrain({}, trigger="label-studio")
    # Label Studio keeps ``job`` as its training job's id; flywheel's clients read job_id.
    return {"job": job_id, "job_id": job_id, "status": "queued"}


@dataclass
class _Event:
    """One webhook call: what each annotation needs to become feedback."""

    project: Project
    predictor: Predictor
    metrics: Metrics
    media: Media
    cfg: LabelConfig
    ls_project: Any


@router.post(
    "/webhook",
    response_model=EventPublic,  # documents the answer; the fields of its kind are sent
    summary="Label Studio's events: annotations become feedback; Start Training retrains",
    responses={
        403: error("START_TRAINING with a key that is not an admin's."),
        404: error("An annotation about a prediction that is gone."),
        409: error("A retrain with other options is already queued."),
        415: error("A task's file (predicted when no prediction is named) of another type."),
        422: error("An unknown event, a malformed annotation, a label outside the model's."),
        503: error("No production model yet."),
    },
)
async def receive_event(
    request: Request,
    body: WebhookEvent,
    project: ProjectDep,
    predictor: PredictorDep,
    metrics: MetricsDep,
    runner: RunnerDep,
) -> JSONResponse:
    return JSONResponse(await _receive(request, body, project, predictor, metrics, runner))


async def _receive(
    request: Request,
    body: WebhookEvent,
    project: Project,
    predictor: Predictor,
    metrics: Metrics,
    runner: JobRunner,
) -> dict[str, Any]:
    payload = body.model_dump()
    action = body.action
    if action in IGNORED:
        return {"action": action, "ignored": True}
    if action not in HANDLED:
        raise InputError(
            f"unknown Label Studio event {action!r}: flywheel takes {', '.join(HANDLED)} "
            f"(and ignores {', '.join(sorted(IGNORED))})"
        )
    if action == "START_TRAINING":
        who = caller(request)
        if "admin" not in who.scopes:
            raise HTTPException(
                403,
                f"START_TRAINING starts a retrain: it needs an admin key; {who.key!r} "
                f"holds {', '.join(who.scopes)}",
            )
        return {"action": action, **_retrain(runner)}
    ls_project = payload.get("project")
    if not isinstance(ls_project, dict) or not is_id(ls_project.get("id")):
        raise InputError(
            f"{action} came without its project: create the webhook with send_payload on"
        )
    if action == "ANNOTATIONS_DELETED":
        return {"action": action, **await _withdraw(project, ls_project["id"], payload)}
    cfg = _config(str(ls_project.get("label_config", "")), project, predictor)
    event = _Event(project, predictor, metrics, _media(request, project), cfg, ls_project["id"])
    pairs = _annotations(action, payload)
    answers = [_answer(event, ann) for ann, _ in pairs]  # all checked before any is stored
    async with event.media.client() as client:
        done = [
            await _store(event, client, ann, task, answer, updated=action == "ANNOTATION_UPDATED")
            for (ann, task), answer in zip(pairs, answers, strict=True)
        ]
    return {"action": action, "annotations": done}


def _annotations(action: str, payload: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """(annotation, task) of each annotation an event carries."""
    anns, tasks = payload.get("annotation"), payload.get("task")
    if action == "ANNOTATIONS_CREATED":  # the bulk form: two lists, in the same order
        if not isinstance(anns, list) or not isinstance(tasks, list) or len(anns) != len(tasks):
            raise InputError(
                "ANNOTATIONS_CREATED needs lists 'annotation' and 'task' of one length"
            )
        pairs = list(zip(anns, tasks, strict=True))
    else:
        pairs = [(anns, tasks)]
    for ann, _ in pairs:
        if not isinstance(ann, dict) or not is_id(ann.get("id")):
            raise InputError(
                f"{action} needs each 'annotation' to be an object with an integer 'id'"
            )
    return pairs


def _external_id(ls_project: Any, annotation: Any) -> str:
    return f"label-studio:{ls_project}:{annotation}"


def _answer(event: _Event, ann: dict[str, Any]) -> str | float | None:
    """The annotation's answer (None: none, or the task was skipped), checked against
    the model's labels."""
    if ann.get("was_cancelled"):
        return None
    answer = read_answer(event.cfg, ann.get("result"))
    labels = list(event.predictor.backend.labels)
    if isinstance(answer, str) and answer not in labels:
        raise InputError(
            f"annotation {ann['id']}'s label {answer!r} is not one of the model's labels: "
            f"{', '.join(labels)}"
        )
    return answer


async def _store(
    event: _Event,
    client: Any,
    ann: dict[str, Any],
    task: Any,
    answer: str | float | None,
    *,
    updated: bool,
) -> dict[str, Any]:
    """Store, change or withdraw one annotation's answer."""
    key = _external_id(event.ls_project, ann["id"])
    out: dict[str, Any] = {"annotation": ann["id"], "external_id": key}
    if answer is None:
        if not updated:
            return out | {"stored": False, "why": f"no answer for {event.cfg.control!r}"}
        revised = await run_in_threadpool(event.project.revise_feedback, [key], withdraw=True)
        return out | {"withdrawn": bool(revised["revised"])}
    label, value = (answer, None) if isinstance(answer, str) else (None, answer)
    if updated and (changed := await _change(event, key, label, value)) is not None:
        return out | changed
    who = ann.get("completed_by")
    user = f"label-studio:{who}" if is_id(who) else None  # None: deleted in Label Studio
    # The prediction it answers: named by its result (copied from the pre-annotation), by
    # the prediction Label Studio showed (when the project's model version is flywheel's),
    # or by its parent prediction (asked of Label Studio).
    shown = ann.get("prediction")
    ids = (
        prediction_ids(ann.get("result"))
        or prediction_ids(shown.get("result") if isinstance(shown, dict) else None)
        or await event.media.prediction_ids(client, ann.get("parent_prediction"))
    )
    try:
        result = await _answer_prediction(event, client, ids[:1], task, label, value, user, key)
    except ConflictError:  # stored before with another answer: a created event sent again
        if (changed := await _change(event, key, label, value)) is None:
            raise
        return out | changed
    if not result.replayed:
        event.metrics.feedback.labels(str(result.agreed).lower()).inc()
    return out | {
        "stored": True,
        "feedback_id": result.feedback_id,
        "prediction_id": result.prediction_id,
        "replayed": result.replayed,
    }


async def _change(
    event: _Event, key: str, label: str | None, value: float | None
) -> dict[str, Any] | None:
    """Change the answer kept under ``key``; None when there is none."""
    revised = await run_in_threadpool(
        event.project.revise_feedback, [key], label=label, value=value
    )
    if not revised["revised"]:
        return None
    return {
        "stored": True,
        "changed": True,
        "feedback_id": revised["revised"][key],
        "dataset_version": revised["dataset_version"],
    }


async def _answer_prediction(
    event: _Event,
    client: Any,
    ids: list[str],
    task: Any,
    label: str | None,
    value: float | None,
    user: str | None,
    key: str,
) -> FeedbackResult:
    """The answer, about the named prediction if flywheel knows it, else about one made
    now from the task's data."""
    for pid in ids:
        try:
            return await event.predictor.feedback(
                FeedbackIn(pid, label, None, value, user, external_id=key)
            )
        except NotFoundError:
            pass  # not flywheel's (or forgotten): predict again
    columns = await run_in_threadpool(_columns, event.project)
    content = await event.media.task_input(client, event.cfg, task, event.project.task, columns)
    made = await event.predictor.predict(content, None)
    return await event.predictor.feedback(
        FeedbackIn(made.prediction_id, label, None, value, user, external_id=key)
    )


async def _withdraw(project: Project, ls_project: int, payload: dict[str, Any]) -> dict[str, Any]:
    anns = payload.get("annotations")
    if not isinstance(anns, list) or not all(
        isinstance(a, dict) and is_id(a.get("id")) for a in anns
    ):
        raise InputError("ANNOTATIONS_DELETED needs 'annotations': a list of {\"id\": <int>}")
    keys = [_external_id(ls_project, a["id"]) for a in anns]
    revised = await run_in_threadpool(project.revise_feedback, keys, withdraw=True)
    return {
        "withdrawn": len(revised["revised"]),
        "unknown": len(revised["missing"]),
        "dataset_version": revised["dataset_version"],
    }
