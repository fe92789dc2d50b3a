"""``Project``: the verbs of the loop. The CLI and the HTTP routes are thin shells around it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session
from torch import nn

from flywheel import registry
from flywheel.data import (
    HOLDOUT,
    TRAIN,
    Arrays,
    Codec,
    RawExample,
    Source,
    assign_splits,
    clean,
    content_hash,
    create_codec,
    load_arrays,
)
from flywheel.errors import (
    ConfigError,
    DataError,
    FlywheelError,
    InputError,
    ModelError,
    NotFoundError,
    ProjectError,
    RegistryError,
)
from flywheel.evaluation import (
    GateDecision,
    class_check,
    classification_report,
    decide,
    decide_regression,
    reference_check,
    regression_report,
    with_check,
)
from flywheel.feedback import Answer, curate
from flywheel.feedback.queue import STRATEGIES, Candidate, rank
from flywheel.feedback.trust import Vote, estimate_trust
from flywheel.models import ModelSpec, arch_info, build_spec, create_model
from flywheel.privacy import forget as forget_rows
from flywheel.privacy import ledger
from flywheel.privacy.pseudonym import PSEUDONYM, Pseudonymizer
from flywheel.registry import VersionInfo, load_artifact, save_artifact
from flywheel.settings import CONFIG_FILE, Settings
from flywheel.store import BlobStore, Database, ensure_user, retry_locked
from flywheel.store import jobs as job_rows
from flywheel.store import keys as key_rows
from flywheel.store.schema import (
    AliasEvent,
    AuditRecord,
    DatasetVersion,
    DatasetVersionExample,
    Example,
    Feedback,
    Job,
    ModelVersion,
    Prediction,
    ReviewItem,
    StoreMeta,
    User,
    utcnow,
)
from flywheel.store.schema import Explanation as ExplanationRow
from flywheel.tasks import Task, get_task
from flywheel.training import (
    EpochReport,
    TrainConfig,
    fit,
    make_augment,
    predict_outputs,
    seed_everything,
)

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

SCOPES = key_rows.SCOPES
log = logging.getLogger("flywheel")
USER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
CHECKPOINT = "checkpoints/current"

ProgressFn = Callable[[EpochReport], None]
ImportProgressFn = Callable[[int], None]
Row = tuple[str, str | None, float | None]  # input hash, label, value
#: trust given to a user the estimate has not seen yet (the Beta(2, 1) prior's mean)
DEFAULT_TRUST = 2 / 3


@dataclass(frozen=True)
class DatasetInfo:
    version: int
    content_hash: str
    parent: int | None
    task: str
    n_train: int
    n_holdout: int
    n_feedback: int
    labels: list[str]
    cleaning: dict[str, Any]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Inputs the import could not read (the first ones, with their reason)."""
        items: list[dict[str, str]] = self.cleaning.get("unreadable", {}).get("items", [])
        return items

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "content_hash": self.content_hash,
            "parent": self.parent,
            "task": self.task,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "n_feedback": self.n_feedback,
            "labels": self.labels,
            "skipped": self.skipped,
            "cleaning": self.cleaning,
        }


@dataclass(frozen=True)
class TrainResult:
    model: VersionInfo
    decision: GateDecision
    promoted: bool

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "model_version": self.model.version,
            "dataset_version": self.model.dataset_version,
            "metric": d.metric,
            d.metric: d.challenger_score,
            f"champion_{d.metric}": d.champion_score,
            "champion_version": d.champion_version,
            "promoted": self.promoted,
            "reason": d.reason,
            "test": d.test,
            "checks": d.checks,
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
    model_version: int
    latency_ms: float
    label: str | None = None  # classification
    probabilities: dict[str, float] | None = None
    value: float | None = None  # regression


@dataclass(frozen=True)
class FeedbackIn:
    """One user's answer about a prediction, as received."""

    prediction_id: str
    label: str | None = None
    correct: bool | None = None
    value: float | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    prediction_id: str
    label: str | None
    value: float | None = None
    agreed: bool | None = None  # did the user agree with the prediction (None: not judged)


@dataclass
class LoadedModel:
    """A model version held in memory, with what it needs to read raw inputs."""

    version: int
    model: nn.Module
    spec: ModelSpec
    codec: Codec

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def is_regression(self) -> bool:
        return not self.spec.labels

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (classification) or values (regression) for a batch."""
        out = predict_outputs(self.model, x)
        if self.is_regression or out.size == 0:
            return out
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def decode(self, content: bytes) -> np.ndarray:
        return self.codec.decode(content, self.spec.preprocessing)


def _label_sort_key(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isdigit() else (1, label)


def check_user_id(user_id: str | None) -> str | None:
    """A pseudonymous end-user id, checked (None when absent or empty)."""
    if user_id is None or user_id == "":
        return None
    if not USER_ID.match(user_id):
        raise InputError(
            "user id must be 1-128 characters of letters, digits and . _ : @ -; "
            f"got {user_id[:40]!r}{'...' if len(user_id) > 40 else ''}"
        )
    return user_id


def _value_bins(values: Sequence[float], bins: int = 5) -> list[str]:
    """Quantile bins of regression targets, so the held-out draw is stratified by value."""
    arr = np.asarray(values, dtype=np.float64)
    edges = np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1])
    return [str(int(np.searchsorted(edges, v, side="right"))) for v in arr]


def _check_feedback(pred: Any, it: FeedbackIn) -> FeedbackResult:
    """Check one answer against its prediction's row (None: unknown prediction)."""
    label, correct, value = it.label, it.correct, it.value
    if pred is None:
        raise NotFoundError("prediction", it.prediction_id)
    if pred.value is not None or pred.label is None:  # a regression prediction
        if label is not None:
            raise InputError(
                "this prediction is a regression value: send 'value' (the true value), not 'label'"
            )
        if value is not None and not np.isfinite(value):
            raise InputError(f"'value' must be a finite number; got {value!r}")
        agreed = correct if value is None else None
    else:
        if value is not None:
            raise InputError(
                "this prediction is a class: send 'label' (the true label), not 'value'"
            )
        labels = list(pred.probabilities)
        if label is not None and label not in labels:
            raise InputError(
                f"label {label!r} is not one of model v{pred.model_version}'s labels: "
                f"{', '.join(labels)}"
            )
        if correct is True and label is not None and label != pred.label:
            raise InputError(
                f"'correct': true contradicts label {label!r}: the prediction was {pred.label!r}"
            )
        agreed = correct if correct is not None else label == pred.label
    return FeedbackResult(str(uuid.uuid4()), it.prediction_id, label, value, agreed)


if TYPE_CHECKING:
    from flywheel.privacy import PiiScrubber


class PendingLog(Protocol):
    """Predictions logged in the background: readers wait for what was queued."""

    def wait_written(self, prediction_id: str, timeout: float = 30.0) -> bool:
        """Wait until this prediction's row is committed (True at once if not pending)."""
        ...

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every prediction queued so far is committed."""
        ...


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
        self.task: Task = get_task(settings.task)
        self.codec: Codec = create_codec(self.task.modality)
        self.db = Database(settings.db_url)
        self.db.migrate()
        self.blobs = BlobStore(settings.blobs)
        self._loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()
        # Set by a server that logs predictions in the background (see PendingLog).
        self.prediction_log: PendingLog | None = None
        self._pii: PiiScrubber | None = None
        self._pseudonymizer: Pseudonymizer | None = None

    # -- end users: known only by keyed hashes -----------------------------------------

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        """The key chain that turns raw user ids into stored pseudonyms (made on first use)."""
        if self._pseudonymizer is None:
            with self._load_lock:
                if self._pseudonymizer is None:
                    self._pseudonymizer = Pseudonymizer.open(
                        self.settings.user_keys, self.db.session
                    )
        return self._pseudonymizer

    def pseudonym(self, user_id: str | None) -> str | None:
        """The stored form of a raw user id (checked; None when absent)."""
        user_id = check_user_id(user_id)
        return None if user_id is None else self.pseudonymizer(user_id)

    def resolve_user(self, s: Session, user_id: str) -> User:
        """A user named by raw id or by the pseudonym `flywheel users` lists."""
        if PSEUDONYM.match(user_id) and (row := s.get(User, user_id)) is not None:
            return row
        row = s.get(User, self.pseudonymizer(check_user_id(user_id) or ""))
        if row is None:
            raise NotFoundError("user", user_id)
        return row

    def reload_user_key(self) -> bool:
        """Pick up a key rotation made by another process; True when the chain changed."""
        if self._pseudonymizer is None:
            return False
        with self.db.session() as s:
            meta = s.get(StoreMeta, "user_key_fingerprint")
        if meta is None or meta.value == self._pseudonymizer.fingerprint:
            return False
        with self._load_lock:
            self._pseudonymizer = Pseudonymizer.open(self.settings.user_keys, self.db.session)
        return True

    def rotate_user_key(self) -> dict[str, Any]:
        """Append a key to the chain and re-key every stored user (one transaction)."""
        self._settle_log()
        old = self.pseudonymizer.fingerprint
        with self._load_lock:
            self._pseudonymizer, n = self.pseudonymizer.rotate(self.db.session)
        detail = {
            "users": n,
            "keys": len(self._pseudonymizer.keys),
            "fingerprint_before": old,
            "fingerprint_after": self._pseudonymizer.fingerprint,
        }
        with self.db.session() as s:
            s.add(AuditRecord(action="rotate_key", subject=None, detail=detail))
        return detail

    # -- the door: what is kept of an input --------------------------------------------

    @property
    def scrubs_inputs(self) -> bool:
        modality, st = self.task.modality, self.settings
        return (modality == "text" and st.scrub_pii) or (
            modality == "image" and st.strip_image_metadata
        )

    def at_the_door(self, content: bytes) -> bytes:
        """An input as it will be kept: text loses personal data (``scrub_pii``), images
        their metadata (``strip_image_metadata``); store, training data and model see
        the same bytes."""
        return self.scrub(content)[0]

    def scrub(self, content: bytes) -> tuple[bytes, dict[str, int]]:
        """(the input as kept, what was scrubbed by kind); unchanged for other tasks."""
        if not self.scrubs_inputs:
            return content, {}
        if self.task.modality == "image":
            from flywheel.privacy import strip_metadata

            kept, removed = strip_metadata(content)
            return kept, dict(Counter(removed))
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"text input is not UTF-8: {exc}") from exc
        if self._pii is None:
            from flywheel.privacy import PiiScrubber

            self._pii = PiiScrubber()
        out = self._pii.scrub(text)
        return out.text.encode("utf-8"), out.counts

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
        task: str = "image-classification",
        holdout_fraction: float = 0.2,
        seed: int = 0,
        settings: dict[str, Any] | None = None,
        on_example: ImportProgressFn | None = None,
    ) -> Project:
        """Create a project folder and import ``source`` as dataset version 1."""
        get_task(task)
        root = Path(project_dir).expanduser().resolve()
        if (root / CONFIG_FILE).exists():
            raise ProjectError(f"{str(root)!r} already holds a flywheel project", path=root)
        created = not root.exists()
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{str(root)!r} exists and is not a folder", path=root)
        root.mkdir(parents=True, exist_ok=True)
        values = {"task": task, **getattr(source, "settings", {}), **(settings or {})}
        try:
            (root / CONFIG_FILE).write_text(_config_template(source.name, values))
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
        raw: list[RawExample] = []
        scrubbed: Counter[str] = Counter()
        for i, ex in enumerate(source):
            if self.scrubs_inputs:
                content, found = self.scrub(ex.content)
                scrubbed.update(found)
                ex = replace(ex, content=content)
            raw.append(ex)
            if on_example is not None:
                on_example(i + 1)
        cleaned = clean(raw, self.codec)
        report = cleaned.report
        if self.scrubs_inputs:
            report["pii_scrubbed"] = dict(sorted(scrubbed.items()))
        source_skipped = list(getattr(source, "skipped", []))
        if source_skipped:
            report["unreadable"]["items"] = source_skipped + report["unreadable"]["items"]
            report["unreadable"]["count"] += len(source_skipped)
            report["total"] += len(source_skipped)
        kept = cleaned.kept
        if not kept:
            raise DataError(
                f"source {source.name!r} holds no readable {self.task.modality} input "
                f"({report['unreadable']['count']} unreadable)"
            )
        regression = self.task.is_regression
        if regression:
            if any(ex.value is None for ex, _, _ in kept):
                raise DataError("a regression source must give every example a numeric value")
            labels: list[str] = []
            strata = _value_bins([float(ex.value or 0.0) for ex, _, _ in kept])
        else:
            if any(ex.label is None for ex, _, _ in kept):
                raise DataError("a classification source must give every example a label")
            labels = sorted({str(ex.label) for ex, _, _ in kept}, key=_label_sort_key)
            if len(labels) < 2:
                raise DataError(f"source {source.name!r} has one class ({labels}); need at least 2")
            strata = [str(ex.label) for ex, _, _ in kept]

        # Near-duplicates are drawn as one: a group never straddles the held-out split.
        first_of_group: dict[int, int] = {}
        for n, g in enumerate(cleaned.groups):
            first_of_group.setdefault(g, n)
        heads = sorted(set(first_of_group.values()))
        todo = [n for n in heads if kept[n][0].split is None]
        try:
            drawn = assign_splits([strata[n] for n in todo], holdout_fraction, seed) if todo else []
            head_split = {n: kept[n][0].split for n in heads}
            head_split |= dict(zip(todo, drawn, strict=True))
            splits = [
                kept[n][0].split or head_split[first_of_group[cleaned.groups[n]]]
                for n in range(len(kept))
            ]
        except DataError:
            # Too few distinct groups to hold some out: draw examples one by one instead.
            report["near_duplicates"]["split"] = "drawn per example: too few distinct groups"
            todo = [n for n in range(len(kept)) if kept[n][0].split is None]
            drawn = assign_splits([strata[n] for n in todo], holdout_fraction, seed)
            per_example = dict(zip(todo, drawn, strict=True))
            splits = [kept[n][0].split or per_example[n] for n in range(len(kept))]

        train_probes = [p for (_, _, p), sp in zip(kept, splits, strict=True) if sp == TRAIN]
        if not train_probes:
            raise DataError("no example is left for training after the held-out draw")
        preprocessing = self.codec.infer(train_probes)
        if regression:
            y = np.array(
                [ex.value for (ex, _, _), sp in zip(kept, splits, strict=True) if sp == TRAIN],
                dtype=np.float64,
            )
            preprocessing["target_mean"] = float(y.mean())
            preprocessing["target_std"] = float(y.std()) or 1.0

        users = {ex.user_id: self.pseudonymizer(ex.user_id) for ex, _, _ in kept if ex.user_id}
        for given in users:
            check_user_id(given)
        with self.db.session() as s:
            for user in sorted(set(users.values())):
                ensure_user(s, user)
            for ex, _, _ in kept:
                self.blobs.put(ex.content)
            examples = [
                Example(
                    input_hash=digest,
                    label=ex.label,
                    value=ex.value,
                    split=sp,
                    origin="base",
                    user_id=users.get(ex.user_id) if ex.user_id else None,
                    source_path=ex.source_path,
                )
                for (ex, digest, _), sp in zip(kept, splits, strict=True)
            ]
            s.add_all(examples)
            s.flush()
            dv = self._new_dataset_version(
                s,
                examples,
                parent=None,
                source=source.name,
                preprocessing=preprocessing,
                labels=labels,
                extra={"cleaning": report, "holdout_fraction": holdout_fraction, "seed": seed},
            )
            return self._dataset_info(dv)

    def _new_dataset_version(
        self,
        s: Session,
        examples: list[Example],
        *,
        parent: int | None,
        source: str,
        preprocessing: dict[str, Any],
        labels: list[str],
        extra: dict[str, Any],
    ) -> DatasetVersion:
        counts = Counter(e.split for e in examples)
        stats: dict[str, Any] = {
            "task": self.task.name,
            "n_train": counts.get(TRAIN, 0),
            "n_holdout": counts.get(HOLDOUT, 0),
            "n_feedback": sum(e.origin == "feedback" for e in examples),
            "labels": labels,
            **extra,
        }
        if labels:
            stats["class_counts"] = dict(Counter(e.label for e in examples if e.split == TRAIN))
        dv = DatasetVersion(
            content_hash=content_hash(
                (e.input_hash, e.label if e.label is not None else repr(e.value), e.split)
                for e in examples
            ),
            parent_id=parent,
            source=source,
            preprocessing=preprocessing,
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

    def _dataset_info(self, dv: DatasetVersion) -> DatasetInfo:
        st = dv.stats
        return DatasetInfo(
            version=dv.id,
            content_hash=dv.content_hash,
            parent=dv.parent_id,
            task=str(st.get("task", self.task.name)),
            n_train=int(st["n_train"]),
            n_holdout=int(st["n_holdout"]),
            n_feedback=int(st["n_feedback"]),
            labels=list(st["labels"]),
            cleaning=dict(st.get("cleaning", {})),
        )

    def dataset(self, version: int | None = None) -> DatasetInfo:
        with self.db.session() as s:
            dv = self._latest_dataset(s) if version is None else s.get(DatasetVersion, version)
            if dv is None:
                raise NotFoundError("dataset version", version)
            return self._dataset_info(dv)

    def _rows(self, s: Session, dv_id: int, split: str) -> list[Row]:
        return [(h, lab, val) for h, lab, val, *_ in self._weighted_rows(s, dv_id, split)]

    def _weighted_rows(
        self, s: Session, dv_id: int, split: str, *, base_only: bool = False
    ) -> list[tuple[str, str | None, float | None, float | None, str | None]]:
        """(input hash, label, value, weight, user) of a dataset version's rows."""
        q = (
            select(
                Example.input_hash, Example.label, Example.value, Example.weight, Example.user_id
            )
            .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
            .where(DatasetVersionExample.dataset_version_id == dv_id, Example.split == split)
            # Order by content, not by arrival: the same dataset version gives the same
            # rows in the same order, hence (with a fixed seed) the same model.
            .order_by(Example.input_hash, Example.label, Example.value, Example.user_id)
        )
        if base_only:  # the imported rows, without any from feedback
            q = q.where(Example.origin != "feedback")
        return [(h, lab, val, w, u) for h, lab, val, w, u in s.execute(q)]

    def _arrays(self, rows: list[Row], spec: ModelSpec) -> Arrays:
        labels = list(spec.labels) if spec.labels else None
        return load_arrays(rows, self.blobs.get, self.codec, spec.preprocessing, labels)

    # -- training and evaluation ---------------------------------------------------------

    def train_config(self, **overrides: Any) -> TrainConfig:
        st = self.settings
        base = TrainConfig(
            arch=st.arch,
            epochs=st.epochs,
            batch_size=st.batch_size,
            learning_rate=st.learning_rate,
            weight_decay=st.weight_decay,
            dropout=st.dropout,
            patience=st.patience,
            val_fraction=st.val_fraction,
            seed=st.seed,
            warm_start=st.warm_start,
            lr_schedule=st.lr_schedule,
            augment=st.augment,
            image_size=st.image_size,
            finetune_layers=st.finetune_layers,
            dp_epsilon=st.dp_epsilon,
            dp_delta=st.dp_delta,
            dp_max_grad_norm=st.dp_max_grad_norm,
        )
        try:
            return replace(base, **{k: v for k, v in overrides.items() if v is not None})
        except ValueError as exc:  # TrainConfig's own checks: an option out of range
            raise ConfigError(f"invalid training option: {exc}") from exc

    def _spec(self, dv: DatasetVersion, config: TrainConfig) -> ModelSpec:
        arch = config.arch or self.task.default_arch
        info = arch_info(arch)
        if info.modality != self.task.modality or info.objective != self.task.objective:
            raise ModelError(
                f"architecture {arch!r} reads {info.modality} for {info.objective}; this "
                f"project is {self.task.name} (default architecture {self.task.default_arch!r})"
            )
        native = dict(dv.preprocessing)
        defaults = info.defaults(info.input_shape(info.preprocess(native, {})))
        overrides: dict[str, Any] = {}
        if "dropout" in defaults:
            overrides["dropout"] = config.dropout
        if "finetune_layers" in defaults:
            overrides["finetune_layers"] = config.finetune_layers
        if self.task.is_regression:
            overrides |= {"y_mean": native["target_mean"], "y_std": native["target_std"]}
        return build_spec(
            arch,
            task=self.task.name,
            native=native,
            labels=tuple(dv.stats["labels"]),
            options={"image_size": config.image_size},
            hparams=overrides,
        )

    def _score(self, loaded: LoadedModel, holdout: Arrays) -> tuple[dict[str, Any], np.ndarray]:
        """(report, per-row score): correct (bool) for classes, squared error for regression."""
        out = loaded.outputs(holdout.x)
        if loaded.is_regression:
            return regression_report(holdout.y, out), (out - holdout.y) ** 2
        pred = out.argmax(1)
        return classification_report(holdout.y, pred, loaded.labels), pred == holdout.y

    def train(
        self,
        config: TrainConfig | None = None,
        *,
        on_epoch: ProgressFn | None = None,
        reason: str = "train",
        resume: bool = False,
    ) -> TrainResult:
        """Train a challenger on the newest dataset version, gate it, promote if it passes.

        Each epoch is checkpointed; ``resume`` finishes an interrupted run of the
        same data and config where it stopped.
        """
        config = config or self.train_config()
        with self.db.session() as s:
            dv = self._latest_dataset(s)
            spec = self._spec(dv, config)
            weighted = self._weighted_rows(s, dv.id, TRAIN)
            privacy: dict[str, Any] = {}
            if config.private:
                weighted, privacy = self._privacy_admission(s, weighted, config)
            train_rows = [(h, lab, val) for h, lab, val, *_ in weighted]
            holdout_rows = self._rows(s, dv.id, HOLDOUT)
            champion_version = registry.get_alias(s, registry.PRODUCTION)
            champion_row = (
                None if champion_version is None else s.get(ModelVersion, champion_version)
            )
            champion_config = {} if champion_row is None else dict(champion_row.training_config)
            dv_hash = dv.content_hash
            erased_at_start = dv.erased
            contribution = dict(dv.stats.get("contribution", {}))
            label_issues = dict(dv.stats.get("label_issues", {}))
        if len(train_rows) < 2:
            raise DataError(
                f"dataset version {dv.id} has {len(train_rows)} training rows; need >= 2"
            )
        if not holdout_rows:
            raise DataError(
                f"dataset version {dv.id} has no held-out rows to gate a model on (its data "
                "were all training rows, or duplicates of them); import more distinct examples"
            )
        train = self._arrays(train_rows, spec)
        weights = np.array([1.0 if w is None else w for _, _, _, w, _ in weighted], np.float32)
        flagged = {i["input_hash"] for i in label_issues.get("issues", [])}
        mode = self.settings.label_issue_mode
        if flagged and mode != "keep":
            hit = np.array([h in flagged for h, *_ in weighted])
            weights[hit] *= 0.0 if mode == "exclude" else 0.2
        if (weights != 1.0).any():
            train.weights = weights
        holdout = self._arrays(holdout_rows, spec)

        seed_everything(config.seed)
        model = create_model(spec)
        parent: int | None = None
        champion: LoadedModel | None = None
        if champion_version is not None:
            champion = self._load_version(champion_version)
            parent = champion_version
            # A private run starts only from a private parent: a non-private champion
            # trained on the same users would carry their data past the accountant.
            champion_private = bool(champion_config.get("dp_epsilon")) or (
                champion_config.get("dp_noise_multiplier") is not None
            )
            if config.warm_start and champion.spec == spec:
                if not config.private or champion_private:
                    # Warm start: the challenger begins where production is.
                    model.load_state_dict(champion.model.state_dict())
                else:
                    privacy["cold_start"] = "production was trained without DP"
        run_id = hashlib.sha256(
            json.dumps(
                [dv_hash, config.to_json(), spec.to_json(), parent], sort_keys=True, default=str
            ).encode()
        ).hexdigest()
        checkpoint_dir = self.settings.project_dir / CHECKPOINT
        augment = make_augment(self.task.modality) if config.augment else None
        started = time.perf_counter()
        result = fit(
            model,
            train,
            config,
            regression=self.task.is_regression,
            augment=augment,
            on_epoch=on_epoch,
            checkpoint_dir=checkpoint_dir,
            run_id=run_id,
            resume=resume,
            users=self._units(weighted) if config.private or config.federated_clients else None,
        )
        train_seconds = time.perf_counter() - started

        challenger = LoadedModel(0, model, spec, self.codec)
        report, score = self._score(challenger, holdout)
        champion_score = None if champion is None else self._score(champion, holdout)[1]
        gate = decide_regression if self.task.is_regression else decide
        decision = gate(
            score,
            champion_score,
            margin=self.settings.gate_margin,
            champion_version=champion_version,
        )
        class_margin = self.settings.gate_class_margin
        if champion_score is not None and not self.task.is_regression and class_margin is not None:
            passed, why, detail = class_check(
                holdout.y, score, champion_score, list(spec.labels), class_margin=class_margin
            )
            decision = with_check(
                decision, "per_class", passed=passed, refuse=True, reason=why, **detail
            )
        if (
            self.settings.gate_reference == "auto"
            and self.settings.curation == "naive"
            and not self.task.is_regression
            and champion is not None
            and contribution  # the version holds feedback rows
        ):
            decision = self._reference_check(
                decision, dv.id, config, spec, flagged, holdout, score, champion
            )
        if contribution and champion_version is not None:
            share = float(contribution.get("new_user_share", 0.0))
            limit = self.settings.max_new_user_share
            decision = with_check(
                decision,
                "contribution",
                # The first feedback has no earlier users to compare with (see _contribution).
                passed=bool(contribution.get("first_feedback")) or share <= limit,
                refuse=self.settings.refuse_on_contribution,
                reason=f"{share:.0%} of the new rows come from first-time users "
                f"(limit {limit:.0%})",
                **contribution,
            )
        export_record = self._onnx_parity(model, spec, holdout.x)
        if export_record.get("passed") is False:
            decision = with_check(
                decision,
                "onnx_parity",
                passed=False,
                refuse=True,
                reason=(
                    f"its ONNX export does not match torch (max |diff| "
                    f"{export_record['max_abs_diff']:.3g}, allowed {export_record['atol']}; "
                    f"arg-max agreement {export_record['argmax_agreement']:.4f})"
                ),
                **{k: v for k, v in export_record.items() if k != "passed"},
            )
        metrics = {
            **report,
            "export_onnx": export_record,
            "n_train": len(train),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "val_metric": result.best_val_metric,
            "val_loss": result.best_val_loss,
            "train_seconds": round(train_seconds, 3),
            "seconds_per_epoch": round(
                train_seconds / max(1, result.epochs_run - (result.resumed_from or 1) + 1), 4
            ),
            "resumed_from_epoch": result.resumed_from,
        }
        if result.privacy is not None:
            metrics["privacy"] = {**result.privacy.to_json(), **privacy}
        if result.federated is not None:
            metrics["federated"] = result.federated
        promoted = decision.promote and (self.settings.auto_promote or champion_version is None)
        with self.db.session() as s:
            mv = ModelVersion(
                arch=spec.arch,
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
            erased_now = s.scalar(select(DatasetVersion.erased).where(DatasetVersion.id == dv.id))
            parent_row = None if parent is None else s.get(ModelVersion, parent)
            warm_from_withdrawn = (
                parent_row is not None
                and parent_row.withdrawn_at is not None
                and bool(config.warm_start)
            )
            if erased_now != erased_at_start or warm_from_withdrawn:
                # A forget erased rows this run trained on (or withdrew the version it
                # started from) while it ran: the version is recorded for the audit trail,
                # without the summaries that could name the user, and never served.
                promoted = False
                mv.withdrawn_at = utcnow()
                mv.withdrawn_reason = "trained on rows erased (forget) while it trained"
                mv.gate = {"promote": False, "promoted": False, "reason": mv.withdrawn_reason}
                mv.metrics = {k: v for k, v in metrics.items() if k not in ("privacy",)}
                s.commit()
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
                raise RegistryError(
                    f"v{mv.version} was trained on rows a forget erased during the run; it is "
                    "recorded as withdrawn; train again"
                )
            folder = self.settings.models_dir / f"v{mv.version}"
            try:
                mv.weights_sha256 = save_artifact(model, spec, folder)
                mv.artifact_dir = str(folder)
                s.flush()
                if result.privacy is not None:
                    metrics["privacy"]["users_charged"] = ledger.charge(
                        s,
                        mv.version,
                        [u for *_, u in weighted],
                        result.privacy.epsilon,
                        result.privacy.delta,
                    )
                    mv.metrics = dict(metrics)
                registry.set_alias(s, registry.CANDIDATE, mv.version, action="set", reason=reason)
                if promoted:
                    registry.promote(s, mv.version, f"{reason}: {decision.reason}")
                s.commit()
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            info = registry.get_version(s, mv.version)
        # The run is recorded: its checkpoint has done its job.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return TrainResult(info, decision, promoted)

    @staticmethod
    def _units(weighted: Sequence[tuple[Any, ...]]) -> np.ndarray:
        """The sampling unit of each row: its user, or (no user) a unit of its own.

        A unit's number is a hash of the user's pseudonym (of the row's content when it
        has no user), not a position: leaving a user out moves no one else's rows to
        another unit, or across a private run's validation split.
        """
        out = np.empty(len(weighted), np.int64)
        for i, row in enumerate(weighted):
            user = row[-1]
            key = f"user:{user}" if user is not None else f"row:{row[0]}:{row[1]}:{row[2]}"
            out[i] = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
        return out

    def _privacy_admission(
        self,
        s: Session,
        weighted: list[tuple[str, str | None, float | None, float | None, str | None]],
        config: TrainConfig,
    ) -> tuple[
        list[tuple[str, str | None, float | None, float | None, str | None]], dict[str, Any]
    ]:
        """Leave out the rows of users whose budget this run would exceed."""
        from flywheel.privacy.dp import plan

        budget = self.settings.dp_user_budget
        run_eps = config.dp_epsilon
        if config.dp_noise_multiplier is not None:  # ε follows from σ: estimate it
            units = len(set(self._units(weighted).tolist()))
            run_eps = plan(
                users=max(1, round(units * (1 - config.val_fraction))),
                batch_size=config.batch_size,
                epochs=config.epochs,
                delta=config.dp_delta,
                noise_multiplier=config.dp_noise_multiplier,
            )[3]
        users = [u for *_, u in weighted]
        keep, refused = ledger.admit(
            users, ledger.spent(s, {u for u in users if u}), float(run_eps or 0.0), budget
        )
        kept = [row for row, k in zip(weighted, keep, strict=True) if k]
        info: dict[str, Any] = {
            "budget": budget,
            "users_left_out": len(refused),
            "rows_left_out": len(weighted) - len(kept),
        }
        if refused:
            log.warning(
                "privacy budget: %d user(s) left out of this run (%d rows): their ε spent "
                "plus this run's %.3g would exceed the budget %.3g",
                len(refused),
                info["rows_left_out"],
                run_eps,
                budget,
            )
            info["left_out"] = refused
        return kept, info

    def forget(
        self, user_id: str, *, retrain: bool = True, on_epoch: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Erase a user (right to erasure) and every model trained on their rows.

        One transaction deletes their predictions, feedback, examples, ledger rows and
        user row, marks the dataset versions that held their rows, makes a new dataset
        version without them, takes every affected model version out of service (no
        alias points to one; production falls back to the newest unaffected version
        it held, or to none) and writes the audit record. Then their inputs leave the
        blob folder and the affected weights are deleted; with ``retrain``, a model is
        trained from scratch on the remaining rows and goes through the gate against
        the fallback. Returns the audit record's detail.
        """
        self._settle_log()
        started = time.perf_counter()
        with self.db.session() as s:
            pid = self.resolve_user(s, user_id).id
            production = registry.get_alias(s, registry.PRODUCTION)
            latest = self._latest_dataset(s)
            held_latest = {
                e
                for (e,) in s.execute(
                    select(DatasetVersionExample.example_id).where(
                        DatasetVersionExample.dataset_version_id == latest.id
                    )
                )
            }
            totals_before = forget_rows.totals(s)
            er = forget_rows.erase(s, pid)
            new_dv = None
            if latest.id in er.dataset_versions:  # later versions exclude the erased rows
                remaining = list(s.scalars(select(Example).where(Example.id.in_(held_latest))))
                stats = latest.stats
                new_dv = self._new_dataset_version(
                    s,
                    remaining,
                    parent=latest.id,
                    source=latest.source,
                    preprocessing=dict(latest.preprocessing),
                    labels=list(stats["labels"]),
                    extra={
                        "erased_from": latest.id,
                        "erased_rows": er.dataset_versions[latest.id],
                        **{k: stats[k] for k in ("label_issues",) if k in stats},
                    },
                )
            now = utcnow()
            why = f"trained on rows of a user forgotten at {now.isoformat(timespec='seconds')}"
            for v in er.affected:
                mv = s.get(ModelVersion, v)
                assert mv is not None
                mv.withdrawn_at, mv.withdrawn_reason = now, why
            fallback = self._fallback(s, set(er.affected))
            moved: dict[str, Any] = {}
            for alias in (registry.PRODUCTION, registry.CANDIDATE):
                held = registry.get_alias(s, alias)
                if held in er.affected:
                    target = fallback if alias == registry.PRODUCTION else None
                    target = target or registry.get_alias(s, registry.PRODUCTION)
                    if target is not None and target not in er.affected:
                        registry.set_alias(s, alias, target, action="withdraw", reason=why)
                    else:
                        target = None
                        registry.clear_alias(s, alias, reason=why)
                    moved[alias] = {"from": held, "to": target}
            detail: dict[str, Any] = {
                "counts_before": er.counts_before,
                "erased": {
                    "predictions": er.predictions,
                    "feedback": er.feedback,
                    "examples": er.examples,
                    "review_items": er.review_items,
                    "ledger_rows": er.ledger_rows,
                    "explanations": er.explanations,
                    "inputs": len(er.input_hashes),
                },
                "inputs_digest": er.inputs_digest,
                "table_rows_before": totals_before,
                "dataset_versions_marked": sorted(er.dataset_versions),
                "dataset_version_new": None if new_dv is None else new_dv.id,
                "versions_affected": er.affected,
                "aliases_moved": moved,
                "production_before": production,
            }
            record = forget_rows.audit(s, er, detail)
            record_id = record.id
            new_dv_id = None if new_dv is None else new_dv.id
        # Committed: now the bytes. Inputs another user also sent stay (their copy).
        with self.db.session() as s:
            shared = forget_rows.still_referenced(s, er.input_hashes)
        blobs_deleted = self._delete_unreferenced(er.input_hashes - shared)
        for h in sorted(er.derived):  # their explanation overlays
            self.blobs.delete(h)
        spilled = self._scrub_spill(pid)
        # What the withdrawn production scored on the held-out rows that remain, while
        # its weights still exist: the retrain's gate is measured against it too.
        before = self._withdrawn_score(production, er.affected, new_dv_id)
        for v in er.affected:
            shutil.rmtree(self.settings.models_dir / f"v{v}", ignore_errors=True)
        with self.db.session() as s:
            rec = s.get(AuditRecord, record_id)
            assert rec is not None
            rec.detail = {
                **rec.detail,
                "blobs_deleted": blobs_deleted,
                "inputs_kept_shared": len(shared),
                "spill_rows_deleted": spilled,
                "counts_after": forget_rows.table_counts(s, pid),
                "table_rows_after": forget_rows.totals(s),
                "production_after": registry.get_alias(s, registry.PRODUCTION),
                "needs_retrain": production in er.affected,
                "withdrawn_production_score": before,
                "retrain": None,
                "seconds": round(time.perf_counter() - started, 3),
            }
        self.refresh_model()
        if retrain and production in er.affected:
            return self.retrain_after_forget(record_id, on_epoch=on_epoch)
        return self._audit_entry(record_id)

    def _withdrawn_score(
        self, production: int | None, affected: list[int], dv_id: int | None
    ) -> dict[str, Any] | None:
        if production is None or production not in affected or dv_id is None:
            return None
        try:
            old = self._load_version(production)
        except FlywheelError:
            return None
        with self.db.session() as s:
            rows = self._rows(s, dv_id, HOLDOUT)
        if not rows:
            return None
        report, _ = self._score(old, self._arrays(rows, old.spec))
        metric = "mse" if self.task.is_regression else "accuracy"
        return {"version": production, metric: report[metric], "n": len(rows)}

    def retrain_after_forget(
        self, audit_id: int, *, on_epoch: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Train production again, from scratch, on the rows a forget left; it goes
        through the gate against the fallback (if any). Recorded on the audit entry."""
        entry = self._audit_entry(audit_id)
        if entry["action"] != "forget":
            raise InputError(f"audit record {audit_id} is a {entry['action']}, not a forget")
        started = time.perf_counter()
        t = self.train(
            self.train_config(warm_start=False),
            on_epoch=on_epoch,
            reason=f"forget (audit #{audit_id}): production v{entry['production_before']} "
            "was withdrawn",
        )
        with self.db.session() as s:
            rec = s.get(AuditRecord, audit_id)
            assert rec is not None
            old = rec.detail.get("withdrawn_production_score") or {}
            metric = t.decision.metric
            rec.detail = {
                **rec.detail,
                "retrain": {
                    "version": t.model.version,
                    "promoted": t.promoted,
                    "gate": t.decision.reason,
                    metric: t.decision.challenger_score,
                    # the same held-out rows: what forgetting cost (or gained)
                    f"{metric}_change_vs_withdrawn": None
                    if metric not in old
                    else round(t.decision.challenger_score - old[metric], 4),
                    "dataset_version": t.model.dataset_version,
                    "seconds": round(time.perf_counter() - started, 3),
                },
                "production_after": registry.get_alias(s, registry.PRODUCTION),
                "seconds": round(rec.detail.get("seconds", 0) + time.perf_counter() - started, 3),
            }
        self.refresh_model()
        return self._audit_entry(audit_id)

    def _audit_entry(self, audit_id: int) -> dict[str, Any]:
        with self.db.session() as s:
            rec = s.get(AuditRecord, audit_id)
            if rec is None:
                raise NotFoundError("audit record", audit_id)
            return {
                "audit_id": rec.id,
                "action": rec.action,
                "subject": rec.subject,
                "created_at": rec.created_at.isoformat(),
                **rec.detail,
            }

    def apply_retention(self, days: float | None = None) -> dict[str, Any]:
        """Delete stored inputs of predictions older than ``days`` (default: the
        ``retention_days`` setting). Inputs that training rows use, or that a newer
        prediction also sent, are kept; the prediction rows stay (without their input,
        their feedback can no longer become training rows). Audited."""
        days = self.settings.retention_days if days is None else days
        if days is None:
            raise InputError("no retention age: pass --days or set retention_days")
        self._settle_log()
        cutoff = utcnow() - timedelta(days=days)
        with self.db.session() as s:
            old = set(
                s.scalars(
                    select(Prediction.input_hash).where(Prediction.created_at < cutoff).distinct()
                )
            )
            n_old = int(s.scalar(select(func.count()).where(Prediction.created_at < cutoff)) or 0)
            training = set(s.scalars(select(Example.input_hash).where(Example.input_hash.in_(old))))
            recent = set(
                s.scalars(
                    select(Prediction.input_hash).where(
                        Prediction.created_at >= cutoff, Prediction.input_hash.in_(old)
                    )
                )
            )
        doomed = sorted(old - training - recent)

        def needed(s: Session, hashes: set[str]) -> set[str]:
            keep = set(s.scalars(select(Example.input_hash).where(Example.input_hash.in_(hashes))))
            return keep | set(
                s.scalars(
                    select(Prediction.input_hash).where(
                        Prediction.created_at >= cutoff, Prediction.input_hash.in_(hashes)
                    )
                )
            )

        deleted = self._delete_unreferenced(set(doomed), needed)
        detail = {
            "days": days,
            "cutoff": cutoff.isoformat(timespec="seconds"),
            "predictions": n_old,
            "inputs_deleted": deleted,
            "kept_for_training": len(old & training),
            "kept_recent": len(old & recent - training),
        }
        if deleted:
            with self.db.session() as s:
                s.add(AuditRecord(action="retention", subject=None, detail=detail))
        return detail

    def _delete_unreferenced(
        self,
        digests: set[str],
        needed: Callable[[Session, set[str]], set[str]] = forget_rows.still_referenced,
    ) -> int:
        """Delete blobs no row needs; one that a row came to need meanwhile (a request
        with the same bytes, logged between the check and the delete) is put back from
        the bytes read before deleting. Returns how many stay deleted."""
        held: dict[str, bytes] = {}
        for h in sorted(digests):
            try:
                held[h] = self.blobs.get(h)
            except NotFoundError:
                continue
            self.blobs.delete(h)
        self._settle_log()
        with self.db.session() as s:
            revived = needed(s, set(held))
        for h in revived:
            self.blobs.put(held[h])
        return len(held) - len(revived)

    def _scrub_spill(self, pseudonym: str) -> int:
        """Drop the user's rows from ``spill/*.jsonl`` (prediction log rows the database
        refused at a shutdown, kept for replay): a forget covers them too."""
        removed = 0
        for path in sorted((self.settings.project_dir / "spill").glob("*.jsonl")):
            lines = path.read_text().splitlines(keepends=True)
            kept = [ln for ln in lines if pseudonym not in ln]
            if len(kept) != len(lines):
                removed += len(lines) - len(kept)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(kept))
                os.replace(tmp, path)
        return removed

    def _fallback(self, s: Session, affected: set[int]) -> int | None:
        """The newest version production held that is not affected (and has weights)."""
        events = s.scalars(
            select(AliasEvent)
            .where(AliasEvent.name == registry.PRODUCTION)
            .order_by(AliasEvent.id.desc())
        )
        for ev in events:
            for v in (ev.version, ev.previous_version):
                if v is None or v in affected:
                    continue
                mv = s.get(ModelVersion, v)
                if mv is not None and mv.withdrawn_at is None:
                    return v
        return None

    def audit_log(self, action: str | None = None) -> list[dict[str, Any]]:
        with self.db.session() as s:
            q = select(AuditRecord).order_by(AuditRecord.id)
            if action is not None:
                q = q.where(AuditRecord.action == action)
            return [
                {
                    "id": r.id,
                    "action": r.action,
                    "subject": r.subject,
                    "detail": r.detail,
                    "created_at": r.created_at.isoformat(),
                }
                for r in s.scalars(q)
            ]

    def privacy_ledger(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Each user's cumulative ε and δ across private runs (or one user's)."""
        with self.db.session() as s:
            pid = None if user_id is None else self.resolve_user(s, user_id).id
            rows = ledger.summary(s, pid)
        budget = self.settings.dp_user_budget
        for r in rows:
            r["budget"] = budget
            r["remaining"] = max(0.0, budget - r["epsilon"])
        if user_id is not None and not rows:
            return [
                {
                    "user_id": pid,
                    "epsilon": 0.0,
                    "delta": 0.0,
                    "runs": [],
                    "budget": budget,
                    "remaining": budget,
                }
            ]
        return rows

    def _reference_check(
        self,
        decision: GateDecision,
        dv_id: int,
        config: TrainConfig,
        spec: ModelSpec,
        flagged: set[str],
        holdout: Arrays,
        score: np.ndarray,
        champion: LoadedModel,
    ) -> GateDecision:
        """Naive curation took every answer at face value: curate the same answers by
        trust instead, train the same model on that, and refuse a challenger that trails
        this reference.

        A poisoned challenger can still beat a weak champion; what gives it away is that
        the same feedback, with the liars weighed down, gives a better model.
        """
        self.update_trust()
        with self.db.session() as s:
            dv = s.get(DatasetVersion, dv_id)
            assert dv is not None
            labels = list(dv.stats["labels"])
            base = [
                (h, lab, val, 1.0 if w is None else w)
                for h, lab, val, w, _ in self._weighted_rows(s, dv_id, TRAIN, base_only=True)
            ]
            answers, held_back = self._answers(s, include_used=True, until=dv.created_at)
            answers = [a for a in answers if a.label in labels]
            held = {h for h, _, _ in self._rows(s, dv_id, HOLDOUT)}
            curated = curate(
                answers, held, {h for h, *_ in base}, max_user_share=self.settings.max_user_share
            )
        rows = sorted(
            base + [(r.input_hash, r.label, r.value, r.weight) for r in curated.rows],
            key=lambda r: (r[0], str(r[1])),
        )
        train = self._arrays([(h, lab, val) for h, lab, val, _ in rows], spec)
        weights = np.array([1.0 if w is None else w for *_, w in rows], np.float32)
        mode = self.settings.label_issue_mode
        if flagged and mode != "keep":
            hit = np.array([h in flagged for h, *_ in rows])
            weights[hit] *= 0.0 if mode == "exclude" else 0.2
        train.weights = weights
        seed_everything(config.seed)
        reference = create_model(spec)
        if config.warm_start and champion.spec == spec:
            reference.load_state_dict(champion.model.state_dict())
        augment = make_augment(self.task.modality) if config.augment else None
        fit(reference, train, config, augment=augment)
        ref_score = self._score(LoadedModel(0, reference, spec, self.codec), holdout)[1]
        passed, why, detail = reference_check(
            holdout.y,
            score,
            ref_score,
            list(spec.labels),
            margin=self.settings.gate_reference_margin,
        )
        return with_check(
            decision,
            "trusted_reference",
            passed=passed,
            refuse=True,
            reason=why,
            reference_rows=len(rows),
            held_back_answers=held_back,
            **detail,
        )

    def _onnx_parity(self, model: nn.Module, spec: ModelSpec, x: np.ndarray) -> dict[str, Any]:
        """Export a challenger to ONNX in a scratch folder and compare it with torch."""
        if not self.settings.onnx_check or not arch_info(spec.arch).onnx_check or not len(x):
            return {"skipped": "onnx_check is off for this project or architecture"}
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return {"skipped": "onnxruntime is not installed (pip install 'flywheel-ml[onnx]')"}
        import tempfile

        from flywheel.export.onnx import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            manifest = export_onnx(model, spec, Path(tmp) / "bundle", sample=x[:256])
        record: dict[str, Any] = manifest["parity"]
        return record

    def has_interrupted_run(self) -> bool:
        return (self.settings.project_dir / CHECKPOINT).is_dir()

    def evaluate(
        self, version: int | None = None, *, source: Source | None = None
    ) -> dict[str, Any]:
        """Score a version (default: production) on the held-out split, or on ``source``."""
        with self.db.session() as s:
            if version is None:
                version = registry.get_alias(s, registry.PRODUCTION)
                if version is None:
                    raise RegistryError("no production model; train one with `flywheel train`")
            registry.get_version(s, version)
            dv = self._latest_dataset(s)
            holdout_rows = self._rows(s, dv.id, HOLDOUT)
        loaded = self._load_version(version)
        skipped: list[dict[str, str]] = []
        if source is None:
            data = self._arrays(holdout_rows, loaded.spec)
            where = f"the held-out split of dataset version {dv.id}"
        else:
            data, skipped = self._outside_arrays(source, loaded)
            where = source.name
        report, _ = self._score(loaded, data)
        return {
            "model_version": version,
            "data": where,
            "dataset_version": dv.id if source is None else None,
            "skipped": skipped,
            **report,
        }

    def _outside_arrays(
        self, source: Source, loaded: LoadedModel
    ) -> tuple[Arrays, list[dict[str, str]]]:
        rows: list[tuple[bytes, str | None, float | None]] = []
        skipped = list(getattr(source, "skipped", []))
        for i, ex in enumerate(source):
            try:
                self.codec.probe(ex.content)
            except InputError as exc:
                skipped.append({"path": ex.source_path or f"#{i}", "reason": str(exc)})
                continue
            rows.append((ex.content, ex.label, ex.value))
        if not rows:
            raise DataError(f"{source.name!r} holds no readable input to evaluate on")
        if not loaded.is_regression:
            unknown = sorted({str(lab) for _, lab, _ in rows} - set(loaded.labels))
            if unknown:
                raise DataError(
                    f"{source.name!r} has labels the model does not know: {unknown}; "
                    f"model v{loaded.version} knows {loaded.labels}"
                )
        by_digest = {hashlib.sha256(c).hexdigest(): c for c, _, _ in rows}
        keyed: list[Row] = [(hashlib.sha256(c).hexdigest(), lab, v) for c, lab, v in rows]
        labels = None if loaded.is_regression else loaded.labels
        arrays = load_arrays(
            keyed, by_digest.__getitem__, self.codec, loaded.spec.preprocessing, labels
        )
        return arrays, skipped

    def find_label_issues(
        self, *, folds: int = 5, config: TrainConfig | None = None
    ) -> dict[str, Any]:
        """Likely mislabelled training rows of the newest dataset version (confident learning).

        Out-of-fold probabilities come from the project's architecture trained on the
        other folds; rows whose given label the model confidently disagrees with are
        flagged. The result is stored with the dataset version; training then excludes
        or down-weights those rows (``label_issue_mode``).
        """
        from flywheel.feedback.label_issues import (
            find_label_issues,
            out_of_fold_probabilities,
            torch_fit_predict,
        )

        if self.task.is_regression:
            raise InputError("label issues need classes; this is a regression project")
        config = config or self.train_config()
        with self.db.session() as s:
            dv = self._latest_dataset(s)
            spec = self._spec(dv, config)
            rows = self._rows(s, dv.id, TRAIN)
            paths = dict(
                s.execute(
                    select(Example.input_hash, Example.source_path)
                    .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
                    .where(DatasetVersionExample.dataset_version_id == dv.id)
                ).all()
            )
        data = self._arrays(rows, spec)
        probs = out_of_fold_probabilities(
            data.x,
            data.y,
            len(spec.labels),
            torch_fit_predict(spec, config),
            folds=folds,
            seed=config.seed,
        )
        found = find_label_issues(data.y, probs).to_json(list(spec.labels))
        for issue in found["issues"]:
            digest = rows[issue["index"]][0]
            issue["input_hash"] = digest
            issue["source_path"] = paths.get(digest)
        found |= {"dataset_version": dv.id, "folds": folds, "arch": spec.arch}
        with self.db.session() as s:
            row = s.get(DatasetVersion, dv.id)
            assert row is not None
            # An analysis of the version, kept beside it; its content (and hash) is unchanged.
            row.stats = {**row.stats, "label_issues": found}
        return found

    # -- the loop ----------------------------------------------------------------------

    def _answers(
        self,
        s: Session,
        *,
        naive: bool = False,
        include_used: bool = False,
        until: datetime | None = None,
    ) -> tuple[list[Answer], int]:
        """Usable answers from feedback not yet turned into an example, weighted by trust
        (``include_used``: every answer; ``until``: only those given by then).

        Returns the answers and how many were held back because their user is quarantined.
        """
        used = select(Example.feedback_id).where(Example.feedback_id.is_not(None))
        q = (
            select(
                Feedback,
                Prediction.input_hash,
                Prediction.label,
                Prediction.value,
                User.trust,
                User.trust_detail,
                User.quarantined_at,
            )
            .join(Prediction, Prediction.id == Feedback.prediction_id)
            .outerjoin(User, User.id == Feedback.user_id)
            .order_by(Feedback.created_at, Feedback.id)
        )
        if not include_used:
            q = q.where(Feedback.id.not_in(used))
        if until is not None:
            q = q.where(Feedback.created_at <= until)
        out: list[Answer] = []
        held_back = 0
        for fb, input_hash, predicted, predicted_value, trust, detail, quarantined in s.execute(q):
            if not self.blobs.exists(input_hash):  # its input expired (retention)
                continue
            if quarantined is not None and not naive:
                held_back += 1
                continue
            weight = 1.0 if naive else DEFAULT_TRUST if trust is None else float(trust)
            if self.task.is_regression:
                value = (
                    fb.value if fb.value is not None else (predicted_value if fb.correct else None)
                )
                if value is not None:
                    out.append(
                        Answer(
                            fb.id, input_hash, None, fb.user_id, fb.created_at, float(value), weight
                        )
                    )
                continue
            label = fb.label if fb.label is not None else (predicted if fb.correct else None)
            if label is not None:
                if not naive and detail:
                    # How far this user's word is to be trusted *for this label*: a
                    # targeted liar is right most of the time, but not when saying it.
                    weight = float(detail.get("label_trust", {}).get(label, weight))
                out.append(
                    Answer(fb.id, input_hash, label, fb.user_id, fb.created_at, weight=weight)
                )
        return out, held_back

    def curate(self) -> tuple[DatasetInfo | None, dict[str, Any]]:
        """Make a new dataset version from the feedback not yet used; None when there is none.

        Trust is re-estimated first; quarantined users' answers are held back (and
        counted); conflicting answers are settled by a trust-weighted vote; no user
        gives more than ``max_user_share`` of the new rows; each row carries its
        user's trust as its training weight.
        """
        naive = self.settings.curation == "naive"
        if not self.task.is_regression and not naive:
            self.update_trust()
        with self.db.session() as s:
            dv = self._latest_dataset(s)
            labels = list(dv.stats["labels"])
            answers, held_back = self._answers(s, naive=naive)
            answers = [a for a in answers if self.task.is_regression or a.label in labels]
            holdout = {h for h, _, _ in self._rows(s, dv.id, HOLDOUT)}
            known = {h for h, _, _ in self._rows(s, dv.id, TRAIN)}
            cap = None if naive else self.settings.max_user_share
            c = curate(answers, holdout, known, max_user_share=cap)
            summary: dict[str, Any] = {
                "answers": c.answers,
                "rows": len(c.rows),
                "dropped_holdout": c.dropped_holdout,
                "dropped_known": c.dropped_known,
                "merged_duplicates": c.merged_duplicates,
                "quarantined": held_back,
                "capped": c.capped,
            }
            if not c.rows:
                return None, summary
            contribution = self._contribution(s, c.rows, dv)
            new = [
                Example(
                    input_hash=r.input_hash,
                    label=r.label,
                    value=r.value,
                    split=TRAIN,
                    origin="feedback",
                    feedback_id=r.feedback_id,
                    user_id=r.user_id,
                    weight=r.weight,
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
                preprocessing=dict(dv.preprocessing),
                labels=labels,
                extra={"curation": summary, "contribution": contribution},
            )
            return self._dataset_info(nv), summary

    def _contribution(
        self, s: Session, rows: Sequence[Any], since: DatasetVersion
    ) -> dict[str, Any]:
        """Who gave the new rows: the largest single share, and the share of first-time users."""
        users = [r.user_id for r in rows if r.user_id is not None]
        counts = Counter(users)
        top_user, top = counts.most_common(1)[0] if counts else (None, 0)
        first_seen = dict(
            s.execute(select(User.id, User.created_at).where(User.id.in_(set(users)))).all()
        )
        fresh = sum(1 for u in users if first_seen.get(u) and first_seen[u] > since.created_at)
        # Before any feedback has been used, every user is new: the check has nothing to
        # compare with, so it reports the share but does not flag it.
        first_cycle = int(since.stats.get("n_feedback", 0)) == 0
        return {
            "first_feedback": first_cycle,
            "rows": len(rows),
            "users": len(counts),
            "top_user": top_user,
            "top_user_share": round(top / len(rows), 4) if rows else 0.0,
            "new_user_share": round(fresh / len(rows), 4) if rows else 0.0,
        }

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

    # -- export ------------------------------------------------------------------------

    def export(
        self, version: int, out_dir: str | Path, *, quantize: str | None = None
    ) -> dict[str, Any]:
        """Write an ONNX bundle of ``version`` (runs with ONNX Runtime alone) and check it.

        ``quantize``: ``None`` (fp32), ``"int8"`` (dynamic) or ``"int8-static"`` (static,
        calibrated on a fixed seeded sample of at most `CALIBRATION_ROWS` rows of the
        latest dataset version's train split). The parity check against torch runs on the
        held-out rows, with both graphs' accuracy (MSE) there; the record is kept with the
        model version (``metrics["export_onnx"]`` / ``["export_int8"]`` /
        ``["export_int8_static"]``). An fp32 export that fails parity is an error, and its
        bundle is not left behind.
        """
        from flywheel.export.onnx import CALIBRATION_ROWS, QUANTIZE_MODES, export_onnx

        if quantize is not None and quantize not in QUANTIZE_MODES:
            allowed = ", ".join(repr(q) for q in QUANTIZE_MODES)
            raise ModelError(f"quantize must be one of {allowed} or nothing; got {quantize!r}")
        out = Path(out_dir).expanduser().resolve()
        if out.exists() and any(out.iterdir()):
            raise InputError(f"output folder {str(out)!r} is not empty")
        loaded = self._load_version(version)
        with self.db.session() as s:
            dv_id = self._latest_dataset(s).id
            rows = self._rows(s, dv_id, HOLDOUT)
            train_rows = self._rows(s, dv_id, TRAIN) if quantize == "int8-static" else []
        holdout = self._arrays(rows, loaded.spec)
        calibration = None
        if train_rows:
            # Train rows, so that the held-out scores below stay a fair measurement.
            rng = np.random.default_rng(self.settings.seed)
            n = min(CALIBRATION_ROWS, len(train_rows))
            keep = rng.choice(len(train_rows), size=n, replace=False)
            calibration = self._arrays([train_rows[i] for i in sorted(keep)], loaded.spec).x
        try:
            manifest = export_onnx(
                loaded.model,
                loaded.spec,
                out,
                sample=holdout.x,
                quantize=quantize,
                targets=holdout.y,
                calibration=calibration,
            )
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        if manifest.get("parity_failed"):
            shutil.rmtree(out, ignore_errors=True)
            raise ModelError(
                f"the ONNX export of v{version} does not match torch: max |diff| "
                f"{manifest['parity']['max_abs_diff']:.3g} (allowed {manifest['parity']['atol']}), "
                f"arg-max agreement {manifest['parity']['argmax_agreement']:.4f}",
                version=version,
            )
        with self.db.session() as s:
            mv = s.get(ModelVersion, version)
            assert mv is not None
            key = f"export_{(quantize or 'onnx').replace('-', '_')}"  # export_int8_static
            record = {**manifest["parity"], "bytes": manifest["bytes"]}
            if "calibration_rows" in manifest:
                record["calibration_rows"] = manifest["calibration_rows"]
            mv.metrics = {**mv.metrics, key: record}
        return {**manifest, "folder": str(out), "model_version": version}

    # -- users: trust, quarantine, the review queue ------------------------------------

    def update_trust(self) -> dict[str, dict[str, Any]]:
        """Re-estimate every user's trust from what the system can check, and store it.

        Votes are users' labels per input; golden probes (queue items whose label is
        known) are clamped; confident production predictions act as one more voter.
        Users below ``quarantine_below`` after ``quarantine_min_answers`` answers are
        quarantined, unless an admin released them.
        """
        self._settle_log()
        st = self.settings
        with self.db.session() as s:
            dv = self._latest_dataset(s)
            labels = list(dv.stats["labels"])
            rows = s.execute(
                select(
                    Feedback.user_id,
                    Prediction.input_hash,
                    Feedback.label,
                    Feedback.correct,
                    Prediction.label,
                )
                .join(Prediction, Prediction.id == Feedback.prediction_id)
                .where(Feedback.user_id.is_not(None))
                # By content, then time: the estimate must not follow how concurrent
                # answers interleaved (its sums would differ in their last bits).
                .order_by(Prediction.input_hash, Feedback.user_id, Feedback.created_at, Feedback.id)
            ).all()
            votes = []
            for user, item, label, correct, predicted in rows:
                said = label if label is not None else (predicted if correct else None)
                if said in labels:
                    votes.append(Vote(str(user), item, str(said)))
            if not votes:
                return {}
            items = {v.item for v in votes}
            golden = {
                h: str(lab)
                for h, lab in s.execute(
                    select(Prediction.input_hash, Example.label)
                    .join(ReviewItem, ReviewItem.prediction_id == Prediction.id)
                    .join(Example, Example.id == ReviewItem.golden_example_id)
                )
                if h in items
            }
            # One model vote per input: the newest version's prediction, its most confident
            # one if that version answered the same input more than once. Confidence is
            # rounded: a micro-batch changes its last bits, and trust must not follow them.
            model: dict[str, tuple[int, float, str]] = {}
            for h, version, lab, probs in s.execute(
                select(
                    Prediction.input_hash,
                    Prediction.model_version,
                    Prediction.label,
                    Prediction.probabilities,
                ).where(Prediction.input_hash.in_(items), Prediction.label.is_not(None))
            ):
                vote = (int(version), round(max(probs.values()), 4) if probs else 0.0, str(lab))
                if h not in model or vote > model[h]:
                    model[h] = vote
            trust = estimate_trust(
                votes,
                golden=golden,
                model={h: (lab, c) for h, (_, c, lab) in model.items()},
                labels=labels,
            )
            now = utcnow()
            out = {}
            for user_id, t in trust.items():
                row = s.get(User, user_id)
                if row is None:
                    continue
                # Six places: what weighs a row, without the last bits of the EM's sums.
                row.trust, row.trust_detail, row.trust_updated_at = (
                    round(t.trust, 6),
                    t.to_json(),
                    now,
                )
                released = (row.quarantine_reason or "").startswith("released")
                if (
                    row.quarantined_at is None
                    and not released
                    and t.votes >= st.quarantine_min_answers
                    and t.trust < st.quarantine_below
                ):
                    row.quarantined_at = now
                    row.quarantine_reason = (
                        f"trust {t.trust:.2f} below {st.quarantine_below} after {t.votes} answers"
                    )
                out[user_id] = t.to_json()
            return out

    def users(self) -> list[dict[str, Any]]:
        """Every user with trust, the counts behind it, contributions and quarantine."""
        self._settle_log()
        with self.db.session() as s:
            answers = dict(
                s.execute(select(Feedback.user_id, func.count()).group_by(Feedback.user_id)).all()
            )
            rows_used = dict(
                s.execute(
                    select(Example.user_id, func.count())
                    .where(Example.origin == "feedback")
                    .group_by(Example.user_id)
                ).all()
            )
            return [
                {
                    "user_id": u.id,
                    "trust": u.trust,
                    "trust_detail": u.trust_detail,
                    "answers": answers.get(u.id, 0),
                    "rows_used": rows_used.get(u.id, 0),
                    "quarantined": u.quarantined_at is not None,
                    "quarantine_reason": u.quarantine_reason,
                    "created_at": u.created_at.isoformat(),
                }
                for u in s.scalars(select(User).order_by(User.id))
            ]

    def quarantine(self, user_id: str, reason: str = "quarantined by an admin") -> dict[str, Any]:
        """Hold back a user's feedback from training (kept, listed, reversible)."""
        with self.db.session() as s:
            row = self.resolve_user(s, user_id)
            row.quarantined_at, row.quarantine_reason = utcnow(), reason
            pid = row.id
        return next(u for u in self.users() if u["user_id"] == pid)

    def release(self, user_id: str) -> dict[str, Any]:
        """Take a user out of quarantine; their held-back feedback is used by the next retrain."""
        with self.db.session() as s:
            row = self.resolve_user(s, user_id)
            row.quarantined_at, row.quarantine_reason = None, "released by an admin"
            pid = row.id
        return next(u for u in self.users() if u["user_id"] == pid)

    def review_queue(
        self,
        *,
        limit: int = 20,
        strategy: str | None = None,
        spread: bool = False,
        seed: int = 0,
    ) -> list[dict[str, Any]]:
        """The logged predictions most worth a user's answer, not yet answered.

        A share (``golden_share``) of the items are golden probes: training examples
        whose label is known, predicted afresh, so that answers to them measure trust.
        Every item handed out is recorded; feedback on it is marked as queue feedback.
        """
        self._settle_log()
        if self.task.is_regression:
            raise InputError(
                "the review queue ranks class probabilities; this is a regression project"
            )
        strategy = strategy or self.settings.review_strategy
        if strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        if limit < 1 or limit > 500:
            raise InputError(f"limit must be between 1 and 500; got {limit}")
        with self.db.session() as s:
            answered = select(Feedback.prediction_id)
            recent = s.execute(
                select(Prediction.id, Prediction.probabilities, Prediction.input_hash)
                .where(Prediction.label.is_not(None), Prediction.id.not_in(answered))
                .order_by(Prediction.created_at.desc())
                .limit(self.settings.review_window)
            ).all()
            # Never ask about an input whose label is already known or already given.
            hashes = {h for _, _, h in recent}
            known = set(
                s.scalars(select(Example.input_hash).where(Example.input_hash.in_(hashes)))
            ) | set(
                s.scalars(
                    select(Prediction.input_hash)
                    .join(Feedback, Feedback.prediction_id == Prediction.id)
                    .where(Prediction.input_hash.in_(hashes))
                )
            )
        candidates = [
            Candidate(pid, probs, h)
            for pid, probs, h in recent
            # an input the retention job deleted cannot be shown to anyone
            if probs and h not in known and self.blobs.exists(h)
        ]
        share = self.settings.golden_share
        room = min(limit - 1, round(limit * share)) if limit > 1 else 0
        picked = rank(candidates, strategy=strategy, limit=limit - room, spread=spread, seed=seed)
        # Golden probes in proportion to the real items: a queue of nothing but probes
        # would give them away.
        n_golden = min(room, round(len(picked) * share / (1 - share))) if share < 1 else 0
        items = [i.to_json() for i in picked]
        golden = self._golden_probes(n_golden, seed, strategy) if n_golden else []
        with self.db.session() as s:
            for i in picked:
                if s.get(ReviewItem, i.prediction_id) is None:
                    s.add(
                        ReviewItem(
                            prediction_id=i.prediction_id,
                            strategy=strategy,
                            score=i.score,
                            reason=i.reason,
                        )
                    )
        # Golden probes sit among the others, so a user cannot tell them apart.
        rng = np.random.default_rng(seed + len(items))
        for g in golden:
            items.insert(int(rng.integers(0, len(items) + 1)), g)
        return items

    def _golden_probes(self, n: int, seed: int, strategy: str) -> list[dict[str, Any]]:
        loaded = self.serving_model()
        with self.db.session() as s:
            dv = self._latest_dataset(s)
            pool = s.execute(
                select(Example.id, Example.input_hash)
                .join(DatasetVersionExample, DatasetVersionExample.example_id == Example.id)
                .where(
                    DatasetVersionExample.dataset_version_id == dv.id,
                    Example.split == TRAIN,
                    Example.origin == "base",
                )
                .order_by(Example.id)
            ).all()
            used = (
                s.scalar(
                    select(func.count())
                    .select_from(ReviewItem)
                    .where(ReviewItem.golden_example_id.is_not(None))
                )
                or 0
            )
        if not pool:
            return []
        rng = np.random.default_rng(seed * 7919 + used)
        out = []
        for k in rng.choice(len(pool), size=min(n, len(pool)), replace=False):
            example_id, digest = pool[int(k)]
            content = self.blobs.get(digest)
            probs = loaded.outputs(loaded.decode(content)[None])[0]
            pid = str(uuid.uuid4())
            probabilities = {lab: float(p) for lab, p in zip(loaded.labels, probs, strict=True)}
            # Scored and explained like any other item, so a user cannot tell it apart.
            (item,) = rank([Candidate(pid, probabilities, digest)], strategy=strategy, limit=1)
            with self.db.session() as s:
                s.add(
                    Prediction(
                        id=pid,
                        model_version=loaded.version,
                        user_id=None,
                        input_hash=digest,
                        label=max(probabilities, key=lambda k: probabilities[k]),
                        probabilities=probabilities,
                        latency_ms=0.0,
                    )
                )
                s.flush()
                s.add(
                    ReviewItem(
                        prediction_id=pid,
                        strategy=strategy,
                        score=item.score,
                        reason=item.reason,
                        golden_example_id=int(example_id),
                    )
                )
            out.append(item.to_json())
        return out

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

    # -- explanations ----------------------------------------------------------------------

    def explain(self, prediction_id: str, target: str | None = None) -> dict[str, Any]:
        """Why the model answered what it did (Captum), cached per input, model version
        and target class; the PNG overlay (images, audio) goes to the blob folder."""
        version, detail, png = self._explanation(prediction_id, target)
        return {
            "prediction_id": prediction_id,
            "model_version": version,
            **detail,
            "overlay": png is not None,
        }

    def explanation_png(self, prediction_id: str, target: str | None = None) -> bytes:
        """The PNG overlay of ``explain`` (computed if not cached)."""
        _, _, png = self._explanation(prediction_id, target)
        if png is None:
            raise NotFoundError("overlay (this task's explanations have none) for", prediction_id)
        return self.blobs.get(png)

    def _explanation(
        self, prediction_id: str, target: str | None
    ) -> tuple[int, dict[str, Any], str | None]:
        """(model version, the explanation's JSON, its overlay's blob) — cached or made."""
        from flywheel.explain import explain, overlay_png

        def cached(s: Session) -> ExplanationRow | None:
            return s.scalar(
                select(ExplanationRow).where(
                    ExplanationRow.input_hash == input_hash,
                    ExplanationRow.model_version == version,
                    ExplanationRow.target == key,
                )
            )

        if self.prediction_log is not None:
            self.prediction_log.wait_written(prediction_id)
        with self.db.session() as s:
            pred = s.get(Prediction, prediction_id)
            if pred is None:
                raise NotFoundError("prediction", prediction_id)
            input_hash, version, label = pred.input_hash, pred.model_version, pred.label
            key = target if target is not None else (label or "")
            if (hit := cached(s)) is not None:
                return version, dict(hit.detail), hit.png_hash
        if not self.blobs.exists(input_hash):
            raise NotFoundError("stored input of prediction", prediction_id)
        loaded = self._loaded if self._loaded and self._loaded.version == version else None
        try:
            loaded = loaded or self._load_version(version)
        except (FileNotFoundError, OSError) as exc:
            raise ModelError(f"model v{version} is not available: {exc}") from exc
        content = self.blobs.get(input_hash)
        ex = explain(loaded, content, target=key or None)
        png = None
        if ex.map is not None:
            png = self.blobs.put(overlay_png(ex, content, self.task.modality))
        with self.db.session() as s:
            if s.get(Prediction, prediction_id) is None:  # forgotten while we computed
                if png is not None:
                    self.blobs.delete(png)
                raise NotFoundError("prediction", prediction_id)
            if (hit := cached(s)) is not None:  # (two requests explained it at once)
                return version, dict(hit.detail), hit.png_hash
            s.add(
                ExplanationRow(
                    input_hash=input_hash,
                    model_version=version,
                    target=key,
                    detail=ex.to_json(),
                    png_hash=png,
                )
            )
        return version, ex.to_json(), png

    def _load_version(self, version: int) -> LoadedModel:
        with self.db.session() as s:
            info = registry.get_version(s, version)
        model, spec = load_artifact(Path(info.artifact_dir))
        self.codec.warm_up(spec.preprocessing)
        return LoadedModel(version, model, spec, self.codec)

    def refresh_model(self) -> LoadedModel | None:
        """Load the production version if it changed; the new model is ready before the swap."""
        current = self.production_version()
        if current is None:
            self._loaded = None  # e.g. production was withdrawn by a forget
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
        """Predict one input (the stored form of the task's input) and log the call."""
        user_id = self.pseudonym(user_id)
        content = self.at_the_door(content)
        started = time.perf_counter()
        loaded = self.serving_model()
        out = loaded.outputs(loaded.decode(content)[None])[0]
        latency_ms = (time.perf_counter() - started) * 1000.0
        digest = self.blobs.put(content)
        pid = str(uuid.uuid4())
        if loaded.is_regression:
            result = PredictionResult(pid, loaded.version, latency_ms, value=float(out))
        else:
            probabilities = {lab: float(p) for lab, p in zip(loaded.labels, out, strict=True)}
            label = loaded.labels[int(out.argmax())]
            result = PredictionResult(pid, loaded.version, latency_ms, label, probabilities)
        with self.db.session() as s:
            if user_id is not None:
                ensure_user(s, user_id)
            s.add(
                Prediction(
                    id=pid,
                    model_version=loaded.version,
                    user_id=user_id,
                    input_hash=digest,
                    label=result.label,
                    value=result.value,
                    probabilities=result.probabilities or {},
                    latency_ms=latency_ms,
                )
            )
        return result

    def _settle_log(self) -> None:
        """Readers of predictions see every one answered so far (the server's log queue)."""
        if self.prediction_log is not None:
            self.prediction_log.flush()

    def version_info(self, version: int) -> VersionInfo:
        with self.db.session() as s:
            return registry.get_version(s, version)

    def log_predictions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Commit predictions made elsewhere (the server's batched log) in one transaction.

        Each row: id, model_version, user_id, content (the stored-form input), label,
        value, probabilities, latency_ms, created_at (when it was predicted).
        """
        digests = [self.blobs.put(r["content"]) for r in rows]

        values = [
            {
                "id": r["id"],
                "model_version": r["model_version"],
                "user_id": r["user_id"],
                "input_hash": digest,
                "label": r["label"],
                "value": r["value"],
                "probabilities": r["probabilities"],
                "latency_ms": r["latency_ms"],
                "created_at": r["created_at"],
            }
            for r, digest in zip(rows, digests, strict=True)
        ]

        def write() -> None:
            with self.db.session() as s:
                for user_id in sorted({r["user_id"] for r in rows if r["user_id"]}):
                    ensure_user(s, user_id)
                # One multi-row INSERT (Core, not the ORM's unit of work): the log's cost.
                s.execute(insert(Prediction), values)

        retry_locked(write)

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
        (out,) = self.record_feedback_many(
            [FeedbackIn(prediction_id, label, correct, value, user_id)]
        )
        if isinstance(out, FlywheelError):
            raise out
        return out

    def record_feedback_many(
        self, items: Sequence[FeedbackIn]
    ) -> list[FeedbackResult | FlywheelError]:
        """Store many answers in one transaction (the server's group commit).

        Each answer is checked on its own: a bad one gets its error and adds nothing,
        the others are committed together, and none is reported stored before that
        commit.
        """
        out: list[FeedbackResult | FlywheelError | None] = [None] * len(items)
        checked: list[tuple[int, FeedbackIn]] = []
        for i, it in enumerate(items):
            try:
                user_id = self.pseudonym(it.user_id)
                if it.label is None and it.correct is None and it.value is None:
                    raise InputError("feedback needs a 'label', a 'value' or 'correct'")
                checked.append((i, replace(it, user_id=user_id)))
            except FlywheelError as exc:
                out[i] = exc
        if self.prediction_log is not None:
            # A prediction may still be in the server's log queue: wait for its commit.
            for _, it in checked:
                self.prediction_log.wait_written(it.prediction_id)

        def write() -> dict[int, FeedbackResult | FlywheelError]:
            done: dict[int, FeedbackResult | FlywheelError] = {}
            ids = {it.prediction_id for _, it in checked}
            with self.db.session() as s:
                # One query per kind for the whole batch, one multi-row INSERT.
                preds = {
                    row.id: row
                    for row in s.execute(
                        select(
                            Prediction.id,
                            Prediction.label,
                            Prediction.value,
                            Prediction.probabilities,
                            Prediction.model_version,
                        ).where(Prediction.id.in_(ids))
                    )
                }
                queued = set(
                    s.scalars(
                        select(ReviewItem.prediction_id).where(ReviewItem.prediction_id.in_(ids))
                    )
                )
                rows: list[dict[str, Any]] = []
                for i, it in checked:
                    try:
                        result = _check_feedback(preds.get(it.prediction_id), it)
                    except FlywheelError as exc:
                        done[i] = exc
                        continue
                    done[i] = result
                    rows.append(
                        {
                            "id": result.feedback_id,
                            "prediction_id": it.prediction_id,
                            "user_id": it.user_id,
                            "label": it.label,
                            "value": it.value,
                            "correct": result.agreed,
                            "via_queue": it.prediction_id in queued,
                            "created_at": utcnow(),
                        }
                    )
                for user_id in sorted({r["user_id"] for r in rows if r["user_id"]}):
                    ensure_user(s, user_id)
                if rows:
                    s.execute(insert(Feedback), rows)
            return done

        if checked:
            for i, result in retry_locked(write).items():
                out[i] = result
        return [r for r in out if r is not None]

    def stats(self, *, minutes: int = 60) -> dict[str, Any]:
        """Call frequency per version, label and minute; feedback counts; accuracy per version."""
        self._settle_log()
        since = utcnow() - timedelta(minutes=minutes)
        # Golden probes are the queue's own checks, not calls from users.
        probes = select(ReviewItem.prediction_id).where(ReviewItem.golden_example_id.is_not(None))
        with self.db.session() as s:
            per_version = dict(
                s.execute(
                    select(Prediction.model_version, func.count())
                    .where(Prediction.id.not_in(probes))
                    .group_by(Prediction.model_version)
                ).all()
            )
            per_label = dict(
                s.execute(
                    select(Prediction.label, func.count())
                    .where(Prediction.label.is_not(None), Prediction.id.not_in(probes))
                    .group_by(Prediction.label)
                ).all()
            )
            recent = s.scalars(
                select(Prediction.created_at).where(
                    Prediction.created_at >= since, Prediction.id.not_in(probes)
                )
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
            sq = s.execute(
                select(Prediction.model_version, Prediction.value, Feedback.value)
                .join(Prediction, Prediction.id == Feedback.prediction_id)
                .where(Feedback.value.is_not(None), Prediction.value.is_not(None))
            ).all()
            versions = registry.list_versions(s)
        live: dict[int, dict[str, int]] = {}
        for v, correct, n in fb:
            d = live.setdefault(v, {"feedback": 0, "agreed": 0, "judged": 0})
            d["feedback"] += n
            if correct is not None:
                d["judged"] += n
            if correct:
                d["agreed"] += n
        errors: dict[int, list[float]] = {}
        for v, predicted, true in sq:
            assert predicted is not None and true is not None  # the query keeps only both set
            errors.setdefault(v, []).append((predicted - true) ** 2)
        total_fb = sum(d["feedback"] for d in live.values())
        agreed = sum(d["agreed"] for d in live.values())
        judged = sum(d["judged"] for d in live.values())
        return {
            "task": self.task.name,
            "calls": {
                "total": sum(per_version.values()),
                "per_version": {str(k): v for k, v in sorted(per_version.items())},
                "per_label": dict(
                    sorted(per_label.items(), key=lambda kv: _label_sort_key(str(kv[0])))
                ),
                "per_minute": dict(sorted(per_minute.items())),
            },
            "feedback": {"total": total_fb, "agreed": agreed, "disagreed": judged - agreed},
            "versions": [
                {
                    "version": v.version,
                    "aliases": v.aliases,
                    "holdout_accuracy": v.metrics.get("accuracy"),
                    "holdout_mse": v.metrics.get("mse"),
                    "calls": per_version.get(v.version, 0),
                    "feedback": live.get(v.version, {}).get("feedback", 0),
                    "live_accuracy": (
                        live[v.version]["agreed"] / live[v.version]["judged"]
                        if live.get(v.version, {}).get("judged")
                        else None
                    ),
                    "live_mse": (
                        float(np.mean(errors[v.version])) if v.version in errors else None
                    ),
                }
                for v in versions
            ],
        }

    # -- keys --------------------------------------------------------------------------

    def create_key(self, scopes: list[str], name: str = "") -> tuple[str, dict[str, Any]]:
        """Make an API key; the key itself is returned once and only its hash is stored."""
        with self.db.session() as s:
            return key_rows.create_key(s, scopes, name)

    def list_keys(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return key_rows.list_keys(s)

    def has_keys(self) -> bool:
        with self.db.session() as s:
            return key_rows.has_keys(s)

    def authenticate(self, key: str, scope: str | None) -> None:
        """Raise ``AuthError`` unless ``key`` is live and holds ``scope`` (None: any scope)."""
        with self.db.session() as s:
            key_rows.authenticate(s, key, scope)

    # -- jobs --------------------------------------------------------------------------

    def create_job(self, kind: str, params: dict[str, Any] | None = None) -> str:
        with self.db.session() as s:
            return job_rows.create_job(s, kind, params or {})

    def run_job(self, job_id: str, work: Callable[[], dict[str, Any]]) -> None:
        """Run ``work`` as job ``job_id``, recording its status, result or error."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError("job", job_id)
            job_rows.start_job(s, job)
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            result = work()
        except Exception as exc:  # a job's failure is its result, not the server's
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FlywheelError):
                error += "\n" + traceback.format_exc(limit=5)
        with self.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job_rows.finish_job(s, job, result=result, error=error)

    def job_log(self, job_id: str, line: str) -> None:
        """Append a progress line to a job (shown while it runs)."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.log = (job.log or "") + line.rstrip("\n") + "\n"

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs first, with their results or errors."""
        with self.db.session() as s:
            rows = s.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit))
            return [job_rows.job_json(j) for j in rows]

    def job(self, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError("job", job_id)
            return job_rows.job_json(job)

    def fail_interrupted_jobs(self) -> int:
        with self.db.session() as s:
            return job_rows.fail_interrupted(s)

    def close(self) -> None:
        self.db.dispose()


def _config_template(source: str, values: dict[str, Any]) -> str:
    lines = [
        "# flywheel project settings; FLYWHEEL_* environment variables override them.",
        f"# Created from data source: {source}",
        "",
    ]
    for key, value in values.items():
        if value is None:
            field = Settings.model_fields.get(key)
            if field is None or field.default is None:
                continue  # the default is "not set" already
            lines.append(f'{key} = "off"')  # TOML has no null
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    lines += [
        "",
        '# host = "127.0.0.1"      # bound beyond loopback, every route needs a key',
        "# port = 8000",
        "# gate_margin = 0.0       # a challenger may trail the champion by at most this",
        "# epochs = 30",
        "",
    ]
    return "\n".join(lines)
