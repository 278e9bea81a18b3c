"""A folder of images decoded once, in parallel, into an on-disk uint8 cache; batches read from it.

The first use of a folder decodes every image file once (worker processes, JPEGs at a reduced
scale when they are shrunk) into one pixel file. Later uses - other runs, other commands, every
DDP rank - list the folder, compare its signature and read crops straight from the file with
``os.pread``: nothing is loaded into memory but the rows a crop covers, and the page cache is
the operating system's, not the process's (a cache larger than RAM trains at a constant RSS).

Layout, under ``convae.data.cache_dir() / "folders" / "<folder name>-<key>"``::

    lock          flock held while a build runs: other processes (DDP ranks) wait, then use it
    current       the name of the live generation, replaced atomically
    g-<id>/       one immutable generation
      pixels.bin  every readable image's pixels, uint8 [H, W, C] (C = 1 or 3), one after another
      index.npz   per listed file: offset, height, width, stored channels, grey, status, pixels
      meta.json   format, folder, options, decoder, signature, names, errors, channels, bytes
    .build-<id>/  a build in progress; a killed build's is removed by the next build

The key is a hash of the resolved folder path and the decode options (``image_size`` squares,
``max_side``, forced ``channels``). A generation is up to date while the signature of the
listing (every image file's relative name, size and modification time), the cache format and
the Pillow version match. Otherwise it is rebuilt into a new generation: files whose name, size
and time are unchanged keep their pixels (copied, not decoded), the others are decoded. A build
writes into ``.build-<id>`` and becomes visible by one directory rename plus the atomic
replacement of ``current``, so a kill at any moment leaves the previous generation (or none) and
never a half-written one.

Channels: with ``channels`` forced every image is stored that way. Otherwise each image is
stored as decoded (grey modes and exactly grey RGB as 1 channel, other RGB as 3), and the folder
reads as 1 channel when every image is grey (RGB within 2 levels counts as grey), else as 3.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .images import IMAGE_SUFFIXES, ImageTooLarge, decode_array, is_grey, luma, walk_images
from .limits import MemoryLimitError, check_fits

log = logging.getLogger(__name__)

__all__ = [
    "CacheOptions",
    "CacheReport",
    "CachedImages",
    "open_folder",
    "update_folder",
    "read_folder",
    "folder_cache_root",
]

FORMAT = 1
OK, UNREADABLE, TOO_LARGE = 0, 1, 2  # index status of a listed file
_PARALLEL_FROM = 64  # files to decode: fewer decode in this process (starting workers costs more)
_CHUNK = 16  # files per task sent to a worker
Progress = Callable[[int, int], None]  # (files done, files in the folder)


@dataclass(frozen=True)
class CacheOptions:
    """What is stored: ``image_size`` x ``image_size`` squares (resize + centre crop), images with
    their longer side shrunk to ``max_side``, or (neither) each image at its own size; channels
    forced to 1 or 3, or None for the folder's own (see the module notes)."""

    image_size: int | None = None
    max_side: int | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        for flag, v in (("--image-size", self.image_size), ("--max-side", self.max_side)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{flag} must be a positive integer, not {v!r}")
        if self.image_size is not None and self.max_side is not None:
            raise ValueError("give --image-size N (squares) or --max-side M (any shape), not both")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"--channels must be 1 or 3, not {self.channels!r}")

    def describe(self) -> str:
        if self.image_size is not None:
            shape = f"{self.image_size}x{self.image_size} centre crops"
        elif self.max_side is not None:
            shape = f"longer side at most {self.max_side}"
        else:
            shape = "each at its own size"
        return shape + ("" if self.channels is None else f", {self.channels} channel(s)")


@dataclass(frozen=True)
class CacheReport:
    """What a folder's cache holds, and what opening it did (``state``: "built", "updated",
    "up to date"; without building: "missing" or "stale")."""

    folder: str
    cache: str  # the live generation's folder ("" when there is none)
    state: str
    options: str
    files: int  # image files listed
    images: int  # readable images stored
    skipped: int  # unreadable files
    skipped_files: tuple[str, ...]  # the first few, with their errors
    refused: int  # files above the pixel limit
    channels: int | None
    bytes: int  # of the pixel file
    sizes: str  # "64x64", or the smallest and the largest
    decoded: int  # files decoded by this call
    reused: int  # files whose pixels were kept from the previous generation
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class _Listing:
    root: Path  # resolved
    names: list[str]  # relative POSIX paths, sorted by parts
    sizes: np.ndarray  # int64 bytes
    mtimes: np.ndarray  # int64 ns
    signature: str


def _list(root: str | os.PathLike) -> _Listing:
    given = Path(root).expanduser()
    if not given.is_dir():
        raise FileNotFoundError(f"folder {given} does not exist")
    resolved = given.resolve()
    rows = walk_images(resolved)
    if not rows:
        raise ValueError(f"folder {given} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    h = hashlib.sha256()
    for name, size, mtime in rows:
        h.update(os.fsencode(name) + f"\0{size}\0{mtime}\n".encode())
    return _Listing(
        resolved,
        [r[0] for r in rows],
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.int64),
        h.hexdigest(),
    )


def folder_cache_root() -> Path:
    """Where folder caches live: ``convae.data.cache_dir() / "folders"``."""
    from .data import cache_dir

    return cache_dir() / "folders"


def _key_dir(root: Path, opts: CacheOptions) -> Path:
    key = json.dumps({"root": os.fsdecode(root), "format": FORMAT, **asdict(opts)}, sort_keys=True)
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name)[:40] or "root"
    return folder_cache_root() / f"{label}-{digest}"


def _decoder() -> str:
    import PIL

    return f"Pillow {PIL.__version__}"


# ---------------------------------------------------------------------------------------------
# A generation on disk (read side)


class _Generation:
    """One built generation: its index in memory, its pixel file open for ``pread``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = json.loads((path / "meta.json").read_text())
        with np.load(path / "index.npz", allow_pickle=False) as z:
            ix = {k: z[k] for k in z.files}
        self.offset, self.height, self.width = ix["offset"], ix["height"], ix["width"]
        self.stored, self.grey, self.status = ix["stored"], ix["grey"], ix["status"]
        self.pixels, self.sizes, self.mtimes = ix["pixels"], ix["sizes"], ix["mtimes"]
        self.names: list[str] = self.meta["names"]
        self.errors: dict[str, str] = self.meta["errors"]
        self.root = Path(self.meta["folder"])
        self.channels = int(self.meta["channels"] or 3)
        n = len(self.names)
        if any(len(a) != n for a in (self.offset, self.status, self.sizes, self.mtimes)):
            raise ValueError(f"{path}: index and names disagree")
        self.fd = os.open(path / "pixels.bin", os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)
        if os.fstat(self.fd).st_size != int(self.meta["bytes"]):
            raise ValueError(f"{path}: pixel file size disagrees with its index")
        self.ok = np.flatnonzero(self.status == OK)
        self.classes, self.labels = _classes(self.names, self.root)

    def fresh(self, listing: _Listing, opts: CacheOptions, max_pixels: int | None) -> bool:
        m = self.meta
        return (
            m.get("format") == FORMAT
            and m.get("options") == asdict(opts)
            and m.get("decoder") == _decoder()
            and m.get("signature") == listing.signature
            and not self.retry_large(max_pixels).any()
        )

    def retry_large(self, max_pixels: int | None) -> np.ndarray:
        """Refused files that ``max_pixels`` now allows: bool [N]."""
        from .images import default_max_pixels

        limit = default_max_pixels() if max_pixels is None else max_pixels
        big = self.status == TOO_LARGE
        return big if limit is None else big & (self.pixels <= limit)

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes of the pixel file at ``offset``."""
        parts, done = [], 0
        while done < n:  # one pread returns at most ~2 GiB
            b = os.pread(self.fd, min(n - done, 1 << 30), offset + done)
            if not b:
                raise OSError(f"{self.path}/pixels.bin is shorter than its index; delete the cache")
            parts.append(b)
            done += len(b)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _classes(names: list[str], root: Path) -> tuple[list[str], np.ndarray]:
    """Class names (first-level sub-folders, sorted; the folder's own name when there are none)
    and each file's label (files directly in the folder get 0)."""
    firsts = [n.split("/", 1)[0] if "/" in n else None for n in names]
    subdirs = sorted({f for f in firsts if f is not None})
    index = {c: i for i, c in enumerate(subdirs)}
    labels = np.array([index[f] if f is not None else 0 for f in firsts], dtype=np.int64)
    return (subdirs or [root.name]), labels


_OPENED: dict[Path, _Generation] = {}  # generations this process has open, by folder


def _live(keydir: Path) -> _Generation | None:
    """The current generation of ``keydir``, or None (none yet, or damaged: rebuilt later)."""
    for _ in range(3):  # a builder may replace it between reading `current` and opening it
        try:
            name = (keydir / "current").read_text().strip()
        except FileNotFoundError:
            return None
        path = keydir / name
        if path in _OPENED:
            return _OPENED[path]
        try:
            gen = _Generation(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("the cache in %s is damaged (%s): it will be rebuilt", path, e)
            return None
        if len(_OPENED) >= 8:
            _OPENED.pop(next(iter(_OPENED)))
        _OPENED[path] = gen
        return gen
    return None


# ---------------------------------------------------------------------------------------------
# Building a generation


@contextlib.contextmanager
def _locked(keydir: Path) -> Iterator[None]:
    """Hold ``keydir/lock`` (flock: released when its holder ends, even killed)."""
    fd = os.open(keydir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish caching into %s", keydir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _decode_entry(path: Path, opts: CacheOptions, max_pixels: int | None) -> tuple:
    """("ok", uint8 [H, W, C], grey) | ("error", message) | ("large", pixels, message)."""
    try:
        a = decode_array(path, opts.channels, opts.image_size, max_side=opts.max_side,
                         max_pixels=max_pixels)  # fmt: skip
    except ImageTooLarge as e:
        return ("large", e.pixels, str(e))
    except MemoryLimitError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
        return ("error", f"{path}: cannot read image ({e})")
    if a.shape[2] == 1:
        return ("ok", a, True)
    if (
        opts.channels is None
        and (a[:, :, 0] == a[:, :, 1]).all()
        and (a[:, :, 1] == a[:, :, 2]).all()
    ):
        return ("ok", np.ascontiguousarray(a[:, :, :1]), True)  # exactly grey: 1 channel holds it
    return ("ok", a, is_grey(a, axis=2))


def _decode_chunk(job: tuple) -> list[tuple[int, tuple]]:
    root, items, opts, max_pixels = job
    return [(i, _decode_entry(root / name, opts, max_pixels)) for i, name in items]


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _decoded(root: Path, items: list, opts, max_pixels, workers: int) -> Iterator[list]:
    """Decode results for ``items`` [(index, name)], in order, a chunk at a time."""
    jobs = [(root, items[k : k + _CHUNK], opts, max_pixels) for k in range(0, len(items), _CHUNK)]
    if workers <= 1 or len(items) < _PARALLEL_FROM:
        yield from map(_decode_chunk, jobs)
        return
    # fork: the workers start at once and run only Pillow and numpy (no torch, no threads).
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
        yield from pool.imap(_decode_chunk, jobs)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(src: int, dst: int, offset: int, n: int) -> None:
    """Append ``n`` bytes of ``src`` from ``offset`` to ``dst`` (in the kernel where it can)."""
    while n > 0:
        try:
            k = os.copy_file_range(src, dst, n, offset)
        except (AttributeError, OSError):
            k = 0
        if k <= 0:  # no copy_file_range here (or across file systems): through memory
            b = os.pread(src, min(n, 1 << 24), offset)
            if not b:
                raise OSError("the previous cache's pixel file is shorter than its index")
            _write_all(dst, b)
            k = len(b)
        offset, n = offset + k, n - k


class _Columns:
    """The index being built, one row per listed file."""

    def __init__(self, listing: _Listing) -> None:
        n = len(listing.names)
        self.offset = np.zeros(n, np.int64)
        self.height = np.zeros(n, np.int32)
        self.width = np.zeros(n, np.int32)
        self.stored = np.zeros(n, np.uint8)
        self.grey = np.zeros(n, bool)
        self.status = np.full(n, UNREADABLE, np.uint8)
        self.pixels = np.zeros(n, np.int64)
        self.errors: dict[str, str] = {}
        self.sizes, self.mtimes = listing.sizes, listing.mtimes

    def arrays(self) -> dict[str, np.ndarray]:
        names = (
            "offset",
            "height",
            "width",
            "stored",
            "grey",
            "status",
            "pixels",
            "sizes",
            "mtimes",
        )
        return {k: getattr(self, k) for k in names}


def _reuse_plan(listing: _Listing, old: _Generation | None, max_pixels: int | None) -> np.ndarray:
    """For each listed file, the row of the previous generation whose result still holds, or -1."""
    plan = np.full(len(listing.names), -1, np.int64)
    if old is None or old.meta.get("decoder") != _decoder():
        return plan
    retry = old.retry_large(max_pixels)
    rows = {name: j for j, name in enumerate(old.names)}
    for i, name in enumerate(listing.names):
        j = rows.get(name, -1)
        if j >= 0 and old.sizes[j] == listing.sizes[i] and old.mtimes[j] == listing.mtimes[i]:
            plan[i] = -1 if retry[j] else j
    return plan


def _copy_reused(fd: int, old: _Generation | None, plan: np.ndarray, cols: _Columns,
                 names: list[str]) -> int:  # fmt: skip
    """Copy the kept images' pixels (contiguous runs at once) and rows; returns bytes written."""
    written, run_start, run_len = 0, 0, 0
    for i in np.flatnonzero(plan >= 0):
        j = int(plan[i])
        for k in ("height", "width", "stored", "grey", "status", "pixels"):
            getattr(cols, k)[i] = getattr(old, k)[j]
        if old.status[j] != OK:
            cols.errors[names[i]] = old.errors.get(old.names[j], "cannot read image")
            continue
        n = int(old.height[j]) * int(old.width[j]) * int(old.stored[j])
        cols.offset[i] = written
        if run_len and int(old.offset[j]) == run_start + run_len:
            run_len += n
        else:
            if run_len:
                _copy_range(old.fd, fd, run_start, run_len)
            run_start, run_len = int(old.offset[j]), n
        written += n
    if run_len:
        _copy_range(old.fd, fd, run_start, run_len)
    return written


def _store_result(fd: int, i: int, res: tuple, cols: _Columns, name: str, offset: int) -> int:
    """Write one decode result; returns the bytes written."""
    if res[0] == "ok":
        a = res[1]
        cols.offset[i], cols.status[i], cols.grey[i] = offset, OK, res[2]
        cols.height[i], cols.width[i], cols.stored[i] = a.shape
        _write_all(fd, a)
        return a.nbytes
    if res[0] == "large":
        cols.status[i], cols.pixels[i], cols.errors[name] = TOO_LARGE, res[1], res[2]
    else:
        cols.status[i], cols.errors[name] = UNREADABLE, res[1]
    return 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(keydir: Path, listing: _Listing, opts: CacheOptions, old: _Generation | None,
           max_pixels: int | None, workers: int, progress: Progress | None) -> tuple:  # fmt: skip
    """Build and publish a new generation; returns (its name, files decoded, files reused)."""
    names, total = listing.names, len(listing.names)
    plan = _reuse_plan(listing, old, max_pixels)
    todo = [(int(i), names[i]) for i in np.flatnonzero(plan < 0)]
    token = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    tmp = keydir / f".build-{token}"
    tmp.mkdir()
    cols = _Columns(listing)
    try:
        fd = os.open(tmp / "pixels.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            offset = _copy_reused(fd, old, plan, cols, names)
            done = total - len(todo)
            if progress is not None:
                progress(done, total)
            for chunk in _decoded(listing.root, todo, opts, max_pixels, workers):
                for i, res in chunk:
                    offset += _store_result(fd, i, res, cols, names[i], offset)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            os.fsync(fd)
        finally:
            os.close(fd)
        _write_index(tmp, listing, opts, cols, offset)
        os.rename(tmp, keydir / f"g-{token}")
        _fsync_dir(keydir)
        from .checkpoint import atomic_write

        atomic_write(keydir / "current", f"g-{token}\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise ValueError(
                f"no space left on the device of {keydir} while caching {listing.root}; free "
                "some, or point $CONVAE_CACHE to a larger disk"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"g-{token}", len(todo), total - len(todo)


def _write_index(tmp: Path, listing: _Listing, opts: CacheOptions, cols: _Columns, nbytes: int):
    ok = cols.status == OK
    channels = opts.channels or (None if not ok.any() else 1 if cols.grey[ok].all() else 3)
    meta = {
        "format": FORMAT,
        "folder": os.fsdecode(listing.root),
        "options": asdict(opts),
        "decoder": _decoder(),
        "signature": listing.signature,
        "channels": channels,
        "bytes": nbytes,
        "names": listing.names,
        "errors": cols.errors,
    }
    with open(tmp / "index.npz", "wb") as f:
        np.savez(f, **cols.arrays())
        f.flush()
        os.fsync(f.fileno())
    with open(tmp / "meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())


def _clean(keydir: Path, keep: str | None) -> None:
    """Remove killed builds and generations other than ``keep`` (called under the lock)."""
    for p in keydir.iterdir():
        if p.name.startswith(".build-") or (p.name.startswith("g-") and p.name != keep):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Opening: up to date, or (re)built


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _ensure(root, opts: CacheOptions, max_pixels: int | None, workers: int | None,
            progress: Progress | None, build: bool = True) -> tuple:  # fmt: skip
    """(generation or None, state, decoded, reused, listing) for a folder: the live generation
    when up to date, else a new one built under the lock (``build=False``: none built)."""
    listing = _list(root)
    keydir = _key_dir(listing.root, opts)
    gen = _live(keydir) if keydir.is_dir() else None
    if gen is not None and gen.fresh(listing, opts, max_pixels):
        return gen, "up to date", 0, 0, listing
    if not build:
        return gen, "missing" if gen is None else "stale", 0, 0, listing
    keydir.mkdir(parents=True, exist_ok=True)
    with _locked(keydir):
        gen = _live(keydir)  # another process may have built it while we waited
        if gen is not None and gen.fresh(listing, opts, max_pixels):
            return gen, "up to date", 0, 0, listing
        _clean(keydir, keep=gen.path.name if gen is not None else None)
        todo = len(listing.names)
        log.info("caching %d image files of %s (%s) in %s", todo, root, opts.describe(), keydir)
        name, decoded, reused = _build(keydir, listing, opts, gen, max_pixels,
                                       workers or _default_workers(), progress)  # fmt: skip
        _clean(keydir, keep=name)
    new = _live(keydir)
    if new is None or new.path.name != name:  # pragma: no cover - only a concurrent rm -rf
        raise OSError(f"the cache just built in {keydir} disappeared")
    return new, "built" if gen is None else "updated", decoded, reused, listing


def _check(gen: _Generation, root, strict: bool) -> None:
    """Errors for files above the pixel limit, for unreadable files when ``strict``, and for a
    folder with no readable image."""
    refused = np.flatnonzero(gen.status == TOO_LARGE)
    if len(refused):  # after _ensure, only files the current limit still refuses
        j = int(refused[0])
        raise ImageTooLarge(gen.errors[gen.names[j]], int(gen.pixels[j]))
    bad = np.flatnonzero(gen.status == UNREADABLE)
    if len(bad) and strict:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(gen.errors[gen.names[int(bad[0])]] + more)
    if not len(gen.ok):
        raise ValueError(f"folder {root}: none of {len(gen.names)} image files could be read")


def open_folder(
    root: str | os.PathLike,
    *,
    image_size: int | None = None,
    max_side: int | None = None,
    channels: int | None = None,
    strict: bool = False,
    max_pixels: int | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> CachedImages:
    """A folder of images as a :class:`CachedImages` store, decoding it into the cache first when
    the cache is missing or out of date (see the module notes).

    Unreadable files are skipped and counted (``strict`` makes them an error naming the first);
    a file above ``max_pixels`` (default: Pillow's decompression-bomb limit) is an error naming it
    and its size. ``workers`` decoding processes (default: one per core); ``progress(done, total)``
    is called as files are decoded.
    """
    opts = CacheOptions(image_size, max_side, channels)
    gen, state, *_ = _ensure(root, opts, max_pixels, workers, progress)
    _check(gen, root, strict)
    skipped = int((gen.status == UNREADABLE).sum())
    if skipped and gen.path not in _WARNED:  # once per process, not once per split
        _WARNED.add(gen.path)
        log.warning("skipped %d unreadable file(s) in %s", skipped, root)
    return CachedImages(gen)


_WARNED: set[Path] = set()  # generations whose skipped files this process has reported


def update_folder(
    root: str | os.PathLike,
    *,
    image_size: int | None = None,
    max_side: int | None = None,
    channels: int | None = None,
    strict: bool = False,
    max_pixels: int | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    build: bool = True,
) -> CacheReport:
    """Build or update a folder's cache ahead of use and report what it holds (``build=False``:
    only report whether it is up to date). Errors as :func:`open_folder`'s."""
    t0 = time.perf_counter()
    opts = CacheOptions(image_size, max_side, channels)
    gen, state, decoded, reused, listing = _ensure(root, opts, max_pixels, workers, progress, build)
    if gen is not None and state not in ("missing", "stale"):
        _check(gen, root, strict)
    return _report(root, gen, state, opts, listing, decoded, reused, time.perf_counter() - t0)


def _report(root, gen, state, opts, listing, decoded, reused, seconds) -> CacheReport:
    if gen is None:
        return CacheReport(str(root), "", state, opts.describe(), len(listing.names), 0, 0, (),
                           0, None, 0, "", decoded, reused, seconds)  # fmt: skip
    ok = gen.ok
    bad = [n for j, n in enumerate(gen.names) if gen.status[j] == UNREADABLE]
    hw = np.stack([gen.height[ok], gen.width[ok]], 1) if len(ok) else np.zeros((0, 2), int)
    if len(hw) and (hw == hw[0]).all():
        sizes = f"{hw[0, 1]}x{hw[0, 0]}"
    elif len(hw):
        order = np.argsort(hw[:, 0].astype(np.int64) * hw[:, 1])
        lo, hi = hw[order[0]], hw[order[-1]]
        sizes = f"from {lo[1]}x{lo[0]} to {hi[1]}x{hi[0]}"
    else:
        sizes = ""
    return CacheReport(
        folder=str(root), cache=str(gen.path), state=state, options=opts.describe(),
        files=len(gen.names), images=len(ok), skipped=len(bad),
        skipped_files=tuple(gen.errors[n] for n in bad[:5]),
        refused=int((gen.status == TOO_LARGE).sum()), channels=gen.channels if len(ok) else None,
        bytes=int(gen.meta["bytes"]), sizes=sizes, decoded=decoded, reused=reused,
        seconds=seconds,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The image store


class CachedImages:
    """A folder's readable images from its cache (see :class:`convae.sampling.ImageStore`):
    ``crop`` and ``image`` read only the rows they need from the pixel file; ``labels``
    (first-level sub-folder), ``names`` (paths relative to the folder), ``classes``.
    ``subset(indices)`` is a view of some images (a split); nothing is held in memory but the
    index."""

    def __init__(self, gen: _Generation, rows: np.ndarray | None = None) -> None:
        self._gen = gen
        self._rows = gen.ok if rows is None else np.asarray(rows, dtype=np.int64)
        r = self._rows
        self.root, self.classes, self.channels = gen.root, gen.classes, gen.channels
        self.labels = gen.labels[r]
        self.names = [gen.names[j] for j in r.tolist()]
        self._off, self._stored = gen.offset[r], gen.stored[r]
        self._hw = np.stack([gen.height[r], gen.width[r]], 1).astype(np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(f"image {i} of {len(self)}")
        return self.image(i % len(self))

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.image(i) for i in range(len(self)))

    @property
    def cache(self) -> Path:
        """The generation folder the pixels are read from."""
        return self._gen.path

    def sizes(self) -> np.ndarray:
        """int64 [N, 2]: (height, width) of each image."""
        return self._hw.copy()

    def subset(self, indices) -> CachedImages:
        """A view of the images at ``indices`` (positions in this store)."""
        return CachedImages(self._gen, self._rows[np.asarray(indices, dtype=np.int64)])

    def _rows_hwc(self, i: int, top: int, h: int) -> np.ndarray:
        """Rows ``top:top+h`` of image ``i`` as stored: uint8 [h, W, c] (one pread)."""
        w, c = int(self._hw[i, 1]), int(self._stored[i])
        b = self._gen.read(int(self._off[i]) + top * w * c, h * w * c)
        return np.frombuffer(b, np.uint8).reshape(h, w, c)

    def _as_channels(self, a: np.ndarray) -> np.ndarray:
        """[h, w, c] as stored -> [C, h, w] in the store's channel count."""
        a = a.transpose(2, 0, 1)
        if a.shape[0] == self.channels:
            return a
        return np.repeat(a, 3, axis=0) if self.channels == 3 else luma(a, axis=0)

    def crop(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        """uint8 [C, h, w] from (top, left) of image ``i``."""
        H, W = self._hw[i]
        if not (0 <= top and top + h <= H and 0 <= left and left + w <= W):
            raise IndexError(f"crop {h}x{w} at ({top}, {left}) outside image {i} ({H}x{W})")
        return self._as_channels(self._rows_hwc(i, top, h)[:, left : left + w])

    def image(self, i: int) -> torch.Tensor:
        """uint8 [C, H, W]."""
        a = self._as_channels(self._rows_hwc(i, 0, int(self._hw[i, 0])))
        return torch.from_numpy(np.array(a))  # a fresh, writable copy

    def uniform_size(self) -> tuple[int, int]:
        """(H, W) shared by every image; else a one-line error naming an odd file."""
        if not len(self):
            return (0, 0)
        sizes, counts = np.unique(self._hw, axis=0, return_counts=True)
        if len(sizes) == 1:
            return int(sizes[0, 0]), int(sizes[0, 1])
        common = sizes[np.argmax(counts)]
        odd = int(np.flatnonzero((self._hw != common).any(1))[0])
        h, w = self._hw[odd]
        raise ValueError(
            f"folder {self.root}: images of {len(sizes)} sizes ({self.names[odd]} is {w}x{h}, "
            f"{counts.max()} of {len(self)} are {common[1]}x{common[0]}); pass --crop N to train "
            "on N x N crops, or --image-size N to resize them all"
        )

    def stacked(self) -> torch.Tensor:
        """All images as one uint8 tensor [N, C, H, W] (one size only)."""
        h, w = self.uniform_size()
        n = len(self)
        check_fits(n * self.channels * h * w, f"{n} images of {self.channels}x{h}x{w} in memory")
        out = np.empty((n, self.channels, h, w), dtype=np.uint8)
        for i in range(n):
            out[i] = self._as_channels(self._rows_hwc(i, 0, h))
        return torch.from_numpy(out)

    def __getstate__(self) -> dict:  # the pixel file is reopened by path in another process
        return {"path": self._gen.path, "rows": self._rows}

    def __setstate__(self, state: dict) -> None:
        self.__init__(_Generation(state["path"]), state["rows"])


def read_folder(
    root: str | os.PathLike,
    channels: int | None = None,
    image_size: int | None = None,
    strict: bool = False,
    *,
    max_side: int | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A whole folder of images of one size -> (uint8 [N, C, H, W], int64 labels, class names),
    through its cache (see :func:`open_folder`)."""
    store = open_folder(root, image_size=image_size, max_side=max_side, channels=channels,
                        strict=strict, max_pixels=max_pixels)  # fmt: skip
    return store.stacked().numpy(), store.labels.copy(), list(store.classes)
