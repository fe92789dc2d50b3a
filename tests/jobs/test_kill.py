"""Two real `flywheel serve` processes on one PostgreSQL database, one killed with SIGKILL
while it trains a job: the small variant of tools/jobs_kill_check.py (its evidence, run
on fewer jobs). Every job ran once, or was retried by the surviving server after the
kill; no two attempts overlapped; every version lies inside one attempt of its job; the
servers' own logs agree with the database."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "jobs_kill_check", ROOT / "tools" / "jobs_kill_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.postgres
def test_a_killed_servers_job_is_retried_by_the_other_and_none_runs_twice_at_once(
    postgres_admin_url: str, tmp_path: Path
) -> None:
    tool = _tool()
    report = tool.check(
        postgres_admin_url, jobs=6, servers=2, kills=1, timeout_s=300, keep=tmp_path / "run",
        say=lambda line: None,
    )  # fmt: skip
    assert report.violations == []
    ((server, job_id, attempt),) = report.kills
    assert (server, attempt) == ("s2", 1)
    job = next(j for j in report.jobs if j["job_id"] == job_id)
    assert job["attempts"] == 2 and job["status"] in ("succeeded", "failed")
    first, second = job["tries"]
    assert first["outcome"] == "stopped" and first["why"] == "its process is gone"
    assert second["owner"] != first["owner"]
    assert report.numbers["overlapping_attempts"] == 0
    assert report.numbers["jobs"] == len(report.jobs) >= 6
    assert all(j["attempts"] == 1 for j in report.jobs if j["job_id"] != job_id)
