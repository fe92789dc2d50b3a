"""Fixed train/holdout splits and dataset content hashes."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest

from flywheel.data import HOLDOUT, TRAIN, assign_splits, content_hash
from flywheel.errors import DataError, FlywheelError

#: 10 classes of unequal size (20..29 examples), interleaved.
LABELS = [f"c{k}" for k in range(10) for _ in range(20 + k)]
LABELS = LABELS[::2] + LABELS[1::2]


def test_assign_splits_is_stratified() -> None:
    splits = assign_splits(LABELS, 0.2, seed=0)
    assert len(splits) == len(LABELS)
    assert set(splits) == {TRAIN, HOLDOUT}
    per_class = Counter(lab for lab, sp in zip(LABELS, splits, strict=True) if sp == HOLDOUT)
    totals = Counter(LABELS)
    assert set(per_class) == set(totals)  # every class has held-out examples
    for lab, total in totals.items():
        assert abs(per_class[lab] - 0.2 * total) <= 1, lab


def test_assign_splits_holdout_share_is_close_to_the_fraction() -> None:
    for fraction in (0.1, 0.25, 0.5):
        splits = assign_splits(LABELS, fraction, seed=3)
        assert splits.count(HOLDOUT) == round(len(LABELS) * fraction)


def test_assign_splits_is_seeded() -> None:
    first = assign_splits(LABELS, 0.2, seed=7)
    assert assign_splits(LABELS, 0.2, seed=7) == first
    assert assign_splits(LABELS, 0.2, seed=8) != first


@pytest.mark.parametrize("seed", [0, 1])
def test_assign_splits_keeps_a_rare_class_in_holdout(seed: int) -> None:
    labels = ["a"] * 20 + ["b"] * 20 + ["c"] * 2
    splits = assign_splits(labels, 0.1, seed=seed)
    held = {lab for lab, sp in zip(labels, splits, strict=True) if sp == HOLDOUT}
    assert held == {"a", "b", "c"}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_assign_splits_rejects_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(DataError, match=r"holdout_fraction must be in \(0, 1\)"):
        assign_splits(LABELS, fraction, seed=0)


def test_assign_splits_refuses_too_few_examples_to_train_on() -> None:
    with pytest.raises(DataError, match="too few"):
        assign_splits(["a", "b"], 0.9, seed=0)


def test_assign_splits_never_raises_a_third_party_error() -> None:
    labels = ["a", "a", "b", "b", "c", "c"]
    try:
        splits = assign_splits(labels, 0.7, seed=0)
    except FlywheelError:
        return
    assert len(splits) == len(labels)
    assert TRAIN in splits
    assert HOLDOUT in splits


ROWS = [("h1", "cat", TRAIN), ("h2", "dog", TRAIN), ("h3", "cat", HOLDOUT)]


def test_content_hash_is_a_sha256_hex_digest() -> None:
    digest = content_hash(ROWS)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert content_hash([]) == hashlib.sha256().hexdigest()


def test_content_hash_does_not_depend_on_row_order() -> None:
    assert content_hash(reversed(ROWS)) == content_hash(ROWS)
    assert content_hash([ROWS[1], ROWS[2], ROWS[0]]) == content_hash(iter(ROWS))


def test_content_hash_changes_with_a_label_or_a_split() -> None:
    relabelled = [("h1", "dog", TRAIN), *ROWS[1:]]
    moved = [("h1", "cat", HOLDOUT), *ROWS[1:]]
    hashes = {content_hash(ROWS), content_hash(relabelled), content_hash(moved)}
    assert len(hashes) == 3
