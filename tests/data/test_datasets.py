"""Fixed train/holdout splits and dataset content hashes."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Any

import pytest

from flywheel.data import (
    EVALUATION,
    HOLDOUT,
    TRAIN,
    RawExample,
    assign_splits,
    content_hash,
    evaluation_draw,
    split_by_group,
    targets,
)
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


def test_split_by_group_keeps_near_duplicates_on_one_side_and_the_given_splits() -> None:
    # Ten groups of three near-duplicates each; one example arrives with its split set.
    groups = [g for g in range(10) for _ in range(3)]
    strata = [str(g % 2) for g in groups]
    given: list[str | None] = [None] * 30
    given[4] = HOLDOUT
    splits, note = split_by_group(given, groups, strata, 0.3, seed=0)
    assert note is None
    assert splits[4] == HOLDOUT
    for g in range(10):
        members = {splits[n] for n in range(30) if groups[n] == g and n != 4}
        assert len(members) == 1, f"group {g} straddles the split"
    assert set(splits) == {TRAIN, HOLDOUT}


def test_split_by_group_draws_one_by_one_when_groups_are_too_few() -> None:
    groups = [0] * 6  # one group: nothing could be held out by group
    splits, note = split_by_group([None] * 6, groups, ["a", "a", "a", "b", "b", "b"], 0.3, 0)
    assert note == "drawn per example: too few distinct groups"
    assert splits.count(HOLDOUT) == 2 and splits.count(TRAIN) == 4


def test_targets_are_sorted_labels_or_value_bins_and_say_what_is_missing() -> None:
    ex = [RawExample(b"x", lab) for lab in ("10", "2", "cat", "2")]
    labels, strata = targets(ex, regression=False, source="s")
    assert labels == ["2", "10", "cat"] and strata == ["10", "2", "cat", "2"]
    with pytest.raises(DataError, match="one class"):
        targets([RawExample(b"x", "a")] * 2, regression=False, source="s")
    with pytest.raises(DataError, match="give every example a label"):
        targets([RawExample(b"x", None)], regression=False, source="s")
    values = [RawExample(b"x", None, value=float(v)) for v in range(10)]
    labels, strata = targets(values, regression=True, source="s")
    assert labels == [] and strata == [str(v // 2) for v in range(10)]
    with pytest.raises(DataError, match="numeric value"):
        targets([RawExample(b"x", None)], regression=True, source="s")


def _rows(label: str, n: int, *, eligible: bool = True, start: int = 0) -> list[Any]:
    return [(f"{label}{i:03d}", label, None, eligible) for i in range(start, start + n)]


def test_the_evaluation_draw_takes_the_share_of_each_label() -> None:
    new = _rows("a", 40) + _rows("b", 20) + _rows("c", 3)
    picked, dropped = evaluation_draw(new, {}, {}, 0.15, seed=0)
    by_label = Counter(d[0] for d in picked)
    # round(0.15 x 40) = 6, round(0.15 x 20) = 3, round(0.45) = 0
    assert by_label == {"a": 6, "b": 3} and not dropped
    # The same answers in another order: the same draw; another seed: another.
    assert evaluation_draw(new[::-1], {}, {}, 0.15, seed=0)[0] == picked
    assert evaluation_draw(new, {}, {}, 0.15, seed=1)[0] != picked


def test_the_evaluation_split_grows_with_the_answers_and_takes_only_trusted_ones() -> None:
    # 40 feedback rows of 'a' so far, 6 of them evaluation rows: 20 more make 60 → 9.
    picked, _ = evaluation_draw(_rows("a", 20, start=40), {}, {"a": (40, 6)}, 0.15, seed=0)
    assert len(picked) == 3
    # Untrusted answers never judge a model, however many there are.
    picked, _ = evaluation_draw(_rows("a", 100, eligible=False), {}, {}, 0.15, seed=0)
    assert picked == set()


def test_near_duplicates_fall_on_the_side_of_the_rows_they_copy() -> None:
    new = [
        ("x1", "a", "k-train", True),  # a near-copy of a training row: trains
        ("x2", "a", "k-held", True),  # of a held-out row: judges
        ("x3", "a", "k-held", False),  # ... but untrusted: dropped, never trained on
        ("x4", "a", "k-new", True),  # two new near-copies: drawn together
        ("x5", "a", "k-new", True),
        *_rows("a", 8),
    ]
    sides = {"k-train": TRAIN, "k-held": EVALUATION}
    picked, dropped = evaluation_draw(new, sides, {}, 0.5, seed=0)
    assert "x2" in picked and "x1" not in picked
    assert dropped == {"x3"}
    assert ("x4" in picked) == ("x5" in picked)
    assert len(picked) == round(0.5 * 12)  # 12 rows kept: x2 plus five drawn
