"""The retrain policy run by the server's job runner: it fires at its threshold, says
why, records its trigger; and across processes on one database at most one retrain
runs at a time (the queue in the database), however many runners decide or are asked
at once."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flywheel import Project
from flywheel.errors import RegistryError
from flywheel.serving.jobs import JobRunner
from tests.factories import digit_png, make_project


def _answer(project: Project, n: int, start: int = 0) -> None:
    from flywheel.data import digits_arrays

    labels = digits_arrays()[1]
    for i in range(1000 + start, 1000 + start + n):  # images the project does not hold
        pid = project.predict(digit_png(i), user_id=f"u{i % 4}").prediction_id
        project.record_feedback(pid, label=str(labels[i]), user_id=f"u{i % 4}")


def _asked(runner: JobRunner, options: dict[str, Any]) -> str:
    """A retrain asked for, again while one with other options waits (a deadline)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            return runner.submit_retrain(options)
        except RegistryError:
            assert time.monotonic() < deadline, "the waiting retrain never started"
            time.sleep(0.05)


def test_the_policy_retrains_at_its_threshold_and_records_the_trigger(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", settings={"retrain_min_feedback": 6})
    runner = JobRunner(project)
    try:
        _answer(project, 5)
        assert runner.tick() is None  # 5 of 6
        assert project.retrain_policy()[1]["new_answers"] == 5
        _answer(project, 1, start=5)
        job_id = runner.tick()
        assert job_id is not None
        runner.futures[job_id].result(300)
        job = project.job(job_id)
        assert (job["trigger"], job["status"]) == ("feedback", "succeeded")
        assert job["result"]["curation"]["answers"] == 6  # every answer was considered
        _, view = project.retrain_policy()
        # The default cooldown holds the next one back, whatever arrives meanwhile.
        _answer(project, 6, start=6)
        assert runner.tick() is None
        assert project.retrain_policy()[1]["why"].startswith("cooling down until")
        assert view["last_retrain_at"] == job["created_at"]
    finally:
        runner.shutdown()
        project.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_runners_of_several_processes_never_retrain_at_once(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    settings: dict[str, Any] = {"retrain_min_feedback": 4, "retrain_cooldown_s": 0}
    if store == "postgresql":
        settings["database_url"] = request.getfixturevalue("postgres_url")
    make_project(tmp_path / "p", settings=settings).close()
    # Three "processes": each its own project (connections) and runner (owner).
    projects = [Project.open(tmp_path / "p") for _ in range(3)]
    runners = [JobRunner(p) for p in projects]
    try:
        _answer(projects[0], 4)
        # All decide at once: one retrain starts.
        ready = threading.Barrier(3)
        started: list[str | None] = [None] * 3

        def decide(k: int) -> None:
            ready.wait()
            started[k] = runners[k].tick()

        threads = [threading.Thread(target=decide, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(s is not None for s in started) == 1
        # And all are asked, with new answers for the first to learn from; with other
        # options than the one waiting, each is refused until that one starts.
        _answer(projects[0], 4, start=4)
        asked = [_asked(r, {"seed": k}) for k, r in enumerate(runners)]
        for r, job_id in zip(runners, asked, strict=True):
            r.futures[job_id].result(300)
        for r in runners:
            for f in r.futures.values():
                f.result(300)
        jobs = [j for j in projects[0].jobs() if j["kind"] == "retrain"]
        assert len(jobs) == 4 and {j["status"] for j in jobs} == {"succeeded"}
        spans = sorted(
            (datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
            for j in jobs
        )
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert end <= begin  # one after the other, never two at once
        assert sorted(j["trigger"] for j in jobs) == ["feedback", "manual", "manual", "manual"]
    finally:
        for r in runners:
            r.shutdown()
        for p in projects:
            p.close()
