"""The jobs' service: work runs as a job whose status, progress, result or error stay
on record; a stopped process's jobs are marked failed."""

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

    a, b = project.create_job("retrain"), project.create_job("retrain")
    project.run_job(a, ours)
    project.run_job(b, theirs)
    assert project.job(a)["error"] == "DataError: no rows"
    assert project.job(b)["error"].startswith("KeyError: 'x'\nTraceback")
    assert {j["job_id"] for j in project.jobs()} == {a, b}


def test_jobs_a_stopped_process_left_behind_are_marked_failed(project: Project) -> None:
    left = project.create_job("retrain")
    assert project.fail_interrupted_jobs() == 1
    job = project.job(left)
    assert job["status"] == "failed" and job["error"].startswith("interrupted")
    assert project.fail_interrupted_jobs() == 0
