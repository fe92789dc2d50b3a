"""The feedback queue: which logged predictions are most worth a user's answer.

A user's time is the scarce resource of the flywheel, so the queue shows first
the predictions whose answer would teach the model most (uncertainty sampling):
the ones it was torn on. Pure functions over probabilities; the caller loads
the logged predictions and shows the items.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["STRATEGIES", "Candidate", "QueueItem", "rank", "score"]

STRATEGIES = ("margin", "entropy", "least_confidence", "random")


@dataclass(frozen=True)
class Candidate:
    """One logged prediction that could be put to a user.

    ``fingerprint`` is a near-duplicate key (e.g. a perceptual hash): two
    crops of one photo share it though their ``input_hash`` differs. None
    means the candidate has no near-duplicates anyone knows of.
    """

    prediction_id: str
    probabilities: dict[str, float]
    input_hash: str
    fingerprint: str | None = None


@dataclass(frozen=True)
class QueueItem:
    """A prediction to ask about, with why it was chosen."""

    prediction_id: str
    score: float  # higher = more worth asking, on the strategy's own scale
    strategy: str
    top: list[tuple[str, float]]  # the top-3 guesses, best first
    reason: str  # one short sentence for the user interface

    def to_json(self) -> dict[str, Any]:
        return {
            "prediction_id": self.prediction_id,
            "score": self.score,
            "strategy": self.strategy,
            "top": [[label, p] for label, p in self.top],
            "reason": self.reason,
        }


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {strategy!r}; known strategies: {', '.join(STRATEGIES)}"
        )


def score(probs: np.ndarray, strategy: str, *, seed: int = 0) -> np.ndarray:
    """How much each row's answer is worth asking for; higher = ask sooner.

    ``probs`` is (n, K), one row of class probabilities per prediction.

    - margin: 1 − (p1 − p2), the gap between the two best guesses; a
      near-tie between two classes is exactly what a user can settle.
    - entropy: −Σ p·ln p (0·ln 0 = 0); uncertainty spread over all classes.
    - least_confidence: 1 − p_max.
    - random: seeded uniform in [0, 1), the baseline the others must beat.
    """
    _check_strategy(strategy)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D (rows, classes) array, got shape {p.shape}")
    if p.size and (not np.all(np.isfinite(p)) or np.any(p < 0)):
        raise ValueError("probabilities must be finite and non-negative")
    n, k = p.shape
    if strategy == "random":
        return np.random.default_rng(seed).random((n,))
    if k == 0:
        raise ValueError("probabilities must have at least one class")
    if strategy == "entropy":
        safe = np.where(p > 0, p, 1.0)  # log(1) = 0, so 0·log 0 contributes 0
        entropy: np.ndarray = -np.sum(p * np.log(safe), axis=1)
        return np.where(entropy == 0, 0.0, entropy)  # a certain row scores 0.0, not -0.0
    ordered = -np.sort(-p, axis=1)
    if strategy == "least_confidence":
        return np.asarray(1.0 - ordered[:, 0])
    second = ordered[:, 1] if k > 1 else np.zeros(n)
    return np.asarray(1.0 - (ordered[:, 0] - second))


def _reason(strategy: str, value: float, top: list[tuple[str, float]]) -> str:
    (best, p_best), *rest = top
    if not rest:
        pair = f"only guess {best!r} ({p_best:.2f})"
    else:
        pair = f"{best!r} ({p_best:.2f}) and {rest[0][0]!r} ({rest[0][1]:.2f})"
    if strategy == "margin":
        sep = " between " if rest else ": "
        return f"margin {1.0 - value:.2f}{sep}{pair}"
    if strategy == "entropy":
        return f"entropy {value:.2f} nats; top guesses {pair}"
    if strategy == "least_confidence":
        return f"best guess only {1.0 - value:.2f} sure; top guesses {pair}"
    return f"picked at random; top guesses {pair}"


def rank(
    candidates: Sequence[Candidate],
    *,
    strategy: str = "margin",
    limit: int = 20,
    spread: bool = False,
    seed: int = 0,
) -> list[QueueItem]:
    """The ``limit`` candidates most worth asking about, best first.

    - Scores are computed on one label order (the sorted union of all labels;
      a label a candidate does not list has probability 0), so dicts may list
      labels in any order. Candidates are scored in ``prediction_id`` order, so
      the result (the random strategy's too) does not depend on input order.
    - Ties are broken by ``prediction_id``.
    - One input is asked about once: of the candidates sharing an
      ``input_hash`` only the highest-scoring is kept (the same image sent
      twice needs one answer).
    - ``spread=True``: at most one item per near-duplicate ``fingerprint``,
      and the items are interleaved across predicted classes (round-robin over
      the classes, ordered by their best item's score), so one confusable pair
      of classes does not fill the whole queue.
    """
    _check_strategy(strategy)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    ordered = sorted(candidates, key=lambda c: c.prediction_id)
    for c in ordered:
        if not c.probabilities:
            raise ValueError(f"candidate {c.prediction_id!r} has no class probabilities")
    labels = sorted({label for c in ordered for label in c.probabilities})
    column = {label: j for j, label in enumerate(labels)}
    probs = np.zeros((len(ordered), len(labels)))
    for i, c in enumerate(ordered):
        for label, p in c.probabilities.items():
            probs[i, column[label]] = p
    values = score(probs, strategy, seed=seed) if ordered else np.zeros(0)

    by_score = sorted(range(len(ordered)), key=lambda i: (-values[i], ordered[i].prediction_id))
    seen_inputs: set[str] = set()
    seen_prints: set[str] = set()
    kept: list[QueueItem] = []
    for i in by_score:
        c = ordered[i]
        if c.input_hash in seen_inputs:
            continue
        if spread and c.fingerprint is not None:
            if c.fingerprint in seen_prints:
                continue
            seen_prints.add(c.fingerprint)
        seen_inputs.add(c.input_hash)
        top = sorted(c.probabilities.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        top = [(label, float(p)) for label, p in top]
        value = float(values[i])
        kept.append(QueueItem(c.prediction_id, value, strategy, top, _reason(strategy, value, top)))

    if spread:
        # Classes in order of their best item (``kept`` is already best first).
        per_class: dict[str, list[QueueItem]] = defaultdict(list)
        for item in kept:
            per_class[item.top[0][0]].append(item)
        queues = list(per_class.values())
        kept = [q[r] for r in range(max(map(len, queues), default=0)) for q in queues if r < len(q)]
    return kept[:limit]
