"""The stage services of one project, built once over one context.

Each service owns its stage's persistence (each public method commits what it writes
in one transaction; some read through another service, such as the model cache); the
workflows of this package order the steps that cross services and transactions; the
façade delegates to both.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.context import Context
from flywheel.data.service import DatasetService
from flywheel.drift.service import DriftService
from flywheel.evaluation.service import MonitoringService
from flywheel.events.service import EventService
from flywheel.explain.service import ExplainService
from flywheel.export.service import ExportService
from flywheel.feedback.predictions import PredictionLog
from flywheel.feedback.review import ReviewService
from flywheel.feedback.revisions import RevisionService
from flywheel.feedback.service import FeedbackService
from flywheel.feedback.users import UserService
from flywheel.jobs.service import JobService
from flywheel.keys.service import KeyService
from flywheel.privacy.door import Door
from flywheel.privacy.identity import IdentityService
from flywheel.privacy.service import PrivacyService
from flywheel.registry.service import RegistryService

__all__ = ["Services"]


@dataclass(frozen=True)
class Services:
    ctx: Context
    identity: IdentityService
    door: Door
    data: DatasetService
    registry: RegistryService
    privacy: PrivacyService
    feedback: FeedbackService
    revisions: RevisionService
    users: UserService
    predictions: PredictionLog
    review: ReviewService
    monitoring: MonitoringService
    drift: DriftService
    export: ExportService
    explanations: ExplainService
    keys: KeyService
    jobs: JobService
    events: EventService

    @classmethod
    def build(cls, ctx: Context) -> Services:
        identity = IdentityService(ctx)
        door = Door(ctx.settings, ctx.task)
        data = DatasetService(ctx, identity, door)
        registry = RegistryService(ctx)
        return cls(
            ctx=ctx,
            identity=identity,
            door=door,
            data=data,
            registry=registry,
            privacy=PrivacyService(ctx, identity),
            feedback=FeedbackService(ctx, identity),
            revisions=RevisionService(ctx),
            users=UserService(ctx, identity),
            predictions=PredictionLog(ctx, identity, door, registry.cache),
            review=ReviewService(ctx, registry.cache, identity),
            monitoring=MonitoringService(ctx),
            drift=DriftService(ctx, registry, data),
            export=ExportService(ctx, registry, data),
            explanations=ExplainService(ctx, registry.cache),
            keys=KeyService(ctx),
            jobs=JobService(ctx),
            events=EventService(ctx),
        )
