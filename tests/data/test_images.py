"""Decoding images to float32 ``[C, H, W]`` in ``[0, 1]`` and inferring the preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from flywheel.data import (
    ImageCodec,
    ImagePreprocessing,
    decode_image,
    digits_arrays,
    encode_png,
    probe_image,
)
from flywheel.errors import InputError
from tests.factories import png_bytes

GRAY_8 = ImagePreprocessing(mode="L", height=8, width=8)
RGB_8 = ImagePreprocessing(mode="RGB", height=8, width=8)


def test_grayscale_decodes_to_one_float32_channel_scaled_by_255() -> None:
    arr = decode_image(png_bytes((8, 8), "L", 51), GRAY_8)
    assert arr.dtype == np.float32
    assert arr.shape == (1, 8, 8)
    np.testing.assert_array_equal(arr, np.full((1, 8, 8), 51 / 255, dtype=np.float32))


def test_rgb_decodes_to_three_channels_first() -> None:
    arr = decode_image(png_bytes((8, 8), "RGB", (255, 0, 51)), RGB_8)  # type: ignore[arg-type]
    assert arr.dtype == np.float32
    assert arr.shape == (3, 8, 8)
    assert arr.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(arr[0], np.ones((8, 8), dtype=np.float32))
    np.testing.assert_array_equal(arr[1], np.zeros((8, 8), dtype=np.float32))
    np.testing.assert_array_equal(arr[2], np.full((8, 8), 51 / 255, dtype=np.float32))


def test_mode_follows_the_preprocessing_not_the_file() -> None:
    from_gray = decode_image(png_bytes((8, 8), "L", 200), RGB_8)
    assert from_gray.shape == (3, 8, 8)
    np.testing.assert_array_equal(from_gray[0], from_gray[2])
    from_rgb = decode_image(png_bytes((8, 8), "RGB", (90, 90, 90)), GRAY_8)  # type: ignore[arg-type]
    assert from_rgb.shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("mode", "size"),
    [("L", (32, 20)), ("RGB", (5, 7)), ("RGBA", (9, 9)), ("P", (16, 16))],
)
def test_values_stay_within_0_and_1(mode: str, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buf, format="PNG")
    arr = decode_image(buf.getvalue(), RGB_8)
    assert arr.shape == (3, 8, 8)
    assert arr.min() >= 0.0
    assert arr.max() <= 1.0


def test_resizes_to_the_preprocessing_height_and_width() -> None:
    # PIL sizes are (width, height); the array is [C, height, width].
    prep = ImagePreprocessing(mode="L", height=6, width=10)
    arr = decode_image(png_bytes((40, 12), "L", 77), prep)
    assert arr.shape == (1, 6, 10)
    np.testing.assert_allclose(arr, 77 / 255, atol=1e-6)


def test_bytes_that_are_not_an_image_raise_input_error() -> None:
    with pytest.raises(InputError, match=r"^the file is not a readable image: "):
        decode_image(b"this is plain text, not a picture", GRAY_8)


def test_a_truncated_image_raises_input_error() -> None:
    data = encode_png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(InputError, match=r"^the file is not a readable image: "):
        decode_image(data[: len(data) // 2], GRAY_8)


def test_empty_bytes_raise_input_error() -> None:
    with pytest.raises(InputError, match=r"^the image is empty \(0 bytes\)$"):
        decode_image(b"", GRAY_8)


def test_probe_reports_mode_height_width() -> None:
    gray, rgb = (
        probe_image(png_bytes((12, 5), "L")),
        probe_image(png_bytes((3, 4), "RGB", (1, 2, 3))),
    )  # type: ignore[arg-type]
    assert (gray["mode"], gray["height"], gray["width"]) == ("L", 5, 12)
    assert (rgb["mode"], rgb["height"], rgb["width"]) == ("RGB", 4, 3)


def _probes(*shapes: tuple[str, int, int]) -> list[dict[str, object]]:
    return [{"mode": m, "height": h, "width": w, "mean": 0.5} for m, h, w in shapes]


def test_infer_takes_the_most_common_size() -> None:
    params = ImageCodec().infer(_probes(("L", 10, 20), ("L", 8, 8), ("L", 10, 20), ("L", 30, 30)))
    assert ImagePreprocessing.from_json(params) == ImagePreprocessing(mode="L", height=10, width=20)


def test_infer_is_grayscale_only_when_every_image_is() -> None:
    codec = ImageCodec()
    assert codec.infer(_probes(("L", 8, 8), ("L", 8, 8)))["mode"] == "L"
    assert codec.infer(_probes(("L", 8, 8), ("RGB", 8, 8), ("L", 8, 8)))["mode"] == "RGB"


def test_preprocessing_json_round_trip() -> None:
    prep = ImagePreprocessing(mode="RGB", height=12, width=7)
    assert prep.to_json() == {
        "kind": "image",
        "mode": "RGB",
        "height": 12,
        "width": 7,
        "scale": "1/255",
    }
    assert ImagePreprocessing.from_json(prep.to_json()) == prep


def test_digits_png_round_trip_stays_within_one_step() -> None:
    images, _ = digits_arrays()
    batch = images[:50]
    decoded = np.stack([decode_image(encode_png(img), GRAY_8) for img in batch])
    assert decoded.shape == (50, 1, 8, 8)
    assert np.abs(decoded[:, 0] - batch / 255.0).max() <= 1 / 255


def test_16_bit_grayscale_keeps_its_relative_intensity() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(buf, format="PNG")
    arr = decode_image(buf.getvalue(), GRAY_8)
    np.testing.assert_allclose(arr, 32768 / 65535, atol=1 / 255)
