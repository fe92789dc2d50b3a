"""The champion/challenger gate, with McNemar's exact test reported beside the decision."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["GateDecision", "decide", "mcnemar"]


def mcnemar(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> dict[str, Any]:
    """Exact (binomial) McNemar test on the discordant pairs of two classifiers.

    ``b``: only the challenger is right; ``c``: only the champion is right.
    """
    from scipy.stats import binomtest

    b = int(np.sum(challenger_correct & ~champion_correct))
    c = int(np.sum(~challenger_correct & champion_correct))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"challenger_only_correct": b, "champion_only_correct": c, "p_value": p}


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    challenger_accuracy: float
    champion_accuracy: float | None
    champion_version: int | None
    margin: float
    mcnemar: dict[str, Any] | None
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    *,
    margin: float,
    champion_version: int | None,
) -> GateDecision:
    """Promote unless the challenger trails the champion by more than ``margin``.

    Both are scored on the same held-out rows, so the paired test applies; its
    p-value is reported, not used to decide, because with a few hundred rows it
    would refuse most genuine small gains.
    """
    challenger_correct = np.asarray(challenger_correct, dtype=bool)
    n = len(challenger_correct)
    acc = float(challenger_correct.mean()) if n else 0.0
    if champion_correct is None:
        return GateDecision(True, "no production model yet", acc, None, None, margin, None, n)
    champion_correct = np.asarray(champion_correct, dtype=bool)
    if champion_correct.shape != challenger_correct.shape:
        raise ValueError("champion and challenger must be scored on the same held-out rows")
    champ = float(champion_correct.mean()) if n else 0.0
    test = mcnemar(challenger_correct, champion_correct)
    delta = acc - champ
    # Compare counts, not float differences: 45/50 against 46/50 with margin 0.02 passes.
    shortfall = int(champion_correct.sum()) - int(challenger_correct.sum())
    if shortfall <= margin * n + 1e-9:
        reason = (
            f"challenger accuracy {acc:.4f} vs champion v{champion_version} {champ:.4f} "
            f"(delta {delta:+.4f}, margin {margin}); McNemar p={test['p_value']:.3g}"
        )
        return GateDecision(True, reason, acc, champ, champion_version, margin, test, n)
    reason = (
        f"challenger accuracy {acc:.4f} trails champion v{champion_version} {champ:.4f} "
        f"by {-delta:.4f}, more than the margin {margin}; McNemar p={test['p_value']:.3g}"
    )
    return GateDecision(False, reason, acc, champ, champion_version, margin, test, n)
