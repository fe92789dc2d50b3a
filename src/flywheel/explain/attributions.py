"""Why the model said what it said: attributions through Captum, and a PNG overlay.

- images and audio: Integrated Gradients (Sundararajan et al. 2017) from an all-zero
  baseline (a black image, silence in log-mel space), 32 steps; the attribution map
  is the absolute attribution summed over channels, normalised to [0, 1];
- text: feature ablation per token — each token in turn replaced by ``[MASK]``, the
  drop of the target class's score is its attribution (tokens are discrete: IG's path
  through token ids means nothing);
- tabular regression: Integrated Gradients per feature from the all-zero
  (standardised mean) baseline.

The overlay for an image is the input at its own size with the map as a red heat
layer; for audio, the log-mel spectrogram (time across, mel bands up) with the same
layer; text and tabular explanations are JSON only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from flywheel.data.text import MINILM, load_tokenizer
from flywheel.errors import ConfigError, InputError, ModelError
from flywheel.registry.imported import needs_weights
from flywheel.registry.loaded import LoadedModel

__all__ = ["Explanation", "explain", "overlay_png"]

STEPS = 32


@dataclass
class Explanation:
    method: str
    target: str | None
    #: images/audio: a 2-D map in [0, 1] at the model's input resolution
    map: np.ndarray | None = None
    #: text: (token, score); tabular: (feature, score)
    items: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "target": self.target}
        if self.map is not None:
            out["shape"] = list(self.map.shape)
            out["map"] = np.round(self.map, 4).tolist()
        if self.items:
            out["items"] = [{"name": n, "score": round(float(v), 6)} for n, v in self.items]
        return out


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError as exc:  # pragma: no cover - captum is in the [explain] extra
        raise ConfigError("explanations need Captum: pip install 'flywheel-ml[explain]'") from exc
    return captum.attr


def explain(loaded: LoadedModel, content: bytes, *, target: str | None = None) -> Explanation:
    """Attributions of ``loaded`` for one stored-form input (an imported version, which
    has no torch graph to take gradients through, is refused by name)."""
    needs_weights(loaded.spec, "an explanation (Captum attributes through torch)", loaded.version)
    attr = _captum()
    model = loaded.model
    model.eval()
    x = torch.from_numpy(loaded.decode(content)[None])
    modality = loaded.codec.modality
    if loaded.is_regression:
        x = x.float().requires_grad_(True)
        ig = attr.IntegratedGradients(model)
        a = ig.attribute(x, baselines=torch.zeros_like(x), n_steps=STEPS)
        names = list(loaded.spec.preprocessing.get("features", [])) or [
            f"x{i}" for i in range(x.shape[1])
        ]
        scores = a.detach().numpy()[0]
        return Explanation(
            "integrated_gradients", None, items=list(zip(names, scores, strict=True))
        )
    labels = loaded.labels
    with torch.no_grad():
        out = model(x)
    k = int(out.argmax(1)) if target is None else _index(labels, target)
    if modality == "text":
        return _text(loaded, x, k, attr)
    ig = attr.IntegratedGradients(model)
    a = ig.attribute(x.float(), baselines=torch.zeros_like(x.float()), target=k, n_steps=STEPS)
    m = a.detach().abs().numpy()[0]
    # image [C, H, W] → [H, W]; audio [frames, mels] → [mels, frames], low bands down
    m = m.sum(0) if m.ndim == 3 else m.T[::-1]
    peak = float(m.max())
    return Explanation(
        "integrated_gradients", labels[k], map=m / peak if peak > 0 else np.zeros_like(m)
    )


def _index(labels: list[str], target: str) -> int:
    if target not in labels:
        raise InputError(f"unknown target {target!r}; the model's labels: {', '.join(labels)}")
    return labels.index(target)


def _text(loaded: LoadedModel, x: torch.Tensor, k: int, attr: Any) -> Explanation:
    tokenizer = load_tokenizer(str(loaded.spec.preprocessing.get("tokenizer", MINILM))).tokenizer
    ids, mask = x[0, 0], x[0, 1]
    n = int(mask.sum())
    # One feature per token; the attention row goes with its token and keeps its value.
    feature = torch.stack([torch.arange(x.shape[2]), torch.arange(x.shape[2])])[None]
    baseline = x.clone()
    baseline[0, 0, 1 : n - 1] = int(tokenizer.mask_token_id)  # [CLS] and [SEP] stay
    fa = attr.FeatureAblation(loaded.model)
    scores = fa.attribute(x, baselines=baseline, target=k, feature_mask=feature)[0, 0]
    tokens = tokenizer.convert_ids_to_tokens(ids[1 : n - 1].tolist())
    return Explanation(
        "feature_ablation",
        loaded.labels[k],
        items=[(t, float(s)) for t, s in zip(tokens, scores[1 : n - 1].tolist(), strict=True)],
    )


def overlay_png(explanation: Explanation, content: bytes, modality: str) -> bytes:
    """The heat map over the input (image: at the input's own size), as PNG bytes."""
    if explanation.map is None:
        raise ModelError(f"{explanation.method} on this input has no map to draw")
    heat = explanation.map
    if modality == "image":
        base = Image.open(io.BytesIO(content)).convert("RGB")
    else:  # audio: the attribution map itself, on a grey ground
        base = Image.new("RGB", (heat.shape[1], heat.shape[0]), (40, 40, 40))
    h = Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize(
        base.size, Image.Resampling.BILINEAR
    )
    a = np.asarray(h, dtype=np.float32)[..., None] / 255.0
    red = np.zeros((*a.shape[:2], 3), np.float32)
    red[..., 0], red[..., 1] = 255.0, 64.0 * (1 - a[..., 0])
    mixed = np.asarray(base, np.float32) * (1 - 0.6 * a) + red * (0.6 * a)
    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(mixed, 0, 255))).save(buf, format="PNG")
    return buf.getvalue()
