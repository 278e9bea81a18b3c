"""The version-2 container: one whole photo per .cae file, coded by a learned photo codec.

Same discipline as version 1 (:mod:`.format`): magic, version byte, the model's fingerprint and
its tables' hash, a CRC-32 over everything; byte layout in docs/format.md. The header is 24 bytes
and the CRC 4, so a file costs 28 bytes on top of its payload (plus the optional run path/name).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .format import CRC, MAGIC, CodecError, check_names, read_run, run_section, take
from .format import PHOTO_VERSION as VERSION

__all__ = ["PhotoHeader", "pack_photo", "unpack_photo", "file_version", "LEVEL_STEPS", "VERSION"]

LEVEL_STEPS = 8  # quality levels are stored as round(level * 8): steps of 1/8
MAX_SIDE = 0xFFFF
_FLAG_NAME = 0x01
_FLAG_RUN = 0x02
# magic, version, flags, channels, level * 8, height, width, model fingerprint (8), tables (4)
_FIXED = struct.Struct("<4sBBBBHH8s4s")


@dataclass(frozen=True)
class PhotoHeader:
    """Everything in a version-2 .cae file except the payload (see docs/format.md)."""

    fingerprint: bytes  # 8 bytes: the first 8 of checkpoint.fingerprint() of the model
    tables_hash: bytes  # 4 bytes: the first 4 of the SHA-256 over the codec's integer tables
    channels: int
    height: int
    width: int
    level: float  # quality level, a multiple of 1/8
    name: str | None = None  # output file name, when the input was a file
    run: str | None = None  # where the encoding run lived (a hint for `decode` without --model)
    version: int = VERSION

    @property
    def count(self) -> int:
        return 1


def file_version(data: bytes) -> int:
    """The format version of .cae bytes (after the magic check; 0 for a file too short)."""
    if len(data) == 0:
        raise CodecError("empty file (0 bytes); not a .cae file")
    if data[: len(MAGIC)] != MAGIC[: min(len(data), len(MAGIC))]:
        raise CodecError("not a .cae file (wrong magic bytes)")
    return data[len(MAGIC)] if len(data) > len(MAGIC) else 0


def pack_photo(header: PhotoHeader, payload: bytes) -> bytes:
    """Serialize a version-2 header and payload (CRC-32 over everything at the end)."""
    if len(header.fingerprint) != 8 or len(header.tables_hash) != 4:
        raise ValueError("fingerprint must be 8 bytes and tables hash 4 bytes")
    if not (1 <= header.height <= MAX_SIDE and 1 <= header.width <= MAX_SIDE):
        raise ValueError(
            f"a .cae photo is at most {MAX_SIDE} pixels a side, not {header.width}x{header.height}"
        )
    q = round(header.level * LEVEL_STEPS)
    flags, extra = 0, b""
    if header.run is not None:
        flags |= _FLAG_RUN
        extra += run_section(header.run)
    if header.name is not None:
        check_names((header.name,), reading=False)
        name = header.name.encode("utf-8")
        flags |= _FLAG_NAME
        extra += struct.pack("<B", len(name)) + name
    fixed = _FIXED.pack(MAGIC, VERSION, flags, header.channels, q, header.height, header.width,
                        header.fingerprint, header.tables_hash)  # fmt: skip
    body = fixed + extra + payload
    return body + CRC.pack(zlib.crc32(body))


def unpack_photo(data: bytes) -> tuple[PhotoHeader, bytes]:
    """Parse and check version-2 .cae bytes -> (header, payload); any defect is a CodecError."""
    if file_version(data) != VERSION:
        raise CodecError(f"not a version-{VERSION} .cae file")
    if len(data) < _FIXED.size + CRC.size:
        raise CodecError(f"truncated file ({len(data)} bytes, a header alone is {_FIXED.size + 4})")
    body, crc = data[: -CRC.size], CRC.unpack_from(data, len(data) - CRC.size)[0]
    if zlib.crc32(body) != crc:
        raise CodecError("corrupt or truncated file: checksum mismatch")
    _, _, flags, c, q, h, w, fp, th = _FIXED.unpack_from(data)
    if flags & ~(_FLAG_NAME | _FLAG_RUN):
        raise CodecError(f"corrupt file: unknown flags 0x{flags:02x}")
    if c not in (1, 3) or h < 1 or w < 1:
        raise CodecError(f"corrupt file: bad geometry ({c}x{h}x{w})")
    pos, run, name = _FIXED.size, None, None
    try:
        if flags & _FLAG_RUN:
            run, pos = read_run(body, pos)
        if flags & _FLAG_NAME:
            raw, pos = take(body, pos, 1, "name length")
            raw, pos = take(body, pos, raw[0], "name")
            name = raw.decode("utf-8")
            check_names((name,), reading=True)
    except UnicodeDecodeError:
        raise CodecError("corrupt file: the run path or name is not UTF-8") from None
    if pos >= len(body):  # the range coder writes at least its check word
        raise CodecError("corrupt file: no payload")
    header = PhotoHeader(fp, th, c, h, w, q / LEVEL_STEPS, name=name, run=run)
    return header, bytes(body[pos:])
