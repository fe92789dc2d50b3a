"""Label issues: rows whose given label is probably wrong, found by confident learning.

Confident learning (Northcutt, Jiang & Chuang 2021, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70) needs only the given labels and out-of-sample
predicted probabilities, so it works with any model:

1. ``out_of_fold_probabilities``: K-fold cross-validation, so that every row's
   probabilities come from a model that never trained on it;
2. ``find_label_issues``: per-class thresholds, the confident joint, its calibration to
   the label counts, and the rows to flag ("prune by noise rate");
3. ``label_issue_weights``: per-row training weights that drop or down-weight them.

Written from the paper; no code of the reference implementation (cleanlab) is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.data.datasets import Arrays
from flywheel.models import ModelSpec, arch_info, create_model
from flywheel.training.fit import TrainConfig, fit, predict_proba, seed_everything

__all__ = [
    "FitPredict",
    "LabelIssues",
    "find_label_issues",
    "flag_weights",
    "label_issue_weights",
    "out_of_fold_probabilities",
    "torch_fit_predict",
]

#: ``fit_predict(x_train, y_train, x_held)`` → probabilities [len(x_held), n_classes]
FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

#: Slack on ``p_j >= t_j``: a row whose probability equals the class mean still counts,
#: whatever the rounding of the mean.
_TOLERANCE = 1e-6
_MODES = ("exclude", "down-weight")


@dataclass(frozen=True, eq=False)
class LabelIssues:
    """The rows flagged as probably mislabelled, and the statistics that flagged them.

    Per flagged row (sorted by row index): ``indices``, ``given`` (its label),
    ``suggested`` (the class it was flagged for: the likelier true label) and
    ``self_confidence`` (the probability of its given label; lower is more suspect).
    Per class: ``thresholds`` (t_j, the mean p_j over the rows labelled j; ``inf`` for
    a class no row is labelled with, which nothing can clear). ``confident_joint[i, j]``
    counts rows labelled i confidently in class j; ``calibrated_joint`` is that joint
    calibrated so that row i sums to the number of rows labelled i (n·Q in the paper,
    rounded): its off-diagonal cell (i, j) is how many rows labelled i were flagged for j.
    """

    indices: np.ndarray  # int64 [F]
    given: np.ndarray  # int64 [F]
    suggested: np.ndarray  # int64 [F]
    self_confidence: np.ndarray  # float64 [F]
    confident_joint: np.ndarray  # int64 [K, K]
    calibrated_joint: np.ndarray  # int64 [K, K]
    thresholds: np.ndarray  # float64 [K]
    n_rows: int

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def n_classes(self) -> int:
        return len(self.thresholds)

    @property
    def noise_rate(self) -> float:
        """Estimated fraction of mislabelled rows: the off-diagonal mass of the calibrated joint."""
        if self.n_rows == 0:
            return 0.0
        off = self.calibrated_joint.sum() - np.trace(self.calibrated_joint)
        return float(off) / self.n_rows

    def to_json(self, labels: Sequence[str] | None = None) -> dict[str, Any]:
        """A JSON-ready summary; with ``labels`` (one name per class) classes are named."""
        if labels is not None and len(labels) != self.n_classes:
            raise ValueError(f"{len(labels)} label names given for {self.n_classes} classes")

        def name(k: int) -> str | int:
            return k if labels is None else str(labels[k])

        return {
            "n_rows": self.n_rows,
            "n_issues": len(self),
            "noise_rate": self.noise_rate,
            "labels": None if labels is None else [str(v) for v in labels],
            "thresholds": [float(t) if np.isfinite(t) else None for t in self.thresholds],
            "confident_joint": self.confident_joint.tolist(),
            "calibrated_joint": self.calibrated_joint.tolist(),
            "issues": [
                {
                    "index": int(i),
                    "given": name(int(g)),
                    "suggested": name(int(s)),
                    "self_confidence": float(c),
                }
                for i, g, s, c in zip(
                    self.indices, self.given, self.suggested, self.self_confidence, strict=True
                )
            ],
        }


def _check_labels(labels: np.ndarray, n_classes: int, n: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional; got shape {labels.shape}")
    if n is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} rows")
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be class indices (integers); got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}); got {labels.min()}..{labels.max()}")
    return labels


def out_of_fold_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    fit_predict: FitPredict,
    *,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Probabilities [N, n_classes] for every row from a model that never trained on it.

    Stratified K-fold (shuffled with ``seed``): ``fit_predict(x_train, y_train, x_held)``
    is called once per fold and must return [len(x_held), n_classes] probabilities, with
    a column for every class even if ``y_train`` lacks some. When the rarest class present
    has fewer than ``folds`` rows the number of folds drops to its count (never below 2;
    a class with a single row then sits out of training in the fold that holds it).
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2; got {folds}")
    n = len(x)
    y = _check_labels(y, n_classes, n)
    if n < 2:
        raise ValueError(f"{n} row(s) are too few for cross-validation")
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=n_classes)
    rarest = int(counts[counts > 0].min())
    k = max(2, min(folds, rarest))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class with one row cannot be spread over two folds; scikit-learn says so.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(splitter.split(np.zeros((n, 1)), y))
    probs = np.zeros((n, n_classes), dtype=np.float64)
    for train, held in splits:
        p = np.asarray(fit_predict(x[train], y[train], x[held]))
        if p.shape != (len(held), n_classes):
            raise ValueError(
                f"fit_predict returned shape {p.shape}; expected ({len(held)}, {n_classes})"
            )
        probs[held] = p
    return probs


def _round_keeping_row_sums(m: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Round each row of ``m`` to integers summing to ``totals`` (largest remainders)."""
    out = np.floor(m).astype(np.int64)
    for i in range(len(m)):
        short = int(totals[i] - out[i].sum())
        if short > 0:
            # Ties go to the lower class index (stable sort).
            order = np.argsort(-(m[i] - out[i]), kind="stable")
            out[i, order[:short]] += 1
    return out


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> LabelIssues:
    """Flag the rows whose given label is probably wrong (confident learning).

    ``probs`` [N, K] should be out-of-sample (``out_of_fold_probabilities``).

    - Thresholds: t_j = mean of p_j over the rows labelled j.
    - Confident joint: a row labelled i counts in C[i, j] for the class j with the largest
      p_j among those with p_j ≥ t_j; a row that clears no threshold is not counted.
    - Calibration: row i of C is scaled to the number of rows labelled i and rounded
      keeping the row sums; the result is n·Q, Q the estimated joint of given and true
      labels.
    - Prune by noise rate: for each off-diagonal cell (i, j), the n·Q[i, j] rows labelled
      i with the largest margin p_j − p_i are flagged (ties: the lower row index first).
      A row flagged for several classes is suggested the one with the largest p_j.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [rows, classes]; got shape {probs.shape}")
    n, k = probs.shape
    labels = _check_labels(labels, k, n)
    if not np.isfinite(probs).all():
        raise ValueError("probs must be finite")

    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k, dtype=np.float64)
    np.add.at(sums, labels, probs[np.arange(n), labels])
    thresholds = np.full(k, np.inf)
    present = counts > 0
    thresholds[present] = sums[present] / counts[present]

    # The confident joint.
    clears = probs >= thresholds - _TOLERANCE
    confident = clears.any(axis=1)
    true_guess = np.where(clears, probs, -np.inf).argmax(axis=1)
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (labels[confident], true_guess[confident]), 1)

    # Calibration to the label counts: n·Q. Every class with rows has one at or above its
    # own mean, so it is counted somewhere; the guard keeps a zero row from dividing.
    row_sums = joint.sum(axis=1)
    scaled = np.diag(counts).astype(np.float64)
    has = row_sums > 0
    scaled[has] = joint[has] / row_sums[has, None] * counts[has, None]
    calibrated = _round_keeping_row_sums(scaled, counts)

    # Prune by noise rate.
    flagged_for = np.full(n, -1, dtype=np.int64)
    best_margin = np.full(n, -np.inf)
    for i in range(k):
        rows = np.flatnonzero(labels == i)
        for j in range(k):
            m = int(calibrated[i, j])
            if i == j or m == 0:
                continue
            margin = probs[rows, j] - probs[rows, i]
            picked = rows[np.argsort(-margin, kind="stable")[:m]]
            take = probs[picked, j] - probs[picked, i] > best_margin[picked]
            flagged_for[picked[take]] = j
            best_margin[picked[take]] = probs[picked[take], j] - probs[picked[take], i]

    indices = np.flatnonzero(flagged_for >= 0).astype(np.int64)
    given = labels[indices]
    return LabelIssues(
        indices=_frozen(indices),
        given=_frozen(given),
        suggested=_frozen(flagged_for[indices]),
        self_confidence=_frozen(probs[indices, given]),
        confident_joint=_frozen(joint),
        calibrated_joint=_frozen(calibrated),
        thresholds=_frozen(thresholds),
        n_rows=n,
    )


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # a copy the caller does not share
    a.flags.writeable = False
    return a


def label_issue_weights(
    n: int, issues: LabelIssues, *, mode: str = "exclude", down_weight: float = 0.2
) -> np.ndarray:
    """Per-row training weights [n] (float32): 1, and for flagged rows 0 (``"exclude"``)
    or ``down_weight`` (``"down-weight"``)."""
    _check_mode(mode, down_weight)
    if n != issues.n_rows:
        raise ValueError(f"the issues were found on {issues.n_rows} rows, not {n}")
    flagged = np.zeros(n, dtype=bool)
    flagged[issues.indices] = True
    return flag_weights(flagged, mode=mode, down_weight=down_weight)


def flag_weights(
    flagged: np.ndarray, *, mode: str = "exclude", down_weight: float = 0.2
) -> np.ndarray:
    """Per-row training weights (float32) for a mask of flagged rows: 1, and for flagged
    rows 0 (``"exclude"``) or ``down_weight`` (``"down-weight"``). Training weighs the
    rows of a later dataset version by the input hashes an analysis flagged."""
    _check_mode(mode, down_weight)
    weights = np.ones(len(flagged), dtype=np.float32)
    weights[np.asarray(flagged, dtype=bool)] = 0.0 if mode == "exclude" else down_weight
    return weights


def _check_mode(mode: str, down_weight: float) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    if not 0.0 <= down_weight <= 1.0:  # also refuses NaN
        raise ValueError(f"down_weight must be in [0, 1]; got {down_weight}")


def torch_fit_predict(spec: ModelSpec, config: TrainConfig) -> FitPredict:
    """A ``fit_predict`` that trains a fresh ``spec`` model with flywheel's ``fit``.

    Each call seeds with ``config.seed``, builds the model, trains it on the fold's rows
    (``fit`` keeps its own validation split for early stopping) and returns the softmax
    probabilities of the held rows.
    """
    if arch_info(spec.arch).objective != "classification":
        raise ValueError(f"{spec.arch} is not a classifier; label issues need class probabilities")
    labels = list(spec.labels)

    def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray) -> np.ndarray:
        if len(x_held) == 0:
            return np.zeros((0, len(labels)), dtype=np.float32)
        seed_everything(config.seed)
        model = create_model(spec)
        train = Arrays(
            x=np.ascontiguousarray(x_train, dtype=np.float32),
            y=np.ascontiguousarray(y_train, dtype=np.int64),
            labels=labels,
        )
        fit(model, train, config)
        return predict_proba(model, np.ascontiguousarray(x_held, dtype=np.float32))

    return fit_predict
