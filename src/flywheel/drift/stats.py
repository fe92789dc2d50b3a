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

Raw p-values over-alarm (every window is compared with the same reference rows, and
a window of a stream is not a random sample of the reference). So each test's
threshold is *calibrated*: the reference is split at random, many times, into a
pseudo-window of the window's size and a pseudo-reference of the live reference's
size, and the threshold is the (1 - alpha / tests) quantile of the statistic over
those splits; a window alarms when any test passes its threshold, which keeps false
alarms at about alpha per window on a stream without a shift (Bonferroni over tests).

The label-free accuracy estimate of a window is the mean calibrated confidence: the
stored probabilities, temperature-scaled with a temperature fitted (by likelihood) on
the reference rows' true labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = [
    "MIN_REFERENCE",
    "Reference",
    "WindowScores",
    "build_reference",
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
    """The reference rows as the model sees them, and the calibrations made so far."""

    emb: np.ndarray  # standardised embeddings of all reference rows (m, d)
    mean: np.ndarray
    std: np.ndarray
    bandwidth: float
    kernel: np.ndarray  # (m, m) Gaussian kernel between reference rows
    fixed: np.ndarray  # indices of the rows live windows are compared with
    predicted: np.ndarray | None  # predicted label index per row (classification)
    outputs: np.ndarray  # confidence per row (classification) or predicted value
    n_labels: int
    temperature: float | None
    alpha: float
    rounds: int
    seed: int
    _thresholds: dict[int, tuple[dict[str, float], dict[str, np.ndarray]]] = field(
        default_factory=dict
    )

    @property
    def regression(self) -> bool:
        return self.predicted is None

    @property
    def tests(self) -> tuple[str, ...]:
        return ("input_mmd", "value_ks") if self.regression else (
            "input_mmd", "label_tv", "confidence_ks",
        )  # fmt: skip

    def _standardise(self, emb: np.ndarray) -> np.ndarray:
        return (np.asarray(emb, np.float64) - self.mean) / self.std

    def _k(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy() ** 2
        return np.asarray(np.exp(-d2 / (2.0 * self.bandwidth**2)))

    def calibration(self, n: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Thresholds for windows of ``n`` calls, and the statistics they came from."""
        if n not in self._thresholds:
            self._thresholds[n] = self._calibrate(n)
        return self._thresholds[n]

    def _calibrate(self, n: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        m, r = len(self.emb), len(self.fixed)
        if n + r > m:
            raise ValueError(f"a window of {n} calls needs {n + r} reference rows; have {m}")
        rng = np.random.default_rng(self.seed + n)
        # Each round: a random order of the rows; its first n are the pseudo-window W,
        # its first m - r are all rows outside the pseudo-reference R (W among them).
        perms = np.argsort(rng.random((self.rounds, m)), axis=1)
        w, out_of_r, in_r = perms[:, :n], perms[:, : m - r], perms[:, m - r :]
        rows = np.arange(self.rounds)[:, None]
        s_w = np.zeros((self.rounds, m))
        s_w[rows, w] = 1.0
        s_e = np.zeros((self.rounds, m))
        s_e[rows, out_of_r] = 1.0
        k, row_sums = self.kernel, self.kernel.sum(1)
        a_w, a_e = s_w @ k, s_e @ k
        k_ww, k_we, k_ee = (a_w * s_w).sum(1), (a_w * s_e).sum(1), (a_e * s_e).sum(1)
        k_wr = s_w @ row_sums - k_we
        k_rr = float(k.sum()) - 2.0 * (s_e @ row_sums) + k_ee
        samples = {"input_mmd": k_ww / n**2 + k_rr / r**2 - 2.0 * k_wr / (n * r)}
        if self.predicted is None:
            samples["value_ks"] = _ks(self.outputs[w], self.outputs[in_r])
        else:
            shares = []
            for idx in (w, in_r):
                counts = np.zeros((self.rounds, self.n_labels))
                np.add.at(counts, (np.broadcast_to(rows, idx.shape), self.predicted[idx]), 1.0)
                shares.append(counts / idx.shape[1])
            samples["label_tv"] = 0.5 * np.abs(shares[0] - shares[1]).sum(1)
            samples["confidence_ks"] = _ks(self.outputs[w], self.outputs[in_r])
        q = 1.0 - self.alpha / len(self.tests)
        thresholds = {t: float(np.quantile(v, q, method="higher")) for t, v in samples.items()}
        return thresholds, samples

    def score(
        self, emb: np.ndarray, predicted: np.ndarray | None, outputs: np.ndarray
    ) -> WindowScores:
        """A window's tests against the fixed reference rows, with calibrated thresholds."""
        n = len(emb)
        thresholds, samples = self.calibration(n)
        w = self._standardise(emb)
        ref = self.emb[self.fixed]
        r = len(ref)
        k_rr = float(self.kernel[np.ix_(self.fixed, self.fixed)].sum())
        mmd = float(
            self._k(w, w).sum() / n**2 + k_rr / r**2 - 2.0 * self._k(w, ref).sum() / (n * r)
        )
        scores = {"input_mmd": mmd}
        if self.predicted is None:
            scores["value_ks"] = float(_ks(np.asarray(outputs), self.outputs[self.fixed]))
        else:
            assert predicted is not None
            scores["label_tv"] = _tv(predicted, self.predicted[self.fixed], self.n_labels)
            scores["confidence_ks"] = float(_ks(np.asarray(outputs), self.outputs[self.fixed]))
        p_values = {
            t: float((1 + np.sum(samples[t] >= scores[t])) / (1 + len(samples[t]))) for t in scores
        }
        return WindowScores(scores, thresholds, p_values)


def _tv(a: np.ndarray, b: np.ndarray, n_labels: int) -> float:
    pa = np.bincount(a, minlength=n_labels) / max(len(a), 1)
    pb = np.bincount(b, minlength=n_labels) / max(len(b), 1)
    return float(0.5 * np.abs(pa - pb).sum())


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
) -> Reference:
    """The reference of a model: ``emb`` its embeddings of the reference rows,
    ``probabilities`` its probabilities there (classification; None: regression, with
    ``outputs`` its predicted values) and ``y`` their true labels (for the temperature).

    Raises ValueError when there are too few rows to compare a window of ``window``
    calls with at least ``MIN_REFERENCE`` rows."""
    m = len(emb)
    if m < window + MIN_REFERENCE:
        raise ValueError(
            f"{m} reference rows; a window of {window} calls needs at least "
            f"{window + MIN_REFERENCE} (the window's size for calibration, {MIN_REFERENCE} "
            "to compare with)"
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
    # Live windows meet the rows left once a pseudo-window's worth is set aside.
    fixed = np.sort(rng.permutation(len(z))[: len(z) - window])
    temperature = None
    predicted = None
    n_labels = 0
    if probabilities is not None:
        probs = np.asarray(probabilities, np.float64)[keep]
        n_labels = probs.shape[1]
        predicted = probs.argmax(1)
        if y is not None:
            temperature = fit_temperature(probs, np.asarray(y)[keep])
        outputs = scaled_confidence(probs, temperature or 1.0)
    else:
        outputs = np.asarray(outputs, np.float64)[keep]
    return Reference(
        emb=z, mean=mean, std=std, bandwidth=bandwidth, kernel=kernel, fixed=fixed,
        predicted=predicted, outputs=outputs, n_labels=n_labels, temperature=temperature,
        alpha=alpha, rounds=rounds, seed=seed,
    )  # fmt: skip
