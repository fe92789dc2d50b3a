"""Dataset versions: fixed splits, content hashes, and loading rows into arrays."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from flywheel.data.images import ImagePreprocessing, decode_image
from flywheel.errors import DataError

__all__ = ["HOLDOUT", "TRAIN", "Arrays", "assign_splits", "content_hash", "load_arrays"]

TRAIN = "train"
HOLDOUT = "holdout"


def assign_splits(labels: Sequence[str], holdout_fraction: float, seed: int) -> list[str]:
    """A stratified, seeded train/holdout assignment.

    The holdout split is drawn once, when a project is created, and no training
    ever sees it: it is the common ground on which champion and challenger meet.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if not 0 < holdout_fraction < 1:
        raise DataError(f"holdout_fraction must be in (0, 1); got {holdout_fraction}")
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    # Stratify when every class can give at least one example to each side.
    stratify = list(labels) if min(counts.values()) >= 2 else None
    n_holdout = max(len(counts) if stratify else 1, round(n * holdout_fraction))
    if n - n_holdout < 1:
        raise DataError(
            f"{n} examples are too few to keep {holdout_fraction:.0%} for evaluation "
            "and still train on the rest"
        )
    _, holdout_idx = train_test_split(
        np.arange(n), test_size=n_holdout, random_state=seed, stratify=stratify
    )
    splits = [TRAIN] * n
    for i in holdout_idx:
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
    rows: Sequence[tuple[str, str]],
    read: Callable[[str], bytes],
    prep: ImagePreprocessing,
    labels: Sequence[str],
) -> Arrays:
    """Decode (input hash, label) rows through ``read`` into arrays indexed by ``labels``."""
    index = {lab: i for i, lab in enumerate(labels)}
    x = np.zeros((len(rows), prep.channels, prep.height, prep.width), dtype=np.float32)
    y = np.zeros(len(rows), dtype=np.int64)
    for i, (digest, label) in enumerate(rows):
        if label not in index:
            raise DataError(f"label {label!r} is not one of the model's labels {list(labels)}")
        x[i] = decode_image(read(digest), prep)
        y[i] = index[label]
    return Arrays(x=x, y=y, labels=list(labels))
