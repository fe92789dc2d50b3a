"""The feedback queue: the predictions most worth a user's answer come first."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flywheel.feedback.queue import STRATEGIES, Candidate, QueueItem, rank, score

# Three predictions on which the three uncertainty strategies all disagree.
# Dyadic probabilities, so margin and least-confidence scores are exact floats.
TORN_THREE_WAYS = {"x": (0.375, 0.3125, 0.3125), "y": (0.5, 0.5, 0.0), "z": (0.625, 0.25, 0.125)}


def _entropy(*ps: float) -> float:
    return -sum(p * math.log(p) for p in ps if p > 0)


def _candidates(table: dict[str, tuple[float, ...]], labels: str = "abc") -> list[Candidate]:
    return [
        Candidate(pid, dict(zip(labels, ps, strict=True)), input_hash=f"h-{pid}")
        for pid, ps in table.items()
    ]


def _ids(items: list[QueueItem]) -> list[str]:
    return [i.prediction_id for i in items]


def test_score_each_strategy_on_a_matrix() -> None:
    probs = np.array(list(TORN_THREE_WAYS.values()))
    assert score(probs, "margin").tolist() == [0.9375, 1.0, 0.625]
    assert score(probs, "least_confidence").tolist() == [0.625, 0.5, 0.375]
    entropy = score(probs, "entropy")
    assert entropy.tolist() == pytest.approx(
        [_entropy(*p) for p in TORN_THREE_WAYS.values()], rel=1e-12
    )
    assert entropy[1] == pytest.approx(math.log(2), rel=1e-12)  # 0·log 0 counts as 0


def test_the_three_strategies_disagree_on_the_order() -> None:
    candidates = _candidates(TORN_THREE_WAYS)
    margin = rank(candidates, strategy="margin")
    entropy = rank(candidates, strategy="entropy")
    least = rank(candidates, strategy="least_confidence")
    # margin: y is a dead heat between two classes, x is spread over three.
    assert _ids(margin) == ["y", "x", "z"]
    assert [i.score for i in margin] == [1.0, 0.9375, 0.625]
    # entropy: the spread-out x, then z's long tail beats y's clean two-way tie.
    assert _ids(entropy) == ["x", "z", "y"]
    assert [i.score for i in entropy] == pytest.approx(
        [_entropy(0.375, 0.3125, 0.3125), _entropy(0.625, 0.25, 0.125), math.log(2)], rel=1e-12
    )
    # least confidence: only the best guess matters.
    assert _ids(least) == ["x", "y", "z"]
    assert [i.score for i in least] == [0.625, 0.5, 0.375]
    assert {i.strategy for i in entropy} == {"entropy"}


def test_the_brief_example_margin_against_entropy_and_least_confidence() -> None:
    candidates = _candidates(
        {"tie": (0.5, 0.5, 0.0), "sure": (0.9, 0.05, 0.05), "spread": (0.4, 0.35, 0.25)}
    )
    assert _ids(rank(candidates, strategy="margin")) == ["tie", "spread", "sure"]
    assert _ids(rank(candidates, strategy="entropy")) == ["spread", "tie", "sure"]
    assert _ids(rank(candidates, strategy="least_confidence")) == ["spread", "tie", "sure"]


def test_ties_are_broken_by_prediction_id() -> None:
    candidates = _candidates({"p3": (0.5, 0.5, 0.0), "p1": (0.5, 0.5, 0.0), "p2": (0.5, 0.5, 0.0)})
    assert _ids(rank(candidates)) == ["p1", "p2", "p3"]


def test_label_order_in_the_dicts_does_not_matter() -> None:
    candidates = [
        Candidate("p1", {"a": 0.75, "b": 0.25}, "h1"),
        Candidate("p2", {"b": 0.25, "a": 0.75}, "h2"),
        Candidate("p3", {"c": 0.125, "a": 0.875}, "h3"),  # b missing: probability 0
    ]
    items = rank(candidates)
    assert [(i.prediction_id, i.score) for i in items] == [
        ("p1", 0.5),
        ("p2", 0.5),
        ("p3", 0.25),
    ]
    assert items[1].top == [("a", 0.75), ("b", 0.25)]
    assert items[2].top == [("a", 0.875), ("c", 0.125)]


def test_top_lists_at_most_three_guesses_best_first() -> None:
    item = rank([Candidate("p", {"d": 0.1, "a": 0.4, "c": 0.2, "b": 0.3}, "h")])[0]
    assert item.top == [("a", 0.4), ("b", 0.3), ("c", 0.2)]


def test_random_strategy_is_seeded() -> None:
    candidates = [Candidate(f"p{n:02d}", {"a": 0.5, "b": 0.5}, f"h{n}") for n in range(12)]
    first = rank(candidates, strategy="random", seed=7)
    again = rank(list(reversed(candidates)), strategy="random", seed=7)
    other = rank(candidates, strategy="random", seed=8)
    assert first == again  # same seed, same order, whatever the input order
    assert _ids(first) != _ids(other)
    assert sorted(_ids(first)) == sorted(_ids(other))
    assert [i.score for i in first] == sorted((i.score for i in first), reverse=True)
    assert all(0.0 <= i.score < 1.0 for i in first)


def test_an_input_is_asked_about_once_keeping_its_most_uncertain_prediction() -> None:
    candidates = [
        Candidate("p1", {"a": 0.875, "b": 0.125}, "same-image"),  # score 0.25
        Candidate("p2", {"a": 0.625, "b": 0.375}, "same-image"),  # score 0.75
        Candidate("p3", {"a": 0.75, "b": 0.25}, "other"),  # score 0.5
        Candidate("p4", {"a": 0.75, "b": 0.25}, "other"),  # tie: the smaller id stays
    ]
    assert [(i.prediction_id, i.score) for i in rank(candidates)] == [("p2", 0.75), ("p3", 0.5)]


def _confusable_queue() -> list[Candidate]:
    return [
        # Class 3 (confused with 8) would fill the queue on its own.
        Candidate("c1", {"3": 0.5625, "8": 0.4375}, "h1", fingerprint="A"),  # 0.875
        Candidate("c2", {"8": 0.4375, "3": 0.5625}, "h2", fingerprint="A"),  # 0.875, near-dup
        Candidate("c3", {"3": 0.625, "8": 0.375}, "h3", fingerprint="B"),  # 0.75
        Candidate("c4", {"3": 0.6875, "8": 0.3125}, "h4", fingerprint="C"),  # 0.625
        Candidate("c5", {"5": 0.75, "1": 0.25}, "h5"),  # 0.5
        Candidate("c6", {"1": 0.8125, "5": 0.1875}, "h6"),  # 0.375
        Candidate("c7", {"5": 0.875, "1": 0.125}, "h7"),  # 0.25
    ]


def test_without_spread_the_queue_is_plain_score_order() -> None:
    assert _ids(rank(_confusable_queue())) == ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]


def test_spread_drops_near_duplicates_and_interleaves_classes() -> None:
    items = rank(_confusable_queue(), spread=True)
    # c2 is a near-duplicate of c1. Classes by their best item: 3 (c1), 5 (c5), 1 (c6).
    assert _ids(items) == ["c1", "c5", "c6", "c3", "c7", "c4"]
    assert [i.top[0][0] for i in items] == ["3", "5", "1", "3", "5", "3"]
    assert _ids(rank(_confusable_queue(), spread=True, limit=4)) == ["c1", "c5", "c6", "c3"]


def test_limit_is_respected() -> None:
    assert _ids(rank(_confusable_queue(), limit=2)) == ["c1", "c2"]
    assert rank(_confusable_queue(), limit=0) == []
    assert rank([], limit=5) == []
    with pytest.raises(ValueError, match="limit must be >= 0"):
        rank(_confusable_queue(), limit=-1)


def test_reason_names_the_top_two_labels() -> None:
    candidates = [Candidate("p", {"8": 0.47, "3": 0.51, "5": 0.02}, "h")]
    reasons = {s: rank(candidates, strategy=s)[0].reason for s in STRATEGIES}
    assert reasons == {
        "margin": "margin 0.04 between '3' (0.51) and '8' (0.47)",
        "entropy": "entropy 0.78 nats; top guesses '3' (0.51) and '8' (0.47)",
        "least_confidence": "best guess only 0.51 sure; top guesses '3' (0.51) and '8' (0.47)",
        "random": "picked at random; top guesses '3' (0.51) and '8' (0.47)",
    }
    lone = rank([Candidate("p", {"cat": 1.0}, "h")])[0]
    assert (lone.score, lone.reason) == (0.0, "margin 1.00: only guess 'cat' (1.00)")


def test_queue_item_to_json() -> None:
    item = rank([Candidate("p", {"a": 0.75, "b": 0.25}, "h")])[0]
    assert item.to_json() == {
        "prediction_id": "p",
        "score": 0.5,
        "strategy": "margin",
        "top": [["a", 0.75], ["b", 0.25]],
        "reason": "margin 0.50 between 'a' (0.75) and 'b' (0.25)",
    }


def test_unknown_strategy_is_refused_listing_the_known_ones() -> None:
    known = "known strategies: margin, entropy, least_confidence, random"
    with pytest.raises(ValueError, match=known):
        score(np.array([[0.5, 0.5]]), "bald")
    with pytest.raises(ValueError, match=known):
        rank(_confusable_queue(), strategy="bald")


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        score(np.array([0.5, 0.5]), "margin")
    with pytest.raises(ValueError, match="finite and non-negative"):
        score(np.array([[0.5, np.nan]]), "entropy")
    with pytest.raises(ValueError, match="'p' has no class probabilities"):
        rank([Candidate("p", {}, "h")])
