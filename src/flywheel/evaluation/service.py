"""Monitoring's service: how production is used and how it fares, from the log."""

from __future__ import annotations

import math
from collections import Counter
from datetime import timedelta
from typing import Any

import numpy as np

from flywheel.context import Context
from flywheel.data import label_sort_key
from flywheel.evaluation import repo
from flywheel.registry import VersionInfo
from flywheel.registry import repo as registry_repo
from flywheel.store.schema import utcnow

__all__ = ["MonitoringService"]


class MonitoringService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def stats(self, *, minutes: int = 60) -> dict[str, Any]:
        """Call frequency per version, label and minute; feedback counts; accuracy per
        version (held out, and live from the feedback on its predictions)."""
        self.ctx.settle()
        since = utcnow() - timedelta(minutes=minutes)
        with self.ctx.db.session() as s:
            per_version = repo.calls_per_version(s)
            per_label = repo.calls_per_label(s)
            recent = repo.call_times(s, since)
            fb = repo.feedback_counts(s)
            sq = repo.value_pairs(s)
            versions = registry_repo.list_versions(s)
        per_minute = Counter(
            t.replace(second=0, microsecond=0, tzinfo=None).isoformat(timespec="minutes")
            for t in recent
        )
        live: dict[int, dict[str, int]] = {}
        for v, correct, n in fb:
            d = live.setdefault(v, {"feedback": 0, "agreed": 0, "judged": 0})
            d["feedback"] += n
            if correct is not None:
                d["judged"] += n
            if correct:
                d["agreed"] += n
        errors: dict[int, list[float]] = {}
        for v, predicted, true in sq:
            assert predicted is not None and true is not None  # the query keeps only both set
            diff = float(predicted) - float(true)
            # Any stored value must leave the statistics writable: a pair too far apart to
            # square (or not a number at all, from before values were checked) is left out.
            if math.isfinite(diff) and abs(diff) < 1e150:
                errors.setdefault(v, []).append(diff**2)
        total_fb = sum(d["feedback"] for d in live.values())
        agreed = sum(d["agreed"] for d in live.values())
        judged = sum(d["judged"] for d in live.values())
        return {
            "task": self.ctx.task.name,
            "calls": {
                "total": sum(per_version.values()),
                "per_version": {str(k): v for k, v in sorted(per_version.items())},
                "per_label": dict(
                    sorted(per_label.items(), key=lambda kv: label_sort_key(str(kv[0])))
                ),
                "per_minute": dict(sorted(per_minute.items())),
            },
            "feedback": {"total": total_fb, "agreed": agreed, "disagreed": judged - agreed},
            "versions": [_version(v, per_version, live, errors) for v in versions],
        }


def _finite_mean(values: list[float] | None) -> float | None:
    if not values:
        return None
    mean = float(np.mean(values))
    return mean if math.isfinite(mean) else None


def _version(
    v: VersionInfo,
    calls: dict[int, int],
    live: dict[int, dict[str, int]],
    errors: dict[int, list[float]],
) -> dict[str, Any]:
    judged = live.get(v.version, {}).get("judged")
    return {
        "version": v.version,
        "aliases": v.aliases,
        "holdout_accuracy": v.metrics.get("accuracy"),
        "holdout_mse": v.metrics.get("mse"),
        "calls": calls.get(v.version, 0),
        "feedback": live.get(v.version, {}).get("feedback", 0),
        "live_accuracy": live[v.version]["agreed"] / live[v.version]["judged"] if judged else None,
        "live_mse": _finite_mean(errors.get(v.version)),
    }
