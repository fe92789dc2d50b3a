"""Plugin architectures: found by entry point or ``package.module:factory``, held to the
zoo's contract (``flywheel.testing``), recorded in the spec, refused by name when broken."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from flywheel.errors import ConfigError, ContractError
from flywheel.models import arch_info, build_spec, create_model, known_archs
from flywheel.testing import CLAUSES, architecture_checks, check_architecture

NATIVE = {"kind": "image", "mode": "L", "height": 8, "width": 8}


def test_an_entry_point_is_an_architecture_by_its_name(plugin_site: Path) -> None:
    assert "tiny" in known_archs()
    info = arch_info("tiny")
    assert (info.name, info.modality, info.objective) == ("tiny", "image", "classification")
    assert info.origin == {
        "plugin": "tiny",
        "entry_point": "tinyplug.nets:build",
        "distribution": "tinyplug",
        "version": "0.1.0",
    }
    assert info.training == {"epochs": 6, "patience": 3}


def test_a_module_factory_reference_is_an_architecture(plugin_site: Path) -> None:
    info = arch_info("tinyplug.nets:build")
    assert info.name == "tinyplug.nets:build"
    assert info.origin == {
        "plugin": "tinyplug.nets:build",
        "distribution": "tinyplug",
        "version": "0.1.0",
    }
    assert "tinyplug.nets:build" not in known_archs()  # found by its reference, not listed


def test_the_spec_records_the_plugin_and_its_version(plugin_site: Path) -> None:
    spec = build_spec("tiny", task="image-classification", native=NATIVE, labels=["a", "b"])
    assert spec.plugin == arch_info("tiny").origin
    assert spec.to_json()["plugin"]["version"] == "0.1.0"
    zoo_spec = build_spec("seed_cnn", task="image-classification", native=NATIVE, labels=["a"])
    assert zoo_spec.plugin is None and "plugin" not in zoo_spec.to_json()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tinyplug.nope:build", "module 'tinyplug.nope' not found"),
        ("nopkg_xyz.nets:build", "module 'nopkg_xyz.nets' not found"),
        ("tinyplug.nets:nope", "module 'tinyplug.nets' has no attribute 'nope'"),
        ("tinyplug.nets:", "is not a reference of the form 'package.module:factory'"),
        ("tinyplug.nets:build:x", "is not a reference of the form 'package.module:factory'"),
    ],
)
def test_an_unusable_reference_names_its_problem(
    plugin_site: Path, name: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        arch_info(name)


@pytest.mark.parametrize(
    ("factory", "clause", "message"),
    [
        ("not_an_arch", "returns an ArchInfo", "returned dict, not a flywheel.models.ArchInfo"),
        ("wrong_modality", "modality", "modality 'video' is not one of audio, image"),
        ("TinyNet", "returns an ArchInfo", "the factory raised TypeError"),
    ],
)
def test_a_declaration_that_breaks_the_contract_names_the_clause(
    plugin_site: Path, factory: str, clause: str, message: str
) -> None:
    with pytest.raises(ContractError, match=message) as info:
        arch_info(f"tinyplug.nets:{factory}")
    assert info.value.clause == clause
    assert f"(architecture 'tinyplug.nets:{factory}' breaks the contract ({clause})" in (
        f"({info.value}"
    )


def test_the_public_contract_passes_on_the_plugin(plugin_site: Path) -> None:
    outcomes = check_architecture("tiny")
    assert {o.clause for o in outcomes} == set(CLAUSES)
    assert all(o.passed for o in outcomes), [o for o in outcomes if not o.passed]
    # two samples of the image modality (L 8x8 and RGB 32x32), the declaration once
    assert len(outcomes) == 1 + 2 * (len(CLAUSES) - 1)


def test_the_contract_takes_the_factory_itself(plugin_site: Path) -> None:
    factory = importlib.import_module("tinyplug.nets").build
    checks = architecture_checks(factory)
    assert {c.arch for c in checks} == {"tinyplug.nets:build"}
    assert check_architecture(factory, raise_on_failure=False)[0].passed is True


@pytest.mark.parametrize(
    ("factory", "clause", "message"),
    [
        ("broken_outputs", "output_shape", r"shape \(5, 4\); want \(5, 3\)"),
        ("lenient", "strict_input", "raised RuntimeError, not ModelError naming"),
    ],
)
def test_the_contract_fails_a_broken_plugin_naming_the_clause(
    plugin_site: Path, factory: str, clause: str, message: str
) -> None:
    name = f"tinyplug.nets:{factory}"
    with pytest.raises(ContractError, match=message) as info:
        check_architecture(name)
    assert info.value.clause == clause
    outcomes = check_architecture(name, raise_on_failure=False)
    failed = {o.clause for o in outcomes if o.passed is False}
    assert failed == {clause}
    assert {o.clause for o in outcomes if o.passed} == set(CLAUSES) - {clause}


def test_a_broken_declaration_is_one_failing_check(plugin_site: Path) -> None:
    (check,) = architecture_checks("tinyplug.nets:not_an_arch")
    assert str(check) == "tinyplug.nets:not_an_arch[0]:declares"
    with pytest.raises(ContractError, match=r"\(returns an ArchInfo\)"):
        check()
    (missing,) = architecture_checks("tinyplug.nope:build")
    with pytest.raises(ContractError, match=r"\(declares\): .*module 'tinyplug.nope' not found"):
        missing()


def test_a_plugin_missing_at_load_is_refused_naming_its_distribution(plugin_site: Path) -> None:
    spec = build_spec("tiny", task="image-classification", native=NATIVE, labels=["a", "b"])
    gone = type(spec)(**{**spec.__dict__, "arch": "tiny_uninstalled"})
    with pytest.raises(ConfigError) as info:
        create_model(gone)
    text = str(info.value)
    assert "trained with the plugin architecture 'tiny_uninstalled'" in text
    assert "needs the distribution 'tinyplug' 0.1.0: it is not installed here" in text


def test_onnx_is_no_architecture_to_build() -> None:
    with pytest.raises(ConfigError, match="'onnx' marks an imported ONNX model"):
        arch_info("onnx")
    assert "onnx" not in known_archs()
