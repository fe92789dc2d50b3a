"""The champion/challenger gate, McNemar's exact test, and the classification report."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from flywheel.evaluation import (
    GatePolicy,
    Reference,
    classification_report,
    decide,
    judge,
    mcnemar,
    reference_check,
)


def _correct(n_right: int, n: int) -> np.ndarray:
    return np.arange(n) < n_right


def test_a_better_challenger_is_promoted() -> None:
    challenger = _correct(9, 10)
    champion = _correct(7, 10)
    d = decide(challenger, champion, margin=0.0, champion_version=3)
    assert d.promote is True
    assert d.challenger_score == 0.9
    assert d.champion_score == 0.7
    assert d.champion_version == 3
    assert d.n == 10
    assert d.test == {
        "name": "mcnemar",
        "challenger_only_correct": 2,
        "champion_only_correct": 0,
        "p_value": 0.5,
    }
    assert d.reason.startswith("challenger accuracy 0.9000 vs champion v3 0.7000 (delta +0.2000")


def test_an_equal_challenger_is_promoted_with_no_margin() -> None:
    d = decide(_correct(8, 10), _correct(8, 10), margin=0.0, champion_version=1)
    assert d.promote is True
    assert d.test is not None
    assert d.test["p_value"] == 1.0


def test_a_challenger_significantly_worse_than_the_margin_is_refused() -> None:
    # 30 rows only the champion gets right, none the other way: Clopper-Pearson for 0/30
    # is [0, 1 - 0.025 ** (1/30)] = [0, 0.1157], so the interval of the difference,
    # 0.3 x (2 x [0, 0.1157] - 1) = [-0.3000, -0.2306], lies below -0.05.
    d = decide(_correct(50, 100), _correct(80, 100), margin=0.05, champion_version=4)
    assert d.promote is False and d.verdict == "fail"
    assert d.challenger_score == 0.5
    assert d.champion_score == 0.8
    assert d.interval == pytest.approx((-0.3, 0.3 * (2 * (1 - 0.025 ** (1 / 30)) - 1)), abs=1e-6)
    assert d.reason.startswith(
        "challenger accuracy 0.5000 trails champion v4 0.8000 by 0.3000, more than the margin 0.05"
    )
    assert "95% interval of the difference [-0.3000, -0.2306] from 30 rows" in d.reason


def test_when_the_rows_cannot_tell_the_setting_decides() -> None:
    # 6/10 against 9/10: three rows the champion alone gets right (p = 0.25). The
    # interval 0.3 x (2 x [0, 1 - 0.025 ** (1/3)] - 1) = [-0.3000, +0.1246] spans the
    # margin: inconclusive.
    promoted = decide(_correct(6, 10), _correct(9, 10), margin=0.05, champion_version=4)
    assert promoted.verdict == "inconclusive" and promoted.promote is True
    upper = 0.3 * (2 * (1 - 0.025 ** (1 / 3)) - 1)
    assert promoted.interval == pytest.approx((-0.3, upper), abs=1e-6)
    assert "inconclusive" in promoted.reason and "(gate_inconclusive = promote)" in promoted.reason
    held = decide(
        _correct(6, 10), _correct(9, 10), margin=0.05, champion_version=4, inconclusive="hold"
    )
    assert held.verdict == "inconclusive" and held.promote is False
    assert "held back (gate_inconclusive = hold)" in held.reason


def test_the_interval_of_a_paired_difference_on_hand_computed_cases() -> None:
    from flywheel.evaluation.gate import paired_interval

    # b = 2, c = 0 of 10: Clopper-Pearson for 2/2 is [0.025 ** 0.5, 1].
    lo, hi = paired_interval(2, 0, 10, 0.05)
    assert lo == pytest.approx(0.2 * (2 * 0.025**0.5 - 1)) and hi == pytest.approx(0.2)
    assert paired_interval(0, 0, 10, 0.05) == (0.0, 0.0)  # they agree on every row
    # Symmetric: swapping the models mirrors the interval.
    a, b = paired_interval(7, 3, 50, 0.05), paired_interval(3, 7, 50, 0.05)
    assert a == pytest.approx((-b[1], -b[0]))
    # A clearly better challenger passes (the interval lies above 0).
    d = decide(_correct(80, 100), _correct(50, 100), margin=0.0, champion_version=1)
    assert d.verdict == "pass" and d.interval is not None and d.interval[0] > 0.2


def test_holm_adjusts_p_values_step_down() -> None:
    from flywheel.evaluation.gate import holm

    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx(
        {"a": 0.03, "c": 0.06, "b": 0.06}
    )
    assert holm({"a": 0.5, "b": 0.9}) == {"a": 1.0, "b": 1.0}
    assert holm({}) == {}


def test_two_images_per_class_one_lost_is_never_a_refusal() -> None:
    """The small start: 20 held-out images, two per class. The challenger loses one 3
    and gains three others; the champion knew both 3s."""
    from flywheel.evaluation import class_check

    labels = [str(i) for i in range(10)]
    y = np.repeat(np.arange(10), 2)
    champion = np.ones(20, bool)
    champion[[0, 2, 4]] = False  # wrong on one 0, one 1, one 2
    challenger = np.ones(20, bool)
    challenger[6] = False  # one of the two 3s
    passed, reason, detail = class_check(
        y, challenger, champion, labels, class_margin=0.1, alpha=0.05
    )
    assert passed and reason == ""
    assert detail["recall_drop"]["3"] == 0.5  # half its recall, on one image
    assert detail["p_value"]["3"] == 0.5 and detail["p_holm"]["3"] == 1.0
    d = judge(
        challenger, champion, y=y, labels=labels, champion_version=1, policy=GatePolicy(),
        contribution={}, parity={},
    )  # fmt: skip
    assert d.promote is True and d.checks["per_class"]["passed"] is True
    assert d.verdict == "inconclusive"  # 3 against 1 of 20 rows cannot tell
    # Without the test (the reference check's rule), the same row fails the class.
    assert class_check(y, challenger, champion, labels, class_margin=0.1)[0] is False


def test_a_significant_class_drop_is_refused_with_its_numbers() -> None:
    from flywheel.evaluation import class_check

    labels = [str(i) for i in range(10)]
    y = np.repeat(np.arange(10), 30)
    champion = np.ones(300, bool)
    challenger = np.ones(300, bool)
    challenger[90:102] = False  # 12 of class 3's 30 rows: p = 0.5 ** 12, x 10 (Holm)
    passed, reason, detail = class_check(
        y, challenger, champion, labels, class_margin=0.1, alpha=0.05
    )
    assert not passed and detail["failed_classes"] == ["3"]
    assert detail["p_holm"]["3"] == pytest.approx(round(10 * 0.5**12, 4))
    assert reason == (
        "class '3' loses 0.4000 of its recall against the champion, more than the class "
        "margin 0.1 (12 of 30 rows; Holm-adjusted p=0.00244)"
    )


def test_a_challenger_worse_within_the_margin_is_promoted() -> None:
    d = decide(_correct(17, 20), _correct(18, 20), margin=0.1, champion_version=2)
    assert d.promote is True
    assert d.challenger_score == 0.85
    assert d.champion_score == 0.9
    assert "delta -0.0500" in d.reason


def test_a_challenger_trailing_by_exactly_the_margin_is_promoted() -> None:
    # 45/50 vs 46/50: one row, 0.02, which the margin allows.
    d = decide(_correct(45, 50), _correct(46, 50), margin=0.02, champion_version=1)
    assert d.promote is True


def test_no_champion_promotes_the_challenger() -> None:
    d = decide(_correct(3, 10), None, margin=0.0, champion_version=None)
    assert d.promote is True
    assert d.reason == "no production model yet"
    assert d.challenger_score == 0.3
    assert d.champion_score is None
    assert d.test is None
    assert d.n == 10


def test_mismatched_shapes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="same held-out rows"):
        decide(_correct(3, 10), _correct(3, 11), margin=0.0, champion_version=1)


def test_gate_decision_to_json() -> None:
    d = decide(_correct(2, 4), _correct(1, 4), margin=0.01, champion_version=5)
    data = d.to_json()
    assert data["promote"] is True
    assert data["champion_version"] == 5
    assert data["margin"] == 0.01
    assert data["n"] == 4
    assert data["test"]["challenger_only_correct"] == 1
    assert data["metric"] == "accuracy"


def test_mcnemar_counts_discordant_pairs_and_uses_the_exact_binomial_test() -> None:
    challenger = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    champion = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0, 1], dtype=bool)
    result = mcnemar(challenger, champion)
    assert result["challenger_only_correct"] == 4
    assert result["champion_only_correct"] == 1
    assert result["p_value"] == binomtest(4, 5, 0.5).pvalue
    assert result["p_value"] == pytest.approx(0.375)


def test_mcnemar_is_symmetric_in_its_p_value() -> None:
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    forward, backward = mcnemar(a, b), mcnemar(b, a)
    assert (forward["challenger_only_correct"], forward["champion_only_correct"]) == (5, 1)
    assert (backward["challenger_only_correct"], backward["champion_only_correct"]) == (1, 5)
    assert forward["p_value"] == backward["p_value"] == binomtest(5, 6, 0.5).pvalue


def test_mcnemar_without_discordant_pairs_has_p_one() -> None:
    same = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert mcnemar(same, same.copy()) == {
        "name": "mcnemar",
        "challenger_only_correct": 0,
        "champion_only_correct": 0,
        "p_value": 1.0,
    }


def test_classification_report_on_a_hand_built_case() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    report = classification_report(y_true, y_pred, ["cat", "dog", "fox"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["n"] == 6
    assert report["labels"] == ["cat", "dog", "fox"]
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    per_class = report["per_class"]
    assert per_class["cat"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert per_class["dog"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    # Never predicted: precision is 0, not a warning or NaN.
    assert per_class["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_classification_report_lists_a_class_absent_from_the_data() -> None:
    report = classification_report(np.array([0, 1]), np.array([0, 1]), ["a", "b", "c"])
    assert report["accuracy"] == 1.0
    assert report["per_class"]["c"]["support"] == 0
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_regression_gate_both_ways_and_wilcoxon() -> None:
    from scipy.stats import wilcoxon as scipy_wilcoxon

    from flywheel.evaluation import decide_regression

    champion = np.array([1.0, 4.0, 9.0, 1.0, 4.0, 2.0])
    better = champion * 0.5
    first = decide_regression(better, None, margin=0.0, champion_version=None)
    assert (first.promote, first.metric, first.reason) == (True, "mse", "no production model yet")
    good = decide_regression(better, champion, margin=0.0, champion_version=2)
    assert good.promote is True
    assert good.challenger_score == pytest.approx(better.mean())
    assert good.champion_score == pytest.approx(champion.mean())
    assert good.test is not None
    assert good.test["challenger_better"] == 6
    assert good.test["p_value"] == scipy_wilcoxon(better - champion).pvalue
    worse = decide_regression(champion * 1.2, champion, margin=0.1, champion_version=2)
    assert worse.promote is False
    assert worse.reason.startswith("challenger MSE 4.2 exceeds champion v2 3.5 by 20.00%")
    within = decide_regression(champion * 1.05, champion, margin=0.1, champion_version=2)
    assert within.promote is True


def test_class_check_refuses_a_challenger_that_sacrifices_one_class() -> None:
    from flywheel.evaluation import class_check, with_check

    # 3 classes, 4 held-out rows each. The challenger gets two more rows of class 'a' and
    # 'c' right but loses half of class 'b': overall better, one class collapsed.
    y = np.array([0] * 4 + [1] * 4 + [2] * 4)
    champion = np.array([1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    challenger = np.array([1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    overall = decide(challenger, champion, margin=0.0, champion_version=1)
    assert overall.promote is True
    passed, reason, detail = class_check(y, challenger, champion, ["a", "b", "c"], class_margin=0.1)
    assert passed is False
    assert detail["recall_drop"] == {"a": -0.5, "b": 0.5, "c": -0.5}
    assert detail["failed_classes"] == ["b"]
    assert reason == (
        "class 'b' loses 0.5000 of its recall against the champion, more than the class margin 0.1"
    )
    refused = with_check(overall, "per_class", passed=passed, refuse=True, reason=reason, **detail)
    assert refused.promote is False
    assert refused.reason.startswith("class 'b' loses 0.5000")
    assert refused.checks["per_class"]["failed_classes"] == ["b"]
    lenient = class_check(y, challenger, champion, ["a", "b", "c"], class_margin=0.5)
    assert lenient[0] is True


def test_reference_check_refuses_a_class_the_challenger_lost_and_tolerates_noise() -> None:
    labels = ["a", "b"]
    y = np.array([0] * 20 + [1] * 20)
    reference = np.ones(40, bool)
    # Two rows of class b lost: within the noise (min_rows 3), although 10% > the margin.
    noisy = reference.copy()
    noisy[[20, 21]] = False
    passed, reason, detail = reference_check(y, noisy, reference, labels, margin=0.05)
    assert passed and reason == ""
    assert detail["recall_drop"]["b"] == 0.1 and detail["failed_classes"] == []
    # Four rows of class b lost: refused, and the reason names the class.
    poisoned = reference.copy()
    poisoned[20:24] = False
    passed, reason, detail = reference_check(y, poisoned, reference, labels, margin=0.05)
    assert not passed
    assert detail["failed_classes"] == ["b"]
    assert reason.startswith("possibly poisoned feedback") and "class 'b' recall -0.2000" in reason
    assert "accuracy -0.1000" in reason  # 4 of 40 overall is beyond the margin too
    # A challenger better than the reference passes.
    passed, _, detail = reference_check(y, reference, poisoned, labels, margin=0.05)
    assert passed and detail["accuracy_drop"] == -0.1


def test_reference_check_refuses_a_small_gap_the_rows_agree_on() -> None:
    """2 points under the reference (inside the 5-point margin) on 400 rows: with 9 of
    the 10 rows the two disagree on for the reference, the one-sided 95% upper end of
    the difference is 10/400 x (2 x 0.3942 - 1) = -0.0053 (Clopper-Pearson for 1 of 10):
    refused; with 7 of 10 it is +0.0053: chance, passed."""
    labels = ["a", "b"]
    y = np.array([0, 1] * 200)
    reference = np.ones(400, bool)
    reference[390:] = False
    consistent = reference.copy()
    consistent[:9] = False  # the reference alone right on 9 rows
    consistent[390] = True  # the challenger alone right on 1
    passed, reason, detail = reference_check(y, consistent, reference, labels, margin=0.05)
    assert not passed
    assert (detail["challenger_only_correct"], detail["reference_only_correct"]) == (1, 9)
    assert detail["interval"][1] == pytest.approx(-0.0052918, abs=1e-6)
    assert "beyond chance" in reason and "accuracy -0.0200" in reason
    mixed = reference.copy()
    mixed[:7] = False
    mixed[390:393] = True  # 7 for the reference, 3 for the challenger: 1 point
    passed, reason, detail = reference_check(y, mixed, reference, labels, margin=0.05)
    assert passed and reason == ""
    assert detail["interval"][1] == pytest.approx(0.0053312, abs=1e-6)


# ---------------------------------------------------------------- judge: the whole gate

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
LABELS = ["a", "b", "c"]


def _never() -> Reference:
    raise AssertionError("the gate asked for a reference it does not need")


def test_judge_runs_its_checks_in_order_and_trains_a_reference_only_when_needed() -> None:
    challenger = np.ones(12, dtype=bool)
    champion = np.ones(12, dtype=bool)
    contribution = {"first_feedback": False, "new_user_share": 0.9, "rows": 4}
    parity = {"passed": True, "max_abs_diff": 0.0, "atol": 1e-4, "argmax_agreement": 1.0}
    calls: list[int] = []

    def reference() -> Reference:
        calls.append(1)
        return Reference(np.ones(12, dtype=bool), rows=40, held_back=2)

    d = judge(
        challenger,
        champion,
        y=Y,
        labels=LABELS,
        champion_version=1,
        policy=GatePolicy(naive_curation=True),
        contribution=contribution,
        parity=parity,
        reference=reference,
    )
    assert calls == [1]
    assert list(d.checks) == ["per_class", "trusted_reference", "contribution"]
    assert d.checks["trusted_reference"]["reference_rows"] == 40
    assert d.checks["trusted_reference"]["held_back_answers"] == 2
    # 90% of the rows from first-time users is flagged, and (by default) not refused.
    assert d.checks["contribution"]["passed"] is False and d.promote is True
    assert "90% of the new rows come from first-time users" in d.reason
    # Trust curation (the default) needs no reference, nor does a version without feedback.
    for policy, who in ((GatePolicy(), contribution), (GatePolicy(naive_curation=True), {})):
        d = judge(
            challenger, champion, y=Y, labels=LABELS, champion_version=1, policy=policy,
            contribution=who, parity=parity, reference=_never,
        )  # fmt: skip
        assert "trusted_reference" not in d.checks


def test_judge_refuses_a_challenger_whose_onnx_graph_differs_or_whose_class_collapses() -> None:
    good = np.ones(12, dtype=bool)
    parity = {"passed": False, "max_abs_diff": 0.5, "atol": 1e-4, "argmax_agreement": 0.75}
    d = judge(
        good, None, y=Y, labels=LABELS, champion_version=None, policy=GatePolicy(),
        contribution={}, parity=parity,
    )  # fmt: skip
    assert d.promote is False and list(d.checks) == ["onnx_parity"]
    assert d.reason.startswith("its ONNX export does not match torch (max |diff| 0.5")
    # Class "c" all wrong, 10 rows: beyond the 0.1 class margin, p = 0.5 ** 10 x 3 (Holm).
    y30 = np.repeat(np.arange(3), 10)
    good30 = np.ones(30, dtype=bool)
    collapsed = good30.copy()
    collapsed[20:] = False
    d = judge(
        collapsed, good30, y=y30, labels=LABELS, champion_version=1,
        policy=GatePolicy(margin=0.5), contribution={}, parity={"skipped": "off"},
    )  # fmt: skip
    assert d.promote is False and d.checks["per_class"]["failed_classes"] == ["c"]
    # On 4 rows the same collapse is within chance (p = 0.0625 x 3): not refused.
    few = good.copy()
    few[8:] = False
    d = judge(
        few, good, y=Y, labels=LABELS, champion_version=1, policy=GatePolicy(margin=0.5),
        contribution={}, parity={"skipped": "off"},
    )  # fmt: skip
    assert d.checks["per_class"]["passed"] is True
    # Regression: no classes, no per-class check, MSE compared.
    d = judge(
        np.full(4, 1.0), np.full(4, 2.0), y=np.zeros(4), labels=[], champion_version=1,
        policy=GatePolicy(), contribution={}, parity={},
    )  # fmt: skip
    assert d.metric == "mse" and d.promote is True and d.checks == {}
