"""Drift and label-free accuracy as statistics: arrays in, numbers out (no database).

A window of production calls is compared with a *reference*: rows of the project the
model was not trained on (held out, or set aside for evaluation), as the model sees
them. Three tests per window (two for regression):

* ``input_mmd`` — input drift: the squared maximum mean discrepancy between the
  window's and the reference's penultimate-layer embeddings (features, for tabular
  rows), standardised per dimension, with a Gaussian kernel whose width is the median
  distance between reference rows;
* ``label_tv`` — prediction drift: the total-variation distance between the window's
  and the reference's predicted-label shares (classification);
* ``confidence_ks`` / ``value_ks`` — the Kolmogorov-Smirnov statistic between the
  window's and the reference's confidences (classification) or predicted values.

Raw p-values over-alarm: an asymptotic KS or chi-square p-value is wrong for
ties, small windows and kernel statistics, and three tests per window at alpha
each alarm about three times as often. So each test is calibrated by permutation:
the window's rows and the reference rows are pooled and split at random ``rounds``
(1,000) times into a pseudo-window and a pseudo-reference of the same sizes; the
threshold is the (1 - alpha / tests) quantile of the statistic over those splits.
Under no shift (the window and the reference drawn from one distribution) the split
that came is one more random split, so each test alarms with probability at most
alpha / tests, whatever the reference rows happen to be, and a window alarms (any
test past its threshold) at most alpha of the time (Bonferroni over tests).

The label-free accuracy estimate of a window is the mean calibrated confidence: the
stored probabilities, temperature-scaled so that the top confidence is the chance of
being right (``fit_confidence_temperature``), fitted on the calls of the model that
were answered before the window (live traffic as it comes) and, while they are few, on
the reference rows too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "MIN_REFERENCE",
    "Reference",
    "WindowScores",
    "build_reference",
    "fit_confidence_temperature",
    "fit_temperature",
    "penultimate",
    "scaled_confidence",
]

#: the fewest reference rows a window is compared with (besides the pseudo-windows)
MIN_REFERENCE = 100


@torch.no_grad()
def penultimate(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """What the model's last linear layer reads — its penultimate embedding — per row."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError("the model has no linear layer to read an embedding before")
    seen: list[torch.Tensor] = []
    hook = last.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(x[i : i + batch_size]))
    finally:
        hook.remove()
    if not seen:
        return np.zeros((0, last.in_features), np.float32)
    return torch.cat([t.reshape(t.shape[0], -1) for t in seen]).numpy().astype(np.float64)


def fit_temperature(probabilities: np.ndarray, y: np.ndarray) -> float:
    """The temperature T that makes softmax(log p / T) most likely for the true labels."""
    from scipy import optimize

    logp = np.log(np.clip(probabilities, 1e-12, 1.0))

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        return float((lse - z[np.arange(len(y)), y]).mean())

    res = optimize.minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def fit_confidence_temperature(probabilities: np.ndarray, right: np.ndarray) -> float:
    """The temperature T that makes each row's top confidence after scaling most likely
    as the chance that the prediction is right (a Bernoulli likelihood: it needs only
    right or wrong per row, not the true label)."""
    from scipy import optimize

    p = np.asarray(probabilities, np.float64)
    r = np.asarray(right, np.float64)

    def nll(log_t: float) -> float:
        c = np.clip(scaled_confidence(p, math.exp(log_t)), 1e-9, 1 - 1e-9)
        return float(-(r * np.log(c) + (1 - r) * np.log(1 - c)).mean())

    res = optimize.minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


def scaled_confidence(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Each row's largest probability after temperature scaling."""
    z = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    return np.asarray(p.max(1) / p.sum(1))


@dataclass(frozen=True)
class WindowScores:
    scores: dict[str, float]
    thresholds: dict[str, float]
    p_values: dict[str, float]  # calibrated: the share of reference splits at least as far

    @property
    def alarm(self) -> bool:
        return any(self.scores[k] > self.thresholds[k] for k in self.scores)

    @property
    def drift_score(self) -> float:
        """The largest score as a multiple of its threshold (> 1: an alarm)."""
        return max(self.scores[k] / max(self.thresholds[k], 1e-300) for k in self.scores)


@dataclass
class Reference:
    """The reference rows as the model sees them."""

    emb: np.ndarray  # standardised embeddings of the reference rows (m, d)
    mean: np.ndarray
    std: np.ndarray
    bandwidth: float
    kernel: np.ndarray  # (m, m) Gaussian kernel between reference rows
    predicted: np.ndarray | None  # predicted label index per row (classification)
    outputs: np.ndarray  # confidence per row (classification) or predicted value
    n_labels: int
    temperature: float | None
    alpha: float
    rounds: int
    seed: int
    #: average thresholded confidence: the confidence above which the reference's share
    #: of rows equals its accuracy (None: regression, or no labels)
    atc_threshold: float | None = None

    def atc(self, confidences: np.ndarray) -> float | None:
        """The ATC estimate of a window's accuracy: its share of rows past the threshold."""
        if self.atc_threshold is None or not len(confidences):
            return None
        return float(np.mean(np.asarray(confidences) > self.atc_threshold))

    @property
    def regression(self) -> bool:
        return self.predicted is None

    @property
    def tests(self) -> tuple[str, ...]:
        return ("input_mmd", "value_ks") if self.regression else (
            "input_mmd", "label_tv", "confidence_ks",
        )  # fmt: skip

    def _k(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy() ** 2
        return np.asarray(np.exp(-d2 / (2.0 * self.bandwidth**2)))

    def score(
        self, emb: np.ndarray, predicted: np.ndarray | None, outputs: np.ndarray
    ) -> WindowScores:
        """A window's tests against the reference, each with its permutation threshold
        and p-value: the window's and the reference's rows are pooled and split at
        random ``rounds`` times into a pseudo-window and a pseudo-reference of the same
        sizes (the same splits for every window of that size)."""
        n, m = len(emb), len(self.emb)
        w = (np.asarray(emb, np.float64) - self.mean) / self.std
        k_wr = self._k(w, self.emb)
        pooled = np.block([[self._k(w, w), k_wr], [k_wr.T, self.kernel]])
        N = n + m
        rng = np.random.default_rng([self.seed, n])
        perms = np.vstack([np.arange(N), np.argsort(rng.random((self.rounds, N)), axis=1)])
        pw, pr = perms[:, :n], perms[:, n:]  # row 0: the window as it came
        rows = np.arange(len(perms))[:, None]
        s_w = np.zeros((len(perms), N))
        s_w[rows, pw] = 1.0
        a_w = s_w @ pooled
        sum_ww = (a_w * s_w).sum(1)
        sum_wr = s_w @ pooled.sum(1) - sum_ww
        sum_rr = float(pooled.sum()) - sum_ww - 2.0 * sum_wr
        stats = {"input_mmd": sum_ww / n**2 + sum_rr / m**2 - 2.0 * sum_wr / (n * m)}
        values = np.concatenate([np.asarray(outputs, np.float64), self.outputs])
        if self.predicted is None:
            stats["value_ks"] = _ks(values[pw], values[pr])
        else:
            assert predicted is not None
            labels = np.concatenate([np.asarray(predicted), self.predicted])
            shares = []
            for idx in (pw, pr):
                counts = np.zeros((len(perms), self.n_labels))
                np.add.at(counts, (np.broadcast_to(rows, idx.shape), labels[idx]), 1.0)
                shares.append(counts / idx.shape[1])
            stats["label_tv"] = 0.5 * np.abs(shares[0] - shares[1]).sum(1)
            stats["confidence_ks"] = _ks(values[pw], values[pr])
        q = 1.0 - self.alpha / len(self.tests)
        scores = {t: float(v[0]) for t, v in stats.items()}
        thresholds = {t: float(np.quantile(v[1:], q, method="higher")) for t, v in stats.items()}
        p_values = {
            t: float((1 + np.sum(v[1:] >= v[0] - 1e-12)) / len(v)) for t, v in stats.items()
        }
        return WindowScores(scores, thresholds, p_values)


def _ks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The two-sample Kolmogorov-Smirnov statistic along the last axis."""
    from scipy import stats

    return np.asarray(stats.ks_2samp(a, b, axis=-1, method="asymp").statistic)


def build_reference(
    emb: np.ndarray,
    outputs: np.ndarray,
    *,
    probabilities: np.ndarray | None,
    y: np.ndarray | None,
    window: int,
    alpha: float,
    rounds: int = 1000,
    seed: int = 0,
    max_rows: int = 1000,
    min_rows: int | None = None,
) -> Reference:
    """The reference of a model: ``emb`` its embeddings of the reference rows,
    ``probabilities`` its probabilities there (classification; None: regression, with
    ``outputs`` its predicted values) and ``y`` their true labels (for the temperature).

    Raises ValueError when there are fewer rows than a window of ``window`` calls, or
    fewer than ``MIN_REFERENCE`` (or than ``min_rows``, where given: the permutation
    test holds at any size, a smaller reference only makes it less sensitive)."""
    m = len(emb)
    need = max(window, MIN_REFERENCE) if min_rows is None else min_rows
    if m < need:
        raise ValueError(
            f"{m} reference rows; a window of {window} calls needs at least {need} "
            f"(as many as the window, and {MIN_REFERENCE} or more)"
        )
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(m)[:max_rows]) if m > max_rows else np.arange(m)
    emb = np.asarray(emb, np.float64)[keep]
    mean = emb.mean(0)
    std = emb.std(0)
    std[std < 1e-8] = 1.0
    z = (emb - mean) / std
    zt = torch.from_numpy(z)
    d = torch.cdist(zt, zt).numpy()
    upper = d[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(upper)) or 1.0
    kernel = np.exp(-(d**2) / (2.0 * bandwidth**2))
    temperature = atc = None
    predicted = None
    n_labels = 0
    if probabilities is not None:
        probs = np.asarray(probabilities, np.float64)[keep]
        n_labels = probs.shape[1]
        predicted = probs.argmax(1)
        if y is not None:
            temperature = fit_temperature(probs, np.asarray(y)[keep])
        outputs = scaled_confidence(probs, temperature or 1.0)
        if y is not None:
            accuracy = float(np.mean(predicted == np.asarray(y)[keep]))
            atc = float(np.quantile(outputs, 1.0 - accuracy))
    else:
        outputs = np.asarray(outputs, np.float64)[keep]
    return Reference(
        emb=z, mean=mean, std=std, bandwidth=bandwidth, kernel=kernel,
        predicted=predicted, outputs=outputs, n_labels=n_labels, temperature=temperature,
        alpha=alpha, rounds=rounds, seed=seed, atc_threshold=atc,
    )  # fmt: skip
