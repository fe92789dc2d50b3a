"""Job runners of several processes on one database: a job asked of one is run by
whichever is free, joined across them, never two at once; a dead worker's job is taken
up by another, and what the dead attempt did partly is finished, not done twice."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flywheel import Project
from flywheel.errors import RegistryError
from flywheel.serving.jobs import JobRunner
from tests.factories import digit_png, make_project

DEAD = f"{socket.gethostname()[:40]}:999999999:"  # a pid this machine does not run
#: a quick ticker, so that recovery and claims happen within the tests' deadlines
QUICK = {"policy_check_s": 0.1, "job_lease_s": 1.0}


@pytest.fixture(scope="function")
def shared(tmp_path: Path, database_url: str) -> Iterator[list[Project]]:
    """A trained project opened by three "processes" (own engines), SQLite and PostgreSQL."""
    make_project(tmp_path / "p", n_train=60, n_holdout=30, settings={
        "database_url": database_url, **QUICK,
    }).close()  # fmt: skip
    opened = [Project.open(tmp_path / "p") for _ in range(3)]
    yield opened
    for p in opened:
        p.close()


def _until(check: Any, what: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return got


def _ask(runner: JobRunner, options: dict[str, Any]) -> str:
    """A retrain asked for, again while one with other options waits (a deadline)."""
    return str(_until(lambda: _try(runner, options), "the waiting retrain to start"))


def _try(runner: JobRunner, options: dict[str, Any]) -> str | None:
    try:
        return runner.submit_retrain(options)
    except RegistryError:
        return None


def _spans(jobs: list[dict[str, Any]]) -> list[tuple[datetime, datetime, str]]:
    return sorted(
        (
            datetime.fromisoformat(t["started_at"]),
            datetime.fromisoformat(t["ended_at"]),
            j["job_id"],
        )
        for j in jobs
        for t in j["tries"]
    )


def test_a_retrain_is_joined_across_runners_and_runs_once(shared: list[Project]) -> None:
    a, b = JobRunner(shared[0]), JobRunner(shared[1])
    blocker = shared[2].create_job("forget-retrain", {"audit_id": 0})
    held = shared[2].claim_job("blocker")  # a retrain runs elsewhere: the queue waits
    assert held is not None and held.job_id == blocker
    try:
        job_id = a.submit_retrain({"seed": 3})
        assert b.submit_retrain({"seed": 3}) == job_id  # the same options: joined
        with pytest.raises(RegistryError, match=f"is queued as job {job_id}"):
            b.submit_retrain({"seed": 4})
        assert shared[2].job(job_id)["status"] == "queued"
        assert shared[2].run_job(held, lambda: {})  # the running one ends...
        a.futures[job_id].result(120)  # ...and one of the two runs it, the other sees it
        b.futures[job_id].result(120)
    finally:
        a.shutdown()
        b.shutdown()
    job = shared[2].job(job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert job["owner"] in (a.owner, b.owner)
    assert job["result"]["skipped"]  # no new answers: nothing to train on


def test_runners_of_three_processes_run_every_job_once_and_never_two_at_once(
    shared: list[Project],
) -> None:
    runners = [JobRunner(p) for p in shared]
    for r in runners:
        r.start()
    try:
        asked = [_ask(runners[k % 3], {"seed": k}) for k in range(6)]
        asked += [runners[k].submit_forget_retrain(90 + k) for k in range(2)]  # no such audit
        for r, job_id in zip(itertools.cycle(runners), asked):
            r.futures[job_id].result(120)
    finally:
        for r in runners:
            r.shutdown()
    jobs = [shared[0].job(j) for j in asked]
    assert len(set(asked)) == 8
    assert [j["status"] for j in jobs] == ["succeeded"] * 6 + ["failed"] * 2
    assert jobs[6]["error"] == "NotFoundError: audit record 90 not found"
    assert {j["attempts"] for j in jobs} == {1} and {len(j["tries"]) for j in jobs} == {1}
    for (_, end, _), (begin, _, _) in itertools.pairwise(_spans(jobs)):
        assert end <= begin  # one after the other, whichever process ran them


def _answer(p: Project, n: int, user: str) -> None:
    from flywheel.data import digits_arrays

    labels = digits_arrays()[1]
    for i in range(1000, 1000 + n):  # images the project does not hold, a user each
        pid = p.predict(digit_png(i), user_id=f"{user}{i}").prediction_id
        p.record_feedback(pid, label=str(labels[i]), user_id=f"{user}{i}")


def test_a_dead_workers_retrain_is_finished_by_another_runner(shared: list[Project]) -> None:
    """The dead attempt curated the answers and stopped before training on them: the
    next attempt, on another runner, trains that dataset version (once)."""
    p = shared[0]
    _answer(p, 6, "ann")
    job_id = p.create_job("retrain", {"seed": 5})
    dying = p.claim_job(DEAD + "x")
    assert dying is not None
    dataset, _ = p.curate()  # what the dead attempt got done before it stopped
    assert dataset is not None
    runner = JobRunner(shared[1])
    runner.start()  # queues it again at once (the pid is gone) and takes it
    try:
        job = _until(
            lambda: (j := p.job(job_id))["status"] in ("succeeded", "failed") and j,
            "the retried job to finish",
        )
    finally:
        runner.shutdown()
    assert (job["status"], job["attempts"], job["owner"]) == ("succeeded", 2, runner.owner)
    assert job["log"][0] == (
        f"attempt 1: the worker {DEAD}x stopped (its process is gone); "
        "queued again for attempt 2 of 2"
    )
    assert f"dataset v{dataset.version} was curated by an attempt before: training it" in job["log"]
    assert [t["outcome"] for t in job["tries"]] == ["stopped", "succeeded"]
    version = p.version_info(job["result"]["model_version"])
    assert version.dataset_version == dataset.version
    assert version.training_config["seed"] == 5
    assert [m.version for m in p.models()] == [1, version.version]  # trained once


def test_a_forget_retrain_already_on_the_audit_record_is_not_run_again(
    shared: list[Project],
) -> None:
    p = shared[0]
    _answer(p, 1, "bob")
    audit_id = p.forget("bob1000", retrain=False)["audit_id"]
    p.retrain_after_forget(audit_id)  # the dead attempt got this far: on the record
    versions = [m.version for m in p.models()]
    job_id = p.create_job("forget-retrain", {"audit_id": audit_id}, trigger="forget")
    assert p.claim_job(DEAD + "y") is not None
    runner = JobRunner(shared[1])
    runner.start()
    try:
        job = _until(
            lambda: (j := p.job(job_id))["status"] in ("succeeded", "failed") and j,
            "the retried job to finish",
        )
    finally:
        runner.shutdown()
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    assert job["log"][-1] == "retrained by an attempt before: not again"
    assert job["result"]["audit_id"] == audit_id and job["result"]["retrain"] is not None
    assert [m.version for m in p.models()] == versions  # no second model
