"""`flywheel worker` as a training machine runs it: a process that takes a retrain
queued elsewhere, trains it, says so, and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from flywheel.data import digits_arrays
from tests.factories import digit_png, make_project

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")


def test_the_worker_trains_a_retrain_queued_elsewhere_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    p = make_project(tmp_path / "p", n_train=60, n_holdout=30, settings={
        "policy_check_s": 0.2, "job_lease_s": 3.0, "refit": False,
    })  # fmt: skip
    labels = digits_arrays()[1]
    for i in range(1000, 1004):
        pid = p.predict(digit_png(i), user_id=f"u{i}").prediction_id
        p.record_feedback(pid, label=str(labels[i]), user_id=f"u{i}")
    job_id = p.create_job("retrain", {"seed": 2})  # as a server would, asked over HTTP
    worker = subprocess.Popen(
        [FLYWHEEL, "worker", "--project", str(tmp_path / "p")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        job = p.wait_job(job_id, timeout_s=120)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
        p.close()
    assert worker.returncode == 0, out
    assert (job["status"], job["attempts"]) == ("succeeded", 1), out
    assert job["owner"].split(":")[1] == str(worker.pid)  # the worker process ran it
    version = job["result"]["model_version"]
    short = job_id[:8]
    assert f"job {short} (retrain, manual) started: attempt 1 of 2 on {job['owner']}" in out
    assert f"job {short}: epoch 1/3" in out
    assert f"job {short} succeeded: v{version} " in out  # promoted or not, as the gate said
    assert out.rstrip().endswith("stopped")
