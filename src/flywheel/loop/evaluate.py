"""Evaluate a version on the held-out rows (or on data from outside the project), and
look for likely mislabelled training rows."""

from __future__ import annotations

from typing import Any

from flywheel.data import HOLDOUT, TRAIN, Source, arrays_from_source
from flywheel.errors import InputError, RegistryError
from flywheel.feedback.label_issues import (
    find_label_issues,
    out_of_fold_probabilities,
    torch_fit_predict,
)
from flywheel.loop.services import Services
from flywheel.training import TrainConfig, model_spec

__all__ = ["evaluate", "label_issues"]


def evaluate(
    sv: Services, version: int | None = None, *, source: Source | None = None
) -> dict[str, Any]:
    """Score a version (default: production) on the held-out split, or on ``source``."""
    if version is None:
        version = sv.registry.production()
        if version is None:
            raise RegistryError("no production model; train one with `flywheel train`")
    sv.registry.version(version)  # an unknown version is refused before any work
    dv, holdout_rows = sv.data.newest_rows(HOLDOUT)
    loaded = sv.registry.load(version)
    skipped: list[dict[str, str]] = []
    if source is None:
        data = sv.data.arrays(holdout_rows, loaded.spec)
        where = f"the held-out split of dataset version {dv.version}"
    else:
        labels = None if loaded.is_regression else loaded.labels
        data, skipped = arrays_from_source(
            source, sv.ctx.codec, loaded.spec.preprocessing, labels, version=version
        )
        where = source.name
    report, _ = loaded.score(data)
    return {
        "model_version": version,
        "data": where,
        "dataset_version": dv.version if source is None else None,
        "skipped": skipped,
        **report,
    }


def label_issues(sv: Services, config: TrainConfig, *, folds: int = 5) -> dict[str, Any]:
    """Likely mislabelled training rows of the newest dataset version (confident learning).

    Out-of-fold probabilities come from the project's architecture trained on the
    other folds; rows whose given label the model confidently disagrees with are
    flagged. The result is stored with the dataset version; training then excludes
    or down-weights those rows (``label_issue_mode``).
    """
    if sv.ctx.task.is_regression:
        raise InputError("label issues need classes; this is a regression project")
    dv, rows = sv.data.newest_rows(TRAIN)
    spec = model_spec(sv.ctx.task, dv.preprocessing, dv.labels, config)
    paths = sv.data.source_paths(dv.version)
    data = sv.data.arrays(rows, spec)
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
    found |= {"dataset_version": dv.version, "folds": folds, "arch": spec.arch}
    sv.data.add_label_issues(dv.version, found)
    return found
