"""The champion/challenger gate: decisions with their uncertainty.

Classification: accuracy on the same held-out rows; the difference's confidence
interval from the discordant pairs (exact, conditional on their number), McNemar's
exact test beside it. Regression: mean squared error on the same rows; a bootstrap
interval of the paired difference (fixed seed), Wilcoxon's signed-rank test beside it.

The overall verdict is ``pass`` when the interval lies above the margin (the
challenger is not worse by more than it), ``fail`` when it lies below, and
``inconclusive`` when the rows cannot tell; ``gate_inconclusive`` says what an
inconclusive verdict does (promote, the default: the challenger has seen more data;
or hold the champion). A class fails only on a recall drop beyond the class margin
that is also significant after Holm's correction over the classes: never on one row.

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
    "holm",
    "judge",
    "mcnemar",
    "mean_interval",
    "paired_interval",
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


def paired_interval(b: int, c: int, n: int, alpha: float) -> tuple[float, float]:
    """A ``1 - alpha`` interval for the difference in accuracy, (b - c) / n, of two
    classifiers on the same ``n`` rows: ``b`` rows only the first gets right, ``c`` only
    the second. Exact (Clopper-Pearson) for the share b / (b + c) of the discordant
    pairs, conditional on their number."""
    from scipy.stats import binomtest

    m = b + c
    if m == 0 or n == 0:
        return 0.0, 0.0
    ci = binomtest(b, m, 0.5).proportion_ci(confidence_level=1 - alpha, method="exact")
    return m / n * (2 * ci.low - 1), m / n * (2 * ci.high - 1)


def mean_interval(d: np.ndarray, alpha: float) -> tuple[float, float]:
    """A ``1 - alpha`` bootstrap (BCa, 2,000 resamples, seed 0) interval of ``d``'s mean."""
    from scipy.stats import bootstrap

    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2 or float(np.ptp(d)) == 0.0:
        mean = float(d.mean()) if len(d) else 0.0
        return mean, mean
    for method in ("BCa", "percentile"):  # BCa degenerates on some samples: percentiles
        res = bootstrap(
            (d,),
            np.mean,
            confidence_level=1 - alpha,
            n_resamples=2000,
            method=method,
            rng=np.random.default_rng(0),
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            break
    return lo, hi


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (family-wise error over the keys)."""
    order = sorted(p_values, key=lambda k: p_values[k])
    m = len(order)
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[k]))
        adjusted[k] = running
    return adjusted


def _verdict(lo: float, hi: float, boundary: float, inconclusive: str) -> tuple[str, bool]:
    """(verdict, promote) of an interval for "challenger minus what it must reach"
    (positive: better), against 0 at ``boundary``."""
    if lo >= boundary - 1e-12:
        return "pass", True
    if hi < boundary - 1e-12:
        return "fail", False
    return "inconclusive", inconclusive == "promote"


def _inconclusive(what: str, promote: bool, setting: str) -> str:
    return (
        f"; inconclusive: the rows cannot tell whether it {what}, so it is "
        f"{'promoted' if promote else 'held back'} (gate_inconclusive = {setting})"
    )


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
    #: the overall comparison: "pass", "fail", "inconclusive" (or "first": no champion)
    verdict: str = "first"
    #: the interval of the difference (accuracy: challenger - champion; MSE: challenger -
    #: champion x (1 + margin), negative is better) at ``1 - alpha``
    interval: tuple[float, float] | None = None
    alpha: float = 0.05
    #: the scores on each split the gate judged on ("holdout", "evaluation") and on
    #: both ("combined", what it decided on); empty: the held-out rows alone
    splits: dict[str, Any] = field(default_factory=dict)
    #: the rows challenger and champion were both scored on: how many of each split, the
    #: SHA-256 of their input hashes in order, and how each decoded them
    rows: dict[str, Any] = field(default_factory=dict)

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


def with_splits(
    decision: GateDecision,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    n_holdout: int,
) -> GateDecision:
    """Record the scores on each split: the first ``n_holdout`` rows are the held-out
    split, the rest the evaluation split (none: nothing to add)."""
    if n_holdout >= len(challenger):
        return decision
    parts = {
        "holdout": slice(0, n_holdout),
        "evaluation": slice(n_holdout, None),
        "combined": slice(None),
    }
    splits = {
        name: {
            "n": len(challenger[part]),
            "challenger": round(float(np.mean(challenger[part])), 4),
            "champion": None if champion is None else round(float(np.mean(champion[part])), 4),
        }
        for name, part in parts.items()
    }
    ev = splits["evaluation"]
    ho = splits["holdout"]
    note = (
        f"on {ho['n']} held-out and {ev['n']} evaluation rows ({decision.metric} "
        f"{ho['challenger']:.4f} and {ev['challenger']:.4f}"
        + ("" if champion is None else f"; champion {ho['champion']:.4f} and {ev['champion']:.4f}")
        + ")"
    )
    return replace(decision, splits=splits, reason=f"{decision.reason} {note}")


def class_check(
    y_true: np.ndarray,
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray,
    labels: list[str],
    *,
    class_margin: float,
    min_rows: int = 1,
    alpha: float | None = None,
) -> tuple[bool, str, dict[str, Any]]:
    """No class may lose more than ``class_margin`` of its recall against the champion.

    Overall accuracy can rise while one class collapses (a targeted poisoning does
    exactly that); this looks at each class on the same held-out rows. A class fails
    only if the challenger also gets at least ``min_rows`` more of its rows wrong and,
    with ``alpha``, if the drop is significant: an exact one-sided McNemar test on the
    class's rows, Holm-adjusted over the classes, below ``alpha``. (Two rows of a
    class, one lost, is p = 0.5 before any correction.)
    """
    from scipy.stats import binomtest

    drops: dict[str, float] = {}
    lost: dict[str, int] = {}
    support: dict[str, int] = {}
    p_raw: dict[str, float] = {}
    for k, label in enumerate(labels):
        rows = y_true == k
        if not rows.any():
            continue
        ch, cp = challenger_correct[rows], champion_correct[rows]
        drops[label] = float(cp.mean() - ch.mean())
        lost[label] = int(cp.sum()) - int(ch.sum())
        support[label] = int(rows.sum())
        b, c = int(np.sum(ch & ~cp)), int(np.sum(~ch & cp))
        p_raw[label] = 1.0 if c == 0 else float(binomtest(c, b + c, 0.5, "greater").pvalue)
    p_adj = holm(p_raw)
    worst = max(drops, key=lambda lab: drops[lab]) if drops else None
    failed = sorted(
        lab
        for lab, d in drops.items()
        if d > class_margin + 1e-9
        and lost[lab] >= min_rows
        and (alpha is None or p_adj[lab] < alpha)
    )
    detail: dict[str, Any] = {
        "class_margin": class_margin,
        "recall_drop": {lab: round(d, 4) for lab, d in drops.items()},
        "worst_class": worst,
        "failed_classes": failed,
    }
    if alpha is not None:
        detail |= {
            "alpha": alpha,
            "support": support,
            "p_value": {lab: round(p, 4) for lab, p in p_raw.items()},
            "p_holm": {lab: round(p, 4) for lab, p in p_adj.items()},
        }
    if not failed:
        return True, "", detail
    bad = max(failed, key=lambda lab: drops[lab])
    reason = (
        f"class {bad!r} loses {drops[bad]:.4f} of its recall against the champion, "
        f"more than the class margin {class_margin}"
    )
    if alpha is not None:
        reason += f" ({lost[bad]} of {support[bad]} rows; Holm-adjusted p={p_adj[bad]:.3g})"
    return False, reason, detail


def decide(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    *,
    margin: float,
    champion_version: int | None,
    alpha: float = 0.05,
    inconclusive: str = "promote",
) -> GateDecision:
    """Does the challenger's accuracy trail the champion's by more than ``margin``?

    Both are scored on the same held-out rows. The difference's ``1 - alpha`` interval
    decides: above ``-margin``: pass; below: fail; across it: inconclusive, which
    promotes or holds as ``inconclusive`` says.
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
    b, c = test["challenger_only_correct"], test["champion_only_correct"]
    lo, hi = paired_interval(b, c, n, alpha)
    verdict, promote = _verdict(lo, hi, -margin, inconclusive)
    stats = (
        f"{1 - alpha:.0%} interval of the difference [{lo:+.4f}, {hi:+.4f}] from {b + c} "
        f"rows the two disagree on; McNemar p={test['p_value']:.3g}"
    )
    args = ("accuracy", acc, champ, champion_version, margin, test, n)
    if verdict == "fail":
        reason = (
            f"challenger accuracy {acc:.4f} trails champion v{champion_version} {champ:.4f} "
            f"by {-delta:.4f}, more than the margin {margin}; {stats}"
        )
    else:
        reason = (
            f"challenger accuracy {acc:.4f} vs champion v{champion_version} {champ:.4f} "
            f"(delta {delta:+.4f}, margin {margin}); {stats}"
        )
        if verdict == "inconclusive":
            reason += _inconclusive("trails by more than the margin", promote, inconclusive)
    interval = (round(lo, 6), round(hi, 6))
    return GateDecision(promote, reason, *args, verdict=verdict, interval=interval, alpha=alpha)


def decide_regression(
    challenger_sq_err: np.ndarray,
    champion_sq_err: np.ndarray | None,
    *,
    margin: float,
    champion_version: int | None,
    alpha: float = 0.05,
    inconclusive: str = "promote",
) -> GateDecision:
    """Does the challenger's MSE exceed the champion's by more than ``margin``?

    The margin is relative: 0.05 lets the challenger's MSE be up to 5% higher. The
    interval is of the mean of the paired ``e_challenger - (1 + margin) e_champion``
    (negative: within the margin), decided as in ``decide``.
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
    change = (mse - champ) / champ if champ > 0 else 0.0
    # Lower is better: the interval of "what it must stay under minus the challenger".
    lo, hi = mean_interval(challenger_sq_err - (1 + margin) * champion_sq_err, alpha)
    verdict, promote = _verdict(-hi, -lo, 0.0, inconclusive)
    stats = (
        f"{1 - alpha:.0%} interval of the excess MSE [{lo:+.4g}, {hi:+.4g}] (bootstrap); "
        f"Wilcoxon p={test['p_value']:.3g}"
    )
    if verdict == "fail":
        reason = (
            f"challenger MSE {mse:.4g} exceeds champion v{champion_version} {champ:.4g} "
            f"by {change:.2%}, more than the margin {margin:.0%}; {stats}"
        )
    else:
        reason = (
            f"challenger MSE {mse:.4g} vs champion v{champion_version} {champ:.4g} "
            f"({change:+.2%}, margin {margin:.0%}); {stats}"
        )
        if verdict == "inconclusive":
            reason += _inconclusive("exceeds the margin", promote, inconclusive)
    interval = (round(lo, 6), round(hi, 6))
    return GateDecision(promote, reason, *args, verdict=verdict, interval=interval, alpha=alpha)


def reference_check(
    y_true: np.ndarray,
    challenger_correct: np.ndarray,
    reference_correct: np.ndarray,
    labels: list[str],
    *,
    margin: float,
    alpha: float = 0.05,
    min_rows: int = 3,
) -> tuple[bool, str, dict[str, Any]]:
    """Does the challenger trail a reference model (same rows, curated by trust) by more
    than ``margin``, overall or on a class where it also gets ``min_rows`` more rows wrong
    — or by any amount overall beyond chance: the upper end of the one-sided ``1 -
    alpha`` paired interval of (challenger - reference) below zero?

    Both models are trained alike on nearly the same data, so a gap beyond the
    training noise points at the rows they disagree on: the answers trust set aside.
    A gap well inside the margin can still be one the rows agree on (few discordant
    pairs, nearly all for the reference): the interval catches it.
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
    ch, ref = np.asarray(challenger_correct, bool), np.asarray(reference_correct, bool)
    b, c = int(np.sum(ch & ~ref)), int(np.sum(ref & ~ch))
    lo, hi = paired_interval(b, c, len(y_true), 2 * alpha)  # its upper end: one-sided
    why = [f"accuracy {-overall:+.4f}"] if overall > margin + 1e-9 else []
    if not why and hi < 0:
        why.append(
            f"accuracy {-overall:+.4f}, beyond chance: the {1 - alpha:.0%} one-sided "
            f"interval's upper end {hi:+.4f} from {b + c} rows the two disagree on, "
            f"{c} for the reference"
        )
    if not classes_ok:
        worst = max(detail["failed_classes"], key=lambda lab: detail["recall_drop"][lab])
        why.append(f"class {worst!r} recall {-detail['recall_drop'][worst]:+.4f}")
    reason = (
        "possibly poisoned feedback: the challenger trails a reference trained on the same "
        f"feedback curated by user trust, by more than {margin} or beyond chance "
        f"({', '.join(why)})"
        if why
        else ""
    )
    detail = {
        "reference_accuracy": round(float(reference_correct.mean()), 4) if len(y_true) else None,
        "accuracy_drop": round(overall, 4),
        "interval": (round(lo, 6), round(hi, 6)),
        "challenger_only_correct": b,
        "reference_only_correct": c,
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
    alpha: float = 0.05
    inconclusive: str = "promote"

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
            alpha=st.gate_alpha,
            inconclusive=st.gate_inconclusive,
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
    decision = gate(
        challenger,
        champion,
        margin=policy.margin,
        champion_version=champion_version,
        alpha=policy.alpha,
        inconclusive=policy.inconclusive,
    )
    if champion is not None and not regression and policy.class_margin is not None:
        passed, why, detail = class_check(
            y,
            challenger,
            champion,
            list(labels),
            class_margin=policy.class_margin,
            alpha=policy.alpha,
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
            y,
            challenger,
            ref.correct,
            list(labels),
            margin=policy.reference_margin,
            alpha=policy.alpha,
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
