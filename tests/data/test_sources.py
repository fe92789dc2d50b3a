"""Base data sources: image class folders, the bundled digits, and ``resolve_source``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flywheel.data import DigitsSource, ImageFolderSource, RawExample, resolve_source
from flywheel.errors import DataError
from tests.factories import png_bytes, write_class_folders


def _gray(value: int) -> np.ndarray:
    return np.full((8, 8), value, dtype=np.uint8)


@pytest.fixture(scope="module")
def digits_examples() -> list[RawExample]:
    return list(DigitsSource())


def test_missing_folder_raises_data_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        ImageFolderSource(missing)
    assert str(missing.resolve()) in str(info.value)
    assert info.value.path == missing.resolve()


def test_a_file_instead_of_a_folder_raises_data_error(tmp_path: Path) -> None:
    a_file = tmp_path / "data.png"
    a_file.write_bytes(png_bytes())
    with pytest.raises(DataError, match="not a folder") as info:
        ImageFolderSource(a_file)
    assert str(a_file.resolve()) in str(info.value)


@pytest.mark.parametrize("class_folders", [[], ["only"]], ids=["none", "one"])
def test_fewer_than_two_class_folders_raise_data_error_naming_the_folder(
    tmp_path: Path, class_folders: list[str]
) -> None:
    root = write_class_folders(tmp_path / "data", {c: [_gray(1)] for c in class_folders})
    root.mkdir(exist_ok=True)
    (root / "loose.png").write_bytes(png_bytes())  # a file at the top is not a class
    with pytest.raises(DataError, match=r"at least 2\); found " + str(len(class_folders))) as info:
        ImageFolderSource(root)
    assert str(root.resolve()) in str(info.value)
    assert info.value.path == root.resolve()


def test_class_folders_without_images_raise_data_error_naming_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("not an image")
    (root / "dog" / "picture.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"no \.png/\.jpg/\.jpeg files") as info:
        ImageFolderSource(root)
    assert str(root.resolve()) in str(info.value)


def test_lists_png_jpg_jpeg_in_any_case_and_ignores_other_files_and_hidden_folders(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    write_class_folders(root, {"cat": [_gray(10)], "dog": [_gray(20)]}, ext="PNG")
    write_class_folders(root, {"cat": [_gray(30), _gray(40)]}, ext="jpg")
    write_class_folders(root, {"dog": [_gray(50)]}, ext="JPEG")
    (root / "dog" / "x.Jpg").write_bytes((root / "cat" / "0.jpg").read_bytes())
    # Not listed: other suffixes, a nested folder, a hidden folder at the top.
    (root / "cat" / "readme.txt").write_text("hello")
    (root / "cat" / "scan.bmp").write_bytes(b"BM")
    (root / "cat" / "nested").mkdir()
    (root / "cat" / "nested" / "deep.png").write_bytes(png_bytes())
    write_class_folders(root, {".cache": [_gray(60)]})

    source = ImageFolderSource(root)

    assert source.classes == ["cat", "dog"]
    assert source.name == str(root.resolve())
    examples = list(source)
    assert [(e.source_path, e.label) for e in examples] == [
        ("cat/0.PNG", "cat"),
        ("cat/0.jpg", "cat"),
        ("cat/1.jpg", "cat"),
        ("dog/0.JPEG", "dog"),
        ("dog/0.PNG", "dog"),
        ("dog/x.Jpg", "dog"),
    ]
    for e in examples:
        assert e.content == (root / e.source_path).read_bytes()
        assert e.split is None
        assert e.user_id is None


def test_digits_source_yields_1797_png_examples_labelled_0_to_9(
    digits_examples: list[RawExample],
) -> None:
    assert len(digits_examples) == 1797
    assert {e.label for e in digits_examples} == {str(d) for d in range(10)}
    assert all(e.content.startswith(b"\x89PNG\r\n\x1a\n") for e in digits_examples)
    assert digits_examples[0].source_path == "digits[0]"
    assert digits_examples[-1].source_path == "digits[1796]"


def test_digits_source_with_indices_yields_only_those(
    digits_examples: list[RawExample],
) -> None:
    picked = list(DigitsSource(indices=[5, 0, 1796]))
    assert picked == [digits_examples[5], digits_examples[0], digits_examples[1796]]


def test_resolve_source_digits_is_the_bundled_set() -> None:
    source, task = resolve_source("digits")
    assert isinstance(source, DigitsSource)
    assert source.name == "digits"
    assert task == "image-classification"


def test_resolve_source_path_is_an_image_folder(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "data", {"a": [_gray(1)], "b": [_gray(2)]})
    source, task = resolve_source(str(root))
    assert isinstance(source, ImageFolderSource)
    assert task == "image-classification"
    assert source.name == str(root.resolve())
    assert [e.label for e in source] == ["a", "b"]


def test_resolve_source_missing_path_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(str(tmp_path / "digitz"))
