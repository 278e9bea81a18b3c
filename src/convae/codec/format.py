"""The container: a .cae file's header, pack / unpack / verify (byte layout in docs/format.md).

Each file names its model by a 16-byte fingerprint of the codec model's weights and its tables by an
8-byte hash, so decoding with anything else fails with one clear line instead of producing garbage.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..limits import check_fits

MAGIC = b"\x89CAE"  # high bit set: a 7-bit channel or a text file can never start like this
FORMAT_VERSION = 1  # the version of the per-image table codec's files (this module)
PHOTO_VERSION = 2  # the learned photo codec's files (.format2); the newest version this code reads
CODERS = {1: "range", 2: "zlib", 3: "lzma"}  # payload coder id -> name
CODER_IDS = {v: k for k, v in CODERS.items()}
MAX_IMAGES = 1 << 28  # a sanity bound on the count field (268 M images)
ZLIB_MAX_RATIO = 1032  # zlib's largest expansion (deflate's 258-byte matches in 2 bits)
_FLAG_NAMES = 0x01
_FLAG_RUN = 0x02
_FLAG_MOSAIC = 0x04
MAX_SIDE = 1 << 20  # a sanity bound on a mosaic photo's height and width

# Fixed part of the v1 header, little-endian: magic, version, coder, level, flags, model
# fingerprint, tables hash, channels, height, width, latent dim, step, count, payload length.
_FIXED = struct.Struct("<4sBBBB16s8sBHHHfII")
CRC = struct.Struct("<I")


class CodecError(ValueError):
    """A .cae file that cannot be read: empty, foreign, truncated, corrupt or for another model."""


@dataclass(frozen=True)
class Header:
    """Everything in a .cae file except the payload (see docs/format.md)."""

    fingerprint: bytes  # 16 bytes: checkpoint.fingerprint() of the codec model's weights + config
    tables_hash: bytes  # 8 bytes: hash of the level's quantizer and probability tables
    channels: int
    height: int
    width: int
    latent_dim: int
    count: int  # images in the file
    level: int  # quality level index into the run's codec tables
    step: float  # the level's quantizer step (float32), repeated for readers without the model
    coder: str = "range"  # "range", "zlib" or "lzma"
    names: tuple[str, ...] | None = None  # output file names, when the inputs were files
    run: str | None = None  # where the encoding run lived (a hint for `decode` without --model)
    version: int = FORMAT_VERSION
    # photos of their own sizes (height, width), each coded as the model-size tiles that cover it
    # (row by row, photo after photo; count = all tiles); names, if any, are one per photo
    sizes: tuple[tuple[int, int], ...] | None = None

    @property
    def photos(self) -> int:
        """The images a decoder writes: the photos of a mosaic, else every coded image."""
        return self.count if self.sizes is None else len(self.sizes)


def tiles_of(height: int, width: int, tile_h: int, tile_w: int) -> tuple[int, int]:
    """(rows, columns) of ``tile_h x tile_w`` tiles that cover a ``height x width`` photo."""
    return -(-height // tile_h), -(-width // tile_w)


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an image name in a .cae file, or None.

    A name is what `convae decode` writes PNG data under, so it must be a plain, visible PNG file
    name: a forged file must not place data under ``.bashrc``, ``config.json`` or ``../x``."""
    if not name or name in (".", ".."):
        return "empty, '.' or '..'"
    if any(c in "/\\\x7f" or c < " " for c in name):
        return "it contains '/', '\\', NUL, a newline or another control character"
    if name.startswith("."):
        return "it starts with '.' (a hidden file)"
    if not name.lower().endswith(".png") or len(name) < 5:
        return "it is not a file name ending in .png"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8 (a file name in another encoding)"
    return "longer than 255 bytes" if size > 255 else None


def check_names(names: tuple[str, ...], reading: bool) -> None:
    """Every name valid and none twice; a file that breaks this is corrupt, an input is refused."""
    for n in names:
        problem = _name_problem(n)
        if problem is not None:
            if reading:
                raise CodecError(f"corrupt file: invalid image name {n[:40]!r}")
            raise ValueError(f"image name {n[:60]!r} cannot be stored in a .cae file: {problem}")
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        if reading:
            raise CodecError(f"corrupt file: image name {twice[:40]!r} appears twice")
        raise ValueError(f"image name {twice[:60]!r} appears twice")


def pack(header: Header, payload: bytes) -> bytes:
    """Serialize ``header`` and ``payload`` into .cae bytes (CRC-32 over everything at the end)."""
    if header.coder not in CODER_IDS:
        raise ValueError(f"unknown coder {header.coder!r}; choose one of {', '.join(CODER_IDS)}")
    if len(header.fingerprint) != 16 or len(header.tables_hash) != 8:
        raise ValueError("fingerprint must be 16 bytes and tables hash 8 bytes")
    if not 1 <= header.count <= MAX_IMAGES:
        raise ValueError(f"a .cae file holds 1 to {MAX_IMAGES} images, not {header.count}")
    flags = 0
    extra = b""
    if header.run is not None:
        flags |= _FLAG_RUN
        extra += run_section(header.run)
    if header.sizes is not None:
        flags |= _FLAG_MOSAIC
        extra += _mosaic_section(header)
    if header.names is not None:
        if len(header.names) != header.photos:
            raise ValueError(f"{len(header.names)} names for {header.photos} images")
        check_names(tuple(header.names), reading=False)
        blob = zlib.compress("\n".join(header.names).encode("utf-8"), 9)
        flags |= _FLAG_NAMES
        extra += struct.pack("<I", len(blob)) + blob
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        CODER_IDS[header.coder],
        header.level,
        flags,
        header.fingerprint,
        header.tables_hash,
        header.channels,
        header.height,
        header.width,
        header.latent_dim,
        header.step,
        header.count,
        len(payload),
    )
    body = fixed + extra + payload
    return body + CRC.pack(zlib.crc32(body))


def _mosaic_section(header: Header) -> bytes:
    sizes = header.sizes or ()
    if not sizes or any(not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) for h, w in sizes):
        raise ValueError(f"photo sizes must be 1 to {MAX_SIDE} pixels a side")
    tiles = sum(math.prod(tiles_of(h, w, header.height, header.width)) for h, w in sizes)
    if tiles != header.count:
        raise ValueError(f"{len(sizes)} photos take {tiles} tiles, not {header.count}")
    return struct.pack(f"<I{2 * len(sizes)}I", len(sizes), *(v for hw in sizes for v in hw))


def _read_mosaic(body: bytes, pos: int, count: int, tile: tuple[int, int]) -> tuple[tuple, int]:
    """The mosaic section at ``pos`` -> (photo sizes, position after it)."""
    raw, pos = take(body, pos, 4, "photo count")
    n = struct.unpack("<I", raw)[0]
    if not 1 <= n <= count:
        raise CodecError(f"corrupt file: {n} photos in {count} tiles")
    raw, pos = take(body, pos, 8 * n, "photo sizes")
    flat = struct.unpack(f"<{2 * n}I", raw)
    sizes = tuple(zip(flat[::2], flat[1::2], strict=True))
    if any(not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) for h, w in sizes):
        raise CodecError("corrupt file: a photo size out of range")
    if sum(math.prod(tiles_of(h, w, *tile)) for h, w in sizes) != count:
        raise CodecError(f"corrupt file: the photo sizes do not make {count} tiles")
    return sizes, pos


def take(data: bytes, pos: int, n: int, what: str) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise CodecError(f"truncated file: {what} runs past the end")
    return data[pos : pos + n], pos + n


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and check .cae bytes -> (header, payload); any defect raises :class:`CodecError`.

    Checks, in order: empty, magic, version, length, CRC-32, then every field's range.
    """
    if len(data) == 0:
        raise CodecError("empty file (0 bytes); not a .cae file")
    if data[: len(MAGIC)] != MAGIC[: len(data)] or len(data) < len(MAGIC):
        if data[: len(MAGIC)] != MAGIC[: min(len(data), len(MAGIC))]:
            raise CodecError("not a .cae file (wrong magic bytes)")
        raise CodecError(f"truncated file ({len(data)} bytes)")
    if data[len(MAGIC) : len(MAGIC) + 1] == bytes([PHOTO_VERSION]):
        raise CodecError(
            "a version-2 file (learned photo codec): decode it with `convae decode` or "
            "convae.codec.decode_photo"
        )
    if len(data) < _FIXED.size + CRC.size:
        raise CodecError(
            f"truncated file ({len(data)} bytes, a header alone is {_FIXED.size + CRC.size})"
        )
    (magic, version, coder, level, flags, fp, th, c, h, w, lat, step, count, plen) = (
        _FIXED.unpack_from(data)
    )
    if version == 0:
        raise CodecError("corrupt file: format version 0")
    if version > PHOTO_VERSION:
        raise CodecError(
            f"file format version {version} is newer than this convae reads "
            f"(up to {PHOTO_VERSION}); upgrade convae"
        )

    body, crc = data[: -CRC.size], CRC.unpack_from(data, len(data) - CRC.size)[0]
    if zlib.crc32(body) != crc:
        raise CodecError("corrupt or truncated file: checksum mismatch")
    # From here the bytes are what the writer wrote; field checks guard against buggy writers.
    if coder not in CODERS:
        raise CodecError(f"corrupt file: unknown payload coder {coder}")
    if flags & ~(_FLAG_NAMES | _FLAG_RUN | _FLAG_MOSAIC):
        raise CodecError(f"corrupt file: unknown flags 0x{flags:02x}")
    if c not in (1, 3) or h < 1 or w < 1 or lat < 1 or not 1 <= count <= MAX_IMAGES:
        raise CodecError(f"corrupt file: bad geometry ({count} x {c}x{h}x{w}, latent {lat})")
    if not (math.isfinite(step) and step > 0):
        raise CodecError(f"corrupt file: bad quantizer step {step}")
    run, pos = read_run(body, _FIXED.size) if flags & _FLAG_RUN else (None, _FIXED.size)
    sizes, pos = _read_mosaic(body, pos, count, (h, w)) if flags & _FLAG_MOSAIC else (None, pos)
    photos = count if sizes is None else len(sizes)
    names, pos = _read_names(body, pos, photos) if flags & _FLAG_NAMES else (None, pos)
    if pos + plen != len(body):
        raise CodecError(f"corrupt file: payload length {plen} does not match the file size")
    if plen == 0:  # every coder writes at least one byte (a 32-bit word) for one symbol
        raise CodecError(f"corrupt file: an empty payload cannot hold {count} image(s)")
    header = Header(
        fingerprint=fp,
        tables_hash=th,
        channels=c,
        height=h,
        width=w,
        latent_dim=lat,
        count=count,
        level=level,
        step=step,
        coder=CODERS[coder],
        names=names,
        run=run,
        version=version,
        sizes=sizes,
    )
    return header, bytes(body[pos:])


def run_section(run: str) -> bytes:
    """The bytes of a run path section: its UTF-8 length (16 bits) and the path."""
    raw = run.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("run path too long to record")
    return struct.pack("<H", len(raw)) + raw


def read_run(body: bytes, pos: int) -> tuple[str, int]:
    """The run path section at ``pos`` -> (path, position after it)."""
    raw, pos = take(body, pos, 2, "run path length")
    raw, pos = take(body, pos, struct.unpack("<H", raw)[0], "run path")
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError as e:
        raise CodecError("corrupt file: run path is not UTF-8") from e


def _read_names(body: bytes, pos: int, count: int) -> tuple[tuple[str, ...], int]:
    """The names section at ``pos`` (``count`` names) -> (names, position after it)."""
    raw, pos = take(body, pos, 4, "names length")
    blob, pos = take(body, pos, struct.unpack("<I", raw)[0], "names")
    # N names ("x.png" at least) take 6N - 1 bytes of text; zlib expands at most ~1032 times
    if 6 * count - 1 > ZLIB_MAX_RATIO * len(blob) + 64:
        raise CodecError(
            f"corrupt file: {count} image names cannot fit in a {len(blob)}-byte names section"
        )
    try:
        d = zlib.decompressobj()
        text = d.decompress(blob, 256 * count)  # bounded: a name is at most 255 bytes + "\n"
        if d.unconsumed_tail or not d.eof:
            raise CodecError("corrupt file: names section too long or cut")
        names = tuple(text.decode("utf-8").split("\n"))
    except (zlib.error, UnicodeDecodeError) as e:
        raise CodecError(f"corrupt file: unreadable names ({e})") from e
    if len(names) != count:
        raise CodecError(f"corrupt file: {len(names)} names for {count} images")
    check_names(names, reading=True)
    return names, pos


def verify(data: bytes) -> Header:
    """Check a file's structure and checksum without a model; return its header."""
    return unpack(data)[0]


def read_header(path: str | os.PathLike) -> tuple[Header, int, int]:
    """(header, payload bytes, file bytes) of a .cae file on disk; errors name the file."""
    p = Path(path)
    data = _read_file(p)
    try:
        header, payload = unpack(data)
    except CodecError as e:
        raise CodecError(f"{p}: {e}") from None
    # Its images are decoded in memory, all at once: a count no memory here can hold is refused
    # before anything (names, output paths) is made for each of them.
    n, c, h, w = header.count, header.channels, header.height, header.width
    check_fits(n * c * h * w, f"{p}: decoding its {n:,} images of {c}x{h}x{w}")
    return header, len(payload), len(data)


def _read_file(p: Path) -> bytes:
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a folder; give a .cae file")
    return p.read_bytes()
