"""The architecture contract: every arch in the zoo is seeded, savable, and strict on input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from flywheel.data import Arrays
from flywheel.errors import ModelError
from flywheel.models import ModelSpec, create_model, default_hparams, known_archs
from flywheel.registry import SPEC, WEIGHTS, load_artifact, save_artifact
from flywheel.training import TrainConfig, fit, predict_proba

LABELS = ("ant", "bee", "cat")
#: a square grayscale input and a non-square colour one, so height and width cannot swap
SHAPES = [(1, 8, 8), (3, 10, 12)]
TWO_EPOCHS = TrainConfig(epochs=2, batch_size=8, val_fraction=0.25, patience=5, seed=0)


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


def _tiny_data(shape: tuple[int, int, int], n: int = 24) -> Arrays:
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    y = np.arange(n, dtype=np.int64) % len(LABELS)
    return Arrays(x=x, y=y, labels=list(LABELS))


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module", params=known_archs())
def arch(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def shape(request: pytest.FixtureRequest) -> tuple[int, int, int]:
    value: tuple[int, int, int] = request.param
    return value


def test_the_zoo_is_not_empty() -> None:
    assert "seed_cnn" in known_archs()
    assert known_archs() == sorted(known_archs())


def test_same_seed_gives_identical_initial_weights(arch: str, shape: tuple[int, int, int]) -> None:
    spec = _spec(arch, shape)
    _assert_same_weights(_seeded_model(spec, 0), _seeded_model(spec, 0))
    other = _seeded_model(spec, 1).state_dict()
    assert any(not torch.equal(v, other[k]) for k, v in _seeded_model(spec, 0).state_dict().items())


def test_same_seed_gives_identical_trained_weights(arch: str, shape: tuple[int, int, int]) -> None:
    spec = _spec(arch, shape)
    data = _tiny_data(shape)
    first, second = _seeded_model(spec, 0), _seeded_model(spec, 0)
    initial = {k: v.clone() for k, v in first.state_dict().items()}

    r1 = fit(first, data, TWO_EPOCHS)
    r2 = fit(second, data, TWO_EPOCHS)

    _assert_same_weights(first, second)
    assert r1 == r2
    assert r1.epochs_run == 2
    assert any(not torch.equal(v, initial[k]) for k, v in first.state_dict().items())


def test_save_and_load_artifact_round_trip(
    arch: str, shape: tuple[int, int, int], tmp_path: Path
) -> None:
    spec = _spec(arch, shape)
    model = _seeded_model(spec, 0)
    data = _tiny_data(shape)
    fit(model, data, TWO_EPOCHS)

    digest = save_artifact(model, spec, tmp_path / "v1")
    loaded, loaded_spec = load_artifact(tmp_path / "v1")

    assert len(digest) == 64
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == sorted([SPEC, WEIGHTS])
    assert loaded_spec == ModelSpec.from_json(spec.to_json())
    assert not loaded.training
    _assert_same_weights(model, loaded)
    np.testing.assert_array_equal(predict_proba(loaded, data.x), predict_proba(model, data.x))


@pytest.mark.parametrize("bad", ["channels", "height", "width", "no_batch"])
def test_a_wrongly_shaped_input_raises_model_error_naming_the_expected_shape(
    arch: str, shape: tuple[int, int, int], bad: str
) -> None:
    model = _seeded_model(_spec(arch, shape), 0).eval()
    c, h, w = shape
    wrong = {
        "channels": (2, c + 1, h, w),
        "height": (2, c, h + 1, w),
        "width": (2, c, h, w - 1),
        "no_batch": (c, h, w),
    }[bad]
    with pytest.raises(ModelError) as info, torch.no_grad():
        model(torch.zeros(wrong))
    message = str(info.value)
    assert f"{c}, {h}, {w}" in message
    assert str(wrong) in message


def test_an_unknown_arch_raises_value_error_listing_the_known_ones() -> None:
    for call in (
        lambda: create_model(_spec_unchecked("resnet9000")),
        lambda: default_hparams("resnet9000", (1, 8, 8)),
    ):
        with pytest.raises(ValueError, match="unknown architecture 'resnet9000'") as info:
            call()
        for name in known_archs():
            assert name in str(info.value)


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
