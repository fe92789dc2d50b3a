"""The champion/challenger gate, with a paired test reported beside the decision.

Classification: accuracy on the same held-out rows, McNemar's exact test.
Regression: mean squared error on the same held-out rows, Wilcoxon's signed-rank test.
``judge`` runs the whole sequence of checks in order: the overall score, each class,
the trusted reference (naive curation), who contributed the new rows, ONNX parity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from flywheel.settings import Settings

__all__ = [
    "GateDecision",
    "GatePolicy",
    "Reference",
    "class_check",
    "decide",
    "decide_regression",
    "judge",
    "mcnemar",
    "reference_check",
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
    min_rows: int = 1,
) -> tuple[bool, str, dict[str, Any]]:
    """No class may lose more than ``class_margin`` of its recall against the champion.

    Overall accuracy can rise while one class collapses (a targeted poisoning does
    exactly that); this looks at each class on the same held-out rows. A class fails
    only if the challenger also gets at least ``min_rows`` more of its rows wrong: on a
    small class one row can be more than the margin.
    """
    drops: dict[str, float] = {}
    lost: dict[str, int] = {}
    for k, label in enumerate(labels):
        rows = y_true == k
        if not rows.any():
            continue
        drops[label] = float(champion_correct[rows].mean() - challenger_correct[rows].mean())
        lost[label] = int(champion_correct[rows].sum()) - int(challenger_correct[rows].sum())
    worst = max(drops, key=lambda lab: drops[lab]) if drops else None
    failed = sorted(
        lab for lab, d in drops.items() if d > class_margin + 1e-9 and lost[lab] >= min_rows
    )
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
    if not np.isfinite(mse):  # it learnt nothing usable (a diverged run): never promoted
        return GateDecision(
            False,
            "challenger MSE is not a finite number: the run diverged",
            "mse",
            mse,
            None if champion_sq_err is None else float(np.mean(champion_sq_err)),
            champion_version,
            margin,
            None,
            n,
        )
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


def reference_check(
    y_true: np.ndarray,
    challenger_correct: np.ndarray,
    reference_correct: np.ndarray,
    labels: list[str],
    *,
    margin: float,
    min_rows: int = 3,
) -> tuple[bool, str, dict[str, Any]]:
    """Does the challenger trail a reference model (same rows, curated by trust) by more
    than ``margin``, overall or on a class where it also gets ``min_rows`` more rows wrong?

    Both models are trained alike on nearly the same data, so a gap beyond the
    training noise points at the rows they disagree on: the answers trust set aside.
    """
    classes_ok, _, detail = class_check(
        y_true,
        challenger_correct,
        reference_correct,
        labels,
        class_margin=margin,
        min_rows=min_rows,
    )
    overall = float(reference_correct.mean() - challenger_correct.mean()) if len(y_true) else 0.0
    why = [f"accuracy {-overall:+.4f}"] if overall > margin + 1e-9 else []
    if not classes_ok:
        worst = max(detail["failed_classes"], key=lambda lab: detail["recall_drop"][lab])
        why.append(f"class {worst!r} recall {-detail['recall_drop'][worst]:+.4f}")
    reason = (
        "possibly poisoned feedback: the challenger trails a reference trained on the same "
        f"feedback curated by user trust by more than {margin} ({', '.join(why)})"
        if why
        else ""
    )
    detail = {
        "reference_accuracy": round(float(reference_correct.mean()), 4) if len(y_true) else None,
        "accuracy_drop": round(overall, 4),
        "min_rows": min_rows,
        **detail,
    }
    return not why, reason, detail


@dataclass(frozen=True)
class GatePolicy:
    """What the gate requires, from the project's settings (see README "Configuration")."""

    margin: float = 0.0
    class_margin: float | None = 0.1
    #: "auto": with naive curation, compare with a reference trained on trust-curated rows
    reference: str = "auto"
    reference_margin: float = 0.05
    naive_curation: bool = False
    max_new_user_share: float = 0.5
    refuse_on_contribution: bool = False

    @classmethod
    def from_settings(cls, st: Settings) -> GatePolicy:
        return cls(
            margin=st.gate_margin,
            class_margin=st.gate_class_margin,
            reference=st.gate_reference,
            reference_margin=st.gate_reference_margin,
            naive_curation=st.curation == "naive",
            max_new_user_share=st.max_new_user_share,
            refuse_on_contribution=st.refuse_on_contribution,
        )


@dataclass(frozen=True)
class Reference:
    """A reference model's per-row correctness on the held-out rows, and what it was
    trained on (rows, answers trust held back)."""

    correct: np.ndarray
    rows: int
    held_back: int


def judge(
    challenger: np.ndarray,
    champion: np.ndarray | None,
    *,
    y: np.ndarray,
    labels: Sequence[str],
    champion_version: int | None,
    policy: GatePolicy,
    contribution: dict[str, Any],
    parity: dict[str, Any],
    reference: Callable[[], Reference] | None = None,
) -> GateDecision:
    """The gate's decision on a challenger, its checks made in order.

    ``challenger`` and ``champion`` are per-row scores on the same held-out rows ``y``
    (right or wrong per row for classes, squared error for regression: no ``labels``);
    ``contribution`` summarises who gave the dataset version's new rows (empty: none
    came from feedback); ``parity`` is the challenger's ONNX parity record;
    ``reference`` trains the trusted reference, and is called only when the policy
    needs it.
    """
    regression = not labels
    gate = decide_regression if regression else decide
    decision = gate(challenger, champion, margin=policy.margin, champion_version=champion_version)
    if champion is not None and not regression and policy.class_margin is not None:
        passed, why, detail = class_check(
            y, challenger, champion, list(labels), class_margin=policy.class_margin
        )
        decision = with_check(
            decision, "per_class", passed=passed, refuse=True, reason=why, **detail
        )
    if (
        policy.reference == "auto"
        and policy.naive_curation
        and not regression
        and champion is not None
        and contribution  # the version holds feedback rows
        and reference is not None
    ):
        ref = reference()
        passed, why, detail = reference_check(
            y, challenger, ref.correct, list(labels), margin=policy.reference_margin
        )
        decision = with_check(
            decision,
            "trusted_reference",
            passed=passed,
            refuse=True,
            reason=why,
            reference_rows=ref.rows,
            held_back_answers=ref.held_back,
            **detail,
        )
    if contribution and champion_version is not None:
        share = float(contribution.get("new_user_share", 0.0))
        limit = policy.max_new_user_share
        decision = with_check(
            decision,
            "contribution",
            # The first feedback has no earlier users to compare with.
            passed=bool(contribution.get("first_feedback")) or share <= limit,
            refuse=policy.refuse_on_contribution,
            reason=f"{share:.0%} of the new rows come from first-time users (limit {limit:.0%})",
            **contribution,
        )
    if parity.get("passed") is False:
        decision = with_check(
            decision,
            "onnx_parity",
            passed=False,
            refuse=True,
            reason=(
                f"its ONNX export does not match torch (max |diff| "
                f"{parity['max_abs_diff']:.3g}, allowed {parity['atol']}; "
                f"arg-max agreement {parity['argmax_agreement']:.4f})"
            ),
            **{k: v for k, v in parity.items() if k != "passed"},
        )
    return decision
