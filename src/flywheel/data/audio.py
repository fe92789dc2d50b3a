"""Audio: WAV bytes → log-mel features ``[frames, n_mels]``, and folders of WAV files.

The codec reads any file soundfile reads (WAV above all), mixes it to mono,
resamples it to the model's rate, pads or crops it to a fixed duration and turns
it into a log-mel spectrogram normalised per utterance. Every input of a model
therefore has the same shape, ``audio_shape(params)``.

librosa and soundfile are imported when first needed, so that this module (and
flywheel) imports without the audio extra installed.
"""

from __future__ import annotations

import importlib
import io
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.codecs import Codec, register_codec
from flywheel.data.sources import AUDIO_SUFFIXES, RawExample
from flywheel.errors import DataError, InputError

__all__ = [
    "DEFAULT_PATTERN",
    "MAX_SECONDS",
    "N_MELS",
    "AudioCodec",
    "AudioFolderSource",
    "audio_shape",
    "pattern_regex",
]

#: file names of the flat layout: ``0_george_12.wav`` (label 0, user george)
DEFAULT_PATTERN = "{label}_{user}_{n}.wav"
#: the longest clip a model takes (longer inputs are cropped)
MAX_SECONDS = 10.0
N_MELS = 40
#: clip durations are rounded up to a multiple of this (seconds)
_STEP = 0.05
#: floor added to the mel power before the log
_LOG_FLOOR = 1e-6
#: the shortest analysis window (seconds); n_fft is the next power of two
_WINDOW = 0.025
#: the hop between frames (seconds)
_HOP = 0.010


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise DataError(
            f"audio needs {name!r}, which is not installed: pip install 'flywheel-ml[audio]' "
            "(librosa and soundfile)"
        ) from exc


def _read(content: bytes) -> tuple[np.ndarray, int]:
    """Samples ``[frames, channels]`` (float32) and the sample rate; ``InputError`` if unusable."""
    if not content:
        raise InputError("audio input is empty (0 bytes); expected a WAV file")
    sf = _module("soundfile")
    try:
        data, rate = sf.read(io.BytesIO(content), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError ...
        # libsndfile's own words ("Format not recognised."), without the BytesIO's repr
        reason = getattr(exc, "error_string", None) or str(exc)
        raise InputError(
            f"audio input ({len(content)} bytes) is not a readable WAV file: {reason}"
        ) from None
    samples = np.asarray(data, dtype=np.float32)
    if samples.shape[0] == 0:
        raise InputError("audio input has no samples (a WAV file of zero length)")
    if not np.isfinite(samples).all():
        raise InputError("audio input has samples that are NaN or infinite")
    return samples, int(rate)


def _n_fft(rate: int) -> int:
    return 1 << max(6, math.ceil(math.log2(_WINDOW * rate)))


def _n_samples(params: dict[str, Any]) -> int:
    return max(1, round(float(params["seconds"]) * int(params["sample_rate"])))


def audio_shape(params: dict[str, Any]) -> tuple[int, int]:
    """``(frames, n_mels)`` of every input decoded with ``params``, without decoding one.

    librosa centres its frames: ``n`` samples give ``1 + n // hop_length`` frames.
    """
    return 1 + _n_samples(params) // int(params["hop_length"]), int(params["n_mels"])


def _round_up(seconds: float) -> float:
    steps = math.ceil(round(seconds / _STEP, 9))
    return round(max(1, steps) * _STEP, 2)


@register_codec("audio")
class AudioCodec(Codec):
    """WAV files → float32 ``[frames, n_mels]`` log-mel features, normalised per utterance."""

    modality = "audio"

    def probe(self, content: bytes) -> dict[str, Any]:
        samples, rate = _read(content)
        return {
            "sample_rate": rate,
            "channels": int(samples.shape[1]),
            "seconds": samples.shape[0] / rate,
            "rms": float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))),
        }

    def infer(self, probes: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not probes:
            raise DataError("cannot infer audio parameters from no inputs")
        counts = Counter(int(p["sample_rate"]) for p in probes)
        # The most common rate; a tie goes to the higher rate (it loses less).
        rate = max(counts, key=lambda r: (counts[r], r))
        p95 = float(np.percentile([float(p["seconds"]) for p in probes], 95))
        return {
            "kind": "audio",
            "sample_rate": rate,
            "seconds": min(MAX_SECONDS, _round_up(p95)),
            "n_mels": N_MELS,
            "n_fft": _n_fft(rate),
            "hop_length": max(1, round(_HOP * rate)),
            "features": "log-mel",
        }

    def warm_up(self, params: dict[str, Any]) -> None:
        """Decode a silent clip once: librosa's first call loads its dependencies (seconds)."""
        sf = _module("soundfile")
        buf = io.BytesIO()
        rate = int(params["sample_rate"])
        sf.write(buf, np.zeros(rate // 10, dtype=np.float32), rate, format="WAV")
        self.decode(buf.getvalue(), params)

    def decode(self, content: bytes, params: dict[str, Any]) -> np.ndarray:
        samples, rate = _read(content)
        y = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
        target = int(params["sample_rate"])
        librosa = _module("librosa")
        if rate != target:
            y = np.asarray(librosa.resample(y, orig_sr=rate, target_sr=target), dtype=np.float32)
        n = _n_samples(params)
        length = min(len(y), n)
        y = np.pad(y[:n], (0, n - length))
        hop = int(params["hop_length"])
        mel = librosa.feature.melspectrogram(
            y=y, sr=target, n_fft=int(params["n_fft"]), hop_length=hop, n_mels=int(params["n_mels"])
        )
        feats = np.log(_LOG_FLOOR + mel.T.astype(np.float64))
        # Mean and variance of the frames centred on the recording (not on its padding),
        # so that a clip's features do not depend on how much padding it got.
        held = feats[: 1 + length // hop]
        std = float(held.std())
        out = (feats - held.mean()) / (std if std > 1e-8 else 1.0)
        return np.ascontiguousarray(out, dtype=np.float32)

    def outlier_score(self, probe: dict[str, Any]) -> float | None:
        return float(probe["seconds"])


_FIELDS = {"label": r"(?P<label>.+?)", "user": r"(?P<user>.+?)", "n": r"(?P<n>\d+)"}


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a file-name pattern with ``{label}``, ``{user}`` and ``{n}`` placeholders."""
    parts = re.split(r"(\{[^{}]*\})", pattern)
    seen: set[str] = set()
    out: list[str] = []
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name not in _FIELDS:
                raise DataError(
                    f"file-name pattern {pattern!r} has an unknown placeholder {part}; "
                    "use {label}, {user} and {n}"
                )
            if name in seen:
                raise DataError(f"file-name pattern {pattern!r} has {part} more than once")
            seen.add(name)
            out.append(_FIELDS[name])
        else:
            out.append(re.escape(part))
    if "label" not in seen:
        raise DataError(f"file-name pattern {pattern!r} must contain {{label}}")
    return re.compile("".join(out))


def _is_wav(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_SUFFIXES


class AudioFolderSource:
    """A folder of WAV files, in one of two layouts.

    * class folders: ``<root>/<label>/*.wav`` (no user);
    * flat: ``<root>/*.wav`` named by ``pattern``, by default ``{label}_{user}_{n}.wav``
      (the Free Spoken Digit Dataset's ``0_george_12.wav``); every WAV must match it.

    Files are read in sorted order, by label folder and then by name.
    """

    def __init__(self, root: str | Path, *, pattern: str = DEFAULT_PATTERN) -> None:
        self.root = Path(root).expanduser().resolve()
        self.name = str(self.root)
        self.pattern = pattern
        if not self.root.is_dir():
            raise DataError(
                f"audio folder {self.name!r} does not exist or is not a folder", path=self.root
            )
        flat = sorted(p for p in self.root.iterdir() if _is_wav(p))
        folders = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        nested = [(f, d.name) for d in folders for f in sorted(d.iterdir()) if _is_wav(f)]
        #: (file, label, user) in the order the source yields them
        self.files: list[tuple[Path, str, str | None]]
        if flat and nested:
            raise DataError(
                f"audio folder {self.name!r} holds WAV files both at its top level "
                f"({len(flat)}) and in subfolders ({len(nested)}); use one layout: class "
                "subfolders, or files named like "
                f"{pattern!r}",
                path=self.root,
            )
        if nested:
            self.layout = "folders"
            self.files = [(f, label, None) for f, label in nested]
        elif flat:
            self.layout = "pattern"
            self.files = self._match(flat)
        else:
            raise DataError(
                f"audio folder {self.name!r} has no {'/'.join(AUDIO_SUFFIXES)} files, neither "
                "in class subfolders nor at its top level",
                path=self.root,
            )
        self.labels = sorted({label for _, label, _ in self.files})

    def _match(self, files: list[Path]) -> list[tuple[Path, str, str | None]]:
        regex = pattern_regex(self.pattern)
        out: list[tuple[Path, str, str | None]] = []
        bad: list[str] = []
        for f in files:
            m = regex.fullmatch(f.name)
            if m is None:
                bad.append(f.name)
                continue
            out.append((f, m.group("label"), m.groupdict().get("user")))
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise DataError(
                f"{len(bad)} of {len(files)} WAV files in {self.name!r} do not match the "
                f"file-name pattern {self.pattern!r}: {', '.join(bad[:5])}{more}",
                path=self.root,
            )
        return out

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[RawExample]:
        for f, label, user in self.files:
            yield RawExample(
                f.read_bytes(),
                label,
                user_id=user,
                source_path=f.relative_to(self.root).as_posix(),
            )
