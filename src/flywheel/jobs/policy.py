"""The retrain policy: when a server starts a retrain by itself (pure: plain data in,
a decision out; tested without a database or a clock)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = ["Policy", "PolicyState", "due"]


@dataclass(frozen=True)
class Policy:
    """From the settings: ``min_feedback`` new curated answers, or ``interval_s`` since
    the last retrain (with at least one new answer), or (``on_drift``) a drift alarm
    since the last retrain once ``drift_min_feedback`` new answers arrived; never within
    ``cooldown_s`` of the last one. None of them: the wheel turns only when asked."""

    min_feedback: int | None = None
    interval_s: float | None = None
    cooldown_s: float = 300.0
    on_drift: bool = False
    drift_min_feedback: int = 20

    @property
    def on(self) -> bool:
        return self.min_feedback is not None or self.interval_s is not None or self.on_drift


@dataclass(frozen=True)
class PolicyState:
    new_answers: int  # feedback not yet turned into training rows
    last_retrain_at: datetime | None  # when the newest retrain job was asked for
    busy: bool  # a retrain is queued or running, in any process
    now: datetime
    drift_alarms: int = 0  # windows that alarmed since the last retrain was asked for


def due(policy: Policy, state: PolicyState) -> tuple[str | None, dict[str, Any]]:
    """(the trigger that is due — ``feedback``, ``schedule`` or ``drift`` — or None, and
    the state as the dashboard and ``GET /v1/jobs`` show it)."""
    last = state.last_retrain_at
    cooldown_until = last + timedelta(seconds=policy.cooldown_s) if last else None
    next_scheduled = (
        (last + timedelta(seconds=policy.interval_s) if last else state.now)
        if policy.interval_s is not None
        else None
    )
    view: dict[str, Any] = {
        "on": policy.on,
        "new_answers": state.new_answers,
        "min_feedback": policy.min_feedback,
        "interval_s": policy.interval_s,
        "cooldown_s": policy.cooldown_s,
        "on_drift": policy.on_drift,
        "drift_min_feedback": policy.drift_min_feedback,
        "drift_alarms": state.drift_alarms,
        "last_retrain_at": last.isoformat() if last else None,
        "next_scheduled_at": None if next_scheduled is None else next_scheduled.isoformat(),
        "cooldown_until": None if cooldown_until is None else cooldown_until.isoformat(),
        "busy": state.busy,
    }
    trigger: str | None = None
    if not policy.on:
        why = "off: no retrain_min_feedback, retrain_interval_s or retrain_on_drift"
    elif state.busy:
        why = "a retrain is queued or running"
    elif cooldown_until is not None and state.now < cooldown_until:
        why = f"cooling down until {cooldown_until.isoformat()}"
    elif policy.min_feedback is not None and state.new_answers >= policy.min_feedback:
        trigger = "feedback"
        why = f"{state.new_answers} new answers (retrain_min_feedback {policy.min_feedback})"
    elif (
        policy.on_drift
        and state.drift_alarms > 0
        and state.new_answers >= policy.drift_min_feedback
    ):
        trigger = "drift"
        why = (
            f"{state.drift_alarms} drift alarm(s) since the last retrain, "
            f"{state.new_answers} new answers (drift_min_feedback {policy.drift_min_feedback})"
        )
    elif next_scheduled is not None and state.now >= next_scheduled and state.new_answers > 0:
        trigger = "schedule"
        why = f"scheduled every {policy.interval_s:g} s, {state.new_answers} new answers"
    elif next_scheduled is not None and state.now >= next_scheduled:
        why = "scheduled, but no new answers to learn from"
    elif policy.on_drift and state.drift_alarms > 0:
        why = (
            f"a drift alarm; waiting for {policy.drift_min_feedback} new answers "
            f"({state.new_answers} so far)"
        )
    else:
        why = "waiting for answers, the schedule or a drift alarm"
    return trigger, view | {"due": trigger, "why": why}
