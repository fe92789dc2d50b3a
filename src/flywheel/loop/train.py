"""Train a challenger on the newest dataset version, gate it, register it, promote it.

The steps, in order: read the dataset version's rows (one snapshot); admit users to a
private run (the ledger); set the model up (seed, build, warm start from production);
fit (checkpointed each epoch, resumable); score challenger and champion on the same
held-out rows; the gate's checks (``evaluation.judge``); register the version (weights,
aliases, ledger, one transaction) and drop the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from flywheel.data import Arrays, WeightedRow
from flywheel.data.service import TrainingSet
from flywheel.errors import DataError, RegistryError
from flywheel.evaluation import GateDecision, GatePolicy, Reference, judge, with_splits
from flywheel.export.onnx import challenger_parity
from flywheel.feedback.curation import curate
from flywheel.feedback.label_issues import flag_weights
from flywheel.loop.services import Services
from flywheel.models import ModelSpec, create_model
from flywheel.registry import LoadedModel, VersionInfo
from flywheel.registry.service import Champion, Charge
from flywheel.scale.train import has_ray_run, ray_trainer
from flywheel.training import (
    EpochReport,
    FitResult,
    TrainConfig,
    fit,
    make_augment,
    model_spec,
    sampling_units,
    seed_everything,
    train_config,
)
from flywheel.training.checkpoint import CheckpointSlot

__all__ = [
    "CHECKPOINT",
    "ProgressFn",
    "TrainResult",
    "check_arch",
    "has_interrupted_run",
    "train",
]

#: where the running training's checkpoint lives: a folder of the project's storage (the
#: project folder, or storage_url, where another machine can resume it)
CHECKPOINT = "checkpoints/current"

ProgressFn = Callable[[EpochReport], None]


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
            "splits": d.splits,
            "rows": d.rows,
            "metrics": self.model.metrics,
        }


def has_interrupted_run(sv: Services) -> bool:
    return CheckpointSlot(sv.ctx.storage, CHECKPOINT).exists() or has_ray_run(sv.ctx.storage)


def check_arch(sv: Services, arch: str | None) -> None:
    """Refuse, before any work, an architecture this project cannot train: unknown, a
    plugin that does not load or breaks the contract's form, or one for another task."""
    if arch:
        ds = sv.data.info()
        config = train_config(sv.ctx.settings, arch=arch)
        model_spec(sv.ctx.task, ds.preprocessing, ds.labels, config)


#: runs trained again when a forget erased rows of their dataset version meanwhile
RUNS_AFTER_WITHDRAWN = 2


class WithdrawnDuringRun(RegistryError):
    """The run's version was recorded withdrawn: a forget erased rows it trained on."""


def train(
    sv: Services,
    config: TrainConfig,
    *,
    on_epoch: ProgressFn | None = None,
    reason: str = "train",
    resume: bool = False,
) -> TrainResult:
    """Train a challenger on the newest dataset version, gate it, promote if it passes.

    Each epoch is checkpointed; ``resume`` finishes an interrupted run of the same data
    and config where it stopped. With ``ray_address`` and ``train_workers`` > 1 (or
    ``train_use_gpu``) the fit runs on Ray Train (``flywheel.scale.train``); the rest is
    the same. A run whose rows a forget erased while it trained is recorded withdrawn and
    trained again on the version the forget left (up to ``RUNS_AFTER_WITHDRAWN`` times).
    """
    for run in range(RUNS_AFTER_WITHDRAWN + 1):
        try:
            return _train(sv, config, on_epoch, reason, resume and run == 0)
        except WithdrawnDuringRun as exc:
            if run == RUNS_AFTER_WITHDRAWN:
                raise
            stages(on_epoch)(f"{exc}: training again")
    raise AssertionError("unreachable")


def _train(
    sv: Services, config: TrainConfig, on_epoch: ProgressFn | None, reason: str, resume: bool
) -> TrainResult:
    ctx = sv.ctx
    stage = stages(on_epoch)
    on_ray = ray_trainer(ctx.settings, config)  # what Ray Train cannot train: refused now
    stage("reading the dataset version")
    ds = sv.data.training_set()
    spec = model_spec(ctx.task, ds.preprocessing, ds.labels, config)
    weighted, privacy = sv.privacy.admit(ds.train, config) if config.private else (ds.train, {})
    champion = sv.registry.champion()
    _check_rows(ds, weighted)
    flagged = {i["input_hash"] for i in ds.label_issues.get("issues", [])}
    stage(f"decoding {len(weighted) + len(ds.holdout) + len(ds.evaluation)} rows")
    rows = sv.data.arrays([(h, lab, val) for h, lab, val, *_ in weighted], spec)
    weights = _weights(weighted, flagged, ctx.settings.label_issue_mode)
    if (weights != 1.0).any():
        rows.weights = weights
    holdout = sv.data.arrays(ds.holdout, spec)
    # The gate judges on the held-out rows and the evaluation split together.
    judged = sv.data.arrays(ds.holdout + ds.evaluation, spec) if ds.evaluation else holdout

    model, champion_model = _set_up(sv, spec, config, champion, privacy)
    parent = None if champion is None else champion.version
    checkpoint_dir = CheckpointSlot(ctx.storage, CHECKPOINT)
    run_id = _run_id(ds.content_hash, config, spec, parent)
    augment = make_augment(ctx.task.modality) if config.augment else None
    users = sampling_units(weighted) if config.private or config.federated_clients else None
    started = time.perf_counter()
    if on_ray is None:
        result = fit(
            model, rows, config, regression=ctx.task.is_regression, augment=augment,
            on_epoch=on_epoch, checkpoint_dir=checkpoint_dir, run_id=run_id, resume=resume,
            users=users,
        )  # fmt: skip
    else:
        stage(f"training on Ray Train: {on_ray.describe()}")
        result = on_ray.fit(
            model, rows, config, spec=spec, regression=ctx.task.is_regression,
            augment=augment, on_epoch=on_epoch, run_id=run_id, resume=resume, users=users,
        )  # fmt: skip
    train_seconds = time.perf_counter() - started

    report, decision, parity = _gate(
        sv, ds, model, spec, config, champion_model, parent, (holdout, judged), flagged, stage
    )
    metrics = {**report, "export_onnx": parity, **_fit_metrics(result, len(rows), train_seconds)}
    if champion_model is not None and champion_model.imported and config.warm_start:
        metrics["cold_start"] = f"production v{parent} is an imported ONNX model: no weights"
    if result.privacy is not None:
        metrics["privacy"] = {**result.privacy.to_json(), **privacy}
    if result.federated is not None:
        metrics["federated"] = result.federated
    if on_ray is not None:
        metrics["ray_train"] = on_ray.record()
    promoted = decision.promote and (ctx.settings.auto_promote or parent is None)
    stage("registering the model" + (" and promoting it" if promoted else ""))
    registered = sv.registry.register(
        model,
        spec,
        config=config.to_json(),
        dataset_version=ds.version,
        erased_at_start=ds.erased,
        parent=parent,
        warm_started=bool(config.warm_start),
        metrics=metrics,
        gate={**decision.to_json(), "promoted": promoted},
        promote=f"{reason}: {decision.reason}" if promoted else None,
        reason=reason,
        charge=None
        if result.privacy is None
        else Charge([u for *_, u in weighted], result.privacy.epsilon, result.privacy.delta),
    )
    # The run is on record (or withdrawn): its checkpoint has done its job.
    checkpoint_dir.clear()
    if on_ray is not None:
        on_ray.discard()
    if registered.withdrawn:
        raise WithdrawnDuringRun(
            f"v{registered.info.version} was trained on rows a forget erased during the run; "
            "it is recorded as withdrawn; train again"
        )
    return TrainResult(registered.info, decision, promoted)


def _gate(
    sv: Services,
    ds: TrainingSet,
    model: nn.Module,
    spec: ModelSpec,
    config: TrainConfig,
    champion_model: LoadedModel | None,
    parent: int | None,
    splits: tuple[Arrays, Arrays],
    flagged: set[str],
    stage: Callable[[str], None],
) -> tuple[dict[str, Any], GateDecision, dict[str, Any]]:
    """The challenger's held-out report, the gate's decision on it against the champion
    (on the held-out and evaluation rows together), and its ONNX parity record."""
    ctx = sv.ctx
    holdout, judged = splits
    stage("the gate: scoring challenger and champion on the same rows")
    challenger = LoadedModel(0, model, spec, ctx.codec)
    report, _ = challenger.score(holdout)
    score = challenger.score(judged)[1]
    rows = ds.holdout + ds.evaluation
    champion_rows, how = _champion_rows(sv, rows, judged, spec, champion_model)
    champion_score = None if champion_model is None else champion_model.score(champion_rows)[1]
    stage("ONNX export and parity check")
    parity = challenger_parity(model, spec, holdout.x, enabled=ctx.settings.onnx_check)

    def reference() -> Reference:
        assert champion_model is not None  # the gate asks only when there is a champion
        stage("the gate: training the trusted reference (naive curation)")
        return _reference(sv, ds.version, config, spec, flagged, judged, champion_model)

    decision = judge(
        score,
        champion_score,
        y=judged.y,
        labels=list(spec.labels),
        champion_version=parent,
        policy=GatePolicy.from_settings(ctx.settings),
        contribution=ds.contribution,
        parity=parity,
        reference=reference,
    )
    decision = with_splits(decision, score, champion_score, len(ds.holdout))
    digest = hashlib.sha256("".join(h for h, *_ in rows).encode()).hexdigest()
    counts = {"n": len(rows), "holdout": len(ds.holdout), "evaluation": len(ds.evaluation)}
    decision = replace(decision, rows={**counts, "sha256": digest, "champion_decoded": how})
    return report, decision, parity


def _champion_rows(
    sv: Services,
    rows: Sequence[tuple[Any, ...]],
    judged: Arrays,
    spec: ModelSpec,
    champion: LoadedModel | None,
) -> tuple[Arrays, str]:
    """The judged rows as the champion reads them: the challenger's arrays, or the same
    rows in the same order decoded by the champion's own preprocessing and label order
    (another image size, an imported model's classes in its output order)."""
    if champion is None:
        return judged, "no champion"
    own = champion.spec
    same = (own.preprocessing, own.labels) == (spec.preprocessing, spec.labels)
    if same or set(own.labels) != set(spec.labels):
        return judged, "as the challenger"
    return sv.data.arrays(list(rows), own), "by its own preprocessing and label order"


def stages(on_epoch: Any) -> Callable[[str], None]:
    """``on_epoch.on_stage(text)`` where the callback offers it (the CLI's bar, a job's
    log): what a run is doing between its epochs."""
    hook = getattr(on_epoch, "on_stage", None)
    return hook if callable(hook) else (lambda _text: None)


def _set_up(
    sv: Services,
    spec: ModelSpec,
    config: TrainConfig,
    champion: Champion | None,
    privacy: dict[str, Any],
) -> tuple[nn.Module, LoadedModel | None]:
    """The challenger, warm-started from production where it may be, and production."""
    # A private run starts only from a private parent: a non-private champion trained
    # on the same users would carry their data past the accountant.
    may_warm = config.warm_start and (not config.private or bool(champion and champion.private))
    model, champion_model = _start_model(
        spec,
        config.seed,
        lambda: None if champion is None else sv.registry.load(champion.version),
        warm=may_warm,
    )
    if config.warm_start and not may_warm and champion_model and champion_model.spec == spec:
        privacy["cold_start"] = "production was trained without DP"
    return model, champion_model


def _start_model(
    spec: ModelSpec, seed: int, parent: Callable[[], LoadedModel | None], *, warm: bool
) -> tuple[nn.Module, LoadedModel | None]:
    """Seed, build ``spec``, then load the parent and, with ``warm``, start from its
    weights when it has the same spec. (The parent is built after the new model: its
    initialisation draws from the same generator, and recorded runs repeat only in this
    order.)"""
    seed_everything(seed)
    model = create_model(spec)
    loaded = parent()
    if warm and loaded is not None and loaded.spec == spec:
        model.load_state_dict(loaded.model.state_dict())
    return model, loaded


def _check_rows(ds: TrainingSet, weighted: Sequence[WeightedRow]) -> None:
    if len(weighted) < 2:
        raise DataError(
            f"dataset version {ds.version} has {len(weighted)} training rows; need >= 2"
        )
    if not ds.holdout:
        raise DataError(
            f"dataset version {ds.version} has no held-out rows to gate a model on (its data "
            "were all training rows, or duplicates of them); import more distinct examples"
        )


def _weights(rows: Sequence[tuple[Any, ...]], flagged: set[str], mode: str) -> np.ndarray:
    """Each row's training weight: its own (its user's trust; 1 for imported rows), times
    what ``label_issue_mode`` makes of rows a label-issue analysis flagged."""
    weights = np.array([1.0 if r[3] is None else r[3] for r in rows], np.float32)
    if flagged and mode != "keep":
        weights *= flag_weights(np.array([r[0] in flagged for r in rows]), mode=mode)
    return weights


def _run_id(content_hash: str, config: TrainConfig, spec: ModelSpec, parent: int | None) -> str:
    """Identifies a run for its checkpoint: the same data, config, model and parent."""
    key = [content_hash, config.to_json(), spec.to_json(), parent]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _fit_metrics(result: FitResult, n_train: int, seconds: float) -> dict[str, Any]:
    return {
        "n_train": n_train,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "val_metric": result.best_val_metric,
        "val_loss": result.best_val_loss,
        "train_seconds": round(seconds, 3),
        "seconds_per_epoch": round(
            seconds / max(1, result.epochs_run - (result.resumed_from or 1) + 1), 4
        ),
        "resumed_from_epoch": result.resumed_from,
        # The model kept was refit on training + validation rows for best_epoch epochs.
        "refit_rows": result.refit_rows,
    }


def _reference(
    sv: Services,
    version: int,
    config: TrainConfig,
    spec: ModelSpec,
    flagged: set[str],
    holdout: Arrays,
    champion: LoadedModel,
) -> Reference:
    """Naive curation took every answer at face value: curate the same answers by trust
    instead, train the same model on that; the gate refuses a challenger that trails it.

    A poisoned challenger can still beat a weak champion; what gives it away is that the
    same feedback, with the liars weighed down, gives a better model.
    """
    sv.users.update_trust()
    dv, base, held = sv.data.reference_base(version)
    labels = dv.labels
    answers, held_back = sv.feedback.answers(include_used=True, until=dv.created_at)
    answers = [a for a in answers if a.label in labels]
    base_rows = [(h, lab, val, 1.0 if w is None else w) for h, lab, val, w, _ in base]
    curated = curate(
        answers, held, {h for h, *_ in base_rows}, max_user_share=sv.ctx.settings.max_user_share
    )
    rows = sorted(
        base_rows + [(r.input_hash, r.label, r.value, r.weight) for r in curated.rows],
        key=lambda r: (r[0], str(r[1])),
    )
    data = sv.data.arrays([(h, lab, val) for h, lab, val, _ in rows], spec)
    data.weights = _weights(rows, flagged, sv.ctx.settings.label_issue_mode)
    reference, _ = _start_model(spec, config.seed, lambda: champion, warm=config.warm_start)
    augment = make_augment(sv.ctx.task.modality) if config.augment else None
    on_ray = ray_trainer(sv.ctx.settings, config)  # where the challenger trained
    if on_ray is None:
        fit(reference, data, config, augment=augment)
    else:
        on_ray.fit(reference, data, config, spec=spec, augment=augment, name="reference")
        on_ray.discard("reference")
    ref_correct = LoadedModel(0, reference, spec, sv.ctx.codec).score(holdout)[1]
    return Reference(ref_correct, rows=len(rows), held_back=held_back)
