"""Image metadata removed at the door, pixels untouched."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from sqlalchemy import select

from flywheel import Project
from flywheel.errors import InputError
from flywheel.privacy import strip_metadata
from flywheel.serving import create_app
from flywheel.store.schema import Prediction
from tests.factories import make_project


def _photo(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    buf = io.BytesIO()
    if fmt == "JPEG":
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"  # Make
        exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # GPS latitude of someone's home
        img.save(buf, format="JPEG", exif=exif, comment=b"taken at home")
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text("Author", "Jane Doe")
        info.add_itxt("Location", "52.52 N, 13.40 E")
        exif = Image.Exif()
        exif[0x010F] = "PhoneMaker"
        img.save(buf, format="PNG", pnginfo=info, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_metadata_goes_and_the_pixels_stay(fmt: str) -> None:
    raw = _photo(fmt)
    before = Image.open(io.BytesIO(raw))
    assert len(before.getexif()) > 0
    kept, removed = strip_metadata(raw)
    after = Image.open(io.BytesIO(kept))
    assert len(after.getexif()) == 0
    assert b"PhoneMaker" not in kept and b"Jane Doe" not in kept and b"home" not in kept
    assert not after.info.get("comment") and "Author" not in after.info
    assert np.array_equal(np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB")))
    if fmt == "JPEG":
        assert sorted(removed) == ["comment", "exif/xmp"]
    else:
        assert sorted(removed) == ["eXIf", "iTXt", "tEXt"]
    # Nothing left to remove: the same bytes.
    assert strip_metadata(kept) == (kept, [])


def test_other_and_broken_inputs() -> None:
    assert strip_metadata(b"RIFF....WAVE") == (b"RIFF....WAVE", [])
    jpeg = _photo("JPEG")
    with pytest.raises(InputError, match="JPEG"):
        strip_metadata(jpeg[:40])
    png = _photo("PNG")
    with pytest.raises(InputError, match="PNG"):
        strip_metadata(png[:20])


def test_an_image_project_stores_no_metadata(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    with TestClient(create_app(project.settings, project), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/predict", files={"file": ("p.jpg", _photo("JPEG"), "image/jpeg")})
        assert r.status_code == 200, r.text
        pid = r.json()["prediction_id"]
        assert project.prediction_log is not None and project.prediction_log.wait_written(pid)
    direct = project.predict(_photo("PNG"))
    with project.db.session() as s:
        hashes = list(
            s.scalars(
                select(Prediction.input_hash).where(Prediction.id.in_([pid, direct.prediction_id]))
            )
        )
    assert len(hashes) == 2
    for h in hashes:
        stored = project.blobs.get(h)
        assert b"PhoneMaker" not in stored and b"Jane Doe" not in stored
        assert len(Image.open(io.BytesIO(stored)).getexif()) == 0
    # Turned off, the bytes are kept as sent.
    off = Project.open(tmp_path / "p", strip_image_metadata=False)
    assert off.at_the_door(_photo("JPEG")) == _photo("JPEG")
    off.close()
    project.close()
