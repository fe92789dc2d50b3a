"""Curation: turning users' answers into training rows for the next dataset version."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Answer", "CuratedRow", "Curation", "curate"]


@dataclass(frozen=True)
class Answer:
    """One usable answer: the label (or, for regression, the value) a user says an input has."""

    feedback_id: str
    input_hash: str
    label: str | None
    user_id: str | None
    created_at: datetime
    value: float | None = None
    weight: float = 1.0  # the answering user's trust


@dataclass(frozen=True)
class CuratedRow:
    input_hash: str
    label: str | None
    feedback_id: str
    user_id: str | None
    votes: int
    value: float | None = None
    weight: float = 1.0


@dataclass
class Curation:
    rows: list[CuratedRow] = field(default_factory=list)
    answers: int = 0
    dropped_holdout: int = 0
    dropped_known: int = 0
    merged_duplicates: int = 0
    capped: dict[str, int] = field(default_factory=dict)  # user → rows left out by the cap


def curate(
    answers: Sequence[Answer],
    holdout_inputs: Iterable[str],
    known_inputs: Iterable[str],
    *,
    max_user_share: float | None = None,
) -> Curation:
    """One row per distinct input, by majority vote of its answers.

    - Inputs of the held-out split are dropped: evaluation data must never be
      trained on, even when a user happens to send the same image.
    - Inputs already in the dataset are dropped (they are known).
    - Several answers about one input (the same image sent twice, or by two
      users) become one row: each user's latest answer counts once; the most
      common label wins (each vote weighted by its user's trust), ties going to
      the most recent answer (regression: the median of the values).
    - With ``max_user_share``, no user gives more than that share of the rows.
    """
    holdout = set(holdout_inputs)
    known = set(known_inputs)
    out = Curation(answers=len(answers))
    by_input: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        if a.input_hash in holdout:
            out.dropped_holdout += 1
        elif a.input_hash in known:
            out.dropped_known += 1
        else:
            by_input[a.input_hash].append(a)
    for digest, group in by_input.items():
        latest_per_user: dict[str | None, Answer] = {}
        for a in sorted(group, key=lambda a: (a.created_at, a.feedback_id)):
            # Anonymous answers each count on their own.
            key = a.user_id if a.user_id is not None else f"anon:{a.feedback_id}"
            latest_per_user[key] = a
        votes = list(latest_per_user.values())
        out.merged_duplicates += len(group) - 1

        latest = max(votes, key=lambda a: (a.created_at, a.feedback_id))
        if all(a.label is None for a in votes):
            # Regression: the median of the users' values.
            values = sorted(float(a.value) for a in votes if a.value is not None)
            mid = len(values) // 2
            median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
            out.rows.append(
                CuratedRow(digest, None, latest.feedback_id, latest.user_id, len(values), median)
            )
            continue
        # A trust-weighted vote: a liar's answer counts for less than an honest user's.
        mass: dict[str, float] = {}
        for a in votes:
            mass[str(a.label)] = mass.get(str(a.label), 0.0) + a.weight
        top = max(mass.values())
        winner = max(
            (a for a in votes if abs(mass[str(a.label)] - top) < 1e-12),
            key=lambda a: (a.created_at, a.feedback_id),
        )
        agreeing = [a for a in votes if a.label == winner.label]
        out.rows.append(
            CuratedRow(
                digest,
                winner.label,
                winner.feedback_id,
                winner.user_id,
                len(agreeing),
                weight=max(a.weight for a in agreeing),
            )
        )
    out.rows.sort(key=lambda r: (r.input_hash, r.label or ""))
    if max_user_share is not None:
        out.rows, out.capped = _cap(out.rows, max_user_share)
    return out


def _cap(rows: list[CuratedRow], share: float) -> tuple[list[CuratedRow], dict[str, int]]:
    """At most ``share`` of the new rows may rest on one user's word alone (at least one).

    Rows that several users agreed on are not one user's contribution and are never
    capped; a user over the cap keeps a fixed subset of their uncorroborated rows
    (the first by input hash: the same answers keep the same rows, whatever order they
    arrived in — and no one can choose which survive by timing).
    """
    limit = max(1, int(share * len(rows)))
    by_user: dict[str, list[CuratedRow]] = defaultdict(list)
    for r in rows:
        if r.user_id is not None and r.votes == 1:
            by_user[r.user_id].append(r)
    dropped: set[str] = set()
    capped: dict[str, int] = {}
    for user, own in by_user.items():
        if len(own) > limit:
            keep = sorted(own, key=lambda r: (r.input_hash, r.label or ""))[:limit]
            kept = {r.feedback_id for r in keep}
            dropped |= {r.feedback_id for r in own if r.feedback_id not in kept}
            capped[user] = len(own) - limit
    return [r for r in rows if r.feedback_id not in dropped], capped
