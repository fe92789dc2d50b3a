"""An interrupted run resumes from its last checkpoint and ends where an uninterrupted one does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flywheel import ModelError, Project
from flywheel.registry import load_artifact
from tests.factories import make_project


class Interrupt(Exception):
    pass


def _weights(project: Project, version: int) -> dict[str, torch.Tensor]:
    info = next(v for v in project.models() if v.version == version)
    return load_artifact(Path(info.artifact_dir))[0].state_dict()


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path: Path) -> None:
    config = {"epochs": 6, "patience": 6, "lr_schedule": "cosine", "augment": True}
    whole = make_project(tmp_path / "a", train=False, settings=config)
    whole.train()

    cut = make_project(tmp_path / "b", train=False, settings=config)

    def stop_after_three(report: object) -> None:
        if getattr(report, "epoch", 0) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        cut.train(on_epoch=stop_after_three)
    assert cut.has_interrupted_run()
    assert cut.models() == []
    resumed = cut.train(resume=True)
    assert resumed.model.metrics["resumed_from_epoch"] == 4
    assert resumed.model.metrics["epochs_run"] == 6
    assert not cut.has_interrupted_run()

    a, b = _weights(whole, 1), _weights(cut, 1)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    whole.close()
    cut.close()


def test_resume_refuses_another_runs_checkpoint(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", train=False, settings={"epochs": 4})

    def stop(report: object) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        project.train(on_epoch=stop)
    with pytest.raises(ModelError, match="belongs to another run"):
        project.train(project.train_config(seed=7), resume=True)
    project.close()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", train=False)
    with pytest.raises(ModelError, match="there is no interrupted run to resume"):
        project.train(resume=True)
    project.close()


def test_a_killed_cli_run_finishes_with_resume(tmp_path: Path) -> None:
    """Kill `flywheel train` mid-run (SIGKILL), then `flywheel train --resume` finishes it."""
    project = make_project(tmp_path / "p", train=False, settings={"epochs": 60, "patience": 60})
    root = str(project.settings.project_dir)
    project.close()
    exe = [sys.executable, "-c", "from flywheel.cli import main; main()"]
    proc = subprocess.Popen(
        [*exe, "train", "--project", root, "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = Path(root) / "checkpoints" / "current" / "state.json"
    try:
        # Poll for the first checkpoint, bounded; the whole run needs several seconds.
        deadline = time.monotonic() + 120
        while not state.exists():
            assert proc.poll() is None, "the training process ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    other = subprocess.run(
        [*exe, "train", "--project", root, "--resume", "--seed", "9"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert other.returncode == 1
    assert "belongs to another run" in " ".join(other.stderr.split())

    done = subprocess.run(
        [*exe, "train", "--project", root, "--resume", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model_version"] == 1
    assert result["metrics"]["resumed_from_epoch"] >= 2
    assert result["metrics"]["epochs_run"] == 60
    assert not state.exists()
