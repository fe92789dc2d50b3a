"""The architecture contract: every arch in the zoo is seeded, savable, and strict on input."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from flywheel.data import Arrays
from flywheel.errors import ConfigError, ModelError
from flywheel.models import ModelSpec, arch_info, create_model, default_hparams, known_archs
from flywheel.registry import SPEC, WEIGHTS, load_artifact, save_artifact
from flywheel.training import TrainConfig, fit

LABELS = ("ant", "bee", "cat")
TWO_EPOCHS = TrainConfig(epochs=2, batch_size=8, val_fraction=0.25, patience=5, seed=0)

#: per modality, (native preprocessing of a dataset, user options) to build tiny models from
NATIVE: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {
    "image": [
        ({"kind": "image", "mode": "L", "height": 8, "width": 8}, {"image_size": 8}),
        ({"kind": "image", "mode": "RGB", "height": 10, "width": 12}, {"image_size": 32}),
    ],
    "audio": [
        (
            {
                "kind": "audio",
                "sample_rate": 8000,
                "seconds": 0.2,
                "n_mels": 40,
                "n_fft": 256,
                "hop_length": 80,
                "features": "log-mel",
            },
            {},
        )
    ],
    "text": [({"kind": "text", "tokenizer": "all-MiniLM-L6-v2", "max_length": 16}, {})],
    "tabular": [
        (
            {
                "kind": "tabular",
                "columns": ["a", "b", "c"],
                "mean": [0.0, 0.0, 0.0],
                "std": [1.0, 1.0, 1.0],
                "target_mean": 10.0,
                "target_std": 2.0,
            },
            {},
        )
    ],
}
CASES = [(arch, i) for arch in known_archs() for i in range(len(NATIVE[arch_info(arch).modality]))]


def _case_spec(arch: str, i: int) -> ModelSpec:
    info = arch_info(arch)
    native, options = NATIVE[info.modality][i]
    params = info.preprocess(native, options)
    shape = info.input_shape(params)
    hparams = info.defaults(shape)
    regression = info.objective == "regression"
    if regression:
        hparams |= {"y_mean": native["target_mean"], "y_std": native["target_std"]}
    return ModelSpec(
        arch=arch,
        task="regression" if regression else f"{info.modality}-classification",
        input_shape=shape,
        labels=() if regression else LABELS,
        hparams=hparams,
        preprocessing=params,
    )


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


def _tiny(spec: ModelSpec, n: int = 24) -> Arrays:
    rng = np.random.default_rng(0)
    if arch_info(spec.arch).modality == "text":
        x = np.ones((n, *spec.input_shape), dtype=np.int64)
        x[:, 0] = rng.integers(1000, 2000, (n, spec.input_shape[1]))
    else:
        x = rng.random((n, *spec.input_shape), dtype=np.float32)
    if not spec.labels:
        return Arrays(x=x, y=rng.normal(10, 2, n).astype(np.float32), labels=[])
    y = np.arange(n, dtype=np.int64) % len(LABELS)
    return Arrays(x=x, y=y, labels=list(LABELS))


def _outputs(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(torch.from_numpy(x))
    return out


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def case(request: pytest.FixtureRequest) -> ModelSpec:
    arch, i = request.param
    return _case_spec(arch, i)


def test_the_zoo_holds_the_seed_models() -> None:
    assert set(known_archs()) >= {"seed_cnn", "cnn32", "lstm_audio", "text_minilm", "mlp_regressor"}


def test_outputs_have_the_objectives_shape(case: ModelSpec) -> None:
    out = _outputs(_seeded_model(case, 0), _tiny(case, 5).x)
    assert tuple(out.shape) == ((5,) if not case.labels else (5, len(LABELS)))


def test_same_seed_gives_identical_initial_weights(case: ModelSpec) -> None:
    _assert_same_weights(_seeded_model(case, 0), _seeded_model(case, 0))


def test_same_seed_gives_identical_trained_weights(case: ModelSpec) -> None:
    data = _tiny(case)
    first, second = _seeded_model(case, 0), _seeded_model(case, 0)
    regression = not case.labels
    fit(first, data, TWO_EPOCHS, regression=regression)
    fit(second, data, TWO_EPOCHS, regression=regression)
    _assert_same_weights(first, second)


def test_save_and_load_artifact_round_trip(case: ModelSpec, tmp_path: Path) -> None:
    model = _seeded_model(case, 0)
    fit(model, _tiny(case), TWO_EPOCHS, regression=not case.labels)
    save_artifact(model, case, tmp_path / "v1")
    loaded, spec = load_artifact(tmp_path / "v1")
    assert spec == case
    x = _tiny(case, 7).x
    assert torch.equal(_outputs(model, x), _outputs(loaded, x))


@pytest.mark.parametrize("bad", ["last_axis", "no_batch"])
def test_a_wrongly_shaped_input_raises_model_error_naming_the_expected_shape(
    case: ModelSpec, bad: str
) -> None:
    model = _seeded_model(case, 0).eval()
    x = torch.from_numpy(_tiny(case, 2).x)
    x = torch.cat([x, x[..., :1]], dim=-1) if bad == "last_axis" else x[0]
    expected = ", ".join(map(str, case.input_shape))
    with pytest.raises(ModelError, match=re.escape(f"(N, {expected})")), torch.no_grad():
        model(x)


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
