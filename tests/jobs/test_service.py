"""The jobs' service: work runs as a job whose status, progress, result or error stay
on record; leases have one holder. (The queue itself: test_queue.py.)"""

from __future__ import annotations

from typing import Any

from flywheel import Project
from flywheel.errors import DataError


def test_a_job_keeps_its_progress_and_its_result(project: Project) -> None:
    job_id = project.create_job("retrain", {"epochs": 2})
    assert project.job(job_id)["status"] == "queued"

    def work() -> dict[str, Any]:
        assert project.job(job_id)["status"] == "running"
        project.job_log(job_id, "epoch 1/2\n")
        project.job_log(job_id, "epoch 2/2")
        return {"model_version": 2}

    project.run_job(job_id, work)
    job = project.job(job_id)
    assert (job["status"], job["result"], job["error"]) == ("succeeded", {"model_version": 2}, None)
    assert job["log"] == ["epoch 1/2", "epoch 2/2"]
    assert job["params"] == {"epochs": 2} and job["finished_at"] is not None


def test_a_failed_job_says_why_with_a_traceback_only_for_the_unexpected(project: Project) -> None:
    def ours() -> dict[str, Any]:
        raise DataError("no rows")

    def theirs() -> dict[str, Any]:
        raise KeyError("x")

    a = project.create_job("retrain")
    assert project.run_job(a, ours)
    b = project.create_job("retrain")  # a has started: b waits anew
    assert project.run_job(b, theirs)
    assert project.job(a)["error"] == "DataError: no rows"
    assert project.job(b)["error"].startswith("KeyError: 'x'\nTraceback")
    assert {j["job_id"] for j in project.jobs()} == {a, b}


def test_a_lease_has_one_holder_until_it_expires_or_is_released(project: Project) -> None:
    assert project.lease("retrain", "a", 60)
    assert not project.lease("retrain", "b", 60)  # a holds it
    assert project.lease("retrain", "a", 60)  # a renews
    project.release_lease("retrain", "b")  # not b's to release
    assert not project.lease("retrain", "b", 60)
    project.release_lease("retrain", "a")
    assert project.lease("retrain", "b", -1)  # b takes it, already expired...
    assert project.lease("retrain", "a", 60)  # ...so a takes it over


def test_several_processes_share_one_lease_on_each_store(database_url: str) -> None:
    """Eight connections race for one lease at once: exactly one wins."""
    import threading

    from flywheel.jobs import repo
    from flywheel.store import Database, retry_locked

    db = Database(database_url)
    db.migrate()
    start = threading.Barrier(8)
    won: list[str] = []

    def race(owner: str) -> None:
        start.wait()

        def take() -> bool:
            with db.session() as s:
                return repo.acquire_lease(s, "retrain", owner, 60)

        if retry_locked(take):
            won.append(owner)

    threads = [threading.Thread(target=race, args=(f"p{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    db.dispose()
    assert len(won) == 1
