"""The job queue in the database: claims race-free on SQLite and PostgreSQL (each job
claimed once, one retrain running at a time), a fresh retrain joined or refused across
processes, a dead worker's job queued again once and then failed with the reason, and
a given-up attempt that can no longer write."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flywheel import Project
from flywheel.errors import RegistryError
from flywheel.jobs import repo
from flywheel.jobs.service import Claim
from flywheel.store import retry_locked
from tests.factories import make_project

HOST = socket.gethostname()[:40]
DEAD = f"{HOST}:999999999:"  # a pid this machine does not run: a dead worker's owner


@pytest.fixture(scope="function")
def projects(tmp_path: Path, database_url: str) -> Iterator[list[Project]]:
    """One project (untrained: only the queue is used) opened by four "processes", each
    with its own engine, on SQLite and on PostgreSQL."""
    make_project(
        tmp_path / "p",
        n_train=20,
        n_holdout=10,
        train=False,
        settings={"database_url": database_url},
    ).close()
    opened = [Project.open(tmp_path / "p") for _ in range(4)]
    yield opened
    for p in opened:
        p.close()


def _race(projects: list[Project], take: Any, rounds: int = 1) -> list[Any]:
    """``take(project, k)`` from one thread per project, all released at once."""
    start = threading.Barrier(len(projects))
    got: list[Any] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        start.wait()
        for _ in range(rounds):
            out = take(projects[k], k)
            with lock:
                got.append(out)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(projects))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return got


def test_racing_claimers_take_each_job_once(projects: list[Project]) -> None:
    """40 jobs of a kind that may run side by side, claimed by four engines at once
    until none is left: every job once, by exactly one of them."""
    ids = {projects[0].create_job("echo", {"n": n}) for n in range(40)}

    def drain(p: Project, k: int) -> list[str]:
        mine = []
        while True:

            def take() -> Any:
                with p.db.session() as s:
                    job = repo.claim_job(s, f"w{k}", kinds=("echo",))
                    return None if job is None else job.id

            job_id = retry_locked(take)
            if job_id is None:
                return mine
            mine.append(job_id)

    claimed = list(itertools.chain.from_iterable(_race(projects, drain)))
    assert sorted(claimed) == sorted(ids)  # each once: none twice, none left
    jobs = {j["job_id"]: j for j in projects[0].jobs(100)}
    assert {(j["status"], j["attempts"], len(j["tries"])) for j in jobs.values()} == {
        ("running", 1, 1)
    }


def test_one_retrain_runs_at_a_time_however_many_claim_at_once(projects: list[Project]) -> None:
    for audit_id in range(3):
        projects[0].create_job("forget-retrain", {"audit_id": audit_id})
    order = []
    for _ in range(3):
        won = [c for c in _race(projects, lambda p, k: p.claim_job(f"w{k}")) if c is not None]
        assert len(won) == 1  # the others: refused while it runs, whatever they raced for
        (claim,) = won
        assert all(p.claim_job("late") is None for p in projects)
        order.append(claim.params["audit_id"])
        assert projects[0].run_job(claim, lambda: {"ok": True})
    assert order == [0, 1, 2]  # the oldest first
    assert all(p.claim_job("late") is None for p in projects)


def test_a_retrain_joins_the_waiting_one_across_processes_or_is_refused(
    projects: list[Project],
) -> None:
    asked = _race(projects, lambda p, k: p.create_job("retrain", {"seed": 7}, trigger="manual"))
    assert len(set(asked)) == 1  # four processes at once: one job
    (job_id,) = set(asked)
    with pytest.raises(RegistryError) as refused:
        projects[1].create_job("retrain", {"seed": 8})
    assert str(refused.value) == (
        f"a retrain with other options ({{'seed': 7}}) is queued as job {job_id}; "
        "wait for it to start, or ask with the same options"
    )
    claim = projects[2].claim_job("w2")
    assert claim is not None and claim.job_id == job_id
    # Once it runs, the next retrain waits anew, whatever its options.
    assert projects[3].create_job("retrain", {"seed": 8}) != job_id


def _claim_as(p: Project, owner: str) -> Claim:
    claim = p.claim_job(owner)
    assert claim is not None
    return claim


def test_a_dead_workers_job_is_retried_once_then_failed_with_the_reason(
    projects: list[Project],
) -> None:
    p = projects[0]
    assert p.settings.job_attempts == 2
    job_id = p.create_job("retrain", {"seed": 1})
    first = _claim_as(p, DEAD + "a")
    assert p.recover_jobs(stale_s=600)[0].requeued  # its pid is gone: at once
    job = p.job(job_id)
    assert (job["status"], job["attempts"], job["owner"]) == ("queued", 1, None)
    assert job["log"] == [
        f"attempt 1: the worker {DEAD}a stopped (its process is gone); "
        "queued again for attempt 2 of 2"
    ]
    assert p.create_job("retrain", {"seed": 1}) == job_id  # queued again: joined still
    # The given-up attempt can no longer write: its heartbeat and its result are refused.
    assert not p.run_job(first, lambda: {"late": True})
    assert first.lost.is_set() and p.job(job_id)["status"] == "queued"

    second = _claim_as(p, DEAD + "b")
    assert (second.job_id, second.attempt) == (job_id, 2)
    (gave_up,) = p.recover_jobs(stale_s=600)
    assert not gave_up.requeued
    job = p.job(job_id)
    assert job["status"] == "failed" and job["attempts"] == 2
    assert job["error"] == (
        f"the worker running it stopped (owner {DEAD}a, {DEAD}b) on each of 2 attempts"
    )
    assert [(t["attempt"], t["owner"], t["outcome"]) for t in job["tries"]] == [
        (1, DEAD + "a", "stopped"),
        (2, DEAD + "b", "stopped"),
    ]
    assert p.recover_jobs(stale_s=600) == []


def test_a_silent_worker_elsewhere_is_given_up_on_after_the_stale_time(
    projects: list[Project],
) -> None:
    p = projects[0]
    job_id = p.create_job("forget-retrain", {"audit_id": 1})
    elsewhere = _claim_as(p, "another-host:1:x")  # no pid to check: only its silence
    assert p.recover_jobs(stale_s=600) == []
    assert p.job(job_id)["status"] == "running"
    (r,) = p.recover_jobs(stale_s=-1)  # nothing heard since "now": silent too long
    assert (r.job_id, r.owner, r.requeued) == (job_id, "another-host:1:x", True)
    assert r.why.startswith("no sign of life since ")
    assert not p.run_job(elsewhere, lambda: {})


def test_a_kind_no_worker_runs_fails_when_its_process_dies(projects: list[Project]) -> None:
    p = projects[0]
    job_id = p.create_job("train", {}, owner=DEAD + "cli")
    alive = p.create_job("train", {}, owner=f"{HOST}:{os.getpid()}:cli")
    (r,) = p.recover_jobs(stale_s=600)
    assert p.job(alive)["status"] == "queued"  # its process runs: left to it
    job = p.job(job_id)
    assert job["status"] == "failed"
    assert job["error"] == f"interrupted: the process running it stopped (owner {DEAD}cli)"
    assert r.error == job["error"]


def test_a_job_asked_of_one_process_runs_in_another_and_is_waited_for(
    projects: list[Project],
) -> None:
    asker, worker = projects[0], projects[1]
    job_id = asker.create_job("forget-retrain", {"audit_id": 3})
    claim = _claim_as(worker, "w1")

    done = threading.Event()
    seen: list[str] = []
    got: dict[str, Any] = {}

    def wait() -> None:
        got.update(asker.wait_job(job_id, timeout_s=60, on_line=seen.append))
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()

    def work() -> dict[str, Any]:
        worker.job_log(job_id, "epoch 1/1: loss 0.1")
        return {"audit_id": 3}

    assert worker.run_job(claim, work)
    assert done.wait(60)
    waiter.join()
    assert (got["status"], got["result"], got["owner"]) == ("succeeded", {"audit_id": 3}, "w1")
    assert seen == ["epoch 1/1: loss 0.1"]
    (t,) = got["tries"]
    assert t["outcome"] == "succeeded"
    assert datetime.fromisoformat(t["started_at"]) <= datetime.fromisoformat(t["ended_at"])


def test_a_job_another_worker_claimed_first_is_not_run_here(projects: list[Project]) -> None:
    """(``flywheel retrain`` then follows it: ``wait_job``.)"""
    job_id = projects[0].create_job("retrain", {"seed": 2})
    assert _claim_as(projects[1], "w1").job_id == job_id

    def never() -> dict[str, Any]:
        raise AssertionError("ran twice")

    assert not projects[0].run_job(job_id, never, owner="here")
    assert projects[0].job(job_id)["owner"] == "w1"
