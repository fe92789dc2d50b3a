"""The audio codec (WAV bytes → log-mel frames) and audio folder sources, on generated tones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from flywheel.data.audio import (
    DEFAULT_PATTERN,
    AudioCodec,
    AudioFolderSource,
    audio_shape,
    pattern_regex,
)
from flywheel.data.modalities import create_codec
from flywheel.errors import DataError, InputError

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
PARAMS = AudioCodec().infer([{"sample_rate": 8000, "seconds": 0.5}])


def tone(freq: float, seconds: float, rate: int = 8000, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(samples, rate))
    return path


# -- probe ---------------------------------------------------------------------------------


def test_probe_reports_rate_channels_duration_and_rms() -> None:
    probe = AudioCodec().probe(wav_bytes(tone(440, 0.5, amp=0.5)))
    assert probe["sample_rate"] == 8000
    assert probe["channels"] == 1
    assert probe["seconds"] == pytest.approx(0.5)
    assert probe["rms"] == pytest.approx(0.5 / np.sqrt(2), abs=1e-3)
    assert AudioCodec().outlier_score(probe) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"hello, this is not a WAV file", "not a readable WAV file: Format not recognised"),
        (b"RIFF\x00\x00\x00\x00WAVE", "not a readable WAV file"),
        (wav_bytes(np.zeros(0, dtype=np.float32)), "no samples"),
        (
            wav_bytes(np.array([0.1, np.nan, 0.2], dtype=np.float32), subtype="FLOAT"),
            "NaN or infinite",
        ),
    ],
    ids=["empty", "text", "truncated-header", "zero-length", "nan"],
)
def test_probe_and_decode_reject_unusable_input_with_input_error(
    content: bytes, message: str
) -> None:
    codec = AudioCodec()
    with pytest.raises(InputError, match=message):
        codec.probe(content)
    with pytest.raises(InputError, match=message):
        codec.decode(content, PARAMS)


def test_the_audio_codec_is_found_by_name() -> None:
    codec = create_codec("audio")
    assert isinstance(codec, AudioCodec)
    assert codec.modality == "audio"


# -- infer ---------------------------------------------------------------------------------


def test_infer_takes_the_common_rate_and_the_95th_percentile_duration_rounded_up() -> None:
    seconds = np.linspace(0.1, 0.6, 101)  # 95th percentile 0.575 → 0.6
    probes = [
        {"sample_rate": 16000 if i < 10 else 8000, "seconds": s} for i, s in enumerate(seconds)
    ]
    params = AudioCodec().infer(probes)
    assert params == {
        "kind": "audio",
        "sample_rate": 8000,
        "seconds": 0.6,
        "n_mels": 40,
        "n_fft": 256,
        "hop_length": 80,
        "features": "log-mel",
    }
    assert audio_shape(params) == (1 + 4800 // 80, 40)


@pytest.mark.parametrize(
    ("seconds", "expected"), [(0.7, 0.7), (0.70001, 0.75), (0.01, 0.05), (42.0, 10.0)]
)
def test_infer_rounds_the_duration_up_to_50_ms_and_caps_it_at_10_s(
    seconds: float, expected: float
) -> None:
    assert AudioCodec().infer([{"sample_rate": 8000, "seconds": seconds}])["seconds"] == expected


def test_infer_at_16_khz_keeps_10_ms_frames() -> None:
    params = AudioCodec().infer([{"sample_rate": 16000, "seconds": 1.0}])
    assert (params["n_fft"], params["hop_length"]) == (512, 160)
    assert audio_shape(params) == (101, 40)


def test_infer_of_no_inputs_raises_data_error() -> None:
    with pytest.raises(DataError, match="no inputs"):
        AudioCodec().infer([])


# -- decode --------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.05, 0.3, 0.5, 2.0])
def test_decode_gives_float32_frames_of_the_same_shape_for_any_duration(seconds: float) -> None:
    x = AudioCodec().decode(wav_bytes(tone(440, seconds)), PARAMS)
    assert x.shape == audio_shape(PARAMS) == (51, 40)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()


def test_decode_normalises_each_utterance() -> None:
    codec = AudioCodec()
    # longer than the 0.5 s the model takes: every frame holds sound, none is padding
    loud = codec.decode(wav_bytes(tone(440, 0.6, amp=0.8)), PARAMS)
    quiet = codec.decode(wav_bytes(tone(440, 0.6, amp=0.4)), PARAMS)
    for x in (loud, quiet):
        assert x.mean() == pytest.approx(0.0, abs=1e-5)
        assert x.std() == pytest.approx(1.0, abs=1e-4)
    # a gain shifts the log (up to the floor under silent bands), which normalising removes
    assert np.corrcoef(loud.ravel(), quiet.ravel())[0, 1] > 0.99


def test_decode_is_deterministic() -> None:
    content = wav_bytes(tone(440, 0.4) + tone(1000, 0.4, amp=0.2))
    codec = AudioCodec()
    np.testing.assert_array_equal(codec.decode(content, PARAMS), codec.decode(content, PARAMS))
    np.testing.assert_array_equal(
        codec.decode_batch([content, content], PARAMS)[1], codec.decode(content, PARAMS)
    )


def test_decode_separates_pitches() -> None:
    codec = AudioCodec()
    low = codec.decode(wav_bytes(tone(300, 0.5)), PARAMS).mean(axis=0)
    high = codec.decode(wav_bytes(tone(2000, 0.5)), PARAMS).mean(axis=0)
    assert low.argmax() < high.argmax()


def test_a_16_khz_file_is_resampled_to_the_models_8_khz() -> None:
    codec = AudioCodec()
    at_8k = codec.decode(wav_bytes(tone(440, 0.5, rate=8000), rate=8000), PARAMS)
    at_16k = codec.decode(wav_bytes(tone(440, 0.5, rate=16000), rate=16000), PARAMS)
    assert at_16k.shape == at_8k.shape == audio_shape(PARAMS)
    assert np.corrcoef(at_8k.ravel(), at_16k.ravel())[0, 1] > 0.95


def test_stereo_is_mixed_to_mono() -> None:
    left, right = tone(440, 0.5, amp=0.4), tone(1200, 0.5, amp=0.2)
    stereo = wav_bytes(np.stack([left, right], axis=1), subtype="FLOAT")
    mono = wav_bytes((left + right) / np.float32(2), subtype="FLOAT")
    codec = AudioCodec()
    assert codec.probe(stereo)["channels"] == 2
    np.testing.assert_allclose(codec.decode(stereo, PARAMS), codec.decode(mono, PARAMS), atol=1e-4)
    only_left = codec.decode(wav_bytes(left, subtype="FLOAT"), PARAMS)
    assert not np.allclose(codec.decode(stereo, PARAMS), only_left, atol=1e-2)


# -- sources -------------------------------------------------------------------------------


def test_class_folders_give_one_label_per_folder_and_no_user(tmp_path: Path) -> None:
    for label, freq in (("yes", 300.0), ("no", 900.0)):
        for n in (2, 1):
            write_wav(tmp_path / label / f"clip{n}.wav", tone(freq, 0.2))
    (tmp_path / "no" / "notes.txt").write_text("not audio")
    (tmp_path / ".hidden").mkdir()

    source = AudioFolderSource(tmp_path)
    examples = list(source)

    assert source.name == str(tmp_path.resolve())
    assert source.layout == "folders"
    assert [(e.source_path, e.label, e.user_id) for e in examples] == [
        ("no/clip1.wav", "no", None),
        ("no/clip2.wav", "no", None),
        ("yes/clip1.wav", "yes", None),
        ("yes/clip2.wav", "yes", None),
    ]
    assert examples[0].content == (tmp_path / "no" / "clip1.wav").read_bytes()
    assert [e.source_path for e in AudioFolderSource(tmp_path)] == [e.source_path for e in examples]


def test_flat_files_are_labelled_by_the_default_pattern(tmp_path: Path) -> None:
    for name in ("1_theo_0.wav", "0_george_10.wav", "0_george_2.wav", "1_george_0.wav"):
        write_wav(tmp_path / name, tone(440, 0.1))
    (tmp_path / "README.md").write_text("ignored")

    examples = list(AudioFolderSource(tmp_path))

    assert [(e.source_path, e.label, e.user_id) for e in examples] == [
        ("0_george_10.wav", "0", "george"),
        ("0_george_2.wav", "0", "george"),
        ("1_george_0.wav", "1", "george"),
        ("1_theo_0.wav", "1", "theo"),
    ]


@pytest.mark.parametrize(
    ("pattern", "name", "label", "user"),
    [
        ("{user}-{label}-{n}.wav", "ann-cat-3.wav", "cat", "ann"),
        ("{label}.{n}.wav", "dog.12.wav", "dog", None),
        ("rec_{label}_by_{user}.wav", "rec_two_words_by_bo.wav", "two_words", "bo"),
    ],
)
def test_a_custom_pattern_names_label_and_user(
    tmp_path: Path, pattern: str, name: str, label: str, user: str | None
) -> None:
    write_wav(tmp_path / name, tone(440, 0.1))
    (example,) = AudioFolderSource(tmp_path, pattern=pattern)
    assert (example.label, example.user_id, example.source_path) == (label, user, name)


def test_files_that_do_not_match_the_pattern_are_an_error_listing_five(tmp_path: Path) -> None:
    write_wav(tmp_path / "0_george_0.wav", tone(440, 0.1))
    for i in range(7):
        write_wav(tmp_path / f"bad{i}.wav", tone(440, 0.1))
    with pytest.raises(DataError) as info:
        AudioFolderSource(tmp_path)
    message = str(info.value)
    assert "7 of 8" in message
    assert DEFAULT_PATTERN in message
    assert all(f"bad{i}.wav" in message for i in range(5))
    assert "bad5.wav" not in message
    assert "and 2 more" in message


def test_a_missing_folder_is_a_data_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        AudioFolderSource(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_a_folder_without_wavs_is_a_data_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("no audio")
    with pytest.raises(DataError, match=r"has no \.wav files") as info:
        AudioFolderSource(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_folder_with_both_layouts_is_a_data_error(tmp_path: Path) -> None:
    write_wav(tmp_path / "0_george_0.wav", tone(440, 0.1))
    write_wav(tmp_path / "yes" / "a.wav", tone(440, 0.1))
    with pytest.raises(DataError, match="both at its top level"):
        AudioFolderSource(tmp_path)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{user}_{n}.wav", "must contain"),
        ("{label}_{speaker}.wav", "unknown placeholder"),
        ("{label}_{label}.wav", "more than once"),
    ],
)
def test_a_bad_pattern_is_a_data_error(pattern: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        pattern_regex(pattern)


@pytest.fixture(scope="module")
def fsdd() -> Path:
    folder = DATASETS / "fsdd" / "recordings"
    if not folder.is_dir():
        pytest.skip(f"shared datasets not found at {folder}")
    return folder


@pytest.mark.datasets
def test_the_free_spoken_digit_dataset_reads_as_2500_examples_of_5_speakers(fsdd: Path) -> None:
    source = AudioFolderSource(fsdd)
    examples = list(source)
    assert len(examples) == 2500
    assert source.layout == "pattern"
    assert sorted({e.user_id for e in examples}) == [
        "george",
        "jackson",
        "lucas",
        "nicolas",
        "theo",
    ]
    assert sorted({e.label for e in examples}) == [str(d) for d in range(10)]
    assert all(e.content[:4] == b"RIFF" for e in examples)
    codec = AudioCodec()
    probes = [codec.probe(e.content) for e in examples[::250]]
    params = codec.infer(probes)
    assert params["sample_rate"] == 8000
    assert codec.decode(examples[0].content, params).shape == audio_shape(params)
