"""Inputs to score, as a stream: folders (recursively, in a fixed order), CSV and JSON
Lines manifests of files, texts or features; a bad row carries its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.data import BatchInputs, InputOptions, tabular_bytes
from flywheel.errors import DataError
from tests.factories import png_bytes


def _rows(inputs: BatchInputs) -> list[tuple[str, bytes, str]]:
    return [(r.name, r.content, r.error) for r in inputs]


def test_a_folder_is_walked_in_order_hidden_files_left_out_other_files_reported(
    tmp_path: Path,
) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "deep" / "z.png").write_bytes(png_bytes(value=1))
    (tmp_path / "b" / "a.JPG").write_bytes(b"\xff\xd8\xff rest of a jpeg")
    (tmp_path / "a.png").write_bytes(png_bytes(value=2))
    (tmp_path / "gif.png").write_bytes(b"GIF89a...")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".git" / "HEAD").write_text("ref")
    inputs = BatchInputs.open(tmp_path, "image")
    rows = _rows(inputs)
    assert [name for name, _, _ in rows] == [
        "a.png", "gif.png", "notes.txt", "b/a.JPG", "b/deep/z.png",
    ]  # fmt: skip
    assert rows[0] == ("a.png", png_bytes(value=2), "")
    assert rows[1] == ("gif.png", b"", "the file's bytes are not a PNG or JPEG image")
    assert rows[2] == ("notes.txt", b"", "not a .png/.jpg/.jpeg file")
    assert inputs.count() == 5
    assert [len(b["name"]) for b in inputs.batches(2)] == [2, 2, 1]
    first = next(inputs.batches(2))
    assert list(first["name"]) == ["a.png", "gif.png"] and list(first["error"]) == ["", rows[1][2]]


def test_a_folder_of_texts_is_trimmed_utf8_and_empty_or_undecodable_files_are_bad(
    tmp_path: Path,
) -> None:
    (tmp_path / "1.txt").write_text("  win a prize now \n")
    (tmp_path / "2.txt").write_text("   \n")
    (tmp_path / "3.txt").write_bytes(b"caf\xe9")
    rows = _rows(BatchInputs.open(tmp_path, "text"))
    assert rows[0] == ("1.txt", b"win a prize now", "")
    assert rows[1] == ("2.txt", b"", "empty text")
    assert rows[2][0] == "3.txt" and rows[2][2].startswith("not utf-8 text")


def test_a_csv_manifest_of_files_is_read_relative_to_it_and_named_by_its_id_column(
    tmp_path: Path,
) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(png_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "\ufeffid,path,extra\nx1,img/x.png,1\n\n,img/x.png,2\nx3,img/gone.png,3\nx4,,4\n",
        encoding="utf-8",
    )
    inputs = BatchInputs.open(manifest, "image")
    rows = _rows(inputs)
    assert inputs.count() == 4
    assert rows[0] == ("x1", png_bytes(), "")
    assert rows[1] == ("img/x.png", png_bytes(), "")  # no id: its path
    assert rows[2][0] == "x3" and rows[2][2] == "cannot be read: No such file or directory"
    assert rows[3] == ("x4", b"", "empty 'path'")


def test_a_text_csv_holds_its_texts_and_a_tabular_one_its_features(tmp_path: Path) -> None:
    texts = tmp_path / "t.csv"
    texts.write_text('text\n"hello, world"\n"a\nb"\n')
    assert _rows(BatchInputs.open(texts, "text")) == [
        ("t.csv:2", b"hello, world", ""),
        ("t.csv:4", b"a\nb", ""),  # a quoted newline: the row ends on line 4
    ]
    table = tmp_path / "f.csv"
    table.write_text("id,b,a,other\nr1,2,1.5,x\nr2,oops,1,y\n")
    rows = _rows(BatchInputs.open(table, "tabular", ("a", "b")))
    assert rows[0] == ("r1", tabular_bytes({"a": 1.5, "b": 2.0}), "")
    assert rows[1] == ("r2", b"", "feature 'b' is not a number: 'oops'")


def test_jsonl_manifests_take_features_objects_flat_rows_and_report_bad_lines(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"id": "p1", "features": {"a": 1, "b": 2}}),
        json.dumps({"a": 3, "b": 4, "note": "flat"}),
        "{not json",
        "[1, 2]",
        json.dumps({"a": 1}),
        json.dumps({"a": 1, "b": float("inf")}),
    ]
    manifest.write_text("\n".join(lines) + "\n\n")
    rows = _rows(BatchInputs.open(manifest, "tabular", ("a", "b")))
    assert rows[0] == ("p1", tabular_bytes({"a": 1.0, "b": 2.0}), "")
    assert rows[1] == ("m.jsonl:2", tabular_bytes({"a": 3.0, "b": 4.0}), "")
    assert rows[2][0] == "m.jsonl:3" and rows[2][2].startswith("not JSON")
    assert rows[3] == ("m.jsonl:4", b"", "not a JSON object")
    assert rows[4] == ("m.jsonl:5", b"", "missing feature columns ['b']")
    assert rows[5] == ("m.jsonl:6", b"", "feature 'b' is not a finite number: inf")


def test_what_cannot_be_read_at_all_fails_before_any_row(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        BatchInputs.open(tmp_path / "nowhere", "image")
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="neither a folder nor a manifest"):
        BatchInputs.open(tmp_path / "x.parquet", "image")
    (tmp_path / "m.csv").write_text("file,label\na.png,cat\n")
    with pytest.raises(DataError, match=r"path column 'path' is not in m.csv; its columns are"):
        BatchInputs.open(tmp_path / "m.csv", "image")
    with pytest.raises(DataError, match=r"lacks the model's feature columns \['age'\]"):
        BatchInputs.open(tmp_path / "m.csv", "tabular", ("age",))
    opened = BatchInputs.open(tmp_path / "m.csv", "image", options=InputOptions(path_column="file"))
    assert [r.name for r in opened] == ["a.png"]
