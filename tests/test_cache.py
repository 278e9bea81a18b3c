"""The folder cache (convae.cache): decoded once, reused, updated when files change, never read
half-written, shared by processes; the store it gives (crops, images, splits, channels) and the
``convae cache`` command."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convae import cache, images
from convae.cache import CachedImages, open_folder, update_folder
from convae.cli import main
from convae.config import DataConfig
from convae.data import (
    folder_split,
    load_dataset,
    load_images,
    load_split,
    prepare_data,
    stratified_split,
)
from convae.images import ImageTooLarge, decode_image
from convae.sampling import RandomCrops, fixed_crops


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own cache folder, and a clean slate of generations opened in-process."""
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_OPENED", {})


@pytest.fixture
def decodes(monkeypatch):
    """Counts the files the cache decodes (in this process: folders this small use no workers)."""
    seen: list[str] = []
    real = images._decode

    def counting(path, *a, **k):
        seen.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(images, "_decode", counting)
    return seen


def save(path: Path, a: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def photo_folder(root: Path, n: int = 6, h: int = 20, w: int = 28) -> Path:
    for i in range(n):
        save(root / ("cats" if i % 2 else "dogs") / f"{i}.png", rgb(h, w, i))
    return root


def keydirs() -> list[Path]:
    return sorted((Path(os.environ["CONVAE_CACHE"]) / "folders").iterdir())


# ---------------------------------------------------------------------------------------------
# Decoded once, reused, updated


def test_second_use_decodes_nothing(tmp_path, decodes):
    root = photo_folder(tmp_path / "p")
    first = update_folder(root)
    assert first.state == "built" and first.decoded == 6 and len(decodes) == 6
    decodes.clear()
    again = update_folder(root)
    assert again.state == "up to date" and again.decoded == 0 and decodes == []
    store = open_folder(root)
    assert decodes == [] and len(store) == 6
    assert store.names == ["cats/1.png", "cats/3.png", "cats/5.png", "dogs/0.png", "dogs/2.png",
                           "dogs/4.png"]  # fmt: skip
    assert store.classes == ["cats", "dogs"] and store.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for i, name in enumerate(store.names):
        assert torch.equal(store.image(i), torch.from_numpy(decode_image(root / name)))
    # other options: another cache, decoded again
    assert update_folder(root, image_size=8).state == "built" and len(keydirs()) == 2


def test_changed_added_removed_files_are_noticed(tmp_path, decodes):
    root = photo_folder(tmp_path / "p")
    update_folder(root)
    decodes.clear()
    changed = root / "cats" / "1.png"
    save(changed, rgb(20, 28, 99))
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime for sure
    save(root / "dogs" / "new.png", rgb(20, 28, 7))
    (root / "dogs" / "2.png").unlink()
    r = update_folder(root)
    assert r.state == "updated" and r.decoded == 2 and r.reused == 4
    assert sorted(decodes) == ["1.png", "new.png"]
    store = open_folder(root)
    assert "dogs/2.png" not in store.names and "dogs/new.png" in store.names
    for i, name in enumerate(store.names):  # kept pixels and new ones all right
        assert torch.equal(store.image(i), torch.from_numpy(decode_image(root / name)))
    gens = [p.name for p in keydirs()[0].iterdir() if p.name.startswith("g-")]
    assert len(gens) == 1  # the old generation is gone


def test_a_build_that_fails_midway_leaves_nothing_to_read(tmp_path):
    root = photo_folder(tmp_path / "p", n=40)
    calls = []

    def explode(done, total):
        calls.append(done)
        if len(calls) == 2:  # after the first 16 files are written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        update_folder(root, progress=explode)
    (kd,) = keydirs()
    assert sorted(p.name for p in kd.iterdir()) == ["lock"]  # no generation, no leftovers
    assert update_folder(root).state == "built"


BUILDER = """
import os, sys, time
from pathlib import Path
from convae.cache import update_folder
marker = Path(sys.argv[2])
def slow(done, total):
    marker.write_text(str(done))
    time.sleep(0.5)
update_folder(sys.argv[1], progress=slow, workers=1)
"""


def test_a_killed_build_is_never_read_and_is_redone(tmp_path):
    root = photo_folder(tmp_path / "p", n=70)
    old = update_folder(root)
    for i in range(0, 70, 2):  # change half the files, then get killed while caching them
        save(root / ("cats" if i % 2 else "dogs") / f"{i}.png", rgb(20, 28, 1000 + i))
        os.utime(root / ("cats" if i % 2 else "dogs") / f"{i}.png", ns=(1, 2 * 10**9 + i))
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", BUILDER, str(root), str(marker)],
                            env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text() in ("51", "67")):  # 35 kept + 16 (+ 16)
        assert proc.poll() is None and time.monotonic() < deadline, "the builder ended early"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (kd,) = keydirs()
    assert any(p.name.startswith(".build-") for p in kd.iterdir())  # killed midway
    assert (kd / "current").read_text().strip() == Path(old.cache).name  # the old one is live
    check = update_folder(root, build=False)
    assert check.state == "stale" and check.cache == old.cache and check.images == 70
    r = update_folder(root)
    assert r.state == "updated" and r.decoded == 35 and r.reused == 35
    assert not any(p.name.startswith(".build-") for p in kd.iterdir())
    store = open_folder(root)
    for i, name in enumerate(store.names):
        assert torch.equal(store.image(i), torch.from_numpy(decode_image(root / name)))


def test_a_damaged_cache_is_rebuilt(tmp_path, caplog):
    root = photo_folder(tmp_path / "p")
    r = update_folder(root)
    with open(Path(r.cache) / "pixels.bin", "r+b") as f:
        f.truncate(100)
    cache._OPENED.clear()
    with caplog.at_level(logging.WARNING, logger="convae.cache"):
        assert update_folder(root).state == "built"
    assert "damaged" in caplog.text


def test_workers_decode_in_parallel_processes(tmp_path):
    root = photo_folder(tmp_path / "p", n=80, h=9, w=13)
    r = update_folder(root, workers=2, max_side=10)
    assert r.decoded == 80 and r.sizes == "10x7"
    store = open_folder(root, max_side=10)
    for i in (0, 41, 79):
        want = decode_image(root / store.names[i], max_side=10)
        assert torch.equal(store.image(i), torch.from_numpy(want))


def test_ddp_ranks_share_one_build(tmp_path):
    """torchrun, 2 processes: one rank decodes, the other waits and reads the same cache."""
    root = photo_folder(tmp_path / "p", n=30)
    out = tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    worker = Path(__file__).with_name("cache_worker.py")
    subprocess.run([*cmd, "--standalone", "--nproc_per_node=2", str(worker), str(root), str(out)],
                   check=True, timeout=300, env=os.environ.copy())  # fmt: skip
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["decoded"] for r in ranks) == [0, 30]
    assert sorted(r["state"] for r in ranks) == ["built", "up to date"]
    assert ranks[0]["cache"] == ranks[1]["cache"] and ranks[0]["sum"] == ranks[1]["sum"]


# ---------------------------------------------------------------------------------------------
# Channels, sizes, unreadable files, limits


def test_channels_follow_the_folder(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (12, 10), dtype=np.uint8)
    save(tmp_path / "g" / "a.png", grey)  # "L"
    save(tmp_path / "g" / "b.png", np.repeat(grey[:, :, None], 3, 2))  # RGB, R = G = B
    near = np.repeat(grey[:, :, None], 3, 2).astype(int)
    near[:, :, 1] = np.clip(near[:, :, 1] + 1, 0, 255)
    save(tmp_path / "g" / "c.png", near.astype(np.uint8))  # grey within a level
    g = open_folder(tmp_path / "g")
    assert g.channels == 1
    assert all(torch.equal(g.image(i)[0], torch.from_numpy(grey)) for i in (0, 1))
    assert torch.equal(g.image(2), torch.from_numpy(decode_image(tmp_path / "g" / "c.png", 1)))
    forced = open_folder(tmp_path / "g", channels=3)
    assert forced.channels == 3 and torch.equal(forced.image(0)[2], torch.from_numpy(grey))
    colour = rgb(12, 10, 5)
    save(tmp_path / "g" / "d.png", colour)  # one colour image: the folder reads as RGB
    m = open_folder(tmp_path / "g")
    assert m.channels == 3
    assert torch.equal(m.image(0), torch.from_numpy(np.repeat(grey[None], 3, 0)))
    assert torch.equal(m.image(2), torch.from_numpy(near.astype(np.uint8).transpose(2, 0, 1)))
    assert torch.equal(m.image(3), torch.from_numpy(colour.transpose(2, 0, 1)))


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_odd_sizes_crops_and_images(tmp_path, channels):
    shapes = [(1, 40), (40, 1), (33, 47), (5, 5)]
    for i, (h, w) in enumerate(shapes):
        save(tmp_path / "f" / f"{i}.png", rgb(h, w, i))
    store = open_folder(tmp_path / "f", channels=channels)
    assert store.sizes().tolist() == [list(s) for s in shapes]
    for i in range(len(shapes)):
        img = store.image(i)
        assert torch.equal(
            img, torch.from_numpy(decode_image(tmp_path / "f" / f"{i}.png", channels or 3))
        )
        h, w = shapes[i]
        np.testing.assert_array_equal(store.crop(i, h // 3, w // 4, h - h // 3, w // 2),
                                      img[:, h // 3 :, w // 4 : w // 4 + w // 2].numpy())  # fmt: skip
    with pytest.raises(IndexError):
        store.crop(2, 30, 0, 10, 10)
    crops = RandomCrops(store, 8, 64, torch.device("cpu"))
    crops.start_epoch(0, 0)
    assert crops.batch(torch.arange(64)).shape == (64, store.channels, 8, 8)
    assert fixed_crops(store, 8, 8).shape == (8, store.channels, 8, 8)
    with pytest.raises(ValueError, match=r"--crop N.*--image-size N"):
        store.stacked()


def test_random_crops_prefetch_each_batch_from_the_cache(tmp_path, monkeypatch):
    root = photo_folder(tmp_path / "p", n=4, h=20, w=28)
    store = open_folder(root)
    asked = []
    real = store.prefetch
    monkeypatch.setattr(store, "prefetch", lambda spans: asked.append(spans) or real(spans))
    crops = RandomCrops(store, 8, 16, torch.device("cpu"), augment="none")
    crops.start_epoch(0, 0)
    x = crops.batch(torch.arange(16))
    (spans,) = asked
    assert [list(s[:2]) for s in spans] == crops.plan[:, :2].tolist() and {s[2] for s in spans} == {
        8
    }
    for k, (i, top, left, *_) in enumerate(crops.plan.tolist()):
        assert torch.equal(x[k], store.image(i)[:, top : top + 8, left : left + 8])


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    root = photo_folder(tmp_path / "p", n=4)
    good = save(tmp_path / "x.jpg", rgb(20, 28, 3), quality=90).read_bytes()
    (root / "cats" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "dogs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (root / "dogs" / "empty.webp").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="convae.cache"):
        store = open_folder(root)
    assert len(store) == 4 and "skipped 3 unreadable" in caplog.text
    r = update_folder(root)
    assert r.skipped == 3 and r.files == 7 and r.images == 4
    assert any("truncated.jpg" in s for s in r.skipped_files)
    with pytest.raises(ValueError, match=r"cats/truncated.jpg: cannot read image.*\(and 2 more\)"):
        open_folder(root, strict=True)


def test_images_above_the_pixel_limit_are_refused_until_allowed(tmp_path, decodes):
    root = photo_folder(tmp_path / "p", n=3, h=20, w=28)  # 560 pixels each
    save(root / "big.png", rgb(40, 50, 9))  # 2,000 pixels
    with pytest.raises(ImageTooLarge, match=r"big.png: 50x40 is 2,000 pixels.*--max-pixels"):
        open_folder(root, max_pixels=1000)
    with pytest.raises(ImageTooLarge):  # still refused, without decoding anything again
        open_folder(root, max_pixels=1500)
    assert len(decodes) == 4
    store = open_folder(root, max_pixels=2000)  # allowed now: only that file is decoded
    assert decodes[4:] == ["big.png"] and len(store) == 4
    # a lower limit later refuses the cached file too, without decoding anything
    with pytest.raises(ImageTooLarge, match=r"big.png: 2,000 pixels, above the limit of 1,000"):
        open_folder(root, max_pixels=1000)
    assert len(decodes) == 5 and len(open_folder(root, max_pixels=2000)) == 4


# ---------------------------------------------------------------------------------------------
# Splits and the data API


def nested_folder(root: Path) -> Path:
    """2 classes x 5 leaf folders of 2-6 images each, one folder far larger."""
    k = 0
    for c in ("a", "b"):
        for leaf in range(5):
            n = 12 if (c, leaf) == ("a", 0) else 2 + (leaf % 3)
            for _ in range(n):
                save(root / c / f"leaf{leaf}" / f"{k}.png", rgb(8, 8, k))
                k += 1
    return root


def test_split_by_file_is_todays_split(tmp_path):
    root = nested_folder(tmp_path / "n")
    store = open_folder(root)
    y = store.labels
    test = stratified_split(y, 0.1, 12345)
    rest = np.setdiff1d(np.arange(len(y)), test)
    val = rest[stratified_split(y[rest], 0.2, 3)]
    got = {s: folder_split(y, store.names, s, val_fraction=0.2, split_seed=3)
           for s in ("train", "val", "test", "all")}  # fmt: skip
    assert got["test"].tolist() == test.tolist() and got["val"].tolist() == val.tolist()
    assert sorted(np.concatenate([got["train"], got["val"], got["test"]]).tolist()) == list(
        range(len(y))
    )
    assert got["all"].tolist() == list(range(len(y)))


def test_split_by_folder_never_shares_a_folder(tmp_path):
    root = nested_folder(tmp_path / "n")
    cfg = DataConfig(spec=f"folder:{root}", split_by="folder", val_fraction=0.2)
    parts = {s: load_images(cfg, s) for s in ("train", "val", "test")}
    folders = {s: {n.rsplit("/", 1)[0] for n in p.names} for s, p in parts.items()}
    assert all(folders.values())
    assert not (folders["train"] & folders["val"] or folders["train"] & folders["test"]
                or folders["val"] & folders["test"])  # fmt: skip
    names = [n for p in parts.values() for n in p.names]
    assert sorted(names) == sorted(open_folder(root).names)  # complete, disjoint
    assert "a/leaf0" not in folders["test"]  # the big folder does not make the test split
    again = load_images(cfg, "test")
    assert again.names == parts["test"].names  # deterministic
    x, y = load_split(cfg, "val")
    assert len(x) == len(parts["val"]) and x.shape[1:] == (3, 8, 8)


def test_split_by_folder_needs_enough_folders(tmp_path):
    root = photo_folder(tmp_path / "p", n=6)  # 2 folders
    cfg = DataConfig(spec=f"folder:{root}", split_by="folder")
    with pytest.raises(ValueError, match="at least 3 folders of images, not 2"):
        load_split(cfg, "train")
    x, _ = load_split(DataConfig(spec=f"folder:{root}", split_by="folder", val_fraction=0), "test")
    assert len(x) == 3
    with pytest.raises(ValueError, match="split_by must be"):
        load_split(DataConfig(spec=f"folder:{root}", split_by="leaf"), "train")


def test_prepare_data_builds_what_training_reads(tmp_path, decodes):
    root = nested_folder(tmp_path / "n")
    cfg = DataConfig(spec=f"folder:{root}", image_size=6, channels=1)
    seen = []
    report = prepare_data(cfg, progress=lambda done, total: seen.append((done, total)))
    assert report.state == "built" and report.images == 38 and seen[-1] == (38, 38)
    decodes.clear()
    x, _ = load_split(cfg, "train")
    assert decodes == [] and x.shape[1:] == (1, 6, 6)
    assert prepare_data(cfg, build=False).state == "up to date"


def test_load_images_gives_split_views_of_one_cache(tmp_path):
    root = nested_folder(tmp_path / "n")
    cfg = DataConfig(spec=f"folder:{root}", val_fraction=0.2)
    views = [load_images(cfg, s) for s in ("train", "val", "test", "all")]
    assert all(isinstance(v, CachedImages) for v in views)
    assert len({v.cache for v in views}) == 1
    assert sum(len(v) for v in views[:3]) == len(views[3])
    x, y = load_split(cfg, "train")
    assert torch.equal(x, views[0].stacked()) and y.tolist() == views[0].labels.tolist()
    b = load_images(DataConfig(spec=f"folder:{root}", classes=(1,)), "all")
    assert set(b.labels.tolist()) == {1} and all(n.startswith("b/") for n in b.names)
    clone = pickle.loads(pickle.dumps(views[1]))
    assert clone.names == views[1].names and torch.equal(clone.stacked(), views[1].stacked())


def test_mixed_sizes_are_one_line_naming_the_odd_file(tmp_path):
    root = photo_folder(tmp_path / "p", n=5)
    save(root / "dogs" / "odd.png", rgb(30, 30, 1))
    with pytest.raises(ValueError) as e:
        load_dataset(f"folder:{root}", "train")
    msg = str(e.value)
    assert "\n" not in msg and "dogs/odd.png is 30x30" in msg and "5 of 6 are 28x20" in msg
    assert "--crop N" in msg and "--image-size N" in msg
    x, _ = load_dataset(f"folder:{root}", "all", image_size=16)
    assert x.shape == (6, 3, 16, 16)
    assert len(load_images(DataConfig(spec=f"folder:{root}"), "all")) == 6  # any sizes: fine


# ---------------------------------------------------------------------------------------------
# convae cache


def test_cache_command(tmp_path, capsys):
    root = photo_folder(tmp_path / "p", n=4)
    (root / "bad.png").write_bytes(b"nope")
    assert main(["cache", f"folder:{root}", "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["state"] == "missing"
    assert main(["cache", f"folder:{root}", "--max-side", "14", "-q"]) == 0
    out = capsys.readouterr().out
    assert "cache built" in out and "4 images, 3 channel(s), 14x10" in out and "skipped 1" in out
    assert main(["cache", str(root), "--max-side", "14", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert res["state"] == "up to date" and res["images"] == 4 and res["skipped"] == 1
    assert Path(res["cache"]).is_dir() and res["bytes"] == 4 * 14 * 10 * 3
    assert main(["cache", str(root), "--strict"]) == 1
    assert "bad.png: cannot read image" in capsys.readouterr().err
    assert main(["cache", "mnist"]) == 1
    assert main(["cache", str(root), "--image-size", "8", "--max-side", "9"]) == 2
    err = capsys.readouterr().err
    assert err.count("convae: error:") == 2 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# The benchmarks behind docs/photos.md, on tiny settings


def _bench(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its worker processes find their function by module name
    spec.loader.exec_module(mod)
    return mod


def test_ingest_benchmark(tmp_path, capsys):
    args = ["--images", "70", "--width", "96", "--height", "72", "--folder", str(tmp_path / "ph"),
            "--size", "16", "--plain", "5", "--repeats", "1", "--json"]  # fmt: skip
    assert _bench("ingest").main(args) == 0
    (run,) = json.loads(capsys.readouterr().out.splitlines()[-1])["runs"]
    assert run["files"] == run["images"] == 70 and run["cache_bytes"] == 70 * 16 * 16 * 3
    assert (
        run["plain_images_per_s"] > 0 and run["cold_images_per_s"] > 0 and run["warm_seconds"] > 0
    )


@pytest.mark.slow
def test_cache_train_benchmark(tmp_path, capsys):
    _bench("ingest").generate(tmp_path / "ph", 12, 96, 72)
    args = ["--folder", str(tmp_path / "ph"), "--max-side", "80", "--images", "12", "--steps", "7",
            "--repeats", "1", "--rss-steps", "6", "--limit-mib", "2048", "--json"]  # fmt: skip
    assert _bench("cache_train").main(args) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert set(res["throughput"]["median"]) == {
        "tensors",
        "memory_crops",
        "cache_crops",
        "disk_crops",
    }
    assert res["rss"]["images"] == 12 and 0 < res["rss"]["peak_rss"] < 2048 << 20
