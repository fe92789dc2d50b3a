"""The retrain policy on hand-built states: its thresholds, its schedule, its cooldown."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from flywheel.jobs.policy import Policy, PolicyState, due

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def state(new: int, last_s_ago: float | None, busy: bool = False) -> PolicyState:
    last = None if last_s_ago is None else NOW - timedelta(seconds=last_s_ago)
    return PolicyState(new_answers=new, last_retrain_at=last, busy=busy, now=NOW)


def test_off_unless_a_threshold_or_an_interval_is_set() -> None:
    trigger, view = due(Policy(), state(10_000, None))
    assert trigger is None and view["on"] is False and view["why"].startswith("off")


def test_new_answers_fire_at_the_threshold_not_before() -> None:
    policy = Policy(min_feedback=200, cooldown_s=60)
    assert due(policy, state(199, 3600))[0] is None
    trigger, view = due(policy, state(200, 3600))
    assert trigger == "feedback" and view["due"] == "feedback"
    assert view["why"] == "200 new answers (retrain_min_feedback 200)"
    assert due(policy, state(200, None))[0] == "feedback"  # never retrained yet


def test_the_cooldown_holds_even_past_the_threshold() -> None:
    policy = Policy(min_feedback=10, cooldown_s=600)
    trigger, view = due(policy, state(5_000, 599))
    assert trigger is None and view["why"].startswith("cooling down until")
    assert view["cooldown_until"] == (NOW + timedelta(seconds=1)).isoformat()
    assert due(policy, state(5_000, 600))[0] == "feedback"


def test_the_schedule_fires_with_new_answers_only() -> None:
    policy = Policy(interval_s=3600, cooldown_s=0)
    trigger, view = due(policy, state(3, 1800))
    assert trigger is None
    assert view["next_scheduled_at"] == (NOW + timedelta(seconds=1800)).isoformat()
    assert due(policy, state(3, 3600))[0] == "schedule"
    trigger, view = due(policy, state(0, 7200))
    assert trigger is None and view["why"] == "scheduled, but no new answers to learn from"


def test_nothing_starts_while_a_retrain_is_queued_or_running_anywhere() -> None:
    policy = Policy(min_feedback=1, interval_s=1, cooldown_s=0)
    trigger, view = due(policy, state(100, 10_000, busy=True))
    assert trigger is None and view["busy"] is True
    assert view["why"] == "a retrain is queued or running"


def test_a_drift_alarm_fires_once_enough_answers_arrived_and_respects_the_cooldown() -> None:
    policy = Policy(on_drift=True, drift_min_feedback=20, cooldown_s=600)
    assert policy.on

    def drifted(new: int, last_s_ago: float | None, alarms: int) -> PolicyState:
        return dataclasses.replace(state(new, last_s_ago), drift_alarms=alarms)

    assert due(policy, drifted(500, 3600, 0))[0] is None  # no alarm: answers alone do not
    trigger, view = due(policy, drifted(19, 3600, 2))
    assert (
        trigger is None and view["why"] == "a drift alarm; waiting for 20 new answers (19 so far)"
    )
    trigger, view = due(policy, drifted(20, 3600, 2))
    assert trigger == "drift" and view["drift_alarms"] == 2
    assert (
        view["why"]
        == "2 drift alarm(s) since the last retrain, 20 new answers (drift_min_feedback 20)"
    )
    assert due(policy, drifted(20, 599, 2))[0] is None  # cooling down
    assert due(Policy(drift_min_feedback=1), drifted(100, 3600, 3))[0] is None  # off
