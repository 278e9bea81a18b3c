"""Photo files <-> version-2 .cae files: what ``convae encode`` / ``decode`` / ``info`` call for a
learned photo codec run. Each function returns its result; the CLI prints it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write
from ..images import read_images
from ..limits import check_fits
from .format import CodecError
from .format2 import PhotoHeader, unpack_photo
from .photo import PhotoCodec, decode_photo, encode_photo
from .photo_store import load_photo_codec

__all__ = ["encode_file", "decode_file", "read_photo_file", "photo_info"]

# Bytes per pixel while decoding: float32 activations of the post-filter (16 channels at 1/4 of
# the pixels, twice) and the unblocked image, plus the output.
_DECODE_BYTES_PER_PIXEL = 64


def encode_file(
    codec: PhotoCodec, image_path: str | os.PathLike, out: str | os.PathLike,
    level: float | None = None, name: str | None = None, run_hint: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Encode one image file into ``out`` (written atomically); returns sizes, bpp and timing."""
    images, _ = read_images([image_path], codec.channels)
    img = images[0]
    t0 = time.perf_counter()
    blob = encode_photo(codec, img, level, name=name, run_hint=run_hint)
    seconds = time.perf_counter() - t0
    atomic_write(out, blob)
    header, payload = unpack_photo(blob)
    _, h, w = img.shape
    return {"out": str(out), "images": 1, "height": h, "width": w, "bytes": len(blob),
            "payload_bytes": len(payload), "bpp": 8 * len(blob) / (h * w),
            "level": header.level, "model": header.fingerprint.hex(), "format_version": 2,
            "encode_seconds": seconds}  # fmt: skip


def read_photo_file(path: str | os.PathLike) -> tuple[PhotoHeader, bytes, int]:
    """(header, payload, file bytes) of a version-2 file; errors name the file."""
    p = Path(path)
    data = p.read_bytes()
    try:
        header, payload = unpack_photo(data)
    except CodecError as e:
        raise CodecError(f"{p}: {e}") from None
    need = _DECODE_BYTES_PER_PIXEL * header.height * header.width
    check_fits(need, f"{p}: decoding its {header.width}x{header.height} photo")
    return header, payload, len(data)


def decode_file(
    path: str | os.PathLike, run: str | os.PathLike
) -> tuple[torch.Tensor, PhotoHeader, float]:
    """(uint8 [C, H, W], header, decode seconds) of a version-2 file, with the run's codec."""
    header, _, _ = read_photo_file(path)
    codec = load_photo_codec(run, create_if_missing=False)
    data = Path(path).read_bytes()
    t0 = time.perf_counter()
    try:
        image, _ = decode_photo(codec, data)
    except CodecError as e:
        raise CodecError(f"{path}: {e}") from None
    return image, header, time.perf_counter() - t0


def photo_info(path: str | os.PathLike) -> dict[str, Any]:
    """A version-2 file's header and sizes, its checksum checked (no model needed)."""
    header, payload, size = read_photo_file(path)
    h, w = header.height, header.width
    return {"file": str(path), "bytes": size, "format_version": header.version, "images": 1,
            "channels": header.channels, "height": h, "width": w, "level": header.level,
            "model": header.fingerprint.hex(), "tables": header.tables_hash.hex(),
            "run": header.run, "names": [header.name] if header.name else None,
            "payload_bytes": len(payload), "bytes_per_image": size, "bpp": 8 * size / (h * w),
            "checksum": "ok"}  # fmt: skip
