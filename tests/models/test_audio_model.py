"""``lstm_audio``: seeded, strict on input, savable, and able to tell two tones apart."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from flywheel.data import Arrays
from flywheel.data.audio import AudioCodec, AudioFolderSource, audio_shape
from flywheel.errors import ModelError
from flywheel.models import ModelSpec, arch_info, create_model, default_hparams
from flywheel.models.audio import LSTMAudio
from flywheel.registry import load_artifact, save_artifact
from flywheel.training import TrainConfig, fit, predict_proba

LABELS = ("high", "low")
SHAPE = (21, 40)
SPEAKERS = ("ann", "bob", "cy", "dee")  # dee is held out
#: each class a band of pitches; each speaker shifts them a little
PITCH = {"low": (250.0, 450.0), "high": (1100.0, 1600.0)}


def _spec(shape: tuple[int, ...] = SHAPE, **hparams: Any) -> ModelSpec:
    return ModelSpec(
        arch="lstm_audio",
        task="audio-classification",
        input_shape=shape,
        labels=LABELS,
        hparams={**default_hparams("lstm_audio", shape), **hparams},
    )


def _seeded(spec: ModelSpec, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(spec)


def _toy_wavs(root: Path, per_class: int = 12, seed: int = 0) -> None:
    """``{label}_{speaker}_{n}.wav``: noisy tones of 0.15–0.3 s, one pitch band per label."""
    rng = np.random.default_rng(seed)
    rate = 8000
    for s, speaker in enumerate(SPEAKERS):
        for label, (lo, hi) in PITCH.items():
            for n in range(per_class):
                freq = rng.uniform(lo, hi) * (1 + 0.05 * s)
                t = np.arange(int(rng.uniform(0.15, 0.3) * rate)) / rate
                y = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * freq * t)
                y = y + 0.05 * rng.standard_normal(len(t))
                buf = io.BytesIO()
                sf.write(buf, y.astype(np.float32), rate, format="WAV", subtype="PCM_16")
                (root / f"{label}_{speaker}_{n}.wav").write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Arrays, Arrays, dict[str, Any]]:
    """(train on three speakers, test on the fourth, codec parameters)."""
    root = tmp_path_factory.mktemp("tones")
    _toy_wavs(root)
    examples = list(AudioFolderSource(root))
    codec = AudioCodec()
    params = codec.infer([codec.probe(e.content) for e in examples])
    x = codec.decode_batch([e.content for e in examples], params)
    y = np.array([LABELS.index(str(e.label)) for e in examples], dtype=np.int64)
    held = np.array([e.user_id == SPEAKERS[-1] for e in examples])
    return (
        Arrays(x=x[~held], y=y[~held], labels=list(LABELS)),
        Arrays(x=x[held], y=y[held], labels=list(LABELS)),
        params,
    )


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_lstm_audio_is_registered_for_audio_with_the_codecs_shape() -> None:
    info = arch_info("lstm_audio")
    assert (info.modality, info.objective) == ("audio", "classification")
    native = AudioCodec().infer([{"sample_rate": 8000, "seconds": 0.2}])
    params = info.preprocess(native, {})
    assert params == native
    assert params is not native
    assert info.input_shape(params) == audio_shape(native) == SHAPE
    assert info.defaults(SHAPE) == {"hidden": 128, "layers": 2, "dropout": 0.25}


def test_a_model_maps_a_batch_of_frames_to_one_logit_per_class() -> None:
    model = _seeded(_spec(), 0).eval()
    assert isinstance(model, LSTMAudio)
    with torch.no_grad():
        assert model(torch.zeros(3, *SHAPE)).shape == (3, len(LABELS))


def test_same_seed_gives_identical_weights() -> None:
    _assert_same_weights(_seeded(_spec(), 0), _seeded(_spec(), 0))
    other = _seeded(_spec(), 1).state_dict()
    assert any(not torch.equal(v, other[k]) for k, v in _seeded(_spec(), 0).state_dict().items())


def test_hyper_parameters_size_the_lstm() -> None:
    model = create_model(_spec(hidden=16, layers=1, dropout=0.5))
    assert isinstance(model, LSTMAudio)
    assert (model.lstm.hidden_size, model.lstm.num_layers) == (16, 1)
    assert model.head.in_features == 32


@pytest.mark.parametrize(
    "wrong", [(2, SHAPE[0] + 1, SHAPE[1]), (2, SHAPE[0], SHAPE[1] - 1), SHAPE, (2, 1, *SHAPE)]
)
def test_a_wrongly_shaped_input_raises_model_error_naming_the_expected_shape(
    wrong: tuple[int, ...],
) -> None:
    model = _seeded(_spec(), 0).eval()
    with pytest.raises(ModelError) as info, torch.no_grad():
        model(torch.zeros(wrong))
    assert f"(N, {SHAPE[0]}, {SHAPE[1]})" in str(info.value)
    assert str(wrong) in str(info.value)


def test_a_spec_that_is_not_frames_by_mels_raises_model_error() -> None:
    with pytest.raises(ModelError, match=r"\(frames, n_mels\)"):
        create_model(_spec((1, 8, 8)))


def test_it_learns_two_tones_and_tells_them_apart_for_an_unseen_speaker(
    toy: tuple[Arrays, Arrays, dict[str, Any]],
) -> None:
    train, test, params = toy
    shape = audio_shape(params)
    assert train.x.shape[1:] == shape
    torch.manual_seed(0)
    model = create_model(_spec(shape, hidden=32))
    config = TrainConfig(epochs=6, batch_size=32, learning_rate=3e-3, val_fraction=0.2, seed=0)

    result = fit(model, train, config)

    accuracy = float((predict_proba(model, test.x).argmax(axis=1) == test.y).mean())
    assert len(test) == 2 * 12
    assert result.best_val_accuracy >= 0.9
    assert accuracy >= 0.9


def test_save_and_load_artifact_round_trip_gives_identical_outputs(
    toy: tuple[Arrays, Arrays, dict[str, Any]], tmp_path: Path
) -> None:
    train, test, params = toy
    spec = ModelSpec(
        arch="lstm_audio",
        task="audio-classification",
        input_shape=audio_shape(params),
        labels=LABELS,
        hparams={"hidden": 16, "layers": 2, "dropout": 0.25},
        preprocessing=params,
    )
    model = _seeded(spec, 0)
    fit(model, train, TrainConfig(epochs=1, batch_size=16, seed=0))

    save_artifact(model, spec, tmp_path / "v1")
    loaded, loaded_spec = load_artifact(tmp_path / "v1")

    assert loaded_spec == ModelSpec.from_json(spec.to_json())
    assert loaded_spec.preprocessing == params
    assert not loaded.training
    _assert_same_weights(model, loaded)
    np.testing.assert_array_equal(predict_proba(loaded, test.x), predict_proba(model, test.x))
