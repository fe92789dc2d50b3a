"""The per-user privacy ledger: what every private run spent of each user's budget.

Each private run is (ε, δ)-DP with users as the unit (``dp.py``: users are sampled,
clipped and noised as wholes, so a user's number of rows does not multiply ε). The
ledger composes runs by basic sequential composition: a user who took part in runs
``1..k`` has spent ``Σ εᵢ`` and ``Σ δᵢ``. That is an upper bound (RDP composition
across runs would be tighter); it is simple to audit and never under-counts.

Every user with rows in a run's training rows is charged that run's ε, whether or
not Poisson sampling happened to pick them. Before a run, users whose spent ε plus
the run's would exceed ``dp_user_budget`` are left out of it. Rows without a user id
(imported data) are not on the ledger: nobody can ask for their budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flywheel.store.schema import PrivacyCharge

__all__ = ["admit", "charge", "spent", "summary"]


def spent(s: Session, users: Iterable[str] | None = None) -> dict[str, float]:
    """Cumulative ε per user (only users with charges appear)."""
    q = select(PrivacyCharge.user_id, func.sum(PrivacyCharge.epsilon)).group_by(
        PrivacyCharge.user_id
    )
    if users is not None:
        q = q.where(PrivacyCharge.user_id.in_(list(users)))
    return {u: float(e) for u, e in s.execute(q)}


def admit(
    row_users: list[str | None], already: dict[str, float], run_epsilon: float, budget: float
) -> tuple[list[bool], dict[str, dict[str, float]]]:
    """(keep per row, the users left out with their spent ε and rows)."""
    refused: dict[str, dict[str, float]] = {}
    counts = Counter(u for u in row_users if u is not None)
    for user, n in counts.items():
        have = already.get(user, 0.0)
        if have + run_epsilon > budget + 1e-9:
            refused[user] = {"spent": round(have, 6), "rows": n}
    keep = [u is None or u not in refused for u in row_users]
    return keep, refused


def charge(
    s: Session, version: int, row_users: list[str | None], epsilon: float, delta: float
) -> int:
    """Charge every user with rows in the run; returns how many were charged."""
    counts = Counter(u for u in row_users if u is not None)
    for user in sorted(counts):
        s.add(
            PrivacyCharge(
                user_id=user,
                model_version=version,
                epsilon=epsilon,
                delta=delta,
                rows=counts[user],
            )
        )
    return len(counts)


def summary(s: Session, user: str | None = None) -> list[dict[str, Any]]:
    """Per user: ε and δ spent, runs, and the versions that charged them."""
    q = select(PrivacyCharge).order_by(PrivacyCharge.user_id, PrivacyCharge.id)
    if user is not None:
        q = q.where(PrivacyCharge.user_id == user)
    out: dict[str, dict[str, Any]] = {}
    for c in s.scalars(q):
        row = out.setdefault(
            c.user_id, {"user_id": c.user_id, "epsilon": 0.0, "delta": 0.0, "runs": []}
        )
        row["epsilon"] += c.epsilon
        row["delta"] += c.delta
        row["runs"].append(
            {
                "model_version": c.model_version,
                "epsilon": c.epsilon,
                "delta": c.delta,
                "rows": c.rows,
                "at": c.created_at.isoformat(),
            }
        )
    return list(out.values())
