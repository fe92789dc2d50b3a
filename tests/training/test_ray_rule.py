"""When a run trains on Ray Train, and what is refused there, decided before any work and
without a cluster (``flywheel.scale.train.ray_trainer``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from flywheel.data import Arrays
from flywheel.errors import ConfigError, ModelError
from flywheel.scale.train import RayTrainer, fit_on_ray, ray_trainer
from flywheel.settings import Settings
from flywheel.training import TrainConfig, train_config

#: an address nothing listens at: the rule must decide without reaching it
NOWHERE = "127.0.0.1:1"


def test_ray_trains_only_runs_that_ask_for_more_workers_or_a_gpu(tmp_path: Path) -> None:
    plain = TrainConfig()
    assert ray_trainer(Settings(project_dir=tmp_path), plain) is None
    # ray_address alone (set for serving or batch scoring) leaves training here
    assert ray_trainer(Settings(project_dir=tmp_path, ray_address=NOWHERE), plain) is None
    two = Settings(project_dir=tmp_path, ray_address=NOWHERE, train_workers=2)
    assert ray_trainer(two, train_config(two)) == RayTrainer(two, 2, False)
    gpu = Settings(project_dir=tmp_path, ray_address=NOWHERE, train_use_gpu=True)
    assert ray_trainer(gpu, plain) == RayTrainer(gpu, 1, True)
    # --train-workers: the run's own count beats the setting's
    asked = Settings(project_dir=tmp_path, ray_address=NOWHERE)
    assert ray_trainer(asked, replace(plain, workers=3)) == RayTrainer(asked, 3, False)
    assert RayTrainer(asked, 3).record() == {"workers": 3, "use_gpu": False}


def test_workers_or_a_gpu_without_ray_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^train_workers = 2 needs Ray: set ray_address"):
        ray_trainer(Settings(project_dir=tmp_path), TrainConfig(workers=2))
    with pytest.raises(ConfigError, match=r"^train_use_gpu = true needs Ray: set ray_address"):
        ray_trainer(Settings(project_dir=tmp_path, train_use_gpu=True), TrainConfig())
    with pytest.raises(ConfigError, match="train_workers = 2 needs Ray"):
        Settings.load(tmp_path, train_workers=2)
    with pytest.raises(ValueError, match="workers must be >= 1; got 0"):
        TrainConfig(workers=0)


def test_the_setting_train_workers_is_the_runs_worker_count(tmp_path: Path) -> None:
    st = Settings(project_dir=tmp_path, ray_address=NOWHERE, train_workers=4)
    assert train_config(st).workers == 4
    assert train_config(st, workers=2).workers == 2


@pytest.mark.parametrize("use_gpu", [False, True])
def test_private_and_federated_runs_are_refused_on_ray_naming_why(
    tmp_path: Path, use_gpu: bool
) -> None:
    st = Settings(project_dir=tmp_path, ray_address=NOWHERE, train_use_gpu=use_gpu)
    workers = 1 if use_gpu else 2
    where = "1 worker, GPUs" if use_gpu else "2 workers"
    private = TrainConfig(dp_epsilon=3.0, workers=workers)
    with pytest.raises(ConfigError) as err:
        ray_trainer(st, private)
    assert str(err.value).startswith(
        f"a private (DP-SGD) run cannot train on Ray Train ({where}): user-level DP-SGD "
        "samples whole users, clips each one's gradient and adds one draw of noise"
    )
    assert str(err.value).endswith(
        "set train_workers = 1 and train_use_gpu = false to train it in this process"
    )
    federated = TrainConfig(federated_clients=3, workers=workers)
    refused = rf"^a federated run cannot train on Ray Train \({where}\): FedAvg's clients"
    with pytest.raises(ConfigError, match=refused):
        ray_trainer(st, federated)
    # in this process both train as ever
    assert ray_trainer(Settings(project_dir=tmp_path), replace(private, workers=1)) is None


def test_fit_on_ray_refuses_before_it_reaches_ray(tmp_path: Path) -> None:
    st = Settings(project_dir=tmp_path, ray_address=NOWHERE)
    rows = Arrays(x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int64), labels=["a"])
    kw = {"spec": None, "settings": st}
    with pytest.raises(ModelError, match=r"^there is no interrupted run to resume$"):
        fit_on_ray(nn.Linear(2, 1), rows, TrainConfig(workers=2), resume=True, **kw)
    with pytest.raises(ConfigError, match=r"^a private"):
        fit_on_ray(nn.Linear(2, 1), rows, TrainConfig(workers=2, dp_epsilon=1.0), **kw)
