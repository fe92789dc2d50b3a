"""Image metadata removed without touching a pixel: EXIF (camera, GPS position, time),
XMP, IPTC, comments and PNG text chunks.

JPEG and PNG are walked segment by segment (chunk by chunk) and the metadata ones are
left out; the compressed image data is copied byte for byte, so the decoded pixels are
identical (re-encoding a JPEG would change them). Other formats pass unchanged.
"""

from __future__ import annotations

import struct

from flywheel.errors import InputError

__all__ = ["strip_metadata"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG chunks that hold text, EXIF or a timestamp
_PNG_DROP = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
#: JPEG segments: APP1 (EXIF, XMP), APP13 (IPTC / Photoshop), COM (comments). APP0 (JFIF),
#: APP2 (ICC colour profile) and APP14 (Adobe colour transform) are needed to decode.
_JPEG_DROP = {0xE1, 0xED, 0xFE}


def strip_metadata(content: bytes) -> tuple[bytes, list[str]]:
    """(the image without its metadata, the names of what was removed)."""
    if content.startswith(b"\xff\xd8"):
        return _jpeg(content)
    if content.startswith(_PNG_SIGNATURE):
        return _png(content)
    return content, []


def _jpeg(data: bytes) -> tuple[bytes, list[str]]:
    out = bytearray(data[:2])
    removed: list[str] = []
    i = 2
    while i < len(data):
        if data[i] != 0xFF:
            raise InputError(f"the JPEG is malformed: no marker at byte {i}")
        marker = data[i + 1] if i + 1 < len(data) else None
        if marker is None:
            raise InputError("the JPEG is cut short after a marker byte")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            out += data[i : i + 2]
            i += 2
            continue
        if marker == 0xD9:  # end of image
            out += data[i:]
            return bytes(out), removed
        if i + 4 > len(data):
            raise InputError("the JPEG is cut short in a segment header")
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        end = i + 2 + length
        if length < 2 or end > len(data):
            raise InputError(f"the JPEG has a segment of impossible length at byte {i}")
        if marker == 0xDA:  # start of scan: compressed data to the end, verbatim
            out += data[i:]
            return bytes(out), removed
        if marker in _JPEG_DROP:
            kind = {0xE1: "exif/xmp", 0xED: "iptc", 0xFE: "comment"}[marker]
            removed.append(kind)
        else:
            out += data[i:end]
        i = end
    return bytes(out), removed


def _png(data: bytes) -> tuple[bytes, list[str]]:
    out = bytearray(_PNG_SIGNATURE)
    removed: list[str] = []
    i = len(_PNG_SIGNATURE)
    while i < len(data):
        if i + 8 > len(data):
            raise InputError("the PNG is cut short in a chunk header")
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > len(data):
            raise InputError(f"the PNG has a chunk of impossible length at byte {i}")
        if kind in _PNG_DROP:
            removed.append(kind.decode("ascii"))
        else:
            out += data[i:end]
        i = end
        if kind == b"IEND":
            break
    return bytes(out), removed
