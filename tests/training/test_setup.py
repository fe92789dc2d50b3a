"""A run's config from the settings: an architecture's own training defaults stand in
for the settings nobody set, and never for one that was set (toml, environment, option)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel import Project, Settings
from flywheel.data.sources import DiabetesSource
from flywheel.models import arch_info
from flywheel.training.setup import train_config


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("setup") / "d"
    Project.init(root, DiabetesSource(), task="regression").close()
    return root


def test_the_tabular_mlp_trains_with_its_own_defaults_where_none_were_set(
    diabetes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = arch_info("mlp_regressor").training
    assert tuned == {"epochs": 300, "patience": 30, "weight_decay": 0.1, "dropout": 0.1}
    config = train_config(Settings.load(diabetes))
    assert (config.epochs, config.patience, config.weight_decay, config.dropout) == (
        300, 30, 0.1, 0.1,
    )  # fmt: skip
    # A setting the user gave wins: flywheel.toml, the environment, an option.
    with (diabetes / "flywheel.toml").open("a") as f:
        f.write("patience = 4\n")
    monkeypatch.setenv("FLYWHEEL_WEIGHT_DECAY", "0.01")
    config = train_config(Settings.load(diabetes), epochs=12)
    assert (config.epochs, config.patience, config.weight_decay, config.dropout) == (
        12, 4, 0.01, 0.1,
    )  # fmt: skip


def test_an_image_project_keeps_the_settings_defaults(tmp_path: Path) -> None:
    from tests.factories import make_project

    project = make_project(tmp_path / "p", train=False, settings={})
    st = project.settings
    config = project.train_config()
    assert (config.patience, config.weight_decay) == (st.patience, st.weight_decay)
    assert arch_info("seed_cnn").training == {}
    project.close()
