"""Codecs: how one modality's stored bytes become a model's input array.

Every example is stored as bytes in the blob folder (an image file, a WAV file,
UTF-8 text, or a JSON object of tabular features). A codec validates those bytes
(``probe``), summarises a dataset's native form (``infer``), and turns bytes into
a float or integer array with the parameters a model version recorded
(``decode``). Codecs are registered by name (``register_codec``); ``flywheel.data.modalities``
imports every modality and creates them: ``create_codec("image")``.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from flywheel.data.images import ImagePreprocessing, average_hash, decode_image, probe_image
from flywheel.errors import InputError

__all__ = [
    "Codec",
    "ImageCodec",
    "TabularCodec",
    "known_codecs",
    "lookup_codec",
    "register_codec",
    "tabular_bytes",
]


class Codec(ABC):
    """Bytes in, arrays out, for one modality."""

    modality: ClassVar[str]

    @abstractmethod
    def probe(self, content: bytes) -> dict[str, Any]:
        """Validate one stored input; return facts about it. Raises ``InputError``."""

    @abstractmethod
    def infer(self, probes: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The native preprocessing parameters of a dataset, from its probes."""

    @abstractmethod
    def decode(self, content: bytes, params: dict[str, Any]) -> np.ndarray:
        """One input as the array a model with these preprocessing ``params`` takes."""

    def fingerprint(self, content: bytes, probe: dict[str, Any]) -> str | None:
        """A key equal for near-duplicates (None: this modality has none)."""
        return None

    def outlier_score(self, probe: dict[str, Any]) -> float | None:
        """One number per input whose extreme values mark an outlier (None: not scored)."""
        return None

    def decode_batch(self, contents: Sequence[bytes], params: dict[str, Any]) -> np.ndarray:
        return np.stack([self.decode(c, params) for c in contents])

    def warm_up(self, params: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Load what the first ``decode`` would (a server calls this before it swaps a model in)."""


_CODECS: dict[str, Callable[[], Codec]] = {}


def register_codec(name: str) -> Callable[[type[Codec]], type[Codec]]:
    def deco(cls: type[Codec]) -> type[Codec]:
        _CODECS[name] = cls
        return cls

    return deco


def known_codecs() -> list[str]:
    return sorted(_CODECS)


def lookup_codec(name: str) -> Codec:
    """A fresh codec of a registered modality (``flywheel.data.modalities.create_codec``
    registers every modality first)."""
    if name not in _CODECS:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(known_codecs())}")
    return _CODECS[name]()


@register_codec("image")
class ImageCodec(Codec):
    """PNG/JPEG/... files → float32 ``[C, H, W]`` in ``[0, 1]``."""

    modality = "image"

    def probe(self, content: bytes) -> dict[str, Any]:
        return probe_image(content)

    def infer(self, probes: Sequence[dict[str, Any]]) -> dict[str, Any]:
        modes = {p["mode"] for p in probes}
        (h, w), _ = Counter((p["height"], p["width"]) for p in probes).most_common(1)[0]
        return {"kind": "image", "mode": "L" if modes == {"L"} else "RGB", "height": h, "width": w}

    def decode(self, content: bytes, params: dict[str, Any]) -> np.ndarray:
        return decode_image(content, ImagePreprocessing.from_json(params))

    def fingerprint(self, content: bytes, probe: dict[str, Any]) -> str | None:
        return average_hash(content)

    def outlier_score(self, probe: dict[str, Any]) -> float | None:
        return float(probe["mean"])


def tabular_bytes(features: dict[str, float]) -> bytes:
    """The stored form of one tabular row: canonical JSON."""
    return json.dumps({"features": features}, sort_keys=True, separators=(",", ":")).encode()


def _features(content: bytes) -> dict[str, float]:
    try:
        obj = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"tabular input is not JSON: {exc}") from None
    feats = obj.get("features") if isinstance(obj, dict) else None
    if not isinstance(feats, dict) or not feats:
        raise InputError('tabular input must be {"features": {name: number, ...}}')
    out: dict[str, float] = {}
    for k, v in feats.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise InputError(f"feature {k!r} must be a finite number; got {v!r}")
        out[str(k)] = float(v)
    return out


@register_codec("tabular")
class TabularCodec(Codec):
    """``{"features": {...}}`` → float32 ``[n_features]``, standardised with training statistics."""

    modality = "tabular"

    def probe(self, content: bytes) -> dict[str, Any]:
        feats = _features(content)
        return {"features": feats}

    def infer(self, probes: Sequence[dict[str, Any]]) -> dict[str, Any]:
        columns = list(probes[0]["features"])
        for i, p in enumerate(probes):
            if set(p["features"]) != set(columns):
                raise InputError(
                    f"row {i} has features {sorted(p['features'])}; expected {sorted(columns)}"
                )
        table = np.array([[p["features"][c] for c in columns] for p in probes], dtype=np.float64)
        std = table.std(axis=0)
        return {
            "kind": "tabular",
            "columns": columns,
            "mean": table.mean(axis=0).tolist(),
            # A constant column keeps scale 1 rather than dividing by zero.
            "std": np.where(std > 0, std, 1.0).tolist(),
        }

    def decode(self, content: bytes, params: dict[str, Any]) -> np.ndarray:
        feats = _features(content)
        columns: list[str] = params["columns"]
        missing = [c for c in columns if c not in feats]
        unknown = [c for c in feats if c not in columns]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unknown:
                parts.append(f"unknown {unknown}")
            raise InputError(
                f"features do not match the model's columns {columns}: {'; '.join(parts)}"
            )
        x = np.array([feats[c] for c in columns], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            z = ((x - np.array(params["mean"])) / np.array(params["std"])).astype(np.float32)
        if not np.isfinite(z).all():  # beyond what a float32 holds once standardised
            far = [c for c, v in zip(columns, z, strict=True) if not np.isfinite(v)]
            raise InputError(f"features {far} are out of range for the model (too large)")
        return z

    def fingerprint(self, content: bytes, probe: dict[str, Any]) -> str | None:
        rounded = {k: round(v, 6) for k, v in probe["features"].items()}
        return hashlib.sha256(json.dumps(rounded, sort_keys=True).encode()).hexdigest()[:16]
