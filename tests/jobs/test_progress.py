"""A running job's progress, read from its progress lines and its clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.jobs import repo
from flywheel.store.schema import Job

START = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def _job(status: str, log: list[str]) -> Job:
    return Job(id="j", kind="retrain", status=status, trigger="manual", params={},
               log="\n".join(log), created_at=START, started_at=START)  # fmt: skip


@pytest.mark.parametrize(
    ("log", "at_s", "expected"),
    [
        ([], 5, {"phase": "preparing", "step": None, "steps": None, "fraction": None,
                 "eta_s": None}),
        # between epochs a stage line says what runs
        (["decoding 300 rows", "epoch 1/2: loss 1", "epoch 2/2: loss 1", "ONNX export"], 9,
         {"phase": "ONNX export", "step": None, "steps": None, "fraction": None, "eta_s": None}),
        # 2 of 10 epochs in 20 s: 10 s an epoch, 80 s left (at most: early stopping)
        (["epoch 1/10: loss 1", "epoch 2/10: loss 0.5"], 20,
         {"phase": "fit", "step": 2, "steps": 10, "fraction": 0.2, "eta_s": 80.0}),
        # the search stopped at 6; the refit runs 4: 6 + 1 steps in 35 s, 3 left
        (["decoding 300 rows", *(f"epoch {e}/10: loss 1" for e in range(1, 7)),
          "refit 1/4 on all rows: loss 1"], 35,
         {"phase": "refit", "step": 1, "steps": 4, "fraction": 0.25, "eta_s": 15.0}),
    ],
)  # fmt: skip
def test_progress_of_a_running_job(
    monkeypatch: pytest.MonkeyPatch, log: list[str], at_s: float, expected: dict
) -> None:
    monkeypatch.setattr(repo, "utcnow", lambda: START + timedelta(seconds=at_s))
    assert repo.progress(_job("running", log), log) == expected
    assert repo.job_json(_job("running", log))["progress"] == expected


def test_a_finished_job_has_no_progress() -> None:
    log = ["epoch 1/2: loss 1", "epoch 2/2: loss 1"]
    assert repo.progress(_job("succeeded", log), log) is None
