"""Factories shared by the tests: tiny projects on real digits, images, clients."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from flywheel import Project
from flywheel.data import HOLDOUT, TRAIN, ListSource, RawExample, digits_arrays, encode_png

#: Few epochs: the tests check behaviour, not accuracy.
FAST = {"epochs": 3, "patience": 2, "batch_size": 32, "image_size": 8}


def digit_png(index: int) -> bytes:
    images, _ = digits_arrays()
    return encode_png(images[index])


def digits_subset(n_train: int = 150, n_holdout: int = 60, offset: int = 0) -> list[RawExample]:
    """The first digits as PNG examples with fixed splits (holdout after train)."""
    images, labels = digits_arrays()
    out = []
    for j in range(n_train + n_holdout):
        i = offset + j
        split = TRAIN if j < n_train else HOLDOUT
        out.append(
            RawExample(
                encode_png(images[i]), str(labels[i]), split=split, source_path=f"digits[{i}]"
            )
        )
    return out


def make_project(
    root: Path,
    *,
    n_train: int = 150,
    n_holdout: int = 60,
    train: bool = True,
    settings: dict[str, Any] | None = None,
) -> Project:
    """A project on a slice of digits; trained once (v1 in production) unless ``train=False``."""
    project = Project.init(
        root,
        ListSource("digits-test", digits_subset(n_train, n_holdout)),
        settings={**FAST, **(settings or {})},
    )
    if train:
        project.train()
    return project


def png_bytes(size: tuple[int, int] = (8, 8), mode: str = "L", value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def write_class_folders(root: Path, classes: dict[str, list[np.ndarray]], ext: str = "png") -> Path:
    """Write ``root/<class>/<i>.<ext>`` images from uint8 arrays."""
    for name, arrays in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(arrays):
            Image.fromarray(arr).save(root / name / f"{i}.{ext}")
    return root


def login_csrf(c: TestClient) -> str:
    """The sign-in form's CSRF token (its cookie is set on ``c``)."""
    match = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text)
    assert match
    return match.group(1)


def sign_in(c: TestClient, key: str) -> str:
    """Sign ``c`` in to the dashboard with ``key``; the session's CSRF token."""
    r = c.post(
        "/ui/login",
        data={"key": key, "next": "/ui/models", "csrf": login_csrf(c)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/models"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = c.get("/ui/models").text
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match
    return match.group(1)


#: a plugin architecture from outside the repository: a package and its .dist-info
PLUGIN_SOURCE = '''"""tinyplug: flywheel architectures from outside its repository."""

import dataclasses

from torch import nn

from flywheel.models import ArchInfo, check_input


class TinyNet(nn.Module):
    """Pixels -> one hidden layer -> classes (``extra``: that many outputs too many)."""

    def __init__(self, input_shape, n_classes, hidden, *, strict=True, extra=0):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.strict = strict
        n = 1
        for d in self.input_shape:
            n *= d
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, n_classes + extra)
        )

    def forward(self, x):
        if self.strict:
            check_input("tinyplug", x, self.input_shape)
        return self.net(x)


def _build(spec, **kw):
    return TinyNet(spec.input_shape, len(spec.labels), int(spec.hparams.get("hidden", 32)), **kw)


def _preprocess(native, options):
    side = options.get("image_size")
    h, w = (side, side) if side else (native["height"], native["width"])
    return {"kind": "image", "mode": native["mode"], "height": int(h), "width": int(w)}


def _shape(p):
    return (1 if p["mode"] == "L" else 3, p["height"], p["width"])


def build():
    return ArchInfo(
        name="tiny",
        modality="image",
        objective="classification",
        build=_build,
        preprocess=_preprocess,
        input_shape=_shape,
        defaults=lambda shape: {"hidden": 32},
        summary="a one-hidden-layer MLP on pixels",
        training={"epochs": 6, "patience": 3},
    )


def broken_outputs():
    """One output too many: breaks the output_shape clause."""
    return dataclasses.replace(build(), build=lambda spec: _build(spec, extra=1))


def lenient():
    """No check of its input's shape: breaks the strict_input clause."""
    return dataclasses.replace(build(), build=lambda spec: _build(spec, strict=False))


def wrong_modality():
    return dataclasses.replace(build(), modality="video")


def not_an_arch():
    return {"name": "tiny", "modality": "image"}
'''


def write_plugin(site: Path, *, name: str = "tinyplug", version: str = "0.1.0") -> Path:
    """A package ``name`` in ``site`` (a folder to put on sys.path) with the .dist-info an
    installer would write: its version, and the entry point ``tiny`` of the group
    ``flywheel.architectures`` (what ``pip install`` of a pyproject declaring it gives)."""
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("")
    (site / name / "nets.py").write_text(PLUGIN_SOURCE)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[flywheel.architectures]\ntiny = {name}.nets:build\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    return site
