"""Dataset readers on generated files in the real formats (gzip IDX, CIFAR-10 binary, image folders),
including truncated and corrupt ones; the cache / --data-dir / download rules; the embedded
mnist-sample split. Nothing here touches the network: ``urlopen`` is replaced in every test."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from convae import data
from convae.cache import read_folder
from convae.config import DataConfig
from convae.data import REMOTES, load_dataset, load_split, read_cifar_bin, read_idx
from convae.images import list_image_files, luma, read_image_files, write_png


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails the test loudly unless the test installs its own fake."""

    def forbidden(*a, **k):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", forbidden)


# ---------------------------------------------------------------------------------------------
# IDX


def idx_bytes(arr: np.ndarray, magic_type: int = 0x08) -> bytes:
    """The IDX encoding: magic 0x0000 <type> <ndim>, big-endian uint32 dims, then the bytes."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = bytes([0, 0, magic_type, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(n_train: int = 30, n_test: int = 20, seed: int = 0):
    """Images [N, 28, 28] and labels cycling 0..9, as MNIST's four arrays."""
    rng = np.random.default_rng(seed)
    tx = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ex = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    return tx, np.arange(n_train, dtype=np.uint8) % 10, ex, np.arange(n_test, dtype=np.uint8) % 10


def write_mnist_files(d: Path, dataset: str = "mnist", seed: int = 0) -> dict[str, np.ndarray]:
    """The four gzip IDX files under their official names in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    tx, ty, ex, ey = fake_mnist(seed=seed)
    arrays = {"train-images": tx, "train-labels": ty, "test-images": ex, "test-labels": ey}
    for key, r in REMOTES[dataset].items():
        write_idx(d / r.name, arrays[key])
    return arrays


def test_idx_magic_matches_the_spec():
    b = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    assert struct.unpack(">I", b[:4])[0] == 0x00000803
    assert struct.unpack(">I", idx_bytes(np.zeros(5, np.uint8))[:4])[0] == 0x00000801


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_images_and_labels(tmp_path, gz):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    got_x = read_idx(write_idx(tmp_path / "x.idx", x, gz))
    got_y = read_idx(write_idx(tmp_path / "y.idx", y, gz))
    assert got_x.shape == (5, 28, 28) and got_x.dtype == np.uint8
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


@pytest.mark.parametrize(
    "make_bad, match",
    [
        (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "magic"),  # float data type, not unsigned bytes
        (lambda raw: b"\x12\x34\x08\x03" + raw[4:], "magic"),  # not an IDX file at all
        (lambda raw: raw[:-1], "truncated"),  # one pixel short
        # trailing garbage: the dims no longer describe the file
        (lambda raw: raw + b"\x00", "bytes"),
        (lambda raw: raw[:10], "truncated"),  # cut inside the header
        (lambda raw: raw[:3], "too short"),
        (lambda raw: b"\x00\x00\x08\x00" + raw[4:], "dimensions"),  # zero dimensions
        (lambda raw: b"\x00\x00\x08\x09" + raw[4:], "dimensions"),  # nine dimensions
    ],
)
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_rejects_bad_files(tmp_path, make_bad, match, gz):
    raw = make_bad(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    p = tmp_path / "bad.idx"
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=match) as e:
        read_idx(p)
    assert str(p) in str(e.value)  # the message names the file


def test_read_idx_truncated_gzip(tmp_path):
    gz = gzip.compress(
        idx_bytes(np.arange(4 * 784, dtype=np.int64).astype(np.uint8).reshape(4, 28, 28))
    )
    p = tmp_path / "cut.gz"
    p.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(p)


@pytest.mark.parametrize("pos", [10, 11, 20, -6])
def test_read_idx_corrupt_gzip(tmp_path, pos):
    rng = np.random.default_rng(1)
    gz = bytearray(gzip.compress(idx_bytes(rng.integers(0, 50, (8, 28, 28)).astype(np.uint8))))
    gz[pos] ^= 0xFF  # a flipped byte in the deflate stream or the CRC
    p = tmp_path / "corrupt.gz"
    p.write_bytes(bytes(gz))
    with pytest.raises(ValueError, match="corrupt"):
        read_idx(p)


def test_mnist_from_data_dir(tmp_path):
    arrays = write_mnist_files(tmp_path / "dl")
    x, y = load_dataset("mnist", "test", data_dir=tmp_path / "dl")
    assert x.dtype == torch.uint8 and x.shape == (20, 1, 28, 28)
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy(), arrays["test-images"])
    np.testing.assert_array_equal(y.numpy(), arrays["test-labels"])
    tr, ytr = load_dataset("mnist", "train", data_dir=tmp_path / "dl", val_fraction=0.1)
    va, yva = load_dataset("mnist", "val", data_dir=tmp_path / "dl", val_fraction=0.1)
    assert len(tr) + len(va) == 30 and len(va) == 10  # 1 of 3 per class rounds to 0 -> at least 1
    x5, y5 = load_dataset("mnist", "test", data_dir=tmp_path / "dl", classes=[1, 5])
    assert sorted(set(y5.tolist())) == [1, 5] and len(x5) == 4


def test_fashion_mnist_from_data_dir(tmp_path):
    write_mnist_files(tmp_path, "fashion-mnist", seed=3)
    x, y = load_dataset("fashion-mnist", "train", data_dir=tmp_path, val_fraction=0.0)
    assert x.shape == (30, 1, 28, 28)


def test_mnist_data_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_dataset("mnist", "test", data_dir=tmp_path / "nowhere")
    write_mnist_files(tmp_path)
    os.unlink(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_mnist_images_and_labels_disagree(tmp_path):
    write_mnist_files(tmp_path)
    # 20 images, 19 labels
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match="do not match"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_mnist_corrupt_file_in_data_dir(tmp_path):
    write_mnist_files(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", "train", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Cache directory and downloads


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CONVAE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "convae"


def test_mnist_from_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path))
    arrays = write_mnist_files(tmp_path / "mnist", seed=7)
    # no --data-dir: the cache, and no download (the network is off)
    x, y = load_dataset("mnist", "test")
    np.testing.assert_array_equal(x[:, 0].numpy(), arrays["test-images"])


def test_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError) as e:
        load_dataset("fashion-mnist", "train")
    msg = str(e.value)
    assert "offline" in msg and "--data-dir" in msg
    assert str(tmp_path / "fashion-mnist") in msg  # where to put the files
    for r in REMOTES["fashion-mnist"].values():
        assert r.name in msg  # which files
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no partial file left behind


def test_switching_cache_dir_is_not_served_from_memory(monkeypatch, tmp_path):
    """The in-process dataset cache must not hide that another cache directory is empty."""
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path / "a"))
    write_mnist_files(tmp_path / "a" / "mnist")
    load_dataset("mnist", "test")
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path / "b"))

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError):
        load_dataset("mnist", "test")


class FakeResponse(io.BytesIO):
    """What ``urlopen`` returns: a readable context manager; can drop the connection midway."""

    def __init__(self, payload: bytes, fail_after: int | None = None):
        super().__init__(payload)
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        if self.fail_after is not None and n > 0:
            n = min(n, self.fail_after - self.tell()) or n
        return super().read(n)


def _serve(monkeypatch, tmp_path, tamper: bytes | None = None, fail_after: int | None = None):
    """Pin REMOTES['mnist'] to generated files (with their true SHA-256) and serve them by URL."""
    src = tmp_path / "server"
    arrays = write_mnist_files(src)
    served, remotes = {}, {}
    for key, r in REMOTES["mnist"].items():
        payload = (src / r.name).read_bytes()
        url = f"https://example.invalid/{r.name}"
        remotes[key] = data.Remote(r.name, url, hashlib.sha256(payload).hexdigest(), len(payload))
        served[url] = payload if tamper is None else payload + tamper
    monkeypatch.setitem(REMOTES, "mnist", remotes)
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        return FakeResponse(served[url], fail_after)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return arrays, calls


def test_download_verifies_and_caches(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONVAE_CACHE", str(cache))
    arrays, calls = _serve(monkeypatch, tmp_path)
    x, y = load_dataset("mnist", "test")
    np.testing.assert_array_equal(y.numpy(), arrays["test-labels"])
    assert len(calls) == 4
    names = sorted(p.name for p in (cache / "mnist").iterdir())
    assert names == sorted(r.name for r in REMOTES["mnist"].values())  # no temp files left
    data.fetch("mnist")  # second time: everything is in the cache
    assert len(calls) == 4


def test_download_with_wrong_sha256_leaves_nothing(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONVAE_CACHE", str(cache))
    _serve(monkeypatch, tmp_path, tamper=b"evil")
    with pytest.raises(ValueError, match="SHA-256"):
        data.fetch("mnist")
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_download_interrupted_leaves_nothing(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONVAE_CACHE", str(cache))
    _serve(monkeypatch, tmp_path, fail_after=100)
    with pytest.raises(ConnectionError, match="offline"):
        data.fetch("mnist")
    assert not any(p.is_file() for p in cache.rglob("*"))


# ---------------------------------------------------------------------------------------------
# CIFAR-10 binary


def cifar_records(n: int, seed: int, label_offset: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = (np.arange(n) + label_offset) % 10
    recs = np.concatenate([y[:, None].astype(np.uint8), x.reshape(n, -1)], axis=1)
    return recs.tobytes(), x, y


def write_cifar(
    path: Path,
    n_batch: int = 3,
    n_test: int = 4,
    extracted: bool = False,
    override: dict[str, bytes] | None = None,
):
    """cifar-10-batches-bin/data_batch_1..5.bin + test_batch.bin, as a .tar.gz or a folder."""
    members, xs, ys = {}, [], []
    for i in range(1, 6):
        b, x, y = cifar_records(n_batch, seed=i, label_offset=i)
        members[f"data_batch_{i}.bin"] = b
        xs.append(x)
        ys.append(y)
    b, ex, ey = cifar_records(n_test, seed=99)
    members["test_batch.bin"] = b
    members.update(override or {})
    if extracted:
        d = path / "cifar-10-batches-bin"
        d.mkdir(parents=True)
        for name, b in members.items():
            (d / name).write_bytes(b)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, b in members.items():
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                info.size = len(b)
                tar.addfile(info, io.BytesIO(b))
        # gzip.compress writes a bare 10-byte header, so byte 10 starts the deflate stream
        path.write_bytes(gzip.compress(buf.getvalue()))
    return np.concatenate(xs), np.concatenate(ys), ex, ey


def test_cifar_from_archive(tmp_path):
    tx, ty, ex, ey = write_cifar(tmp_path / "cifar-10-binary.tar.gz")
    x, y = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8
    np.testing.assert_array_equal(x.numpy(), ex)  # channel planes R, G, B in record order
    np.testing.assert_array_equal(y.numpy(), ey)
    tr, _ = load_dataset("cifar10", "train", data_dir=tmp_path, val_fraction=0.0)
    np.testing.assert_array_equal(tr.numpy(), tx)  # batches 1..5 in order


def test_cifar_from_extracted_folder(tmp_path):
    tx, ty, ex, ey = write_cifar(tmp_path, extracted=True)
    x, y = load_dataset("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(x.numpy(), ex)
    x1, _ = load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-bin")
    np.testing.assert_array_equal(x1.numpy(), ex)


@pytest.mark.parametrize("cut", [1, 100, 3072])
def test_cifar_truncated_batch(tmp_path, cut):
    good, _, _ = cifar_records(3, seed=0)
    write_cifar(tmp_path / "cifar-10-binary.tar.gz", override={"data_batch_3.bin": good[:-cut]})
    with pytest.raises(ValueError, match="data_batch_3.bin"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_cifar_empty_batch(tmp_path):
    write_cifar(tmp_path / "cifar-10-binary.tar.gz", override={"test_batch.bin": b""})
    with pytest.raises(ValueError, match="test_batch.bin"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_bad_label():
    b = bytearray(cifar_records(2, seed=0)[0])
    b[0] = 10
    with pytest.raises(ValueError, match="label"):
        read_cifar_bin(bytes(b), "x.bin")


def test_cifar_truncated_archive(tmp_path):
    p = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


@pytest.mark.parametrize("pos", [10, 40, 2000, -30, -6])
def test_cifar_corrupt_archive(tmp_path, pos):
    p = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar(p)
    b = bytearray(p.read_bytes())
    b[pos] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_missing_batch(tmp_path):
    p = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        b = cifar_records(2, seed=0)[0]
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = len(b)
        tar.addfile(info, io.BytesIO(b))
    with pytest.raises(ValueError, match="missing CIFAR-10 batches"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar_not_a_tarball(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"this is not an archive")
    with pytest.raises(ValueError):
        load_dataset("cifar10", "test", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Folders of images


FORMATS = ["png", "jpg", "bmp", "webp", "tiff"]
LOSSLESS = {"png", "bmp", "tiff"}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("channels", [1, 3])
def test_folder_formats_and_labels(tmp_path, make_images, write_image_folder, fmt, channels):
    imgs = make_images(6, channels, 16, seed=1)
    labels = [0, 0, 1, 1, 2, 2]
    write_image_folder(tmp_path / "cats", imgs[:2], None, fmt)  # sub-folder names are the labels
    write_image_folder(tmp_path / "dogs", imgs[2:4], None, fmt)
    write_image_folder(tmp_path / "eels" / "deep", imgs[4:], None, fmt)  # recursive
    # WebP has no grey mode (PIL stores grey as RGB): found grey (R = G = B) and read as 1 channel
    x, y, names = read_folder(tmp_path)
    assert names == ["cats", "dogs", "eels"]
    assert y.tolist() == labels
    assert x.shape == (6, channels, 16, 16) and x.dtype == np.uint8
    if fmt in LOSSLESS:
        np.testing.assert_array_equal(x, imgs.numpy())
    else:
        assert np.abs(x.astype(int) - imgs.numpy().astype(int)).mean() < 12


def test_folder_grey_stored_as_rgb_is_one_channel_unless_forced(
    tmp_path, make_images, write_image_folder
):
    grey = make_images(4, 1, 16, seed=2)
    write_image_folder(tmp_path / "g", grey.repeat(1, 3, 1, 1), None, "png")  # RGB files, R = G = B
    x, _, _ = read_folder(tmp_path / "g")
    assert x.shape == (4, 1, 16, 16)
    np.testing.assert_array_equal(x, grey.numpy())
    x, _, _ = read_folder(tmp_path / "g", channels=3)  # asked for colour: kept
    assert x.shape == (4, 3, 16, 16)
    from PIL import Image

    rgb = make_images(3, 3, 16, seed=5).numpy()  # the luma matches Pillow's convert("L") exactly
    want = np.stack(
        [np.asarray(Image.fromarray(a.transpose(1, 2, 0)).convert("L"))[None] for a in rgb]
    )
    np.testing.assert_array_equal(luma(rgb), want)
    colour = grey.repeat(1, 3, 1, 1).clone()
    colour[-1, 0] = 255 - colour[-1, 0]  # one image with colour in it: the folder stays RGB
    write_image_folder(tmp_path / "c", colour, None, "png")
    assert read_folder(tmp_path / "c")[0].shape == (4, 3, 16, 16)


def test_folder_without_subfolders(tmp_path, make_images, write_image_folder):
    write_image_folder(tmp_path / "flat", make_images(3, 1, 16))
    x, y, names = read_folder(tmp_path / "flat")
    assert y.tolist() == [0, 0, 0] and names == ["flat"]


def test_folder_channels_and_image_size(tmp_path, write_image_folder):
    from PIL import Image

    root = tmp_path / "mixed"
    root.mkdir()
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(root / "wide.png")  # 40 x 30 RGB
    Image.fromarray(np.full((20, 20), 50, np.uint8)).save(root / "small.bmp")  # 20 x 20 grey
    with pytest.raises(ValueError, match="--image-size"):
        read_folder(root)  # two sizes and no --image-size
    x, _, _ = read_folder(root, channels=1, image_size=16)
    assert x.shape == (2, 1, 16, 16)
    assert sorted(x.reshape(2, -1).mean(1).round().tolist()) == [50, 200]
    x, _, _ = read_folder(root, channels=3, image_size=24)
    assert x.shape == (2, 3, 24, 24)
    xs, ys = load_dataset(f"folder:{root}", "train", channels=3, image_size=12, val_fraction=0.0)
    assert xs.shape == (2, 3, 12, 12)


def test_folder_skips_unreadable_files(tmp_path, make_images, write_image_folder, caplog):
    root = tmp_path / "imgs"
    write_image_folder(root, make_images(4, 1, 16), [0, 0, 1, 1])
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "0" / "empty.jpg").write_bytes(b"")
    (root / "0" / "notes.txt").write_text("not an image, not counted")
    with caplog.at_level(logging.WARNING, logger="convae.cache"):
        x, y, _ = read_folder(root)
    assert len(x) == 4
    assert "skipped 2 unreadable" in caplog.text
    with pytest.raises(ValueError, match="broken.png|empty.jpg"):
        read_folder(root, strict=True)
    with pytest.raises(ValueError, match="cannot read"):
        load_dataset(f"folder:{root}", "train", strict=True)


def test_folder_empty_and_missing(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images"):
        read_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    bad = tmp_path / "allbad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of 1"):
        read_folder(bad)


def test_folder_splits_are_disjoint_and_complete(tmp_path, make_images, write_image_folder):
    imgs = make_images(40, 1, 16, seed=2)
    write_image_folder(tmp_path / "f", imgs, [i % 2 for i in range(40)])
    spec = f"folder:{tmp_path / 'f'}"
    parts = [load_dataset(spec, s, val_fraction=0.5) for s in ("train", "val", "test")]
    assert [len(p[0]) for p in parts] == [18, 18, 4]  # test: 10% per label; val: half the rest
    rows = [{bytes(r) for r in p[0].reshape(len(p[0]), -1).numpy()} for p in parts]
    assert len(set.union(*rows)) == 40  # disjoint and complete
    assert (parts[2][1] == 0).sum() == 2 and (parts[2][1] == 1).sum() == 2  # stratified
    x1, y1 = load_dataset(spec, "test", classes=[1])
    assert set(y1.tolist()) == {1}


# ---------------------------------------------------------------------------------------------
# mnist-sample: the embedded 5,000 digits


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(r) for r in x.reshape(len(x), -1).numpy()}


def test_mnist_sample_split_sizes_disjoint_deterministic():
    tr, ytr = load_dataset("mnist-sample", "train")
    va, yva = load_dataset("mnist-sample", "val")
    te, yte = load_dataset("mnist-sample", "test")
    assert tr.shape == (3600, 1, 28, 28) and tr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert np.bincount(ytr.numpy()).tolist() == [360] * 10
    assert np.bincount(yva.numpy()).tolist() == [40] * 10
    assert np.bincount(yte.numpy()).tolist() == [100] * 10  # 400 train+val / 100 test per digit
    a, b, c = _rows(tr), _rows(va), _rows(te)
    assert len(a) + len(b) + len(c) == 5000  # no duplicates within or across splits
    assert not (a & b) and not (a & c) and not (b & c)
    assert tr.max() == 255 and tr.min() == 0
    # deterministic: decode again from scratch
    data._load_raw.cache_clear()
    te2, yte2 = load_dataset("mnist-sample", "test")
    assert torch.equal(te, te2) and torch.equal(yte, yte2)
    # a fresh tensor each call: callers may modify it
    te2.zero_()
    assert not torch.equal(load_dataset("mnist-sample", "test")[0], te2)


def test_mnist_sample_val_fraction_and_seed():
    te, _ = load_dataset("mnist-sample", "test")
    v0, _ = load_dataset("mnist-sample", "val", val_fraction=0.2)
    v1, _ = load_dataset("mnist-sample", "val", val_fraction=0.2, split_seed=1)
    assert len(v0) == len(v1) == 800
    assert not torch.equal(v0, v1)
    # the test split never moves
    assert torch.equal(te, load_dataset("mnist-sample", "test", split_seed=1)[0])
    tr, _ = load_dataset("mnist-sample", "train", val_fraction=0.0)
    assert len(tr) == 4000
    assert len(load_dataset("mnist-sample", "val", val_fraction=0.0)[0]) == 0


def test_mnist_sample_classes_and_conversions():
    x, y = load_dataset("mnist-sample", "test", classes=(1, 5, 6))
    assert sorted(set(y.tolist())) == [1, 5, 6] and len(x) == 300
    with pytest.raises(ValueError, match="--classes"):
        load_dataset("mnist-sample", "test", classes=(3, 42))
    x3, _ = load_dataset("mnist-sample", "test", classes=(1,), channels=3)
    x1, _ = load_dataset("mnist-sample", "test", classes=(1,))
    assert x3.shape == (100, 3, 28, 28)
    assert torch.equal(x3[:, 0], x1[:, 0]) and torch.equal(x3[:, 2], x1[:, 0])
    x32, _ = load_dataset("mnist-sample", "test", classes=(1,), image_size=32)
    assert x32.shape == (100, 1, 32, 32) and x32.dtype == torch.uint8


def test_load_split_follows_the_config():
    cfg = DataConfig(spec="mnist-sample", classes=(2,), val_fraction=0.5)
    x, y = load_split(cfg, "val")
    assert len(x) == 200 and set(y.tolist()) == {2}


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"spec": "imagenet"}, ValueError, "unknown dataset"),
        ({"split": "validation"}, ValueError, "split"),
        ({"val_fraction": 1.0}, ValueError, "val fraction"),
        ({"val_fraction": -0.1}, ValueError, "val fraction"),
    ],
)
def test_load_dataset_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        load_dataset(**{"spec": "mnist-sample", **kwargs})


# ---------------------------------------------------------------------------------------------
# User image files (reconstruct) and PNG writing


def test_read_image_files_size_channels_resize(tmp_path, make_images, write_image_folder):
    paths = write_image_folder(tmp_path / "in", make_images(3, 3, 16))
    x, got = read_image_files([tmp_path / "in"], channels=1, image_size=16)
    assert x.shape == (3, 1, 16, 16) and got == paths  # RGB -> grey, sorted
    with pytest.raises(ValueError, match="--resize"):
        read_image_files(paths, channels=1, image_size=28)
    x, _ = read_image_files(paths[:1], channels=3, image_size=28, resize=True)
    assert x.shape == (1, 3, 28, 28)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.png"):
        read_image_files([tmp_path / "bad.png"], 1, 16)
    with pytest.raises(FileNotFoundError):
        read_image_files([tmp_path / "missing.png"], 1, 16)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        read_image_files([tmp_path / "none"], 1, 16)


def test_list_image_files(tmp_path):
    for name in ("b/2.PNG", "a/1.jpg", "c.webp", "skip.txt", "a/z.tif"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in list_image_files([tmp_path])]
    assert got == ["a/1.jpg", "a/z.tif", "b/2.PNG", "c.webp"]


def test_write_png_roundtrip(tmp_path):
    from PIL import Image

    u8 = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    write_png(u8, tmp_path / "rgb.png")
    with Image.open(tmp_path / "rgb.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im).transpose(2, 0, 1), u8.numpy())
    f = torch.tensor([[[0.0, 0.5], [1.0, 2.0]]])  # float in [0, 1], clipped
    write_png(f, tmp_path / "sub" / "grey.png")
    with Image.open(tmp_path / "sub" / "grey.png") as im:
        assert im.mode == "L"
        assert np.asarray(im).tolist() == [[0, 128], [255, 255]]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["grey.png", "rgb.png"]


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_folder_16_bit_grey_is_scaled_not_clipped(tmp_path, fmt):
    from PIL import Image

    a16 = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257).astype(
        np.uint16
    )  # full 16-bit range
    Image.fromarray(a16).save(tmp_path / f"deep.{fmt}")
    with Image.open(tmp_path / f"deep.{fmt}") as im:
        assert im.mode.startswith("I;16")  # really a 16-bit file
    x, _, _ = read_folder(tmp_path)
    assert x.shape == (1, 1, 16, 16)
    np.testing.assert_array_equal(x[0, 0], np.arange(256).reshape(16, 16))  # the top 8 bits
    x, _ = read_image_files([tmp_path / f"deep.{fmt}"], channels=3, image_size=16)
    np.testing.assert_array_equal(x[0, 1].numpy(), np.arange(256).reshape(16, 16))


def test_all_is_every_split():
    parts = [load_dataset("mnist-sample", s, classes=(3,)) for s in ("train", "val", "test")]
    x, y = load_dataset("mnist-sample", "all", classes=(3,))
    assert len(x) == sum(len(p[0]) for p in parts) == 500 and set(y.tolist()) == {3}
    assert _rows(x) == set.union(*(_rows(p[0]) for p in parts))
    store = data.load_images(DataConfig(classes=(3,)), "all")
    assert isinstance(store, data.ArrayImages) and len(store) == 500
    assert store.classes[3] == "3"  # classes[label] names a label, as for a folder
    assert data.prepare_data(DataConfig()) is None  # nothing to cache for a built-in dataset
