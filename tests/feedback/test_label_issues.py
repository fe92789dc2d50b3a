"""Label issues by confident learning: a case worked by hand, planted errors, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from flywheel.feedback.label_issues import (
    FitPredict,
    LabelIssues,
    find_label_issues,
    label_issue_weights,
    out_of_fold_probabilities,
    torch_fit_predict,
)
from flywheel.models import build_spec
from flywheel.training import TrainConfig

# Twelve rows, three classes, four rows each. Worked by hand:
#   thresholds t = mean p_j over rows labelled j:
#     t0 = (.9 + .7 + .3 + .1) / 4 = .5;  t1 = (.9 + .8 + 0 + .7) / 4 = .6;
#     t2 = (.9 + .5 + .2 + 0) / 4 = .4
#   classes each row clears (p_j >= t_j), and where it counts in the confident joint C:
#     0: 0 → C[0,0]   1: 0 → C[0,0]   2: 2 → C[0,2]   3: 1 → C[0,1]
#     4: 1 → C[1,1]   5: 1 → C[1,1]   6: 0 and 2, argmax 0 → C[1,0]   7: 1 → C[1,1]
#     8: 2 → C[2,2]   9: 2 → C[2,2]  10: 0 → C[2,0]  11: none (not counted)
#   C = [[2,1,1],[1,3,0],[1,0,2]]; calibrating row 2 to its 4 rows gives [4/3, 0, 8/3],
#   rounded keeping the sum: [1, 0, 3]. One row to flag per off-diagonal 1:
#     (0,1): largest p1-p0 among rows 0-3 is row 3 (.7);  (0,2): p2-p0, row 2 (.15)
#     (1,0): p0-p1 among rows 4-7, row 6 (.55);  (2,0): p0-p2 among rows 8-11, row 10 (.5;
#     row 11, which cleared nothing, is next at .45)
HAND_PROBS = np.array(
    [
        [0.9, 0.05, 0.05],
        [0.7, 0.1, 0.2],
        [0.3, 0.25, 0.45],
        [0.1, 0.8, 0.1],
        [0.05, 0.9, 0.05],
        [0.1, 0.8, 0.1],
        [0.55, 0.0, 0.45],
        [0.1, 0.7, 0.2],
        [0.05, 0.05, 0.9],
        [0.2, 0.3, 0.5],
        [0.7, 0.1, 0.2],
        [0.45, 0.55, 0.0],
    ]
)
HAND_LABELS = np.repeat([0, 1, 2], 4)


def _blobs(seed: int, n: int = 600, flip: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three well-separated 2-D Gaussian blobs: (x, true labels, given labels)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [3.0, 5.0]])
    y = np.repeat(np.arange(3), n // 3)
    x = centers[y] + rng.normal(size=(len(y), 2))
    given = y.copy()
    flipped = rng.choice(len(y), round(len(y) * flip), replace=False)
    given[flipped] = (y[flipped] + rng.integers(1, 3, size=len(flipped))) % 3
    return x, y, given


def _logreg(n_classes: int = 3) -> FitPredict:
    def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray) -> np.ndarray:
        clf = LogisticRegression(max_iter=1000).fit(x_train, y_train)
        out = np.zeros((len(x_held), n_classes))
        out[:, clf.classes_] = clf.predict_proba(x_held)
        return out

    return fit_predict


def test_hand_worked_case_gives_the_exact_thresholds_joint_and_flags() -> None:
    issues = find_label_issues(HAND_LABELS, HAND_PROBS)
    np.testing.assert_allclose(issues.thresholds, [0.5, 0.6, 0.4])
    assert issues.confident_joint.tolist() == [[2, 1, 1], [1, 3, 0], [1, 0, 2]]
    assert issues.calibrated_joint.tolist() == [[2, 1, 1], [1, 3, 0], [1, 0, 3]]
    assert issues.indices.tolist() == [2, 3, 6, 10]
    assert issues.given.tolist() == [0, 0, 1, 2]
    assert issues.suggested.tolist() == [2, 1, 0, 0]
    np.testing.assert_allclose(issues.self_confidence, [0.3, 0.1, 0.0, 0.2])
    assert len(issues) == 4
    assert issues.noise_rate == pytest.approx(4 / 12)


def test_to_json_names_the_classes() -> None:
    issues = find_label_issues(HAND_LABELS, HAND_PROBS)
    doc = issues.to_json(["cat", "dog", "eel"])
    assert doc["n_rows"] == 12
    assert doc["n_issues"] == 4
    assert doc["confident_joint"] == [[2, 1, 1], [1, 3, 0], [1, 0, 2]]
    assert doc["issues"][0] == {
        "index": 2,
        "given": "cat",
        "suggested": "eel",
        "self_confidence": pytest.approx(0.3),
    }
    assert issues.to_json()["issues"][2]["suggested"] == 0
    with pytest.raises(ValueError, match="2 label names"):
        issues.to_json(["cat", "dog"])


def test_results_are_read_only() -> None:
    issues = find_label_issues(HAND_LABELS, HAND_PROBS)
    with pytest.raises(ValueError):
        issues.indices[0] = 5


def test_planted_flips_are_found_with_high_precision_and_recall() -> None:
    for seed in (0, 1):
        x, truth, given = _blobs(seed, flip=0.1)
        flipped = set(np.flatnonzero(given != truth).tolist())
        probs = out_of_fold_probabilities(x, given, 3, _logreg(), folds=5, seed=seed)
        issues = find_label_issues(given, probs)
        found = set(issues.indices.tolist())
        tp = len(found & flipped)
        assert tp / len(found) >= 0.8, seed  # precision
        assert tp / len(flipped) >= 0.8, seed  # recall
        # The suggested label is the true one for (nearly) every true positive.
        hits = [i for i in issues.indices if i in flipped]
        assert (issues.suggested[np.isin(issues.indices, hits)] == truth[hits]).mean() >= 0.9


def test_a_clean_dataset_flags_almost_nothing() -> None:
    x, y, _ = _blobs(3)
    probs = out_of_fold_probabilities(x, y, 3, _logreg(), seed=3)
    issues = find_label_issues(y, probs)
    assert len(issues) <= 0.02 * len(y)


def test_threshold_is_inclusive_and_two_classes_work() -> None:
    # t0 = (.8 + .6 + .1) / 3 = .5, t1 = (.7 + .7) / 2 = .7: rows at exactly .7 count.
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7], [0.3, 0.7]])
    issues = find_label_issues(labels, probs)
    np.testing.assert_allclose(issues.thresholds, [0.5, 0.7])
    assert issues.confident_joint.tolist() == [[2, 1], [0, 2]]
    assert issues.indices.tolist() == [2]
    assert issues.suggested.tolist() == [1]


def test_a_class_with_no_rows_and_a_class_never_predicted() -> None:
    # Class 1 has no rows: its threshold is inf, nothing clears it. t0 = .7, t2 = .1.
    # Class 2 is never the confident class: row 3 clears only class 0, row 4 clears
    # 0 and 2 and goes to 0 (.8 > .15); row 1 clears nothing.
    labels = np.array([0, 0, 0, 2, 2])
    probs = np.array(
        [
            [0.8, 0.15, 0.05],
            [0.6, 0.35, 0.05],
            [0.7, 0.25, 0.05],
            [0.9, 0.05, 0.05],
            [0.8, 0.05, 0.15],
        ]
    )
    issues = find_label_issues(labels, probs)
    assert issues.thresholds[1] == np.inf
    assert issues.to_json()["thresholds"][1] is None
    assert issues.confident_joint.tolist() == [[2, 0, 0], [0, 0, 0], [2, 0, 0]]
    assert issues.calibrated_joint.tolist() == [[3, 0, 0], [0, 0, 0], [2, 0, 0]]
    assert issues.indices.tolist() == [3, 4]
    assert issues.suggested.tolist() == [0, 0]


def test_empty_and_invalid_inputs() -> None:
    issues = find_label_issues(np.zeros(0, dtype=np.int64), np.zeros((0, 3)))
    assert len(issues) == 0 and issues.noise_rate == 0.0
    with pytest.raises(ValueError, match="labels must lie"):
        find_label_issues(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="2 labels for 3 rows"):
        find_label_issues(np.array([0, 1]), np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="finite"):
        find_label_issues(np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]]))


def test_weights_exclude_or_down_weight_the_flagged_rows() -> None:
    issues = find_label_issues(HAND_LABELS, HAND_PROBS)
    w = label_issue_weights(12, issues)
    assert w.dtype == np.float32
    assert np.flatnonzero(w == 0).tolist() == [2, 3, 6, 10]
    assert (np.delete(w, [2, 3, 6, 10]) == 1).all()
    w = label_issue_weights(12, issues, mode="down-weight", down_weight=0.25)
    assert w[[2, 3, 6, 10]].tolist() == [0.25] * 4
    assert w.sum() == pytest.approx(8 + 4 * 0.25)
    with pytest.raises(ValueError, match="mode"):
        label_issue_weights(12, issues, mode="drop")
    with pytest.raises(ValueError, match="down_weight"):
        label_issue_weights(12, issues, mode="down-weight", down_weight=1.5)
    with pytest.raises(ValueError, match="12 rows"):
        label_issue_weights(13, issues)


def test_every_row_is_predicted_by_a_model_that_never_saw_it() -> None:
    x = np.arange(20, dtype=np.float64)[:, None]
    y = np.array([0] * 10 + [1] * 7 + [2] * 3)  # class 2 is rarer than 5 folds
    calls: list[tuple[set[float], set[float]]] = []

    def spy(x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray) -> np.ndarray:
        calls.append((set(x_train[:, 0]), set(x_held[:, 0])))
        out = np.zeros((len(x_held), 3))
        out[:, 0] = x_held[:, 0]  # marks which row each prediction belongs to
        return out

    probs = out_of_fold_probabilities(x, y, 3, spy, folds=5, seed=0)
    assert len(calls) == 3  # fell back to the rarest class's count
    for train, held in calls:
        assert not train & held
    assert set().union(*(held for _, held in calls)) == set(x[:, 0])
    np.testing.assert_array_equal(probs[:, 0], x[:, 0])


def test_out_of_fold_with_a_singleton_class_and_bad_shapes() -> None:
    x = np.zeros((7, 2))
    y = np.array([0, 0, 0, 1, 1, 1, 2])
    probs = out_of_fold_probabilities(x, y, 3, lambda _a, _b, h: np.full((len(h), 3), 1 / 3))
    assert probs.shape == (7, 3)
    with pytest.raises(ValueError, match="expected"):
        out_of_fold_probabilities(x, y, 3, lambda _a, _b, h: np.zeros((len(h), 2)))
    with pytest.raises(ValueError, match="folds"):
        out_of_fold_probabilities(x, y, 3, _logreg(), folds=1)


def test_torch_fit_predict_trains_a_fresh_model_per_call() -> None:
    from flywheel.data import digits_arrays

    images, labels = digits_arrays()
    x = (images[:60, None] / 255.0).astype(np.float32)
    y = labels[:60]
    spec = build_spec(
        "seed_cnn",
        task="image-classification",
        native={"kind": "image", "mode": "L", "height": 8, "width": 8},
        labels=tuple(str(i) for i in range(10)),
        options={"image_size": 8},
    )
    fp = torch_fit_predict(spec, TrainConfig(epochs=1, patience=1, image_size=8))
    a = fp(x[:50], y[:50], x[50:])
    b = fp(x[:50], y[:50], x[50:])
    assert a.shape == (10, 10)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, b)  # same seed, fresh model: same result
    assert fp(x[:50], y[:50], x[:0]).shape == (0, 10)


def test_label_issues_type_is_exported() -> None:
    assert isinstance(find_label_issues(HAND_LABELS, HAND_PROBS), LabelIssues)
