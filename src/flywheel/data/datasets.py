"""Dataset versions: fixed splits, content hashes, and loading rows into arrays."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.data.codecs import Codec
from flywheel.errors import DataError

__all__ = ["HOLDOUT", "TRAIN", "Arrays", "assign_splits", "content_hash", "load_arrays"]

TRAIN = "train"
HOLDOUT = "holdout"


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
