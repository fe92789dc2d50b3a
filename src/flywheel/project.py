"""``Project``: the verbs of the loop. The CLI and the HTTP routes are thin shells around it."""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from torch import nn

from flywheel import registry
from flywheel.data import (
    HOLDOUT,
    TRAIN,
    Arrays,
    ImagePreprocessing,
    Source,
    assign_splits,
    content_hash,
    decode_image,
    infer_preprocessing,
    load_arrays,
    probe,
)
from flywheel.errors import (
    AuthError,
    DataError,
    FlywheelError,
    InputError,
    ModelError,
    NotFoundError,
    ProjectError,
    RegistryError,
)
from flywheel.evaluation import GateDecision, classification_report, decide
from flywheel.feedback import Answer, curate
from flywheel.models import ModelSpec, create_model, default_hparams
from flywheel.registry import VersionInfo, load_artifact, save_artifact
from flywheel.settings import CONFIG_FILE, Settings
from flywheel.store import BlobStore, Database, ensure_user
from flywheel.store.schema import (
    ApiKey,
    DatasetVersion,
    DatasetVersionExample,
    Example,
    Feedback,
    Job,
    ModelVersion,
    Prediction,
    utcnow,
)
from flywheel.training import EpochReport, TrainConfig, fit, predict_proba, seed_everything

__all__ = [
    "SCOPES",
    "DatasetInfo",
    "FeedbackResult",
    "LoadedModel",
    "PredictionResult",
    "Project",
    "RetrainResult",
    "TrainResult",
]

TASK = "image-classification"
SCOPES = ("predict", "feedback", "admin")
USER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")

ProgressFn = Callable[[EpochReport], None]
ImportProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class DatasetInfo:
    version: int
    content_hash: str
    parent: int | None
    n_train: int
    n_holdout: int
    n_feedback: int
    labels: list[str]
    skipped: list[dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "content_hash": self.content_hash,
            "parent": self.parent,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "n_feedback": self.n_feedback,
            "labels": self.labels,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class TrainResult:
    model: VersionInfo
    decision: GateDecision
    promoted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model.version,
            "dataset_version": self.model.dataset_version,
            "accuracy": self.decision.challenger_accuracy,
            "champion_accuracy": self.decision.champion_accuracy,
            "champion_version": self.decision.champion_version,
            "promoted": self.promoted,
            "reason": self.decision.reason,
            "mcnemar": self.decision.mcnemar,
            "metrics": self.model.metrics,
        }


@dataclass(frozen=True)
class RetrainResult:
    feedback_used: int
    curation: dict[str, int]
    dataset: DatasetInfo | None
    train: TrainResult | None
    skipped_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feedback_used": self.feedback_used,
            "curation": self.curation,
            "dataset_version": None if self.dataset is None else self.dataset.version,
            "skipped": self.train is None,
            "reason": self.skipped_reason,
        }
        if self.train is not None:
            out |= self.train.to_json()
        return out


@dataclass(frozen=True)
class PredictionResult:
    prediction_id: str
    label: str
    probabilities: dict[str, float]
    model_version: int
    latency_ms: float


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    prediction_id: str
    label: str | None


@dataclass
class LoadedModel:
    """A production model held in memory by a serving process."""

    version: int
    model: nn.Module
    spec: ModelSpec
    prep: ImagePreprocessing
    labels: list[str] = field(default_factory=list)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return predict_proba(self.model, x)


def _label_sort_key(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isdigit() else (1, label)


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_user_id(user_id: str | None) -> str | None:
    if user_id is None or user_id == "":
        return None
    if not USER_ID.match(user_id):
        raise InputError(
            "user id must be 1-128 characters of letters, digits and . _ : @ -; "
            f"got {user_id[:40]!r}{'...' if len(user_id) > 40 else ''}"
        )
    return user_id


class Project:
    """One flywheel project: a folder with ``flywheel.toml``, a database and blobs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if not (settings.project_dir / CONFIG_FILE).is_file():
            raise ProjectError(
                f"no flywheel project in {str(settings.project_dir)!r} (no {CONFIG_FILE}); "
                "create one with `flywheel init DIR --data digits|PATH`",
                path=settings.project_dir,
            )
        self.db = Database(settings.db_url)
        self.db.migrate()
        self.blobs = BlobStore(settings.blobs)
        self._loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()

    # -- opening and creating ----------------------------------------------------------

    @classmethod
    def open(cls, project_dir: str | Path | None = None, **overrides: Any) -> Project:
        return cls(Settings.load(project_dir, **overrides))

    @classmethod
    def init(
        cls,
        project_dir: str | Path,
        source: Source,
        *,
        holdout_fraction: float = 0.2,
        seed: int = 0,
        settings: dict[str, Any] | None = None,
        on_example: ImportProgressFn | None = None,
    ) -> Project:
        """Create a project folder and import ``source`` as dataset version 1."""
        root = Path(project_dir).expanduser().resolve()
        if (root / CONFIG_FILE).exists():
            raise ProjectError(f"{str(root)!r} already holds a flywheel project", path=root)
        created = not root.exists()
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{str(root)!r} exists and is not a folder", path=root)
        root.mkdir(parents=True, exist_ok=True)
        try:
            (root / CONFIG_FILE).write_text(_config_template(source.name, settings or {}))
            project = cls(Settings.load(root))
            project._import_base(source, holdout_fraction, seed, on_example)
        except BaseException:
            # Nothing half-made is left behind: a failed init removes what it created.
            if created:
                shutil.rmtree(root, ignore_errors=True)
            else:
                (root / CONFIG_FILE).unlink(missing_ok=True)
                for name in ("flywheel.db", "flywheel.db-wal", "flywheel.db-shm"):
                    (root / name).unlink(missing_ok=True)
                shutil.rmtree(root / "blobs", ignore_errors=True)
            raise
        return project

    def _import_base(
        self,
        source: Source,
        holdout_fraction: float,
        seed: int,
        on_example: ImportProgressFn | None,
    ) -> DatasetInfo:
        kept: list[tuple[str, str, str | None, str | None, str | None]] = []
        probes: list[tuple[str, int, int]] = []
        skipped: list[dict[str, str]] = []
        seen: set[str] = set()
        for i, ex in enumerate(source):
            try:
                probes.append(probe(ex.content))
            except InputError as exc:
                skipped.append({"path": ex.source_path or f"#{i}", "reason": str(exc)})
                continue
            digest = self.blobs.put(ex.content)
            if digest in seen:
                skipped.append({"path": ex.source_path or f"#{i}", "reason": "exact duplicate"})
                probes.pop()
                continue
            seen.add(digest)
            kept.append((digest, ex.label, ex.split, ex.user_id, ex.source_path))
            if on_example is not None:
                on_example(i + 1)
        if not kept:
            raise DataError(f"source {source.name!r} holds no readable image")
        labels = sorted({k[1] for k in kept}, key=_label_sort_key)
        if len(labels) < 2:
            raise DataError(f"source {source.name!r} has one class ({labels}); need at least 2")
        prep = infer_preprocessing(probes)
        todo = [i for i, k in enumerate(kept) if k[2] is None]
        drawn = assign_splits([kept[i][1] for i in todo], holdout_fraction, seed) if todo else []
        splits = [k[2] for k in kept]
        for i, sp in zip(todo, drawn, strict=True):
            splits[i] = sp
        with self.db.session() as s:
            for _, _, _, user, _ in kept:
                if user is not None:
                    ensure_user(s, user)
            examples = [
                Example(
                    input_hash=d,
                    label=lab,
                    split=sp,
                    origin="base",
                    user_id=user,
                    source_path=path,
                )
                for (d, lab, _, user, path), sp in zip(kept, splits, strict=True)
            ]
            s.add_all(examples)
            s.flush()
            dv = self._new_dataset_version(
                s,
                examples,
                parent=None,
                source=source.name,
                prep=prep,
                labels=labels,
                extra={"skipped": skipped, "holdout_fraction": holdout_fraction, "seed": seed},
            )
            return self._dataset_info(s, dv)

    def _new_dataset_version(
        self,
        s: Session,
        examples: list[Example],
        *,
        parent: int | None,
        source: str,
        prep: ImagePreprocessing,
        labels: list[str],
        extra: dict[str, Any],
    ) -> DatasetVersion:
        counts = Counter(e.split for e in examples)
        stats = {
            "n_train": counts.get(TRAIN, 0),
            "n_holdout": counts.get(HOLDOUT, 0),
            "n_feedback": sum(e.origin == "feedback" for e in examples),
            "labels": labels,
            "class_counts": dict(Counter(e.label for e in examples if e.split == TRAIN)),
            **extra,
        }
        dv = DatasetVersion(
            content_hash=content_hash((e.input_hash, e.label, e.split) for e in examples),
            parent_id=parent,
            source=source,
            preprocessing=prep.to_json(),
            stats=stats,
        )
        s.add(dv)
        s.flush()
        s.add_all(
            DatasetVersionExample(dataset_version_id=dv.id, example_id=e.id) for e in examples
        )
        s.flush()
        return dv

    # -- datasets ----------------------------------------------------------------------

    def _latest_dataset(self, s: Session) -> DatasetVersion:
        dv = s.scalars(select(DatasetVersion).order_by(DatasetVersion.id.desc()).limit(1)).first()
        if dv is None:
            raise ProjectError("the project has no dataset version", path=self.settings.project_dir)
        return dv

    def _dataset_info(self, s: Session, dv: DatasetVersion) -> DatasetInfo:
        st = dv.stats
        return DatasetInfo(
            version=dv.id,
            content_hash=dv.content_hash,
            parent=dv.parent_id,
            n_train=int(st["n_train"]),
            n_holdout=int(st["n_holdout"]),
            n_feedback=int(st["n_feedback"]),
            labels=list(st["labels"]),
            skipped=list(st.get("skipped", [])),
        )

    def dataset(self, version: int | None = None) -> DatasetInfo:
        with self.db.session() as s:
            dv = self._latest_dataset(s) if version is None else s.get(DatasetVersion, version)
            if dv is None:
                raise NotFoundError("dataset version", version)
            return self._dataset_info(s, dv)

    def _rows(self, s: Session, dv_id: int, split: str) -> list[tuple[str, str]]:
        q = (
            select(Example.input_hash, Example.label)
            .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
            .where(DatasetVersionExample.dataset_version_id == dv_id, Example.split == split)
            # Order by content, not by arrival: the same dataset version gives the same
            # rows in the same order, hence (with a fixed seed) the same model.
            .order_by(Example.input_hash, Example.label)
        )
        return [(h, lab) for h, lab in s.execute(q)]

    def _arrays(self, s: Session, dv: DatasetVersion, split: str, labels: list[str]) -> Arrays:
        prep = ImagePreprocessing.from_json(dv.preprocessing)
        return load_arrays(self._rows(s, dv.id, split), self.blobs.get, prep, labels)

    # -- training and evaluation ---------------------------------------------------------

    def train_config(self, **overrides: Any) -> TrainConfig:
        st = self.settings
        base = TrainConfig(
            epochs=st.epochs,
            batch_size=st.batch_size,
            learning_rate=st.learning_rate,
            weight_decay=st.weight_decay,
            dropout=st.dropout,
            patience=st.patience,
            val_fraction=st.val_fraction,
            seed=st.seed,
            warm_start=st.warm_start,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def train(
        self,
        config: TrainConfig | None = None,
        *,
        on_epoch: ProgressFn | None = None,
        reason: str = "train",
    ) -> TrainResult:
        """Train a challenger on the newest dataset version, gate it, promote if it passes."""
        config = config or self.train_config()
        with self.db.session() as s:
            dv = self._latest_dataset(s)
            labels = list(dv.stats["labels"])
            prep = ImagePreprocessing.from_json(dv.preprocessing)
            train = self._arrays(s, dv, TRAIN, labels)
            holdout = self._arrays(s, dv, HOLDOUT, labels)
            champion_version = registry.get_alias(s, registry.PRODUCTION)
        if len(train) < 2:
            raise DataError(f"dataset version {dv.id} has {len(train)} training rows; need >= 2")
        hparams = default_hparams(config.arch, (prep.channels, prep.height, prep.width))
        hparams["dropout"] = config.dropout
        spec = ModelSpec(
            arch=config.arch,
            task=TASK,
            input_shape=(prep.channels, prep.height, prep.width),
            labels=tuple(labels),
            hparams=hparams,
            preprocessing=prep.to_json(),
        )
        seed_everything(config.seed)
        model = create_model(spec)
        parent: int | None = None
        champion: LoadedModel | None = None
        if champion_version is not None:
            champion = self._load_version(champion_version)
            parent = champion_version
            if config.warm_start and champion.spec == spec:
                # Warm start: the challenger begins where production is.
                model.load_state_dict(champion.model.state_dict())
        started = time.perf_counter()
        result = fit(model, train, config, on_epoch=on_epoch)
        train_seconds = time.perf_counter() - started

        pred = predict_proba(model, holdout.x).argmax(1)
        report = classification_report(holdout.y, pred, labels)
        champion_correct = None
        if champion is not None:
            champ_pred = champion.probabilities(holdout.x).argmax(1)
            champion_correct = champ_pred == holdout.y
        decision = decide(
            pred == holdout.y,
            champion_correct,
            margin=self.settings.gate_margin,
            champion_version=champion_version,
        )
        metrics = {
            **report,
            "n_train": len(train),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "val_accuracy": result.best_val_accuracy,
            "val_loss": result.best_val_loss,
            "train_seconds": round(train_seconds, 3),
        }
        promoted = decision.promote and (self.settings.auto_promote or champion_version is None)
        with self.db.session() as s:
            mv = ModelVersion(
                arch=config.arch,
                parent_version=parent,
                dataset_version_id=dv.id,
                training_config=config.to_json(),
                spec=spec.to_json(),
                metrics=metrics,
                gate={**decision.to_json(), "promoted": promoted},
                artifact_dir="",
                weights_sha256="",
            )
            s.add(mv)
            s.flush()
            folder = self.settings.models_dir / f"v{mv.version}"
            try:
                mv.weights_sha256 = save_artifact(model, spec, folder)
                mv.artifact_dir = str(folder)
                s.flush()
                registry.set_alias(s, registry.CANDIDATE, mv.version, action="set", reason=reason)
                if promoted:
                    registry.promote(s, mv.version, f"{reason}: {decision.reason}")
                s.commit()
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            info = registry.get_version(s, mv.version)
        return TrainResult(info, decision, promoted)

    def evaluate(self, version: int | None = None) -> dict[str, Any]:
        """Score a version (default: production) on the held-out split."""
        with self.db.session() as s:
            if version is None:
                version = registry.get_alias(s, registry.PRODUCTION)
                if version is None:
                    raise RegistryError("no production model; train one with `flywheel train`")
            registry.get_version(s, version)
            dv = self._latest_dataset(s)
            loaded = self._load_version(version)
            holdout = self._arrays(s, dv, HOLDOUT, loaded.labels)
        pred = loaded.probabilities(holdout.x).argmax(1)
        return {
            "model_version": version,
            "dataset_version": dv.id,
            **classification_report(holdout.y, pred, loaded.labels),
        }

    # -- the loop ----------------------------------------------------------------------

    def _answers(self, s: Session) -> list[Answer]:
        """Answers with a usable label, from feedback not yet turned into an example."""
        used = select(Example.feedback_id).where(Example.feedback_id.is_not(None))
        q = (
            select(Feedback, Prediction.input_hash, Prediction.label)
            .join(Prediction, Prediction.id == Feedback.prediction_id)
            .where(Feedback.id.not_in(used))
            .order_by(Feedback.created_at, Feedback.id)
        )
        out = []
        for fb, input_hash, predicted in s.execute(q):
            label = fb.label if fb.label is not None else (predicted if fb.correct else None)
            if label is not None:
                out.append(Answer(fb.id, input_hash, label, fb.user_id, fb.created_at))
        return out

    def curate(self) -> tuple[DatasetInfo | None, dict[str, int]]:
        """Make a new dataset version from the feedback not yet used; None when there is none."""
        with self.db.session() as s:
            dv = self._latest_dataset(s)
            labels = list(dv.stats["labels"])
            answers = [a for a in self._answers(s) if a.label in labels]
            holdout = {h for h, _ in self._rows(s, dv.id, HOLDOUT)}
            known = {h for h, _ in self._rows(s, dv.id, TRAIN)}
            c = curate(answers, holdout, known)
            summary = {
                "answers": c.answers,
                "rows": len(c.rows),
                "dropped_holdout": c.dropped_holdout,
                "dropped_known": c.dropped_known,
                "merged_duplicates": c.merged_duplicates,
            }
            if not c.rows:
                return None, summary
            new = [
                Example(
                    input_hash=r.input_hash,
                    label=r.label,
                    split=TRAIN,
                    origin="feedback",
                    feedback_id=r.feedback_id,
                    user_id=r.user_id,
                )
                for r in c.rows
            ]
            s.add_all(new)
            s.flush()
            previous = list(
                s.scalars(
                    select(Example)
                    .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
                    .where(DatasetVersionExample.dataset_version_id == dv.id)
                )
            )
            nv = self._new_dataset_version(
                s,
                previous + new,
                parent=dv.id,
                source="feedback",
                prep=ImagePreprocessing.from_json(dv.preprocessing),
                labels=labels,
                extra={"curation": summary},
            )
            return self._dataset_info(s, nv), summary

    def retrain(
        self, config: TrainConfig | None = None, *, on_epoch: ProgressFn | None = None
    ) -> RetrainResult:
        """One turn of the loop: curate → train (warm start) → evaluate → gate → promote."""
        dataset, summary = self.curate()
        if dataset is None:
            return RetrainResult(
                0, summary, None, None, "no new feedback with a usable label since the last retrain"
            )
        result = self.train(config, on_epoch=on_epoch, reason="retrain")
        return RetrainResult(summary["rows"], summary, dataset, result)

    # -- registry ----------------------------------------------------------------------

    def models(self) -> list[VersionInfo]:
        with self.db.session() as s:
            return registry.list_versions(s)

    def production_version(self) -> int | None:
        with self.db.session() as s:
            return registry.get_alias(s, registry.PRODUCTION)

    def promote(self, version: int, reason: str = "manual promote") -> VersionInfo:
        with self.db.session() as s:
            registry.promote(s, version, reason)
            info = registry.get_version(s, version)
        self.refresh_model()
        return info

    def rollback(self, reason: str = "manual rollback") -> tuple[int, int]:
        with self.db.session() as s:
            moved = registry.rollback(s, reason)
        self.refresh_model()
        return moved

    # -- serving -----------------------------------------------------------------------

    def _load_version(self, version: int) -> LoadedModel:
        with self.db.session() as s:
            info = registry.get_version(s, version)
        model, spec = load_artifact(Path(info.artifact_dir))
        prep = ImagePreprocessing.from_json(spec.preprocessing)
        return LoadedModel(version, model, spec, prep, list(spec.labels))

    def refresh_model(self) -> LoadedModel | None:
        """Load the production version if it changed; the new model is ready before the swap."""
        current = self.production_version()
        if current is None:
            return None
        with self._load_lock:
            loaded = self._loaded
            if loaded is not None and loaded.version == current:
                return loaded
            fresh = self._load_version(current)
            # One reference assignment: a request that already holds the old model
            # finishes on it; the next one picks up the new.
            self._loaded = fresh
            return fresh

    def serving_model(self) -> LoadedModel:
        loaded = self._loaded or self.refresh_model()
        if loaded is None:
            raise ModelError("no production model yet; train one with `flywheel train`")
        return loaded

    def predict(self, content: bytes, *, user_id: str | None = None) -> PredictionResult:
        """Predict one image with the production model and log the call."""
        user_id = _check_user_id(user_id)
        started = time.perf_counter()
        loaded = self.serving_model()
        x = decode_image(content, loaded.prep)[None]
        probs = loaded.probabilities(x)[0]
        latency_ms = (time.perf_counter() - started) * 1000.0
        k = int(probs.argmax())
        digest = self.blobs.put(content)
        pid = str(uuid.uuid4())
        probabilities = {lab: float(p) for lab, p in zip(loaded.labels, probs, strict=True)}
        with self.db.session() as s:
            if user_id is not None:
                ensure_user(s, user_id)
            s.add(
                Prediction(
                    id=pid,
                    model_version=loaded.version,
                    user_id=user_id,
                    input_hash=digest,
                    label=loaded.labels[k],
                    probabilities=probabilities,
                    latency_ms=latency_ms,
                )
            )
        return PredictionResult(pid, loaded.labels[k], probabilities, loaded.version, latency_ms)

    def record_feedback(
        self,
        prediction_id: str,
        *,
        label: str | None = None,
        correct: bool | None = None,
        user_id: str | None = None,
    ) -> FeedbackResult:
        """Store a user's answer; returns only after the row is committed."""
        user_id = _check_user_id(user_id)
        if label is None and correct is None:
            raise InputError("feedback needs a 'label' or 'correct'")
        with self.db.session() as s:
            pred = s.get(Prediction, prediction_id)
            if pred is None:
                raise NotFoundError("prediction", prediction_id)
            labels = list(pred.probabilities)
            if label is not None and label not in labels:
                raise InputError(
                    f"label {label!r} is not one of model v{pred.model_version}'s labels: "
                    f"{', '.join(labels)}"
                )
            if correct is True and label is not None and label != pred.label:
                raise InputError(
                    f"'correct': true contradicts label {label!r}: "
                    f"the prediction was {pred.label!r}"
                )
            if user_id is not None:
                ensure_user(s, user_id)
            fid = str(uuid.uuid4())
            s.add(
                Feedback(
                    id=fid,
                    prediction_id=prediction_id,
                    user_id=user_id,
                    label=label,
                    correct=correct if correct is not None else label == pred.label,
                )
            )
        return FeedbackResult(fid, prediction_id, label)

    def stats(self, *, minutes: int = 60) -> dict[str, Any]:
        """Call frequency per version, label and minute; feedback counts; accuracy per version."""
        since = utcnow() - timedelta(minutes=minutes)
        with self.db.session() as s:
            per_version = dict(
                s.execute(
                    select(Prediction.model_version, func.count()).group_by(
                        Prediction.model_version
                    )
                ).all()
            )
            per_label = dict(
                s.execute(select(Prediction.label, func.count()).group_by(Prediction.label)).all()
            )
            recent = s.scalars(
                select(Prediction.created_at).where(Prediction.created_at >= since)
            ).all()
            per_minute = Counter(
                t.replace(second=0, microsecond=0, tzinfo=None).isoformat(timespec="minutes")
                for t in recent
            )
            fb = s.execute(
                select(Prediction.model_version, Feedback.correct, func.count())
                .join(Prediction, Prediction.id == Feedback.prediction_id)
                .group_by(Prediction.model_version, Feedback.correct)
            ).all()
            versions = registry.list_versions(s)
        live: dict[int, dict[str, int]] = {}
        for v, correct, n in fb:
            d = live.setdefault(v, {"feedback": 0, "agreed": 0})
            d["feedback"] += n
            if correct:
                d["agreed"] += n
        total_fb = sum(d["feedback"] for d in live.values())
        return {
            "calls": {
                "total": sum(per_version.values()),
                "per_version": {str(k): v for k, v in sorted(per_version.items())},
                "per_label": dict(sorted(per_label.items(), key=lambda kv: _label_sort_key(kv[0]))),
                "per_minute": dict(sorted(per_minute.items())),
            },
            "feedback": {
                "total": total_fb,
                "agreed": sum(d["agreed"] for d in live.values()),
                "disagreed": total_fb - sum(d["agreed"] for d in live.values()),
            },
            "versions": [
                {
                    "version": v.version,
                    "aliases": v.aliases,
                    "holdout_accuracy": v.metrics.get("accuracy"),
                    "calls": per_version.get(v.version, 0),
                    "feedback": live.get(v.version, {}).get("feedback", 0),
                    "live_accuracy": (
                        live[v.version]["agreed"] / live[v.version]["feedback"]
                        if live.get(v.version, {}).get("feedback")
                        else None
                    ),
                }
                for v in versions
            ],
        }

    # -- keys --------------------------------------------------------------------------

    def create_key(self, scopes: list[str], name: str = "") -> tuple[str, dict[str, Any]]:
        """Make an API key; the key itself is returned once and only its hash is stored."""
        bad = [sc for sc in scopes if sc not in SCOPES]
        if not scopes or bad:
            raise InputError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
        prefix = secrets.token_hex(4)
        key = f"fw_{prefix}_{secrets.token_urlsafe(32)}"
        with self.db.session() as s:
            row = ApiKey(
                name=name or f"key-{prefix}",
                prefix=prefix,
                key_hash=_hash_key(key),
                scopes=",".join(sorted(set(scopes))),
            )
            s.add(row)
            s.flush()
            info = {"id": row.id, "name": row.name, "prefix": prefix, "scopes": sorted(set(scopes))}
        return key, info

    def list_keys(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [
                {
                    "id": k.id,
                    "name": k.name,
                    "prefix": k.prefix,
                    "scopes": k.scopes.split(","),
                    "created_at": k.created_at.isoformat(),
                    "revoked": k.revoked_at is not None,
                }
                for k in s.scalars(select(ApiKey).order_by(ApiKey.id))
            ]

    def has_keys(self) -> bool:
        with self.db.session() as s:
            return bool(
                s.scalar(
                    select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))
                )
            )

    def authenticate(self, key: str, scope: str | None) -> None:
        """Raise ``AuthError`` unless ``key`` is live and holds ``scope`` (admin holds all).

        ``scope=None`` accepts a live key of any scope.
        """
        with self.db.session() as s:
            row = s.scalars(select(ApiKey).where(ApiKey.key_hash == _hash_key(key))).first()
            if row is None or row.revoked_at is not None:
                raise AuthError("unknown or revoked API key")
            held = set(row.scopes.split(","))
        if scope is not None and scope not in held and "admin" not in held:
            raise AuthError(
                f"this key lacks the {scope!r} scope (it has: {', '.join(sorted(held))})",
                missing_scope=scope,
            )

    # -- jobs --------------------------------------------------------------------------

    def create_job(self, kind: str, params: dict[str, Any] | None = None) -> str:
        job_id = str(uuid.uuid4())
        with self.db.session() as s:
            s.add(Job(id=job_id, kind=kind, status="queued", params=params or {}))
        return job_id

    def run_job(self, job_id: str, work: Callable[[], dict[str, Any]]) -> None:
        """Run ``work`` as job ``job_id``, recording its status, result or error."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError("job", job_id)
            job.status, job.started_at = "running", utcnow()
        try:
            result = work()
        except Exception as exc:  # a job's failure is its result, not the server's
            detail = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FlywheelError):
                detail += "\n" + traceback.format_exc(limit=5)
            with self.db.session() as s:
                job = s.get(Job, job_id)
                assert job is not None
                job.status, job.error, job.finished_at = "failed", detail, utcnow()
            return
        with self.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.status, job.result, job.finished_at = "succeeded", result, utcnow()

    def job(self, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError("job", job_id)
            return {
                "job_id": job.id,
                "kind": job.kind,
                "status": job.status,
                "result": job.result,
                "error": job.error,
                "created_at": job.created_at.isoformat(),
                "started_at": job.started_at.isoformat() if job.started_at else None,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            }

    def fail_interrupted_jobs(self) -> int:
        """Jobs left queued or running by a process that stopped are marked failed."""
        with self.db.session() as s:
            jobs = s.scalars(select(Job).where(Job.status.in_(("queued", "running")))).all()
            for job in jobs:
                job.status, job.finished_at = "failed", utcnow()
                job.error = "interrupted: the server stopped before the job finished"
            return len(jobs)

    def close(self) -> None:
        self.db.dispose()


def _config_template(source: str, values: dict[str, Any]) -> str:
    lines = [
        "# flywheel project settings; FLYWHEEL_* environment variables override them.",
        f"# Created from data source: {source}",
        "",
    ]
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    lines += [
        "",
        '# host = "127.0.0.1"      # bound beyond loopback, every route needs a key',
        "# port = 8000",
        "# gate_margin = 0.0       # a challenger may trail the champion by at most this",
        "# epochs = 30",
        "",
    ]
    return "\n".join(lines)
