"""Folder ingest: decoding a folder of photos into convae's cache, against a plain Pillow loop.

    python benchmarks/ingest.py                       # generate (once), then measure
    python benchmarks/ingest.py --images 2000 --repeats 1 --json

The folder: ``--images`` JPEGs of 1024x768 (quality 90; smooth random colour fields plus pixel
noise, in sub-folders of 200), generated once into ``--folder`` (default
benchmarks/out/photos-N, reused when it already holds them). Then, ``--repeats`` times, in turn:

* plain: one process, Pillow's open + convert + resize (shorter side to ``--size``) + centre
  crop of each file (what reading a folder cost before the cache), in images/s: ``--plain``
  files spread over the folder, half just before the cold build and half just after it (the
  load of a shared machine drifts), and in CPU milliseconds per image;
* cold: ``convae.cache.update_folder(folder, image_size=size)`` into an empty cache folder: the
  whole folder listed, decoded by worker processes (JPEG draft decoding), written, published;
  images/s, and CPU ms per image (this process and its workers);
* warm: the same call again (listing + signature check + opening; nothing decoded), and
  ``open_folder`` (what every training run and DDP rank does), in seconds.

The JPEGs are read from the page cache in every phase (they were just written or read); cold
means an empty convae cache, not a cold disk. Prints a table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _photo(args: tuple[Path, int, int, int]) -> None:
    path, seed, W, H = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(4, 12)), 3), np.uint8)
    a = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC), np.int16)
    a = a + rng.integers(-6, 7, a.shape, dtype=np.int16)  # sensor-like noise: JPEG must code it
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(tmp, "JPEG", quality=90)
    os.replace(tmp, path)


def generate(folder: Path, n: int, width: int = 1024, height: int = 768) -> list[Path]:
    """``n`` JPEGs under ``folder/dNNN/`` (200 a folder); existing ones are kept."""
    paths = [folder / f"d{i // 200:03d}" / f"{i:05d}.jpg" for i in range(n)]
    todo = [(p, i, width, height) for i, p in enumerate(paths) if not p.exists()]
    for d in {t[0].parent for t in todo}:
        d.mkdir(parents=True, exist_ok=True)
    if todo:
        print(f"generating {len(todo)} JPEGs in {folder} ...", file=sys.stderr)
        with multiprocessing.get_context("fork").Pool() as pool:
            for k, _ in enumerate(pool.imap_unordered(_photo, todo, chunksize=16)):
                if k % 1000 == 999:
                    print(f"  {k + 1}/{len(todo)}", file=sys.stderr)
    return paths


def plain_loop(paths: list[Path], size: int) -> tuple[float, float]:
    """(images/s, CPU ms/image) of a single-process decode + resize + centre crop (no draft,
    no cache)."""
    from PIL import Image, ImageOps

    t, cpu = time.perf_counter(), time.process_time()
    for p in paths:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            np.asarray(im.crop((left, top, left + size, top + size)))
    return len(paths) / (time.perf_counter() - t), 1e3 * (time.process_time() - cpu) / len(paths)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decoding workers)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cache_runs(folder: Path, size: int, workers: int | None, warm_repeats: int = 5) -> dict:
    """One cold build into an empty cache folder, then warm checks and opens."""
    from convae import cache

    with tempfile.TemporaryDirectory(dir=Path(folder).parent) as d:
        os.environ["CONVAE_CACHE"] = d
        cache._OPENED.clear()
        t, cpu = time.perf_counter(), _cpu_seconds()
        r = cache.update_folder(folder, image_size=size, workers=workers)
        cold, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
        assert r.state == "built" and r.decoded == r.files, r
        warm, opened = [], []
        for _ in range(warm_repeats):
            cache._OPENED.clear()  # as a new process: nothing open yet
            t = time.perf_counter()
            w = cache.update_folder(folder, image_size=size)
            warm.append(time.perf_counter() - t)
            assert w.state == "up to date" and w.decoded == 0
            cache._OPENED.clear()
            t = time.perf_counter()
            store = cache.open_folder(folder, image_size=size)
            opened.append(time.perf_counter() - t)
        return {"files": r.files, "cold_seconds": cold, "cold_images_per_s": r.files / cold,
                "cold_cpu_ms_per_image": 1e3 * cpu / r.files,
                "warm_seconds": statistics.median(warm), "open_seconds": statistics.median(opened),
                "cache_bytes": r.bytes, "images": len(store)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--width", type=int, default=1024, help="of the generated JPEGs")
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--folder", type=Path)
    p.add_argument("--size", type=int, default=64, help="cache side (image_size)")
    p.add_argument("--plain", type=int, default=1000, help="files timed in the plain loop")
    p.add_argument("--workers", type=int, help="decoding processes (default: one per core)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", type=Path, help="also write the JSON result here")
    a = p.parse_args(argv)
    folder = a.folder or Path(__file__).parent / "out" / f"photos-{a.images}"
    paths = generate(folder, a.images, a.width, a.height)
    if a.generate_only:
        return 0
    # the plain loop's files spread over the whole folder (as the build reads them), half timed
    # just before the cold build and half just after: a shared machine's load drifts
    sample = paths[:: max(1, len(paths) // max(1, a.plain))][: a.plain]
    half = max(1, len(sample) // 2)
    rows = []
    for _ in range(a.repeats):
        before = plain_loop(sample[:half], a.size)
        row = cache_runs(folder, a.size, a.workers)
        after = plain_loop(sample[half:] or sample, a.size)
        plain = (before[0] + after[0]) / 2
        rows.append({"plain_images_per_s": plain, "plain_before_after": [before[0], after[0]],
                     "plain_cpu_ms_per_image": (before[1] + after[1]) / 2, **row,
                     "cold_vs_plain": row["cold_images_per_s"] / plain})  # fmt: skip
    res = {"folder": str(folder), "size": a.size, "cpus": os.cpu_count(), "jpeg": [a.width, a.height],
           "load_average": os.getloadavg(), "runs": rows}  # fmt: skip
    if a.save:
        a.save.write_text(json.dumps(res, indent=1))
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{len(paths)} JPEGs of {a.width}x{a.height} -> {a.size}x{a.size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| run | plain loop (img/s) | cache cold (img/s) | cold / plain | CPU ms/img: plain, cold "
          "| warm check (s) | open (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {i + 1} | {r['plain_images_per_s']:.1f} | {r['cold_images_per_s']:.1f} | "
              f"{r['cold_vs_plain']:.2f}x | {r['plain_cpu_ms_per_image']:.1f}, "
              f"{r['cold_cpu_ms_per_image']:.1f} | {r['warm_seconds']:.2f} | "
              f"{r['open_seconds']:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
