"""The tensors of the Open Inference Protocol (KServe V2 REST): a request's inputs read,
a response's outputs written, as JSON and with the binary tensor extension.

A request body is JSON, or (binary extension) JSON of ``Inference-Header-Content-Length``
bytes followed by the raw data of each input that says ``parameters.binary_data_size``,
in input order. Fixed-size types are little-endian, row-major; a ``BYTES`` tensor is
each element as a 4-byte little-endian length and its bytes. Everything a client can get
wrong raises ``InputError`` naming the input and the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.errors import InputError

__all__ = [
    "DTYPES",
    "HEADER",
    "InferRequest",
    "Tensor",
    "decode_bytes",
    "encode_bytes",
    "read_request",
    "write_response",
]

#: the binary extension's header: the length of the JSON at the start of the body
HEADER = "inference-header-content-length"

#: the protocol's datatypes that numpy holds, little-endian
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
#: more elements than this in one tensor are refused before anything is allocated
MAX_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class Tensor:
    """One input: its name, datatype, shape, and data (an array, or bytes per element)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None  # fixed-size types
    items: list[bytes] | None = None  # BYTES, row-major
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    #: the outputs asked for, by name: whether each is wanted as binary (None: all)
    outputs: dict[str, bool] | None
    #: every output binary unless it says otherwise (``binary_data_output``)
    binary_output: bool
    parameters: dict[str, Any]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object; got {type(value).__name__}")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InputError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if math.prod(value) > MAX_ELEMENTS:
        raise InputError(f"input {name!r}: shape {value} holds more than {MAX_ELEMENTS} elements")
    return tuple(value)


def decode_bytes(raw: bytes | memoryview, count: int, name: str) -> list[bytes]:
    """The elements of a binary ``BYTES`` tensor: each a 4-byte LE length, then the bytes."""
    view = memoryview(raw)
    out: list[bytes] = []
    at = 0
    for i in range(count):
        if at + 4 > len(view):
            raise InputError(f"input {name!r}: the binary data ends before element {i}'s length")
        (n,) = struct.unpack_from("<I", view, at)
        at += 4
        if at + n > len(view):
            raise InputError(f"input {name!r}: element {i} says {n} bytes; fewer are left")
        out.append(bytes(view[at : at + n]))
        at += n
    if at != len(view):
        raise InputError(
            f"input {name!r}: {len(view) - at} bytes left over after {count} BYTES elements"
        )
    return out


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _flat(data: Any) -> list[Any]:
    """A JSON tensor's data, flattened row-major (nested lists are allowed)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(d, list) for d in data):
        return data
    out: list[Any] = []
    for d in data:
        out.extend(_flat(d))
    return out


def _json_bytes(values: list[Any], name: str, base64_coded: bool) -> list[bytes]:
    out: list[bytes] = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise InputError(f"input {name!r}: BYTES element {i} must be a string")
        if base64_coded:
            try:
                out.append(base64.b64decode(v, validate=True))
            except binascii.Error:
                raise InputError(f"input {name!r}: element {i} is not base64") from None
        else:
            out.append(v.encode("utf-8"))
    return out


def _json_array(values: list[Any], dtype: np.dtype[Any], name: str) -> np.ndarray:
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in values):
            raise InputError(f"input {name!r}: BOOL data must be true or false")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InputError(f"input {name!r}: data must be numbers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.asarray(values, dtype=dtype)
    except (OverflowError, FloatingPointError, ValueError) as exc:
        raise InputError(f"input {name!r}: a value does not fit {dtype.name}: {exc}") from None


def _tensor(spec: Any, binary: memoryview | None, at: int) -> tuple[Tensor, int]:
    """One input of the request's JSON; ``binary``: the bytes after the JSON, ``at``: where
    this input's binary data starts (returns where the next one's does)."""
    spec = _object(spec, "each of 'inputs'")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InputError("each input needs a 'name'")
    datatype = spec.get("datatype")
    if datatype != "BYTES" and datatype not in DTYPES:
        known = ", ".join([*DTYPES, "BYTES"])
        raise InputError(f"input {name!r}: datatype {datatype!r} is not one of {known}")
    shape = _shape(spec.get("shape"), name)
    count = math.prod(shape)
    params = _object(spec.get("parameters") or {}, f"input {name!r}'s 'parameters'")
    size = params.get("binary_data_size")
    if size is not None:
        if binary is None or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(
                f"input {name!r} says binary_data_size but the request has no binary part "
                f"(send the {HEADER} header), or the size is not a non-negative integer"
            )
        if at + size > len(binary):
            raise InputError(f"input {name!r}: binary_data_size {size} runs past the body")
        raw = binary[at : at + size]
        at += size
        if datatype == "BYTES":
            return Tensor(name, datatype, shape, items=decode_bytes(raw, count, name)), at
        dtype = DTYPES[datatype]
        if size != count * dtype.itemsize:
            raise InputError(
                f"input {name!r}: shape {list(shape)} of {datatype} is "
                f"{count * dtype.itemsize} bytes; binary_data_size says {size}"
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        return Tensor(name, datatype, shape, array=array, parameters=params), at
    if "data" not in spec:
        raise InputError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    values = _flat(spec["data"])
    if len(values) != count:
        raise InputError(
            f"input {name!r}: shape {list(shape)} holds {count} elements; data has {len(values)}"
        )
    if datatype == "BYTES":
        coded = params.get("content_type") == "base64"
        return Tensor(name, datatype, shape, items=_json_bytes(values, name, coded)), at
    array = _json_array(values, DTYPES[datatype], name).reshape(shape)
    return Tensor(name, datatype, shape, array=array, parameters=params), at


def _requested(value: Any, binary_output: bool) -> dict[str, bool] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError("'outputs' must be a list of {name, parameters}")
    out: dict[str, bool] = {}
    for o in value:
        o = _object(o, "each of 'outputs'")
        name = o.get("name")
        if not isinstance(name, str):
            raise InputError("each requested output needs a 'name'")
        params = _object(o.get("parameters") or {}, f"output {name!r}'s 'parameters'")
        out[name] = bool(params.get("binary_data", binary_output))
    return out


def read_request(body: bytes, header_length: str | None) -> InferRequest:
    """A request body (and the value of its ``Inference-Header-Content-Length``)."""
    binary: memoryview | None = None
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InputError(
                f"{HEADER} must be the length of the JSON at the start of the body "
                f"(0 to {len(body)}); got {header_length!r}"
            )
        body, binary = body[:n], memoryview(body)[n:]
    if not body:
        raise InputError('the request has no body: send {"inputs": [...]}')
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the request's JSON cannot be read: {exc}") from None
    doc = _object(doc, "the request")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("the request needs 'inputs': a non-empty list of tensors")
    params = _object(doc.get("parameters") or {}, "the request's 'parameters'")
    binary_output = bool(params.get("binary_data_output", False))
    at = 0
    tensors = []
    for spec in inputs:
        tensor, at = _tensor(spec, binary, at)
        tensors.append(tensor)
    if binary is not None and at != len(binary):
        raise InputError(f"{len(binary) - at} bytes after the inputs' binary data belong to none")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise InputError(f"input names must be distinct; got {names}")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InputError("'id' must be a string")
    outputs = _requested(doc.get("outputs"), binary_output)
    return InferRequest(rid, tensors, outputs, binary_output, params)


def write_response(
    head: dict[str, Any],
    outputs: list[tuple[str, str, np.ndarray | list[bytes]]],
    request: InferRequest,
) -> tuple[bytes, int | None]:
    """(the body, the JSON header's length or None for plain JSON) of a response:
    ``head`` (model name, version, id, parameters) and ``outputs`` as (name, datatype,
    data), those the request asked for (the caller has refused unknown names), each
    binary or JSON as it asked."""
    wanted = request.outputs
    docs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, data in outputs:
        if wanted is not None and name not in wanted:
            continue
        binary = wanted[name] if wanted is not None else request.binary_output
        shape = [len(data)] if isinstance(data, list) else list(data.shape)
        doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = (
                encode_bytes(data)
                if isinstance(data, list)
                else np.ascontiguousarray(data, DTYPES[datatype]).tobytes()
            )
            doc["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif isinstance(data, list):
            doc["data"] = [b.decode("utf-8", "replace") for b in data]
        else:
            doc["data"] = data.reshape(-1).tolist()
        docs.append(doc)
    text = json.dumps({**head, "outputs": docs}, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
