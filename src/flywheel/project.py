"""``Project``: the façade of the loop. The CLI, the HTTP routes and the dashboard are thin
shells around its verbs, each delegating to a service or a ``flywheel.loop`` workflow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flywheel.context import Context, PendingLog
from flywheel.data import Arrays, DatasetInfo, Source
from flywheel.errors import FlywheelError, ProjectError
from flywheel.feedback.records import FeedbackIn, FeedbackResult, PredictionResult
from flywheel.keys import SCOPES
from flywheel.loop import evaluate as evaluation
from flywheel.loop import forget as forgetting
from flywheel.loop import imports as importing
from flywheel.loop import retrain as retraining
from flywheel.loop import train as training
from flywheel.loop.services import Services
from flywheel.operations import Operations
from flywheel.registry import LoadedModel, VersionInfo
from flywheel.registry.cache import ModelCache
from flywheel.scale import batch as batching
from flywheel.settings import CONFIG_FILE, Settings, config_text, new_project_folder
from flywheel.store import BlobStore, Database
from flywheel.store.journal import Journal
from flywheel.tasks import Task, get_task
from flywheel.training import TrainConfig, model_spec, train_config

__all__ = ["SCOPES", "Project"]


class Project(Operations):
    """One flywheel project: a folder with ``flywheel.toml``, a database and blobs. Its
    verbs of running a service (keys, sessions, jobs, leases, webhooks): ``Operations``."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.project_dir / CONFIG_FILE).is_file():
            raise ProjectError(
                f"no flywheel project in {str(settings.project_dir)!r} (no {CONFIG_FILE}); "
                "create one with `flywheel init DIR --data digits|PATH`",
                path=settings.project_dir,
            )
        #: the stage services (for tests and extensions; shells use the verbs)
        self.services = Services.build(Context.open(settings))
        # Predictions a killed server acknowledged but had not committed yet.
        self.services.predictions.replay_journal()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def open(cls, project_dir: str | Path | None = None, **overrides: Any) -> Project:
        return cls(Settings.load(project_dir, **overrides))

    @classmethod
    def init(
        cls,
        project_dir: str | Path,
        source: Source,
        *,
        task: str = "image-classification",
        holdout_fraction: float = 0.2,
        seed: int = 0,
        settings: dict[str, Any] | None = None,
        on_example: Callable[[int], None] | None = None,
    ) -> Project:
        """Create a project folder and import ``source`` as dataset version 1."""
        get_task(task)
        root = Path(project_dir).expanduser().resolve()
        values = {"task": task, **getattr(source, "settings", {}), **(settings or {})}
        with new_project_folder(root, config_text(source.name, values)):
            project = cls(Settings.load(root))
            project.services.data.import_base(source, holdout_fraction, seed, on_example)
            training.check_arch(project.services, values.get("arch"))  # a plugin's, say
        return project

    def close(self) -> None:
        self.services.ctx.db.dispose()

    @property
    def settings(self) -> Settings:
        return self.services.ctx.settings

    @property
    def task(self) -> Task:
        return self.services.ctx.task

    @property
    def db(self) -> Database:
        return self.services.ctx.db

    @property
    def blobs(self) -> BlobStore:
        return self.services.ctx.blobs

    @property
    def cache(self) -> ModelCache:
        """The one model cache: production as served, swapped at every promotion."""
        return self.services.registry.cache

    @property
    def prediction_log(self) -> PendingLog | None:
        """A server's background log of predictions (readers wait for what it queued)."""
        return self.services.ctx.pending

    @prediction_log.setter
    def prediction_log(self, log: PendingLog | None) -> None:
        self.services.ctx.pending = log

    # -- data ---------------------------------------------------------------------------

    def dataset(self, version: int | None = None) -> DatasetInfo:
        return self.services.data.info(version)

    def datasets(self) -> list[DatasetInfo]:
        return self.services.data.versions()

    def dataset_arrays(self, split: str, config: TrainConfig | None = None) -> Arrays:
        """The newest version's rows of ``split``, decoded as the configured model reads them."""
        info, rows = self.services.data.newest_rows(split)
        spec = model_spec(self.task, info.preprocessing, info.labels, config or self.train_config())
        return self.services.data.arrays(rows, spec)

    # -- training, evaluation and the loop ------------------------------------------------

    def train_config(self, **overrides: Any) -> TrainConfig:
        return train_config(self.settings, **overrides)

    def train(
        self,
        config: TrainConfig | None = None,
        *,
        on_epoch: training.ProgressFn | None = None,
        reason: str = "train",
        resume: bool = False,
    ) -> training.TrainResult:
        """Train a challenger on the newest dataset version, gate it, promote if it passes."""
        c = config or self.train_config()
        return training.train(self.services, c, on_epoch=on_epoch, reason=reason, resume=resume)

    def has_interrupted_run(self) -> bool:
        return training.has_interrupted_run(self.services)

    def evaluate(
        self, version: int | None = None, *, source: Source | None = None
    ) -> dict[str, Any]:
        """Score a version (default: production) on the held-out split, or on ``source``."""
        return evaluation.evaluate(self.services, version, source=source)

    def find_label_issues(
        self, *, folds: int = 5, config: TrainConfig | None = None
    ) -> dict[str, Any]:
        """Likely mislabelled training rows of the newest dataset version (confident learning)."""
        return evaluation.label_issues(self.services, config or self.train_config(), folds=folds)

    def curate(self) -> tuple[DatasetInfo | None, dict[str, Any]]:
        """A new dataset version from the feedback not yet used (None when there is none)."""
        return retraining.curate(self.services)

    def retrain(
        self, config: TrainConfig | None = None, *, on_epoch: training.ProgressFn | None = None
    ) -> retraining.RetrainResult:
        """One turn of the loop: curate → train (warm start) → evaluate → gate → promote."""
        return retraining.retrain(self.services, config or self.train_config(), on_epoch=on_epoch)

    def export(
        self, version: int, out_dir: str | Path, *, quantize: str | None = None
    ) -> dict[str, Any]:
        """Write an ONNX bundle of ``version`` (runs with ONNX Runtime alone) and check it."""
        return self.services.export.export(version, out_dir, quantize=quantize)

    # -- serving: predictions and what users send ------------------------------------------

    def predict(self, content: bytes, *, user_id: str | None = None) -> PredictionResult:
        """Predict one input (the stored form of the task's input) and log the call."""
        return self.services.predictions.predict(content, user_id)

    def predict_batch(self, path: str | Path, **options: Any) -> batching.BatchReport:
        """Score a folder or manifest with production, each row logged as a served call is."""
        return batching.predict_batch(self.services, path, **options)

    def log_predictions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Commit predictions made elsewhere (the server's batched log) in one transaction."""
        self.services.predictions.log(rows)

    def prediction_journal(self) -> Journal:
        """Where a server's log rows wait on disk for their commit (the durable log)."""
        return self.services.predictions.journal()

    @property
    def scrubs_inputs(self) -> bool:
        return self.services.door.scrubs

    def at_the_door(self, content: bytes) -> bytes:
        """An input as it will be kept (text without personal data, images without metadata)."""
        return self.services.door.keep(content)

    def pseudonym(self, user_id: str | None) -> str | None:
        """The stored form of a raw user id (checked; None when absent)."""
        return self.services.identity.pseudonym(user_id)

    def serving_model(self) -> LoadedModel:
        return self.cache.current().loaded

    def stored_input(self, prediction_id: str) -> bytes:
        return self.services.predictions.stored_input(prediction_id)

    # -- feedback, users, explanations, monitoring ----------------------------------------

    def record_feedback(
        self,
        prediction_id: str,
        *,
        label: str | None = None,
        correct: bool | None = None,
        value: float | None = None,
        user_id: str | None = None,
    ) -> FeedbackResult:
        """Store a user's answer; returns only after the row is committed."""
        [r] = self.record_feedback_many([FeedbackIn(prediction_id, label, correct, value, user_id)])
        if isinstance(r, FlywheelError):
            raise r
        return r

    def record_feedback_many(
        self, items: Sequence[FeedbackIn]
    ) -> list[FeedbackResult | FlywheelError]:
        """Store many answers in one transaction; each bad one gets its error."""
        return self.services.feedback.record_many(items)

    def revise_feedback(self, external_ids: Sequence[str], **change: Any) -> dict[str, Any]:
        return self.services.revisions.revise(external_ids, **change)

    def review_queue(
        self, *, limit: int = 20, strategy: str | None = None, spread: bool = False, **more: Any
    ) -> list[dict[str, Any]]:
        """The predictions most worth an answer; ``more``: ``user_id`` (who asks), ``seed``."""
        return self.services.review.queue(limit=limit, strategy=strategy, spread=spread, **more)

    def users(self) -> list[dict[str, Any]]:
        return self.services.users.users()

    def update_trust(self) -> dict[str, dict[str, Any]]:
        return self.services.users.update_trust()

    def quarantine(self, user_id: str, reason: str = "quarantined by an admin") -> dict[str, Any]:
        """Hold back a user's feedback from training (kept, listed, reversible)."""
        return self.services.users.user(self.services.users.quarantine(user_id, reason))

    def release(self, user_id: str) -> dict[str, Any]:
        """Take a user out of quarantine; their held-back feedback is used by the next retrain."""
        return self.services.users.user(self.services.users.release(user_id))

    def explain(self, prediction_id: str, target: str | None = None) -> dict[str, Any]:
        """Why the model answered what it did (Captum), cached per input, version and target."""
        return self.services.explanations.explain(prediction_id, target)

    def explanation_png(self, prediction_id: str, target: str | None = None) -> bytes:
        return self.services.explanations.png(prediction_id, target)

    def stats(self, *, minutes: int = 60) -> dict[str, Any]:
        """Call frequency per version, label and minute; feedback; accuracy per version."""
        return self.services.monitoring.stats(minutes=minutes)

    def monitoring(self, limit: int = 100, *, update: bool = False) -> dict[str, Any]:
        """Drift windows, oldest first (``update``: close the windows due first)."""
        return self.services.drift.windows(limit, update=update)

    # -- the registry ---------------------------------------------------------------------

    def models(self) -> list[VersionInfo]:
        return self.services.registry.models()

    def version_info(self, version: int) -> VersionInfo:
        return self.services.registry.version(version)

    def production_version(self) -> int | None:
        return self.services.registry.production()

    def production_state(self, version: int | None = None) -> dict[str, Any]:
        return self.services.registry.production_state(version)

    def promote(self, version: int, reason: str = "manual promote") -> VersionInfo:
        """Point production at ``version``; it serves at once."""
        return self.services.registry.promote(version, reason)

    def rollback(self, reason: str = "manual rollback") -> tuple[int, int]:
        """Production back to the version it held before; (from, to)."""
        return self.services.registry.rollback(reason)

    def import_model(self, path: str | Path, **options: Any) -> importing.ImportResult:
        """Serve an ONNX model trained elsewhere as a version (``loop.imports.import_model``)."""
        return importing.import_model(self.services, path, **options)

    # -- privacy and user rights ----------------------------------------------------------

    def forget(
        self, user_id: str, *, retrain: bool = True, on_epoch: training.ProgressFn | None = None
    ) -> dict[str, Any]:
        """Erase a user (right to erasure) and every model trained on their rows."""
        return forgetting.forget(self.services, user_id, retrain=retrain, on_epoch=on_epoch)

    def retrain_after_forget(
        self, audit_id: int, *, on_epoch: training.ProgressFn | None = None
    ) -> dict[str, Any]:
        return forgetting.retrain_after_forget(self.services, audit_id, on_epoch=on_epoch)

    def privacy_ledger(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Each user's cumulative ε and δ across private runs (or one user's)."""
        return self.services.privacy.ledger(user_id)

    def audit_log(self, action: str | None = None) -> list[dict[str, Any]]:
        return self.services.privacy.audit_log(action)

    def apply_retention(self, days: float | None = None) -> dict[str, Any]:
        """Delete stored inputs of predictions older than ``days`` (default: retention_days)."""
        return self.services.privacy.apply_retention(days)

    def rotate_user_key(self) -> dict[str, Any]:
        """Append a key to the user-id chain and re-key every stored user."""
        return self.services.identity.rotate()

    def reload_user_key(self) -> bool:
        """Pick up a key rotation made by another process; True when the chain changed."""
        return self.services.identity.reload()
