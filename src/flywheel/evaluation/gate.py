"""The champion/challenger gate, with a paired test reported beside the decision.

Classification: accuracy on the same held-out rows, McNemar's exact test.
Regression: mean squared error on the same held-out rows, Wilcoxon's signed-rank test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "GateDecision",
    "class_check",
    "decide",
    "decide_regression",
    "mcnemar",
    "wilcoxon",
    "with_check",
]


def mcnemar(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> dict[str, Any]:
    """Exact (binomial) McNemar test on the discordant pairs of two classifiers.

    ``b``: only the challenger is right; ``c``: only the champion is right.
    """
    from scipy.stats import binomtest

    b = int(np.sum(challenger_correct & ~champion_correct))
    c = int(np.sum(~challenger_correct & champion_correct))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {
        "name": "mcnemar",
        "challenger_only_correct": b,
        "champion_only_correct": c,
        "p_value": p,
    }


def wilcoxon(challenger_sq_err: np.ndarray, champion_sq_err: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test on paired squared errors (two-sided)."""
    from scipy.stats import wilcoxon as scipy_wilcoxon

    diff = np.asarray(challenger_sq_err, dtype=np.float64) - np.asarray(champion_sq_err)
    better = int(np.sum(diff < 0))
    worse = int(np.sum(diff > 0))
    p = 1.0 if better + worse == 0 else float(scipy_wilcoxon(diff, zero_method="wilcox").pvalue)
    return {"name": "wilcoxon", "challenger_better": better, "champion_better": worse, "p_value": p}


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str  # "accuracy" (higher is better) or "mse" (lower is better)
    challenger_score: float
    champion_score: float | None
    champion_version: int | None
    margin: float
    test: dict[str, Any] | None
    n: int
    #: further checks beside the overall score, by name: {"passed", "refuse", "detail", ...}
    checks: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def with_check(
    decision: GateDecision, name: str, *, passed: bool, refuse: bool, reason: str, **detail: Any
) -> GateDecision:
    """Add a named check; a failed check that may refuse turns the decision into a refusal."""
    checks = {**decision.checks, name: {"passed": passed, "refuse": refuse, **detail}}
    if passed:
        return replace(decision, checks=checks)
    if refuse and decision.promote:
        return replace(
            decision, promote=False, reason=f"{reason}; {decision.reason}", checks=checks
        )
    return replace(decision, reason=f"{decision.reason}; {reason}", checks=checks)


def class_check(
    y_true: np.ndarray,
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray,
    labels: list[str],
    *,
    class_margin: float,
) -> tuple[bool, str, dict[str, Any]]:
    """No class may lose more than ``class_margin`` of its recall against the champion.

    Overall accuracy can rise while one class collapses (a targeted poisoning does
    exactly that); this looks at each class on the same held-out rows.
    """
    drops: dict[str, float] = {}
    for k, label in enumerate(labels):
        rows = y_true == k
        if not rows.any():
            continue
        drops[label] = float(champion_correct[rows].mean() - challenger_correct[rows].mean())
    worst = max(drops, key=lambda lab: drops[lab]) if drops else None
    failed = sorted(lab for lab, d in drops.items() if d > class_margin + 1e-9)
    detail = {
        "class_margin": class_margin,
        "recall_drop": {lab: round(d, 4) for lab, d in drops.items()},
        "worst_class": worst,
        "failed_classes": failed,
    }
    if not failed:
        return True, "", detail
    reason = (
        f"class {worst!r} loses {drops[str(worst)]:.4f} of its recall against the champion, "
        f"more than the class margin {class_margin}"
    )
    return False, reason, detail


def decide(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    *,
    margin: float,
    champion_version: int | None,
) -> GateDecision:
    """Promote unless the challenger's accuracy trails the champion's by more than ``margin``.

    Both are scored on the same held-out rows, so the paired test applies; its
    p-value is reported, not used to decide, because with a few hundred rows it
    would refuse most genuine small gains.
    """
    challenger_correct = np.asarray(challenger_correct, dtype=bool)
    n = len(challenger_correct)
    acc = float(challenger_correct.mean()) if n else 0.0
    if champion_correct is None:
        return GateDecision(
            True, "no production model yet", "accuracy", acc, None, None, margin, None, n
        )
    champion_correct = np.asarray(champion_correct, dtype=bool)
    if champion_correct.shape != challenger_correct.shape:
        raise ValueError("champion and challenger must be scored on the same held-out rows")
    champ = float(champion_correct.mean()) if n else 0.0
    test = mcnemar(challenger_correct, champion_correct)
    delta = acc - champ
    # Compare counts, not float differences: 45/50 against 46/50 with margin 0.02 passes.
    shortfall = int(champion_correct.sum()) - int(challenger_correct.sum())
    args = ("accuracy", acc, champ, champion_version, margin, test, n)
    if shortfall <= margin * n + 1e-9:
        reason = (
            f"challenger accuracy {acc:.4f} vs champion v{champion_version} {champ:.4f} "
            f"(delta {delta:+.4f}, margin {margin}); McNemar p={test['p_value']:.3g}"
        )
        return GateDecision(True, reason, *args)
    reason = (
        f"challenger accuracy {acc:.4f} trails champion v{champion_version} {champ:.4f} "
        f"by {-delta:.4f}, more than the margin {margin}; McNemar p={test['p_value']:.3g}"
    )
    return GateDecision(False, reason, *args)


def decide_regression(
    challenger_sq_err: np.ndarray,
    champion_sq_err: np.ndarray | None,
    *,
    margin: float,
    champion_version: int | None,
) -> GateDecision:
    """Promote unless the challenger's MSE exceeds the champion's by more than ``margin``.

    The margin is relative: 0.05 lets the challenger's MSE be up to 5% higher.
    """
    challenger_sq_err = np.asarray(challenger_sq_err, dtype=np.float64)
    n = len(challenger_sq_err)
    mse = float(challenger_sq_err.mean()) if n else 0.0
    if champion_sq_err is None:
        return GateDecision(
            True, "no production model yet", "mse", mse, None, None, margin, None, n
        )
    champion_sq_err = np.asarray(champion_sq_err, dtype=np.float64)
    if champion_sq_err.shape != challenger_sq_err.shape:
        raise ValueError("champion and challenger must be scored on the same held-out rows")
    champ = float(champion_sq_err.mean()) if n else 0.0
    test = wilcoxon(challenger_sq_err, champion_sq_err)
    args = ("mse", mse, champ, champion_version, margin, test, n)
    limit = champ * (1 + margin)
    change = (mse - champ) / champ if champ > 0 else 0.0
    if mse <= limit * (1 + 1e-12) + 1e-12:
        reason = (
            f"challenger MSE {mse:.4g} vs champion v{champion_version} {champ:.4g} "
            f"({change:+.2%}, margin {margin:.0%}); Wilcoxon p={test['p_value']:.3g}"
        )
        return GateDecision(True, reason, *args)
    reason = (
        f"challenger MSE {mse:.4g} exceeds champion v{champion_version} {champ:.4g} "
        f"by {change:.2%}, more than the margin {margin:.0%}; Wilcoxon p={test['p_value']:.3g}"
    )
    return GateDecision(False, reason, *args)
