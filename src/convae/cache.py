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
      index.npy   per listed file: offset, height, width, stored channels, grey, status...
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
import os
import re
import secrets
import shutil
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_write
from .images import (
    IMAGE_SUFFIXES,
    PARALLEL_FROM,
    ImageTooLarge,
    decode_files,
    default_max_pixels,
    luma,
    too_large,
    walk_images,
)
from .limits import check_fits

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

FORMAT = 2
OK, UNREADABLE, TOO_LARGE = 0, 1, 2  # index status of a listed file
# index.npy: one row per listed file. stored = channels in pixels.bin (1 or 3); grey = R, G, B
# within 2 levels; pixels = the file's own pixel count (checked against each open's limit);
# size, mtime = listing.
ROW = np.dtype([("offset", "<i8"), ("height", "<i4"), ("width", "<i4"), ("stored", "u1"),
                ("grey", "?"), ("status", "u1"), ("pixels", "<i8"), ("size", "<i8"),
                ("mtime", "<i8")])  # fmt: skip
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
        self.rows = np.load(path / "index.npy", allow_pickle=False)
        self.names: list[str] = self.meta["names"]
        self.errors: dict[str, str] = self.meta["errors"]
        self.root = Path(self.meta["folder"])
        self.channels = int(self.meta["channels"] or 3)
        if self.rows.dtype != ROW or len(self.rows) != len(self.names):
            raise ValueError(f"{path}: index and names disagree")
        self.fd = os.open(path / "pixels.bin", os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)
        if os.fstat(self.fd).st_size != int(self.meta["bytes"]):
            raise ValueError(f"{path}: pixel file size disagrees with its index")
        self.status = self.rows["status"]
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
        limit = default_max_pixels() if max_pixels is None else max_pixels
        big = self.status == TOO_LARGE
        return big if limit is None else big & (self.rows["pixels"] <= limit)

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


class _Index:
    """The index being built: a row per listed file (unreadable until written) and the errors."""

    def __init__(self, listing: _Listing) -> None:
        self.rows = np.zeros(len(listing.names), ROW)
        self.rows["status"] = UNREADABLE
        self.rows["size"], self.rows["mtime"] = listing.sizes, listing.mtimes
        self.errors: dict[str, str] = {}


def _reuse_plan(listing: _Listing, old: _Generation | None, max_pixels: int | None) -> np.ndarray:
    """For each listed file, the row of the previous generation whose result still holds, or -1."""
    plan = np.full(len(listing.names), -1, np.int64)
    if old is None or old.meta.get("decoder") != _decoder():
        return plan
    retry = old.retry_large(max_pixels)
    where = {name: j for j, name in enumerate(old.names)}
    size, mtime = old.rows["size"], old.rows["mtime"]
    for i, name in enumerate(listing.names):
        j = where.get(name, -1)
        if j >= 0 and size[j] == listing.sizes[i] and mtime[j] == listing.mtimes[i]:
            plan[i] = -1 if retry[j] else j
    return plan


def _copy_reused(fd: int, old: _Generation | None, plan: np.ndarray, index: _Index,
                 names: list[str]) -> int:  # fmt: skip
    """Copy the kept images' rows and pixels (contiguous runs at once); returns bytes written."""
    written, run_start, run_len = 0, 0, 0
    for i in np.flatnonzero(plan >= 0):
        j = int(plan[i])
        row = index.rows[i] = old.rows[j]
        if row["status"] != OK:
            index.errors[names[i]] = old.errors.get(old.names[j], "cannot read image")
            continue
        n = int(row["height"]) * int(row["width"]) * int(row["stored"])
        index.rows["offset"][i] = written
        if run_len and int(old.rows["offset"][j]) == run_start + run_len:
            run_len += n
        else:
            if run_len:
                _copy_range(old.fd, fd, run_start, run_len)
            run_start, run_len = int(old.rows["offset"][j]), n
        written += n
    if run_len:
        _copy_range(old.fd, fd, run_start, run_len)
    return written


def _store_result(fd: int, i: int, res: tuple, index: _Index, name: str, offset: int) -> int:
    """Write one decode result (see :func:`convae.images.decode_stored`); returns its bytes."""
    row = index.rows[i : i + 1]  # a view: assignments land in the index
    if res[0] == "ok":
        a = res[1]
        row["offset"], row["status"], row["grey"] = offset, OK, res[2]
        row["height"], row["width"], row["stored"] = a.shape
        row["pixels"] = res[3]
        _write_all(fd, a)
        return a.nbytes
    if res[0] == "large":
        row["status"], row["pixels"], index.errors[name] = TOO_LARGE, res[1], res[2]
    else:
        row["status"], index.errors[name] = UNREADABLE, res[1]
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
    todo = [(int(i), listing.root / names[i]) for i in np.flatnonzero(plan < 0)]
    log.log(logging.INFO if len(todo) >= PARALLEL_FROM else logging.DEBUG,  # a few: no news
            "decoding %d of the %d image files of %s (%s) into %s", len(todo), total,
            listing.root, opts.describe(), keydir)  # fmt: skip
    token = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
    tmp = keydir / f".build-{token}"
    tmp.mkdir()
    index = _Index(listing)
    try:
        fd = os.open(tmp / "pixels.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            offset = _copy_reused(fd, old, plan, index, names)
            done = total - len(todo)
            if progress is not None:
                progress(done, total)
            for chunk in decode_files(todo, opts.channels, opts.image_size, opts.max_side,
                                      max_pixels, workers):  # fmt: skip
                for i, res in chunk:
                    offset += _store_result(fd, i, res, index, names[i], offset)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            os.fsync(fd)
        finally:
            os.close(fd)
        _write_index(tmp, listing, opts, index, offset)
        os.rename(tmp, keydir / f"g-{token}")
        _fsync_dir(keydir)

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


def _write_index(tmp: Path, listing: _Listing, opts: CacheOptions, index: _Index, nbytes: int):
    ok = index.rows["status"] == OK
    grey = bool(index.rows["grey"][ok].all())
    channels = opts.channels or (None if not ok.any() else 1 if grey else 3)
    meta = {"format": FORMAT, "folder": os.fsdecode(listing.root), "options": asdict(opts),
            "decoder": _decoder(), "signature": listing.signature, "channels": channels,
            "bytes": nbytes, "names": listing.names, "errors": index.errors}  # fmt: skip
    if channels == 1 and opts.channels is None and (index.rows["stored"][ok] == 3).any():
        log.info("all %d images in %s are grey stored as RGB: using 1 channel (--channels 3 "
                 "keeps 3)", int(ok.sum()), listing.root)  # fmt: skip
    with open(tmp / "index.npy", "wb") as f:
        np.save(f, index.rows, allow_pickle=False)
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
        name, decoded, reused = _build(keydir, listing, opts, gen, max_pixels,
                                       workers or _default_workers(), progress)  # fmt: skip
        _clean(keydir, keep=name)
    new = _live(keydir)
    if new is None or new.path.name != name:  # pragma: no cover - only a concurrent rm -rf
        raise OSError(f"the cache just built in {keydir} disappeared")
    return new, "built" if gen is None else "updated", decoded, reused, listing


def _check(gen: _Generation, root, strict: bool, max_pixels: int | None) -> None:
    """Errors for files above the pixel limit (also those a higher limit let in earlier), for
    unreadable files when ``strict``, and for a folder with no readable image."""
    refused = np.flatnonzero(gen.status == TOO_LARGE)
    if len(refused):  # after _ensure, only files the current limit still refuses
        j = int(refused[0])
        raise ImageTooLarge(gen.errors[gen.names[j]], int(gen.rows["pixels"][j]))
    limit = default_max_pixels() if max_pixels is None else max_pixels
    over = gen.ok[gen.rows["pixels"][gen.ok] > limit] if limit is not None else []
    if len(over):
        j = int(over[0])
        raise too_large(str(gen.root / gen.names[j]), int(gen.rows["pixels"][j]), limit)
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
    _check(gen, root, strict, max_pixels)
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
        _check(gen, root, strict, max_pixels)
    return _report(root, gen, state, opts, listing, decoded, reused, time.perf_counter() - t0)


def _sizes(hw: np.ndarray) -> str:
    """The sizes of [N, 2] (height, width) for people: one ("64x48"), or the extremes."""
    if not len(hw):
        return ""
    if (hw == hw[0]).all():
        return f"{hw[0, 1]}x{hw[0, 0]}"
    order = np.argsort(hw[:, 0].astype(np.int64) * hw[:, 1])
    (lh, lw), (hh, hw_) = hw[order[0]], hw[order[-1]]
    return f"from {lw}x{lh} to {hw_}x{hh}"


def _report(root, gen, state, opts, listing, decoded, reused, seconds) -> CacheReport:
    if gen is None:
        return CacheReport(str(root), "", state, opts.describe(), len(listing.names), 0, 0, (),
                           0, None, 0, "", decoded, reused, seconds)  # fmt: skip
    r = gen.rows
    bad = [gen.names[j] for j in np.flatnonzero(r["status"] == UNREADABLE)]
    return CacheReport(
        folder=str(root), cache=str(gen.path), state=state, options=opts.describe(),
        files=len(gen.names), images=len(gen.ok), skipped=len(bad),
        skipped_files=tuple(gen.errors[n] for n in bad[:5]),
        refused=int((r["status"] == TOO_LARGE).sum()),
        channels=gen.channels if len(gen.ok) else None, bytes=int(gen.meta["bytes"]),
        sizes=_sizes(np.stack([r["height"][gen.ok], r["width"][gen.ok]], 1)),
        decoded=decoded, reused=reused, seconds=seconds,
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
        rows = gen.rows[r]
        self._off, self._stored = rows["offset"], rows["stored"]
        self._hw = np.stack([rows["height"], rows["width"]], 1).astype(np.int64)

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

    def prefetch(self, spans) -> None:
        """Ask the kernel to start reading (image, top, rows) ``spans`` now, all at once
        (``POSIX_FADV_WILLNEED``): when the file is not in the page cache, a batch's disk reads
        then overlap instead of waiting one after another. Costs a syscall each when it is."""
        if not hasattr(os, "posix_fadvise"):
            return
        for i, top, h in spans:
            w, c = int(self._hw[i, 1]), int(self._stored[i])
            os.posix_fadvise(self._gen.fd, int(self._off[i]) + top * w * c, h * w * c,
                             os.POSIX_FADV_WILLNEED)  # fmt: skip

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
