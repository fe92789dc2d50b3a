"""Decoding and normalising images: bytes in, float32 ``[C, H, W]`` in ``[0, 1]`` out."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from flywheel.errors import InputError

__all__ = [
    "ImagePreprocessing",
    "average_hash",
    "decode_image",
    "encode_png",
    "probe_image",
]

# Pillow refuses images above this many pixels (decompression bombs) with an error.
Image.MAX_IMAGE_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class ImagePreprocessing:
    """How every image of a dataset is brought to the model's input: mode, size, scale."""

    mode: str  # "L" (one channel) or "RGB"
    height: int
    width: int

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def to_json(self) -> dict[str, Any]:
        return {"kind": "image", **asdict(self), "scale": "1/255"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImagePreprocessing:
        return cls(mode=str(d["mode"]), height=int(d["height"]), width=int(d["width"]))


def _open(data: bytes) -> Image.Image:
    if not data:
        raise InputError("the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise InputError(
            "the file is not a readable image: its format is not one Pillow knows "
            "(send PNG or JPEG)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"the file is not a readable image: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"the image is too large: {exc}") from None
    return img


def probe_image(data: bytes) -> dict[str, Any]:
    """Mode, size and mean intensity (0-1) of an encoded image."""
    img = _open(data)
    mode = "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    small = np.asarray(img.convert("L").resize((16, 16)), dtype=np.float32)
    return {
        "mode": mode,
        "height": img.height,
        "width": img.width,
        "mean": float(small.mean() / 255),
    }


def average_hash(data: bytes, size: int = 8) -> str:
    """A perceptual hash: equal for the same picture re-encoded, resized or slightly changed.

    The bits say which cells are brighter than the mean; a coarse brightness level is
    prefixed so that flat pictures of different brightness do not collide.
    """
    img = _open(data).convert("L").resize((size, size), Image.Resampling.BOX)
    px = np.asarray(img, dtype=np.float32)
    bits = (px > px.mean()).flatten()
    level = int(px.mean() // 32)
    return f"{level}:" + "".join("1" if b else "0" for b in bits)


def decode_image(data: bytes, prep: ImagePreprocessing) -> np.ndarray:
    img = _open(data)
    if img.mode.startswith("I;16") or img.mode == "I":
        # Pillow's convert() clips 16-bit values to 8 bits; scale them instead.
        wide = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
    img = img.convert(prep.mode)
    if img.size != (prep.width, prep.height):
        img = img.resize((prep.width, prep.height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    # [H, W] or [H, W, C] → [C, H, W]
    arr = arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array (H, W) or (H, W, 3)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
