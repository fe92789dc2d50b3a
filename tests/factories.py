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
