"""Training on Ray Train, on the session's real two-node cluster: one worker trains the
weights the plain fit loop trains, to the bit; two workers train through ``flywheel
train`` and ``retrain`` into the registry and the gate, their epochs in the job's log;
private and federated runs are refused by name before any work."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flywheel import Project
from flywheel.cli import app
from flywheel.data import digits_arrays, encode_png
from flywheel.errors import ConfigError
from flywheel.models import create_model
from flywheel.scale.train import RUNS, fit_on_ray, has_ray_run
from flywheel.settings import Settings
from flywheel.store.storage import project_storage
from flywheel.training import EpochReport, fit, model_spec, seed_everything
from tests.factories import make_project
from tests.on_ray.cluster import LocalCluster

runner = CliRunner()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The plain loop on one thread, as a Ray worker of one CPU runs: torch splits its
    sums by thread count, so only then can the bits agree."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Heard(list[EpochReport]):
    """An ``on_epoch`` that keeps the reports (and counts the mini-batches it hears)."""

    batches = 0

    def __call__(self, r: EpochReport) -> None:
        self.append(r)

    def on_batch(self, *_args: object) -> None:
        self.batches += 1


def test_one_ray_worker_trains_the_weights_of_the_plain_loop_to_the_bit(
    ray_cluster: LocalCluster, tmp_path: Path, one_thread: None
) -> None:
    project = make_project(tmp_path / "p", train=False)
    config = project.train_config(augment=True, epochs=3, patience=2)  # refit on: 2 phases
    info = project.dataset()
    spec = model_spec(project.task, info.preprocessing, info.labels, config)
    rows = project.dataset_arrays("train", config)
    rows.weights = np.linspace(0.5, 1.0, len(rows), dtype=np.float32)  # the weighted loss
    settings = Settings(project_dir=project.settings.project_dir, ray_address=ray_cluster.address)
    project.close()
    from flywheel.training import make_augment

    seed_everything(config.seed)
    plain = create_model(spec)
    start = copy.deepcopy(plain.state_dict())
    heard_plain = Heard()
    expected = fit(plain, rows, config, augment=make_augment("image"), on_epoch=heard_plain)

    on_ray = create_model(spec)
    on_ray.load_state_dict(start)
    heard = Heard()
    got = fit_on_ray(
        on_ray, rows, config, spec=spec, settings=settings, augment=make_augment("image"),
        on_epoch=heard,
    )  # fmt: skip

    mine, theirs = on_ray.state_dict(), plain.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), {
        k: float((mine[k] - theirs[k]).abs().max()) for k in mine
    }
    same = json.dumps([asdict(h) for h in expected.history])
    assert json.dumps([asdict(h) for h in got.history]) == same
    assert (got.best_epoch, got.epochs_run, got.refit_rows) == (
        expected.best_epoch, expected.epochs_run, expected.refit_rows,
    )  # fmt: skip
    # every epoch (search and refit) reached the caller, as the plain loop's do
    assert [r.line() for r in heard] == [r.line() for r in heard_plain]
    assert {r.phase for r in heard} == {"fit", "refit"} and heard.batches > 0
    # the checkpoints Ray Train kept are in the project's storage, safetensors and JSON
    keys = project_storage(settings).list(f"{RUNS}/current")
    assert has_ray_run(project_storage(settings))
    assert any(k.endswith("/state.safetensors") for k in keys)
    assert any(k.endswith("/model.safetensors") for k in keys)
    assert not [k for k in keys if k.endswith((".pt", ".pth", ".pkl", ".pickle"))]

    # resumed, a run that had finished gives its result again from storage, training nothing
    again, heard_again = create_model(spec), Heard()
    back = fit_on_ray(
        again, rows, config, spec=spec, settings=settings, resume=True, on_epoch=heard_again
    )
    assert all(torch.equal(again.state_dict()[k], mine[k]) for k in mine)
    assert json.dumps([asdict(h) for h in back.history]) == same and heard_again == []


def _answer(project: Project, first: int, n: int) -> None:
    images, labels = digits_arrays()
    for i in range(first, first + n):
        r = project.predict(encode_png(images[i]), user_id=f"u{i % 3}")
        project.record_feedback(r.prediction_id, label=str(labels[i]), user_id=f"u{i % 3}")


def _run(*args: str) -> dict:
    r = runner.invoke(app, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out: dict = json.loads(r.stdout)
    return out


def test_two_workers_train_and_retrain_from_the_cli_into_the_registry_and_the_gate(
    ray_cluster: LocalCluster, tmp_path: Path
) -> None:
    root = str(make_project(tmp_path / "p", train=False).settings.project_dir)
    t1 = _run("train", "-p", root, "--train-workers", "2", "--no-refit", "--json")
    assert (t1["model_version"], t1["promoted"]) == (1, True)
    assert t1["metrics"]["ray_train"] == {"workers": 2, "use_gpu": False}
    assert t1["metrics"]["epochs_run"] >= 1 and t1["accuracy"] > 0.3

    project = Project.open(root)
    v1 = project.version_info(1)
    assert v1.training_config["workers"] == 2
    job = project.jobs()[0]
    steps = [line for line in job["log"] if line.startswith("epoch ")]
    assert steps and steps[0].startswith("epoch 1/3: loss ")
    assert "training on Ray Train: 2 workers" in job["log"]
    assert "Ray Train: 2 workers ready on cpu" in job["log"]  # the workers' own word
    assert not has_ray_run(project_storage(project.settings))  # on record: dropped
    _answer(project, 1000, 30)
    project.close()

    r2 = _run("retrain", "-p", root, "--train-workers", "2", "--no-refit", "--json")
    assert r2["skipped"] is False and r2["model_version"] == 2
    assert r2["champion_version"] == 1 and r2["checks"]  # gated against v1
    assert r2["metrics"]["ray_train"]["workers"] == 2
    assert Project.open(root).version_info(2).parent == 1


def test_private_and_federated_runs_are_refused_on_ray_by_name(
    ray_cluster: LocalCluster, tmp_path: Path
) -> None:
    root = str(make_project(tmp_path / "p", train=False).settings.project_dir)
    r = runner.invoke(app, ["train", "-p", root, "--train-workers", "2", "--dp-epsilon", "4"])
    assert r.exit_code == 1 and isinstance(r.exception, ConfigError)
    private = "a private (DP-SGD) run cannot train on Ray Train (2 workers): user-level DP-SGD"
    assert str(r.exception).startswith(private)
    project = Project.open(root, ray_address=ray_cluster.address, train_workers=2)
    assert private in project.jobs()[0]["error"]  # the CLI's job says why
    with pytest.raises(ConfigError, match="a federated run cannot train on Ray Train"):
        project.train(replace(project.train_config(), federated_clients=2))
    assert project.models() == []  # nothing was trained
