"""Running an exported bundle with ONNX Runtime alone: no torch on this path.

from flywheel.export.runtime import OnnxBundle
bundle = OnnxBundle.load("bundle/")
bundle.predict([open("cat.jpg", "rb").read()])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.data.codecs import Codec
from flywheel.data.modalities import create_codec
from flywheel.errors import ModelError
from flywheel.outputs import read_output, softmax

__all__ = ["MANIFEST", "OnnxBundle"]

MANIFEST = "manifest.json"


@dataclass
class OnnxBundle:
    """A model exported by `flywheel export`: an ONNX graph, its spec and preprocessing."""

    folder: Path
    manifest: dict[str, Any]
    spec: dict[str, Any]
    session: Any
    codec: Codec

    @classmethod
    def load(cls, folder: str | Path) -> OnnxBundle:
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            spec = json.loads((folder / manifest["spec"]).read_text())
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{str(folder)!r} is not a flywheel bundle: {exc}") from exc
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError("pip install 'flywheel-ml[onnx]' to run an ONNX bundle") from exc
        session = ort.InferenceSession(
            str(folder / manifest["model"]), providers=["CPUExecutionProvider"]
        )
        codec = create_codec(str(spec["preprocessing"]["kind"]))
        return cls(folder, manifest, spec, session, codec)

    @property
    def labels(self) -> list[str]:
        return [str(v) for v in self.spec["labels"]]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (logits, or values for regression) of a decoded batch."""
        out: np.ndarray = self.session.run(None, {"input": x})[0]
        return out

    def predict(self, contents: Sequence[bytes]) -> list[dict[str, Any]]:
        """Stored-form inputs (image/WAV bytes, UTF-8 text, features JSON) → predictions."""
        x = self.codec.decode_batch(list(contents), self.spec["preprocessing"])
        out = self.run(x)
        labels = self.labels
        if not labels:
            return [{"value": float(v)} for v in out.reshape(-1)]
        answers = [read_output(labels, p) for p in softmax(out)]
        return [{"label": label, "probabilities": probs} for label, probs, _ in answers]
