"""Image files: find them, decode one within limits, read many, write PNGs.

Every decode goes through :func:`decode_array`: the image's pixel count is checked against a
limit (Pillow's decompression-bomb limit by default, ``max_pixels`` raises it) and its memory
against what the machine has, before a byte of pixels is allocated. Downscaling JPEGs decode at
a reduced scale (``Image.draft``: the DCT does most of the shrinking, several times faster), and
a resize to a square computes only the centre crop it keeps, so a 1 x 20,000,000 image resized to
64 x 64 never becomes a 64 x 1,280,000,000 intermediate.

Channels: 1 (grey) or 3 (RGB). Unforced, a file in a grey mode decodes to 1 channel and any other
to RGB; :func:`luma` is exactly Pillow's ``convert("L")``.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write
from .limits import MemoryLimitError, check_fits, human_bytes

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageTooLarge",
    "default_max_pixels",
    "walk_images",
    "list_image_files",
    "decode_array",
    "decode_image",
    "read_images",
    "read_image_files",
    "write_png",
    "is_grey",
    "luma",
    "decode_stored",
    "too_large",
    "decode_files",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")
MAX_PIXELS_HINT = (
    "raise the limit with --max-pixels N (max_pixels=N in Python) if you trust the file"
)


class ImageTooLarge(ValueError):
    """An image with more pixels than the decoding limit (a possible decompression bomb)."""

    def __init__(self, message: str, pixels: int) -> None:
        super().__init__(message)
        self.pixels = pixels

    def __reduce__(self):  # crosses process boundaries (the cache's decoding workers)
        return (type(self), (str(self), self.pixels))


def default_max_pixels() -> int | None:
    """The pixel limit when none is given: the size at which Pillow refuses an image as a
    decompression bomb (twice ``PIL.Image.MAX_IMAGE_PIXELS``: 178,956,970 unless changed)."""
    from PIL import Image

    return None if Image.MAX_IMAGE_PIXELS is None else 2 * int(Image.MAX_IMAGE_PIXELS)


# ---------------------------------------------------------------------------------------------
# Finding image files


def walk_images(root: Path) -> list[tuple[str, int, int]]:
    """Image files under ``root`` as (relative POSIX name, bytes, mtime in ns), in the order of
    their paths' parts (as sorted ``pathlib`` paths). Symlinked folders are not entered (loops);
    folders that cannot be read are passed over."""
    found: list[tuple[tuple[str, ...], int, int]] = []
    stack: list[tuple[str, tuple[str, ...]]] = [(os.fspath(root), ())]
    while stack:
        folder, parts = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (PermissionError, NotADirectoryError, FileNotFoundError):
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, (*parts, e.name)))
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file():
                    st = e.stat()
                    found.append(((*parts, e.name), st.st_size, st.st_mtime_ns))
            except OSError:  # vanished or a dangling link: not an image we can read
                continue
    found.sort(key=lambda r: r[0])
    return [("/".join(p), size, mtime) for p, size, mtime in found]


def list_image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image paths; missing paths raise."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            out.extend(p / name for name, _, _ in walk_images(p))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


# ---------------------------------------------------------------------------------------------
# Decoding one file

_UNLIMITED = threading.Lock()  # Pillow's bomb limit is a module global: changed under a lock


@contextlib.contextmanager
def _pillow_unlimited() -> Iterator[None]:
    """Pillow's own bomb check off, for an image our ``max_pixels`` allows beyond it."""
    from PIL import Image

    with _UNLIMITED:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decoded_bytes(mode: str, pixels: int, channels: int) -> int:
    """Memory of decoding: Pillow's buffer (4 bytes a pixel for RGB, RGBA, CMYK, I, F) plus
    the uint8 array handed back."""
    per = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return pixels * (per + channels)


def too_large(name: str, pixels: int, limit: int) -> ImageTooLarge:
    """The error for an image of ``pixels`` above ``limit`` whose size and mode are not at hand."""
    return ImageTooLarge(
        f"{name}: {pixels:,} pixels, above the limit of {limit:,} pixels; {MAX_PIXELS_HINT}", pixels
    )


def _too_large(name: str, size: tuple[int, int], mode: str, limit: int) -> ImageTooLarge:
    w, h = size
    need = _decoded_bytes(mode, w * h, 3)
    return ImageTooLarge(
        f"{name}: {w}x{h} is {w * h:,} pixels (about {human_bytes(need)} to decode), above the "
        f"limit of {limit:,} pixels; {MAX_PIXELS_HINT}",
        w * h,
    )


@contextlib.contextmanager
def _open_checked(src: Path | bytes, max_pixels: int | None) -> Iterator:
    """The lazily opened image (header read, no pixels yet), its size within ``max_pixels``
    (None: :func:`default_max_pixels`) and its decoded memory within what is available."""
    from PIL import Image

    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    pillow = default_max_pixels()
    fp = io.BytesIO(src) if isinstance(src, bytes) else src
    name = "image" if isinstance(src, bytes) else str(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
        beyond = pillow is not None and (limit is None or limit > pillow)
        with _pillow_unlimited() if beyond else contextlib.nullcontext():
            try:
                im = Image.open(fp)
            except Image.DecompressionBombError:
                with _pillow_unlimited(), Image.open(fp) as probe:  # only to name its size
                    raise _too_large(name, probe.size, probe.mode, limit or 0) from None
            with im:
                w, h = im.size
                if limit is not None and w * h > limit:
                    raise _too_large(name, im.size, im.mode, limit)
                need = _decoded_bytes(im.mode, w * h, 3)
                if need > 1 << 26:  # below 64 MiB it cannot matter (and /proc costs 0.2 ms)
                    check_fits(need, f"{name}: decoding {w}x{h} pixels")
                yield im


def _scaled_size(w: int, h: int, size: int | None, max_side: int | None) -> tuple[int, int] | None:
    """The whole image's size after scaling (before any centre crop), or None for no resize."""
    if size is not None:
        if (w, h) == (size, size):
            return None
        s = size / min(w, h)
        return max(size, round(w * s)), max(size, round(h * s))
    if max_side is not None and max(w, h) > max_side:
        s = max_side / max(w, h)
        return max(1, round(w * s)), max(1, round(h * s))
    return None


def _orientation(im) -> int:
    """The EXIF orientation tag (1: as stored; 5-8 transpose width and height)."""
    with contextlib.suppress(Exception):  # a broken EXIF block is the decoder's business
        return int(im.getexif().get(0x0112, 1))
    return 1


def _to_mode(im, channels: int | None):
    """``im`` as "L" or "RGB": forced by ``channels``, else "L" for grey modes. 16-bit grey keeps
    its top 8 bits (Pillow's ``convert("L")`` would clip it)."""
    from PIL import Image

    if im.mode.startswith("I;16"):
        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
    if channels is None:
        channels = 1 if im.mode in GREY_MODES else 3
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _resized(im, size: int | None, max_side: int | None):
    """Resize (bilinear, antialiased when shrinking): to ``size`` x ``size`` (shorter side to
    ``size``, then the centre crop) or the longer side down to ``max_side``."""
    from PIL import Image

    w, h = im.size
    scaled = _scaled_size(w, h, size, max_side)
    if scaled is None:
        return im
    nw, nh = scaled
    bilinear = Image.Resampling.BILINEAR
    if size is None:
        return im.resize((nw, nh), bilinear)
    left, top = (nw - size) // 2, (nh - size) // 2
    if nw * nh <= 4 * max(w * h, size * size):  # resize then crop
        return im.resize((nw, nh), bilinear).crop((left, top, left + size, top + size))
    # An extreme aspect ratio: resample only the source box the crop keeps (within 1 level of
    # the above, with no intermediate larger than the output).
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return im.resize((size, size), bilinear, box=box)


def _check_resize(
    src, pixels: int, scaled: tuple[int, int], size: int, max_pixels: int | None
) -> None:
    """A resize of ``pixels`` to ``size`` x ``size`` (which may enlarge) within the pixel limit
    and memory: what :func:`_resized` allocates."""
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    name = "image" if isinstance(src, bytes) else str(src)
    big = scaled[0] * scaled[1]  # resized, then centre-cropped ...
    if big > 4 * max(pixels, size * size):  # ... unless only the kept box is resampled
        big = size * size
    if limit is not None and size * size > limit:
        raise ImageTooLarge(
            f"{name}: resizing to {size}x{size} makes {size * size:,} pixels, above the limit of "
            f"{limit:,} pixels; choose a smaller --image-size (or {MAX_PIXELS_HINT})",
            size * size,
        )
    if big > 1 << 24:
        check_fits(_decoded_bytes("RGB", big, 3), f"{name}: resizing to {size}x{size}")


def decode_array(
    src: Path | bytes,
    channels: int | None = None,
    size: int | None = None,
    *,
    max_side: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode one image file -> uint8 ``[H, W, C]`` (C = 1 or 3, see the module notes).

    ``size``: resize the shorter side to ``size`` and keep the centre ``size x size``;
    ``max_side``: shrink so that the longer side is at most ``max_side``. An image above
    ``max_pixels`` (default :func:`default_max_pixels`) is an :class:`ImageTooLarge` error, one
    whose decoding memory exceeds what is available a ``MemoryLimitError``; an unreadable file
    raises whatever its decoder raises (``OSError``, ``ValueError``, ``SyntaxError``...).
    """
    return _decode(src, channels, size, max_side, max_pixels)[0]


def _decode(src: Path | bytes, channels: int | None, size: int | None, max_side: int | None,
            max_pixels: int | None) -> tuple[np.ndarray, int]:  # fmt: skip
    """:func:`decode_array` and the file's own pixel count (its size before any resize)."""
    from PIL import ImageOps

    with _open_checked(src, max_pixels) as im:
        w, h = im.size
        orientation = _orientation(im)
        swap = orientation in (5, 6, 7, 8)
        ow, oh = (h, w) if swap else (w, h)
        scaled = _scaled_size(ow, oh, size, max_side)
        if scaled is not None and size is not None:
            _check_resize(src, ow * oh, scaled, size, max_pixels)
        if scaled is not None and im.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale, never below the scaled size.
            im.draft(im.mode, scaled[::-1] if swap else scaled)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            img = ImageOps.exif_transpose(im)
        else:
            im.load()  # as stored: no transposed copy
            img = im
        img = _resized(_to_mode(img, channels), size, max_side)
        arr = np.array(img, dtype=np.uint8)  # a writable copy (Pillow's buffer is read-only)
    return np.ascontiguousarray(arr[:, :, None] if arr.ndim == 2 else arr), w * h


def decode_image(
    src: Path | bytes,
    channels: int | None = None,
    size: int | None = None,
    *,
    max_side: int | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """:func:`decode_array` as uint8 ``[C, H, W]``."""
    a = decode_array(src, channels, size, max_side=max_side, max_pixels=max_pixels)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def is_grey(x: np.ndarray, tolerance: int = 2, axis: int = 1) -> bool:
    """Every pixel of uint8 RGB ``x`` (channels on ``axis``) has R, G, B within ``tolerance``
    levels of each other (lossy WebP/JPEG decode grey with +-1 level of chroma rounding)."""
    r, g, b = (np.take(x, i, axis=axis).astype(np.int16) for i in range(3))
    return bool(np.abs(r - g).max() <= tolerance and np.abs(g - b).max() <= tolerance)


def luma(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """uint8 RGB -> grey with 1 channel on ``axis``, exactly as Pillow's ``convert("L")``
    (ITU-R 601-2 in 16-bit fixed point)."""
    r, g, b = (np.take(x, [i], axis=axis).astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Reading user files, writing PNGs


def _read_one(p: Path, **kw) -> np.ndarray:
    """[C, H, W] of one user file; an unreadable one is a ``ValueError`` naming it (limits
    errors pass through as they are: they already name it)."""
    try:
        return decode_image(p, **kw)
    except (ImageTooLarge, MemoryLimitError):
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{p}: cannot read image ({e})") from e


def read_images(
    inputs: Iterable[str | os.PathLike],
    channels: int,
    *,
    max_side: int | None = None,
    max_pixels: int | None = None,
) -> tuple[list[torch.Tensor], list[Path]]:
    """Image files or folders -> (uint8 [C, H, W] each at its own size, or its longer side
    shrunk to ``max_side``; paths). An unreadable file is an error naming it."""
    paths = list_image_files(inputs)
    if not paths:
        raise ValueError("no image files found in the given inputs")
    kw = {"channels": channels, "max_side": max_side, "max_pixels": max_pixels}
    return [torch.from_numpy(_read_one(p, **kw)) for p in paths], paths


def read_image_files(
    inputs: Iterable[str | os.PathLike],
    channels: int,
    image_size: int,
    resize: bool = False,
    *,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, list[Path]]:
    """Read user images for a model of one input size -> (uint8 [N, C, H, W], paths).

    A size mismatch is an error unless ``resize`` (resize + centre crop); colour images are
    converted to the model's channel count (grey <-> RGB) since that loses nothing a model could
    use.
    """
    paths = list_image_files(inputs)
    if not paths:
        raise ValueError("no image files found in the given inputs")
    arrs = []
    for p in paths:
        a = _read_one(p, channels=channels, size=image_size if resize else None,
                      max_pixels=max_pixels)  # fmt: skip
        if a.shape[1:] != (image_size, image_size):
            raise ValueError(
                f"{p}: image is {a.shape[2]}x{a.shape[1]} but the model takes "
                f"{image_size}x{image_size}; pass --resize to resize and centre-crop"
            )
        arrs.append(a)
    check_fits(sum(a.nbytes for a in arrs), f"stacking {len(arrs)} images")
    return torch.from_numpy(np.stack(arrs)), paths


def write_png(img: np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """Write one image (uint8 or float in [0, 1]; [C, H, W] or [H, W]) as PNG, atomically."""
    from PIL import Image

    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write(Path(path), buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Decoding many files in worker processes (the folder cache)

_CHUNK = 16  # files per task sent to a worker
PARALLEL_FROM = 64  # fewer files decode in the calling process (starting workers costs more)


def decode_stored(path: Path, channels: int | None, size: int | None, max_side: int | None,
                  max_pixels: int | None) -> tuple:  # fmt: skip
    """One file as the cache stores it: ("ok", uint8 [H, W, C], grey, pixels) where an exactly
    grey RGB image (unforced channels) comes back with 1 channel, ``grey`` says whether R, G, B
    are within 2 levels and ``pixels`` is the file's own pixel count (a later, lower limit
    refuses it); ("error", message) for an unreadable file; ("large", pixels, message) above
    ``max_pixels``. A ``MemoryLimitError`` is raised: no file is to blame."""
    try:
        a, pixels = _decode(path, channels, size, max_side, max_pixels)
    except ImageTooLarge as e:
        return ("large", e.pixels, str(e))
    except MemoryLimitError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
        return ("error", f"{path}: cannot read image ({e})")
    if a.shape[2] == 1:
        return ("ok", a, True, pixels)
    if channels is None and (a[:, :, 0] == a[:, :, 1]).all() and (a[:, :, 1] == a[:, :, 2]).all():
        return ("ok", np.ascontiguousarray(a[:, :, :1]), True, pixels)  # 1 channel holds it exactly
    return ("ok", a, is_grey(a, axis=2), pixels)


def _decode_chunk(job: tuple) -> list[tuple[int, tuple]]:
    items, args = job
    return [(i, decode_stored(path, *args)) for i, path in items]


def _worker_init() -> None:

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def decode_files(
    items: list[tuple[int, Path]],
    channels: int | None,
    size: int | None,
    max_side: int | None,
    max_pixels: int | None,
    workers: int,
) -> Iterator[list[tuple[int, tuple]]]:
    """:func:`decode_stored` of every (index, path) of ``items``, by ``workers`` processes, in
    order, a chunk of results at a time."""

    args = (channels, size, max_side, max_pixels)
    jobs = [(items[k : k + _CHUNK], args) for k in range(0, len(items), _CHUNK)]
    if workers <= 1 or len(items) < PARALLEL_FROM:
        yield from map(_decode_chunk, jobs)
        return
    # fork: the workers start at once and run only Pillow and numpy (no torch, no threads).
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
        yield from pool.imap(_decode_chunk, jobs)
