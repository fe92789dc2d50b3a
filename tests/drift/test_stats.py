"""Drift tests and the label-free estimate on synthetic streams whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flywheel.drift.stats import (
    Reference,
    WindowScores,
    build_reference,
    fit_temperature,
    penultimate,
    scaled_confidence,
)

D, LABELS = 12, 4
MIXING = np.random.default_rng(99).normal(size=(D, LABELS))


def _draw(
    rng: np.random.Generator, n: int, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, the model's probabilities and labels drawn from them (a calibrated model)."""
    x = rng.normal(size=(n, D))
    x[:, :3] += shift
    logits = x @ MIXING
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return x, p, y


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(0)
    x, p, y = _draw(rng, 1000)
    return build_reference(x, np.zeros(len(x)), probabilities=p, y=y, window=200, alpha=0.01)


def _window(ref: Reference, x: np.ndarray, p: np.ndarray) -> WindowScores:
    conf = scaled_confidence(p, ref.temperature or 1.0)
    return ref.score(x, p.argmax(1), conf)


def test_a_stream_without_a_shift_alarms_at_most_about_once_per_hundred_windows(
    reference: Reference,
) -> None:
    rng = np.random.default_rng(1)
    results = [_window(reference, *_draw(rng, 200)[:2]) for _ in range(300)]
    alarms = sum(r.alarm for r in results)
    # alpha = 0.01: about 3 of 300; 7 or more would happen by chance less than 1 in 30.
    assert alarms <= 6, alarms
    # The calibrated p-values of the input test are spread over (0, 1], not piled at 0.
    p_mmd = np.array([r.p_values["input_mmd"] for r in results])
    assert 0.3 < np.median(p_mmd) < 0.8
    assert (p_mmd > 0).all() and (p_mmd <= 1).all()


def test_a_shift_of_the_inputs_alarms_in_nearly_every_window(reference: Reference) -> None:
    rng = np.random.default_rng(2)
    shifted = [_window(reference, *_draw(rng, 200, shift=0.5)[:2]) for _ in range(20)]
    assert sum(r.alarm for r in shifted) >= 19
    assert all(r.drift_score > 1 for r in shifted if r.alarm)
    assert all(r.scores["input_mmd"] > r.thresholds["input_mmd"] for r in shifted if r.alarm)


def test_a_shift_of_the_predicted_labels_alone_alarms(reference: Reference) -> None:
    rng = np.random.default_rng(3)
    x, p, _ = _draw(rng, 2000)
    # Same inputs' distribution per row, but the window holds only rows predicted 0 or 1.
    keep = np.flatnonzero(p.argmax(1) <= 1)[:200]
    result = _window(reference, x[keep], p[keep])
    assert result.alarm and result.scores["label_tv"] > result.thresholds["label_tv"]


def test_too_few_reference_rows_are_refused_with_the_number_needed() -> None:
    rng = np.random.default_rng(4)
    x, p, y = _draw(rng, 150)
    with pytest.raises(ValueError, match="needs at least 200"):
        build_reference(x, np.zeros(150), probabilities=p, y=y, window=200, alpha=0.01)


def test_regression_windows_test_features_and_predicted_values() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 5))
    ref = build_reference(
        x, x @ np.ones(5), probabilities=None, y=None, window=100, alpha=0.01, rounds=400
    )
    assert ref.tests == ("input_mmd", "value_ks")
    w = rng.normal(size=(100, 5))
    calm = ref.score(w, None, w @ np.ones(5))
    moved = ref.score(w + 1.0, None, (w + 1.0) @ np.ones(5))
    assert moved.alarm and moved.scores["value_ks"] > moved.thresholds["value_ks"]
    assert calm.drift_score < moved.drift_score


def test_temperature_scaling_recovers_an_overconfident_models_temperature() -> None:
    rng = np.random.default_rng(6)
    _, p, y = _draw(rng, 5000)
    # The same model made over-confident: logits doubled.
    sharp = p**2 / (p**2).sum(1, keepdims=True)
    t = fit_temperature(sharp, y)
    assert abs(t - 2.0) < 0.15, t
    # Calibrated, its mean confidence estimates its accuracy (argmax of p) closely.
    accuracy = float((p.argmax(1) == y).mean())
    assert abs(float(scaled_confidence(sharp, t).mean()) - accuracy) < 0.02
    assert float(sharp.max(1).mean()) - accuracy > 0.05  # uncalibrated, it overstates


def test_penultimate_reads_what_the_last_linear_layer_reads() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = np.random.default_rng(7).normal(size=(10, 4)).astype(np.float32)
    emb = penultimate(model, x, batch_size=4)
    with torch.no_grad():
        expected = torch.relu(model[0](torch.from_numpy(x))).numpy()
    # float32 matmuls round differently in batches of 4 and of 10 (a few ulps)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-7)
