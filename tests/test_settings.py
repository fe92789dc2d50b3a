"""Settings: defaults, flywheel.toml, FLYWHEEL_* variables, and refusals as ConfigError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from flywheel.errors import ConfigError
from flywheel.settings import CONFIG_FILE, Settings, is_loopback


@pytest.fixture(scope="function")
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder, with no FLYWHEEL_* variable and another working directory."""
    for name in list(os.environ):
        if name.upper().startswith("FLYWHEEL_"):
            monkeypatch.delenv(name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder


def _write_toml(folder: Path, text: str) -> None:
    (folder / CONFIG_FILE).write_text(text)


def test_defaults(project_dir: Path) -> None:
    s = Settings.load(project_dir)
    assert s.project_dir == project_dir.resolve()
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.db_url == f"sqlite:///{project_dir.resolve() / 'flywheel.db'}"
    assert s.blobs == project_dir.resolve() / "blobs"
    assert s.models_dir == project_dir.resolve() / "models"
    assert s.gate_margin == 0.0
    assert s.requires_keys is False


def test_project_dir_defaults_to_the_working_directory(project_dir: Path) -> None:
    assert Settings.load().project_dir == Path.cwd().resolve()


def test_flywheel_toml_in_the_project_dir_is_read(project_dir: Path) -> None:
    _write_toml(project_dir, 'port = 8123\nhost = "0.0.0.0"\ngate_margin = 0.02\nepochs = 4\n')
    s = Settings.load(project_dir)
    assert (s.port, s.host, s.gate_margin, s.epochs) == (8123, "0.0.0.0", 0.02, 4)


def test_flywheel_toml_in_the_working_directory_is_not_read_for_another_project(
    project_dir: Path,
) -> None:
    _write_toml(Path.cwd(), "port = 8123\n")
    assert Settings.load(project_dir).port == 8000


def test_project_dir_from_the_environment_finds_its_toml(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_toml(project_dir, "port = 8124\n")
    monkeypatch.setenv("FLYWHEEL_PROJECT_DIR", str(project_dir))
    s = Settings.load()
    assert s.project_dir == project_dir.resolve()
    assert s.port == 8124


def test_an_environment_variable_overrides_the_toml(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_toml(project_dir, "port = 8123\nepochs = 4\n")
    monkeypatch.setenv("FLYWHEEL_PORT", "9001")
    s = Settings.load(project_dir)
    assert s.port == 9001
    assert s.epochs == 4  # the toml still counts for what the environment leaves alone


def test_keyword_arguments_override_the_environment(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_PORT", "9001")
    assert Settings.load(project_dir, port=9002).port == 9002


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("port = -1\n", "port"),
        ("port = 70000\n", "port"),
        ("gate_margin = 1.5\n", "gate_margin"),
        ("epochs = 0\n", "epochs"),
        ('port = "eighty"\n', "port"),
        ('colour = "red"\n', "colour"),
    ],
)
def test_an_invalid_toml_value_raises_config_error_naming_the_field(
    project_dir: Path, toml: str, field: str
) -> None:
    _write_toml(project_dir, toml)
    with pytest.raises(
        ConfigError, match=rf"^invalid settings: (unknown setting )?'?{field}\b"
    ) as e:
        Settings.load(project_dir)
    assert str(project_dir / "flywheel.toml") in str(e.value)  # where the value came from


def test_an_invalid_environment_value_raises_config_error_naming_the_field(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_PORT", "-1")
    with pytest.raises(
        ConfigError,
        match=r"^invalid settings: port = '-1' \(from the environment variable FLYWHEEL_PORT\): ",
    ):
        Settings.load(project_dir)


def test_an_unknown_toml_setting_gets_a_did_you_mean(project_dir: Path) -> None:
    _write_toml(project_dir, "epochz = 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown setting 'epochz' in .*; did you mean 'epochs'\?"
    ):
        Settings.load(project_dir)


def test_an_unknown_keyword_raises_config_error_naming_it(project_dir: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown setting 'bogus' given as an option \(README: Configuration\)"
    ):
        Settings.load(project_dir, bogus=1)


def test_malformed_toml_raises_config_error(project_dir: Path) -> None:
    _write_toml(project_dir, "port = = 3\n[unclosed\n")
    with pytest.raises(ConfigError, match=f"^cannot read {CONFIG_FILE}: "):
        Settings.load(project_dir)


def test_settings_are_frozen(project_dir: Path) -> None:
    s = Settings.load(project_dir)
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("host", "requires_keys"),
    [
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("127.0.0.2", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.10", True),
        ("example.com", True),
    ],
)
def test_requires_keys_beyond_loopback(project_dir: Path, host: str, requires_keys: bool) -> None:
    assert Settings.load(project_dir, host=host).requires_keys is requires_keys
    assert is_loopback(host) is not requires_keys


def test_the_per_class_gate_check_can_be_turned_off_in_toml(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project_dir / "flywheel.toml").write_text('gate_class_margin = "off"\n')
    assert Settings.load(project_dir).gate_class_margin is None
    monkeypatch.setenv("FLYWHEEL_GATE_CLASS_MARGIN", "0.2")
    assert Settings.load(project_dir).gate_class_margin == 0.2


def test_a_project_made_with_a_setting_turned_off_reads_it_back(tmp_path: Path) -> None:
    from tests.factories import make_project

    project = make_project(
        tmp_path / "p", train=False, settings={"gate_class_margin": None, "arch": None}
    )
    text = (tmp_path / "p" / "flywheel.toml").read_text()
    assert 'gate_class_margin = "off"' in text and "arch =" not in text
    assert Settings.load(tmp_path / "p").gate_class_margin is None
    project.close()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('gate_inconclusive = "maybe"\n', "gate_inconclusive"),
        ("gate_alpha = 0.7\n", "gate_alpha"),
        ("retrain_min_feedback = 0\n", "retrain_min_feedback"),
        ('prediction_log = "sometimes"\n', "prediction_log"),
        ("job_lease_s = 4\npolicy_check_s = 5\n", "job_lease_s .4. must be more than twice"),
    ],
)
def test_the_gate_policy_and_log_settings_are_checked(
    project_dir: Path, toml: str, message: str
) -> None:
    _write_toml(project_dir, toml)
    with pytest.raises(ConfigError, match=message):
        Settings.load(project_dir)


def test_the_served_name_is_the_folders_unless_given(tmp_path: Path) -> None:
    folder = tmp_path / "my project (v2)"
    folder.mkdir()
    assert Settings(project_dir=folder).served_name == "my-project--v2"
    assert Settings(project_dir=folder, model_name="digits").served_name == "digits"
    with pytest.raises(ValidationError, match="model_name"):
        Settings(project_dir=folder, model_name="a/b")


def test_ray_address_forms(tmp_path) -> None:
    for ok in ("local", "auto", "ray://head:10001", "10.0.0.5:6379", None):
        assert Settings(project_dir=tmp_path, ray_address=ok).ray_address == ok
    for bad in ("ray://head", "http://head:80", "head", "ray://:10001"):
        with pytest.raises(ValidationError, match="ray_address"):
            Settings(project_dir=tmp_path, ray_address=bad)


def test_train_workers_need_ray(tmp_path) -> None:
    with pytest.raises(ValidationError, match="train_workers = 2 needs Ray"):
        Settings(project_dir=tmp_path, train_workers=2)
    assert Settings(project_dir=tmp_path, train_workers=2, ray_address="local").train_workers == 2
