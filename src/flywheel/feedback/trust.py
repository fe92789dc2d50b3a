"""Trust: how reliable each user's answers are, from what the system can check.

Users' answers become training rows, so one careless or malicious user can
poison the next model. Nobody knows most true labels, but three things can be
checked: golden items (inputs whose label is known), agreement with other
users, and agreement with a confident production model. A one-coin
Dawid–Skene model weighs them together: each user has one accuracy, each
item's label is inferred from the votes weighted by those accuracies, and the
accuracies are re-estimated from the inferred labels until they settle.

One accuracy cannot see a *targeted* liar: one who answers honestly except
that every true '3' becomes an '8' is still right most of the time, so keeps a
high trust while their '8's are mostly wrong. So, once the one-coin model has
settled, each user also gets a per-label trust: the posterior-expected
precision of each label they used (how often their answer k is truly k),
shrunk toward their overall trust for labels they rarely used. Curation
weighs one answer by ``answer_weight``: the trust of that user's answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["PRIOR", "PRIOR_TRUST", "UserTrust", "Vote", "answer_weight", "estimate_trust"]

#: Beta(α, β) prior of every user's accuracy: a user nobody could check yet is trusted
#: at its mean, ``PRIOR_TRUST`` = α / (α + β) = 2/3.
PRIOR = (2.0, 1.0)
PRIOR_TRUST = PRIOR[0] / (PRIOR[0] + PRIOR[1])

_NO_GOLDEN: Mapping[str, str] = MappingProxyType({})
_NO_MODEL: Mapping[str, tuple[str, float]] = MappingProxyType({})
# The model is a voter with accuracy = its confidence; keep it off exactly 0 or 1
# so that one prediction can never outweigh every user, as a golden item does.
_MAX_MODEL_ACCURACY = 1.0 - 1e-6
_TOLERANCE = 1e-10
# Rounds after the one-coin EM that re-infer the items from per-label trust.
_LABEL_ROUNDS = 1


@dataclass(frozen=True)
class Vote:
    """One user's answer: ``item`` (an input key) has ``label``."""

    user_id: str
    item: str
    label: str


@dataclass(frozen=True)
class UserTrust:
    """A user's estimated accuracy, with the counts that explain it.

    ``trust`` is the posterior-mean probability that this user's answer is
    right. The comparisons count the user's votes (one per item):

    - golden: on items whose label is known;
    - others: pairs of this user's vote and another user's vote on the same
      item, and how many of those pairs gave the same label;
    - model: votes on items the model was confident about
      (confidence ≥ ``model_confidence``), and how many matched it.

    ``label_trust`` maps each label this user answered to the posterior-mean
    probability that an answer of theirs with that label is right (its
    precision); see ``estimate_trust``. Empty when not estimated.
    """

    user_id: str
    trust: float
    votes: int
    golden_seen: int
    golden_correct: int
    agreed_with_others: int
    compared_with_others: int
    agreed_with_model: int
    compared_with_model: int
    # Not hashed (a dict cannot be); still compared and serialised.
    label_trust: dict[str, float] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def answer_weight(trust: UserTrust | None, label: str, default: float) -> float:
    """The weight one answer ``label`` gets: its user's trust in that label.

    Falls back to the user's overall trust for a label with no per-label
    estimate, and to ``default`` for a user with no trust estimate at all.
    """
    if trust is None:
        return default
    return trust.label_trust.get(label, trust.trust)


def estimate_trust(
    answers: Sequence[Vote],
    *,
    golden: Mapping[str, str] = _NO_GOLDEN,
    model: Mapping[str, tuple[str, float]] = _NO_MODEL,
    labels: Sequence[str],
    prior: tuple[float, float] = PRIOR,
    model_confidence: float = 0.95,
    iterations: int = 20,
    label_pseudo_count: float = 2.0,
) -> dict[str, UserTrust]:
    """Each user's trust, by one-coin Dawid–Skene EM; keyed and ordered by user id.

    - A user's vote for label k has likelihood a_u if k is the true label and
      (1 − a_u)/(K − 1) for each other label (one accuracy, errors spread
      evenly: K·K confusion matrices need far more votes than users give).
    - Item posteriors start from a uniform class prior and multiply in the
      votes. Golden items are clamped to their known label. A model prediction
      with confidence c ≥ ``model_confidence`` is one more voter with fixed
      accuracy c: it breaks ties and exposes a lone liar, but two agreeing
      users still outvote it.
    - a_u is the posterior mean under Beta(``prior``) of the expected number
      of correct votes: (E[correct] + α) / (votes + α + β). A user with one
      vote is therefore never trusted 0 or 1; one who answered only items
      nobody else did stays exactly at the prior mean α / (α + β).
    - A user's later vote on an item replaces their earlier one, so repeating
      an answer cannot buy agreement.
    - Starts from every user at the prior mean (i.e. a majority vote) and runs
      at most ``iterations`` rounds, stopping early once no accuracy moves;
      no randomness, so the same input gives the same output.

    Per-label trust, computed after the one-coin EM has settled (it never
    feeds back into it, so ``trust`` is exactly the one-coin estimate):

    - for user u and each label k they used, with n_uk votes for k,
      label_trust[k] = (Σ over those votes of P(true label = k | all evidence)
      + λ·a_u) / (n_uk + λ), where λ = ``label_pseudo_count``: the expected
      precision of their answer k, shrunk toward their overall trust a_u so
      that a label used once or twice says little on its own;
    - the posteriors are first those of the settled accuracies; then one more
      E-step weighs each vote for k by its user's label_trust[k] instead of
      a_u (so a targeted liar's '8' counts for less on items only they and
      one other user answered), and label_trust is recomputed from it. A
      fixed number of rounds, no randomness: deterministic like the rest;
    - golden items stay clamped to their known label, so a wrong answer on a
      golden item counts as exactly wrong.
    """
    alpha, beta = prior
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"prior must be two positive numbers, got {prior}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if not label_pseudo_count > 0:
        raise ValueError(f"label_pseudo_count must be > 0, got {label_pseudo_count}")
    label_list = list(dict.fromkeys(labels))
    if len(label_list) < 2:
        raise ValueError("trust needs at least two labels")
    column = {label: k for k, label in enumerate(label_list)}
    latest: dict[tuple[str, str], str] = {}
    for v in answers:
        _column(column, v.label, f"vote by {v.user_id!r} on {v.item!r}")
        latest[(v.user_id, v.item)] = v.label
    users = sorted({u for u, _ in latest})
    user_index = {u: n for n, u in enumerate(users)}
    item_index = {i: n for n, i in enumerate(sorted({i for _, i in latest}))}
    pairs = sorted(latest)
    votes = _Votes(
        user=np.array([user_index[u] for u, _ in pairs], dtype=np.int64),
        item=np.array([item_index[i] for _, i in pairs], dtype=np.int64),
        label=np.array([column[latest[p]] for p in pairs], dtype=np.int64),
        n_users=len(users),
        n_labels=len(label_list),
    )
    truth = {
        i: _column(column, g, f"golden item {i!r}") for i, g in golden.items() if i in item_index
    }
    confident = {
        i: (_column(column, m, f"model prediction for {i!r}"), min(float(c), _MAX_MODEL_ACCURACY))
        for i, (m, c) in model.items()
        if i in item_index and c >= model_confidence
    }
    posteriors = _Posteriors.of(votes, item_index, truth, confident)
    accuracy = _one_coin(votes, posteriors, alpha, beta, iterations)
    precision, used = _label_precision(votes, posteriors, accuracy, label_pseudo_count)
    label_trust = {
        u: {label: float(precision[n, k]) for k, label in enumerate(label_list) if used[n, k] > 0}
        for n, u in enumerate(users)
    }
    counts = _counts(latest, users, golden, {i: model[i][0] for i in confident})
    return {
        u: _user_trust(u, float(accuracy[user_index[u]]), counts[u], label_trust[u]) for u in users
    }


@dataclass(frozen=True)
class _Votes:
    """Each (user, item) pair's latest vote, as indices: its user, item and label."""

    user: np.ndarray
    item: np.ndarray
    label: np.ndarray
    n_users: int
    n_labels: int


def _column(column: dict[str, int], label: str, where: str) -> int:
    if label not in column:
        raise ValueError(f"{where} has label {label!r}, which is not one of {list(column)}")
    return column[label]


class _Posteriors:
    """E-step: each item's posterior over labels, given each vote's accuracy (golden
    items clamped to their known label; the model's evidence in ``base``)."""

    @classmethod
    def of(
        cls,
        votes: _Votes,
        item_index: dict[str, int],
        truth: dict[str, int],
        confident: dict[str, tuple[int, float]],
    ) -> _Posteriors:
        n_labels = votes.n_labels
        # The model's evidence never changes: add it once.
        base = np.zeros((len(item_index), n_labels))
        for i, (k, c) in confident.items():
            base[item_index[i], :] += np.log((1.0 - c) / (n_labels - 1))
            base[item_index[i], k] += np.log(c) - np.log((1.0 - c) / (n_labels - 1))
        rows = np.array([item_index[i] for i in truth], dtype=np.int64)
        return cls(votes, base, rows, np.array(list(truth.values()), dtype=np.int64))

    def __init__(
        self, votes: _Votes, base: np.ndarray, golden_rows: np.ndarray, golden_cols: np.ndarray
    ) -> None:
        self.votes = votes
        self.base = base
        self.golden_rows = golden_rows
        self.golden_cols = golden_cols

    def __call__(self, vote_accuracy: np.ndarray) -> np.ndarray:
        v = self.votes
        right = np.log(vote_accuracy)
        wrong = np.log((1.0 - vote_accuracy) / (v.n_labels - 1))
        log_post = self.base.copy()
        np.add.at(log_post, v.item, wrong[:, None])
        np.add.at(log_post, (v.item, v.label), right - wrong)
        log_post -= log_post.max(axis=1, keepdims=True)
        post = np.exp(log_post)
        post /= post.sum(axis=1, keepdims=True)
        post[self.golden_rows] = 0.0
        post[self.golden_rows, self.golden_cols] = 1.0
        return post


def _one_coin(
    votes: _Votes, posteriors: _Posteriors, alpha: float, beta: float, iterations: int
) -> np.ndarray:
    """Each user's one accuracy: EM from the prior mean until no accuracy moves."""
    votes_per_user = np.bincount(votes.user, minlength=votes.n_users).astype(np.float64)
    accuracy = np.full(votes.n_users, alpha / (alpha + beta))
    for _ in range(iterations):
        post = posteriors(accuracy[votes.user])
        # M-step: expected share of correct votes, Beta-smoothed.
        correct = np.bincount(
            votes.user, weights=post[votes.item, votes.label], minlength=votes.n_users
        )
        updated = (correct + alpha) / (votes_per_user + alpha + beta)
        moved = float(np.max(np.abs(updated - accuracy), initial=0.0))
        accuracy = updated
        if moved < _TOLERANCE:
            break
    return accuracy


def _label_precision(
    votes: _Votes, posteriors: _Posteriors, accuracy: np.ndarray, pseudo_count: float
) -> tuple[np.ndarray, np.ndarray]:
    """(precision [users, labels], votes per cell): the expected precision of each (user,
    label) from the posteriors of the settled accuracies, shrunk toward the user's
    trust; then _LABEL_ROUNDS more rounds whose posteriors weigh each vote by the
    precision of its (user, label) instead of the user's one accuracy."""
    cell = votes.user * votes.n_labels + votes.label
    size = votes.n_users * votes.n_labels
    used = np.bincount(cell, minlength=size).reshape(votes.n_users, votes.n_labels)
    vote_accuracy = accuracy[votes.user]
    for _ in range(1 + _LABEL_ROUNDS):
        post = posteriors(vote_accuracy)
        right_k = np.bincount(cell, weights=post[votes.item, votes.label], minlength=size)
        right_k = right_k.reshape(votes.n_users, votes.n_labels)
        precision = (right_k + pseudo_count * accuracy[:, None]) / (used + pseudo_count)
        vote_accuracy = precision[votes.user, votes.label]
    return precision, used


def _counts(
    latest: dict[tuple[str, str], str],
    users: list[str],
    golden: Mapping[str, str],
    confident: dict[str, str],
) -> dict[str, list[int]]:
    """The counts that explain each user's score: votes, golden seen/right, pairs with
    other users' votes (agreeing/compared), confident model predictions (agreeing/seen)."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for (u, i), label in latest.items():
        by_item[i][u] = label
    counts = {u: [0, 0, 0, 0, 0, 0, 0] for u in users}
    for (u, i), label in latest.items():
        tally = counts[u]
        tally[0] += 1
        if i in golden:
            tally[1] += 1
            tally[2] += label == golden[i]
        others = [other for o, other in by_item[i].items() if o != u]
        tally[3] += sum(other == label for other in others)
        tally[4] += len(others)
        if i in confident:
            tally[5] += label == confident[i]
            tally[6] += 1
    return counts


def _user_trust(
    user_id: str, trust: float, counts: Sequence[int], label_trust: dict[str, float]
) -> UserTrust:
    votes, golden_seen, golden_correct, agreed, compared, agreed_model, compared_model = counts
    return UserTrust(
        user_id=user_id,
        trust=trust,
        votes=votes,
        golden_seen=golden_seen,
        golden_correct=golden_correct,
        agreed_with_others=agreed,
        compared_with_others=compared,
        agreed_with_model=agreed_model,
        compared_with_model=compared_model,
        label_trust=label_trust,
    )
