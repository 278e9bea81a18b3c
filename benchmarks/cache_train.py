"""Training from the folder cache: step throughput against images in memory, and peak RSS when
the cache is several times larger than the memory the process may use.

    python benchmarks/cache_train.py                      # after benchmarks/ingest.py made the folder
    python benchmarks/cache_train.py --repeats 3 --json

The folder is benchmarks/ingest.py's (``--folder``; 20,000 JPEGs of 1024x768), cached with its
longer side at ``--max-side`` (256: 256x192 RGB, 2.9 GB for 20,000 images) under
benchmarks/out/cache unless $CONVAE_CACHE says otherwise.

Throughput (``convae.training.fit``, a ``convae-map`` model on 64x64 RGB crops, batch 32, the
library's default precision, ``--threads`` torch threads): steps per second from the 5th step on, the same
number of steps from three sources, in turn, ``--repeats`` times:

* tensors: 64x64 crops cut beforehand, a uint8 tensor in memory (``TensorImages``);
* memory crops: ``RandomCrops`` over the first ``--images`` images held in memory (``ArrayImages``);
* cache crops: ``RandomCrops`` over the same images read from the cache (``CachedImages``);
* disk crops: ``RandomCrops`` over all the folder's images in the cache, the cache file dropped
  from the page cache every 10 batches (``POSIX_FADV_DONTNEED``): crops read from the disk;

and the milliseconds each source takes to draw a batch, alone.

Peak RSS: a child process limits its data segment (``RLIMIT_DATA``) to ``--limit-mib``, trains
``--rss-steps`` steps on random crops of all the folder's images from the cache, then reads every
cached image once; it reports its peak RSS (VmHWM) and the cache's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "out"
CROP, BATCH = 64, 32


def _timed_fit(source, steps: int) -> float:
    """Steps per second of fit() on ``source`` after 5 warm-up steps."""
    from convae.config import ModelConfig, TrainConfig
    from convae.models import build_model
    from convae.training import fit

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="convae-map", channels=3, image_size=CROP))
    stamps: list[float] = []

    def progress(ev: dict) -> None:
        if ev["event"] == "step":
            stamps.append(time.perf_counter())

    fit(model, source, None, TrainConfig(epochs=1, batch_size=BATCH), progress=progress,
        log_every=1)  # fmt: skip
    assert len(stamps) == steps, (len(stamps), steps)
    return (steps - 5) / (stamps[-1] - stamps[4])


class _FromDisk:
    """``RandomCrops`` over a cache whose file is dropped from the page cache every 10 batches
    (``POSIX_FADV_DONTNEED``): a cache larger than the memory, where crops come from the disk."""

    def __init__(self, crops) -> None:
        self.crops, self.n = crops, 0
        self.fd = crops.store._gen.fd

    def __getattr__(self, name):
        return getattr(self.crops, name)

    def __len__(self) -> int:
        return len(self.crops)

    def batch(self, idx):
        if self.n % 10 == 0:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.n += 1
        return self.crops.batch(idx)


def _batch_ms(source, steps: int) -> float:
    """Milliseconds to draw one batch (the data's part of a step), over an epoch's batches."""
    source.start_epoch(0, 0)
    t = time.perf_counter()
    for i in range(steps):
        source.batch(torch.arange(i * BATCH, (i + 1) * BATCH))
    return 1e3 * (time.perf_counter() - t) / steps


def throughput(folder: Path, max_side: int, images: int, steps: int, repeats: int) -> dict:
    from convae.cache import open_folder
    from convae.data import ArrayImages
    from convae.sampling import RandomCrops, TensorImages, fixed_crops

    cpu = torch.device("cpu")
    everything = open_folder(folder, max_side=max_side)
    cached = everything.subset(np.arange(images))
    memory = ArrayImages(cached.stacked(), cached.labels)
    tensors = fixed_crops(memory, CROP, steps * BATCH, seed=1)
    sources = {
        "tensors": lambda: TensorImages(tensors, cpu),
        "memory_crops": lambda: RandomCrops(memory, CROP, steps * BATCH, cpu),
        "cache_crops": lambda: RandomCrops(cached, CROP, steps * BATCH, cpu),
        "disk_crops": lambda: _FromDisk(RandomCrops(everything, CROP, steps * BATCH, cpu)),
    }
    rates: dict[str, list[float]] = {k: [] for k in sources}
    batch_ms = {k: _batch_ms(make(), steps) for k, make in sources.items()}
    for r in range(repeats):
        order = list(sources) if r % 2 == 0 else list(reversed(sources))
        for k in order:
            rates[k].append(_timed_fit(sources[k](), steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"steps_per_s": rates, "median": med, "threads": torch.get_num_threads(),
            "batch_ms": batch_ms,
            "cache_vs_tensors": med["cache_crops"] / med["tensors"],
            "cache_vs_memory_crops": med["cache_crops"] / med["memory_crops"],
            "disk_vs_tensors": med["disk_crops"] / med["tensors"]}  # fmt: skip


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def rss_child(folder: Path, max_side: int, limit: int, steps: int) -> dict:
    """Run in a fresh process: limit the data segment, train on the cache, read all of it."""
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    from convae.cache import open_folder
    from convae.sampling import RandomCrops

    store = open_folder(folder, max_side=max_side)
    t = time.perf_counter()
    rate = _timed_fit(RandomCrops(store, CROP, steps * BATCH, torch.device("cpu")), steps)
    after_training = _status("VmHWM")
    total = 0
    for i in range(len(store)):  # every cached byte read once
        total += int(store.image(i).numpy().sum(dtype=np.int64))
    try:  # the limit is real: a block of its size cannot be had
        bytearray(limit)
        enforced = False
    except MemoryError:
        enforced = True
    return {"images": len(store), "cache_bytes": int(os.fstat(store._gen.fd).st_size),
            "limit_bytes": limit, "limit_enforced": enforced, "steps_per_s": rate,
            "peak_rss_after_training": after_training, "peak_rss": _status("VmHWM"),
            "seconds": time.perf_counter() - t, "pixel_sum": total}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--folder", type=Path, default=OUT / "photos-20000")
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--images", type=int, default=2000, help="images in the throughput runs")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit-mib", type=int, default=768)
    p.add_argument("--rss-steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a shared machine: 1)")
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("CONVAE_CACHE", str(OUT / "cache"))
    if a.rss_child:
        print(json.dumps(rss_child(a.folder, a.max_side, a.limit_mib << 20, a.rss_steps)))
        return 0
    from convae.cache import update_folder

    built = update_folder(a.folder, max_side=a.max_side)
    speed = throughput(a.folder, a.max_side, a.images, a.steps, a.repeats)
    child = subprocess.run([sys.executable, __file__, "--rss-child", "--folder", str(a.folder),
                            "--max-side", str(a.max_side), "--limit-mib", str(a.limit_mib),
                            "--rss-steps", str(a.rss_steps), "--threads", str(a.threads)],
                           check=True, capture_output=True, text=True)  # fmt: skip
    rss = json.loads(child.stdout.strip().splitlines()[-1])
    res = {"cache": built.to_dict(), "throughput": speed, "rss": rss,
           "load_average": os.getloadavg(), "cpus": os.cpu_count()}  # fmt: skip
    if a.json:
        print(json.dumps(res))
        return 0
    m = speed["median"]
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {speed['threads']} torch threads"
    )
    print("| source | steps/s (median) | vs tensors | ms per batch drawn |")
    print("|---|---|---|---|")
    for k in ("tensors", "memory_crops", "cache_crops", "disk_crops"):
        print(f"| {k} | {m[k]:.2f} | {m[k] / m['tensors']:.2f} | {speed['batch_ms'][k]:.2f} |")
    gib = 1 << 30
    print(f"RSS: cache {rss['cache_bytes'] / gib:.2f} GiB = {rss['cache_bytes'] / rss['limit_bytes']:.1f}x "
          f"the {rss['limit_bytes'] / gib:.2f} GiB data limit; peak RSS {rss['peak_rss'] / gib:.2f} GiB "
          f"after {a.rss_steps} steps and a read of every image")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
