"""Dataset versions: fixed splits, content hashes, and loading rows into arrays."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from flywheel.data.codecs import Codec
from flywheel.data.sources import RawExample, Source
from flywheel.errors import DataError, InputError

__all__ = [
    "EVALUATION",
    "HOLDOUT",
    "TRAIN",
    "Arrays",
    "DatasetInfo",
    "Row",
    "WeightedRow",
    "arrays_from_source",
    "assign_splits",
    "content_hash",
    "evaluation_draw",
    "label_sort_key",
    "load_arrays",
    "split_by_group",
    "targets",
    "value_bins",
]

TRAIN = "train"
HOLDOUT = "holdout"
#: answers set aside for the gate as they arrive (``eval_share``): never trained on
EVALUATION = "evaluation"

#: a dataset row: (input hash, label, value)
Row = tuple[str, str | None, float | None]
#: a training row with its weight and its user: (input hash, label, value, weight, user)
WeightedRow = tuple[str, str | None, float | None, float | None, str | None]


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset version: its lineage, split sizes, labels and cleaning report."""

    version: int
    content_hash: str
    parent: int | None
    task: str
    n_train: int
    n_holdout: int
    n_feedback: int
    labels: list[str]
    cleaning: dict[str, Any]
    #: rows of the evaluation split that grows with the answers (``eval_share``)
    n_evaluation: int = 0
    #: the dataset's native preprocessing (what the codec inferred at import)
    preprocessing: dict[str, Any] = field(default_factory=dict, compare=False)
    #: everything recorded with the version (curation, contribution, label issues...)
    stats: dict[str, Any] = field(default_factory=dict, compare=False)
    created_at: datetime | None = field(default=None, compare=False)

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
            "n_evaluation": self.n_evaluation,
            "n_feedback": self.n_feedback,
            "labels": self.labels,
            "skipped": self.skipped,
            "cleaning": self.cleaning,
        }


def label_sort_key(label: str) -> tuple[int, int | str]:
    """Digits in numeric order first, then other labels alphabetically."""
    return (0, int(label)) if label.isdigit() else (1, label)


def value_bins(values: Sequence[float], bins: int = 5) -> list[str]:
    """Quantile bins of regression targets, so the held-out draw is stratified by value."""
    arr = np.asarray(values, dtype=np.float64)
    edges = np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1])
    return [str(int(np.searchsorted(edges, v, side="right"))) for v in arr]


def targets(
    examples: Sequence[RawExample], *, regression: bool, source: str
) -> tuple[list[str], list[str]]:
    """(the labels, each example's stratum for the held-out draw) of imported examples.

    Classification: the sorted labels (at least two) and each example's label;
    regression: no labels, and each example's quantile bin of its value.
    """
    if regression:
        if any(ex.value is None for ex in examples):
            raise DataError("a regression source must give every example a numeric value")
        return [], value_bins([float(ex.value or 0.0) for ex in examples])
    if any(ex.label is None for ex in examples):
        raise DataError("a classification source must give every example a label")
    labels = sorted({str(ex.label) for ex in examples}, key=label_sort_key)
    if len(labels) < 2:
        raise DataError(f"source {source!r} has one class ({labels}); need at least 2")
    return labels, [str(ex.label) for ex in examples]


def split_by_group(
    given: Sequence[str | None],
    groups: Sequence[int],
    strata: Sequence[str],
    holdout_fraction: float,
    seed: int,
) -> tuple[list[str], str | None]:
    """Each example's split: the one it came with, or one drawn (``assign_splits``) so
    that near-duplicates (examples of one group) fall on the same side.

    Returns the splits and a note: when there are too few distinct groups to hold some
    out, examples are drawn one by one instead, and the note says so.
    """
    first_of_group: dict[int, int] = {}
    for n, g in enumerate(groups):
        first_of_group.setdefault(g, n)
    heads = sorted(set(first_of_group.values()))
    todo = [n for n in heads if given[n] is None]
    try:
        drawn = assign_splits([strata[n] for n in todo], holdout_fraction, seed) if todo else []
        head_split = {n: sp for n in heads if (sp := given[n]) is not None}
        head_split |= dict(zip(todo, drawn, strict=True))
        return [given[n] or head_split[first_of_group[groups[n]]] for n in range(len(given))], None
    except DataError:
        note = "drawn per example: too few distinct groups"
        todo = [n for n in range(len(given)) if given[n] is None]
        drawn = assign_splits([strata[n] for n in todo], holdout_fraction, seed)
        per_example = dict(zip(todo, drawn, strict=True))
        return [given[n] or per_example[n] for n in range(len(given))], note


def assign_splits(labels: Sequence[str], holdout_fraction: float, seed: int) -> list[str]:
    """A stratified, seeded train/holdout assignment.

    The holdout split is drawn once, when a project is created, and no training
    ever sees it: it is the common ground on which champion and challenger meet.
    Every class with at least two examples gets at least one held-out row and
    keeps at least one for training; the total is ``round(n * holdout_fraction)``
    wherever those bounds allow it (largest remainders decide the rounding).
    """
    if not 0 < holdout_fraction < 1:  # also refuses NaN
        raise DataError(f"holdout_fraction must be in (0, 1); got {holdout_fraction}")
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    classes = sorted(by_class)
    counts = np.array([len(by_class[c]) for c in classes])
    share = counts * holdout_fraction
    low = np.where(counts >= 2, 1, 0)
    high = np.maximum(counts - 1, 0)
    quota = np.clip(np.floor(share).astype(int), low, high)
    target = round(len(labels) * holdout_fraction)
    remainder = share - quota
    while quota.sum() < target and (quota < high).any():
        k = int(np.argmax(np.where(quota < high, remainder, -np.inf)))
        quota[k] += 1
        remainder[k] -= 1
    while quota.sum() > target and (quota > low).any():
        k = int(np.argmin(np.where(quota > low, remainder, np.inf)))
        quota[k] -= 1
        remainder[k] += 1
    if quota.sum() == 0:
        raise DataError(
            f"{len(labels)} examples are too few to keep some for evaluation: "
            "a class needs at least 2 examples, one to train on and one to hold out"
        )
    rng = np.random.default_rng(seed)
    splits = [TRAIN] * len(labels)
    for c, k in zip(classes, quota, strict=True):
        for i in rng.permutation(by_class[c])[: int(k)]:
            splits[int(i)] = HOLDOUT
    return splits


def evaluation_draw(
    new: Sequence[tuple[str, str, str | None, bool]],
    sides: dict[str, str],
    counts: dict[str, tuple[int, int]],
    share: float,
    seed: int,
) -> tuple[set[str], set[str]]:
    """Which of a curation's new rows go to the evaluation split, and which are dropped.

    ``new`` holds (input hash, stratum, near-duplicate key or None, eligible) per row —
    eligible: its answer is trusted enough to judge models on. ``sides`` maps the
    near-duplicate keys of the version's rows to their side (``TRAIN``, or ``HOLDOUT``
    / ``EVALUATION``); ``counts`` maps a stratum to (its feedback rows so far, how many
    of them are evaluation rows).

    - A near-duplicate of a row already placed goes to that row's side: of a training
      row, to training; of an evaluation or held-out row, to evaluation if eligible,
      and otherwise it is dropped (nothing trains on a near-copy of what judges it).
    - The other eligible rows are drawn per stratum, so that each stratum's evaluation
      rows come to ``round(share × its feedback rows)``; near-duplicates among the new
      rows are drawn together, in an order keyed by ``seed`` and the input (the same
      answers give the same draw, whatever order they came in).
    """
    evaluation: set[str] = set()
    dropped: set[str] = set()
    groups: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
    for digest, stratum, key, eligible in new:
        side = None if key is None else sides.get(key)
        if side == TRAIN:
            continue
        if side is not None:
            (evaluation if eligible else dropped).add(digest)
            continue
        groups.setdefault((stratum, key or f"row:{digest}"), []).append((digest, stratum, eligible))
    # Each stratum's feedback rows once these are in: all but the dropped.
    total = {st: n for st, (n, _) in counts.items()}
    picked = {st: e for st, (_, e) in counts.items()}
    for digest, stratum, _, _ in new:
        if digest not in dropped:
            total[stratum] = total.get(stratum, 0) + 1
        if digest in evaluation:
            picked[stratum] = picked.get(stratum, 0) + 1

    def order(item: tuple[tuple[str, str], list[tuple[str, str, bool]]]) -> str:
        first = min(d for d, *_ in item[1])
        return hashlib.sha256(f"{seed}:{first}".encode()).hexdigest()

    for (stratum, _), rows in sorted(groups.items(), key=order):
        if not all(eligible for *_, eligible in rows):
            continue
        if picked.get(stratum, 0) + len(rows) > int(share * total[stratum] + 0.5):
            continue
        evaluation |= {d for d, *_ in rows}
        picked[stratum] = picked.get(stratum, 0) + len(rows)
    return evaluation, dropped


def content_hash(rows: Iterable[tuple[str, str, str]]) -> str:
    """SHA-256 over the sorted (input hash, label, split) rows of a dataset version."""
    h = hashlib.sha256()
    for input_hash, label, split in sorted(rows):
        h.update(f"{input_hash}\t{label}\t{split}\n".encode())
    return h.hexdigest()


@dataclass
class Arrays:
    """Decoded inputs and integer targets, with the label names they index."""

    x: np.ndarray  # float32 [N, C, H, W]
    y: np.ndarray  # int64 [N]
    labels: list[str]
    weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


def load_arrays(
    rows: Sequence[tuple[str, str | None, float | None]],
    read: Callable[[str], bytes],
    codec: Codec,
    params: dict[str, Any],
    labels: Sequence[str] | None,
    *,
    chunk: int = 512,
) -> Arrays:
    """Decode (input hash, label, value) rows through ``read`` and ``codec`` into arrays.

    Classification (``labels`` given): ``y`` holds label indices. Regression
    (``labels`` None): ``y`` holds the float32 targets.
    """
    if labels is not None:
        index = {lab: i for i, lab in enumerate(labels)}
        for _, label, _ in rows:
            if label not in index:
                raise DataError(f"label {label!r} is not one of the model's labels {list(labels)}")
        y = np.array([index[str(label)] for _, label, _ in rows], dtype=np.int64)
    else:
        if any(v is None for _, _, v in rows):
            raise DataError("a regression row has no target value")
        y = np.array([v for _, _, v in rows], dtype=np.float32)
    parts = [
        codec.decode_batch([read(d) for d, _, _ in rows[i : i + chunk]], params)
        for i in range(0, len(rows), chunk)
    ]
    x = np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float32)
    return Arrays(x=x, y=y, labels=list(labels) if labels is not None else [])


def arrays_from_source(
    source: Source,
    codec: Codec,
    params: dict[str, Any],
    labels: Sequence[str] | None,
    *,
    version: int,
) -> tuple[Arrays, list[dict[str, str]]]:
    """Decode a source outside the project (``flywheel evaluate --data``) as model
    ``version`` reads it (``params``, ``labels``; None: regression); unreadable inputs
    are skipped and listed, labels the model does not know are refused."""
    rows: list[tuple[bytes, str | None, float | None]] = []
    skipped = list(getattr(source, "skipped", []))
    for i, ex in enumerate(source):
        try:
            codec.probe(ex.content)
        except InputError as exc:
            skipped.append({"path": ex.source_path or f"#{i}", "reason": str(exc)})
            continue
        rows.append((ex.content, ex.label, ex.value))
    if not rows:
        raise DataError(f"{source.name!r} holds no readable input to evaluate on")
    if labels is not None:
        unknown = sorted({str(lab) for _, lab, _ in rows} - set(labels))
        if unknown:
            raise DataError(
                f"{source.name!r} has labels the model does not know: {unknown}; "
                f"model v{version} knows {list(labels)}"
            )
    by_digest = {hashlib.sha256(c).hexdigest(): c for c, _, _ in rows}
    keyed: list[Row] = [(hashlib.sha256(c).hexdigest(), lab, v) for c, lab, v in rows]
    arrays = load_arrays(keyed, by_digest.__getitem__, codec, params, labels)
    return arrays, skipped
