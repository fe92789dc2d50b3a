"""The architecture contract: every arch in the zoo is seeded, savable, and strict on input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from flywheel.errors import ConfigError, ModelError
from flywheel.models import ModelSpec, arch_info, create_model, default_hparams, known_archs
from flywheel.registry import SPEC, WEIGHTS, load_artifact, save_artifact
from flywheel.testing import CLAUSES, LABELS, Check, architecture_checks

#: every architecture of the zoo, on each sample dataset of its modality
ZOO = [name for name in known_archs() if not arch_info(name).origin]


def _spec(arch: str, shape: tuple[int, int, int], **hparams: object) -> ModelSpec:
    return ModelSpec(
        arch=arch,
        task="image-classification",
        input_shape=shape,
        labels=LABELS,
        hparams={**default_hparams(arch, shape), **hparams},
    )


def _seeded_model(spec: ModelSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(spec)


def test_the_zoo_holds_the_seed_models() -> None:
    assert set(ZOO) >= {"seed_cnn", "cnn32", "lstm_audio", "text_minilm", "mlp_regressor"}


@pytest.mark.parametrize("check", [c for arch in ZOO for c in architecture_checks(arch)], ids=str)
def test_every_zoo_architecture_keeps_the_public_contract(check: Check) -> None:
    """The contract a plugin's author runs (``flywheel.testing``) is the zoo's own."""
    skipped = check()
    if skipped:
        assert check.clause == "onnx_export" and arch_info(check.arch).onnx_check is False
        pytest.skip(skipped)


def test_the_contract_checks_every_clause_on_every_sample() -> None:
    checks = architecture_checks("seed_cnn")
    assert [c.clause for c in checks if c.sample == 0] == list(CLAUSES)
    assert {c.sample for c in checks} == {0, 1}  # the zoo's two image samples, L and RGB


def test_an_unknown_arch_is_a_config_error_listing_the_known_ones() -> None:
    for call in (
        lambda: create_model(_spec_unchecked("resnet9000")),
        lambda: default_hparams("resnet9000", (1, 8, 8)),
    ):
        with pytest.raises(ConfigError, match="unknown architecture 'resnet9000'") as info:
            call()
        for name in known_archs():
            assert name in str(info.value)
    with pytest.raises(ConfigError, match="'cnn23'; did you mean 'cnn32'"):
        default_hparams("cnn23", (1, 8, 8))


def _spec_unchecked(arch: str) -> ModelSpec:
    return ModelSpec(arch=arch, task="image-classification", input_shape=(1, 8, 8), labels=LABELS)


@pytest.mark.parametrize(
    ("shape", "padding"),
    [((1, 8, 8), "same"), ((3, 15, 40), "same"), ((1, 16, 16), "valid"), ((3, 64, 64), "valid")],
)
def test_seed_cnn_default_padding_depends_on_the_input_size(
    shape: tuple[int, int, int], padding: str
) -> None:
    hparams = default_hparams("seed_cnn", shape)
    assert hparams["padding"] == padding
    model = create_model(_spec("seed_cnn", shape)).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, *shape)).shape == (2, len(LABELS))


@pytest.mark.parametrize(
    ("size", "padding"), [(8, "valid"), (9, "valid"), (6, "valid"), (2, "same")]
)
def test_an_input_too_small_for_the_padding_raises_model_error(size: int, padding: str) -> None:
    with pytest.raises(ModelError, match=f"{size}x{size} is too small"):
        create_model(_spec("seed_cnn", (1, size, size), padding=padding))


@pytest.fixture(scope="function")
def saved(tmp_path: Path) -> Path:
    spec = _spec("seed_cnn", (1, 8, 8))
    folder = tmp_path / "v1"
    save_artifact(_seeded_model(spec, 0), spec, folder)
    return folder


class _Trap:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x01 not safetensors", b"{}"], ids=["empty", "garbage", "json"]
)
def test_load_artifact_with_corrupt_weights_raises_model_error(saved: Path, content: bytes) -> None:
    (saved / WEIGHTS).write_bytes(content)
    with pytest.raises(ModelError, match="cannot be loaded") as info:
        load_artifact(saved)
    assert str(saved) in str(info.value)


def test_load_artifact_never_unpickles_the_weights(saved: Path, tmp_path: Path) -> None:
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Trap(armed)))
    assert armed.exists()  # the trap works when unpickled
    marker = tmp_path / "unpickled"
    (saved / WEIGHTS).write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_artifact(saved)
    assert not marker.exists()


def test_load_artifact_with_weights_of_another_shape_raises_model_error(
    saved: Path, tmp_path: Path
) -> None:
    other = _spec("seed_cnn", (1, 8, 8), dense=16)
    save_artifact(_seeded_model(other, 0), other, tmp_path / "other")
    (saved / WEIGHTS).write_bytes((tmp_path / "other" / WEIGHTS).read_bytes())
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_artifact(saved)


def test_load_artifact_with_a_missing_file_raises_model_error(saved: Path) -> None:
    (saved / WEIGHTS).unlink()
    with pytest.raises(ModelError, match="is incomplete"):
        load_artifact(saved)


def test_load_artifact_with_a_corrupt_spec_raises_model_error(saved: Path) -> None:
    (saved / SPEC).write_text("{not json")
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_artifact(saved)
    (saved / SPEC).write_text(json.dumps({"arch": "seed_cnn"}))
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_artifact(saved)
