"""The photo denoiser against BM3D and scikit-image's classical filters on three held-out photos.

    python benchmarks/denoise_photos.py train --photos DIR --out RUN [--snapshots DIR]
    python benchmarks/denoise_photos.py classical --out classical.json
    python benchmarks/denoise_photos.py model RUN [RUN...] --out model.json
    python benchmarks/denoise_photos.py table classical.json model.json

``train`` writes the photo folders (benchmarks/photo_data.py) and runs exactly
``convae train --preset denoise --data folder:DIR/train --crop 64 --val-fraction 0 --threads 1
--device cpu --out RUN`` (the same flags through convae's own parser and trainer), keeping the
weights at 5, 10 and 20 CPU minutes for the training-time curve. The scoring lives in
:mod:`convae.denoise` (``photo_benchmark``); this script parses, calls and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import photo_data
import torch

from convae import denoise

TRAIN_FLAGS = ["--preset", "denoise", "--crop", "64", "--val-fraction", "0", "--threads", "1",
               "--device", "cpu"]  # fmt: skip


def _train(a: argparse.Namespace) -> dict:
    from convae.cli import build_parser
    from convae.cli.common import set_threads
    from convae.cli.train import build_run_config

    root = photo_data.write_folders(a.photos)
    argv = ["train", "--data", f"folder:{root / 'train'}", *TRAIN_FLAGS, "--out", str(a.out),
            *a.extra]  # fmt: skip
    args = build_parser().parse_args(argv)
    set_threads(args)
    cfg = build_run_config(args)
    t0, c0 = time.perf_counter(), time.process_time()
    snaps = denoise.train_with_snapshots(cfg, a.out, a.snapshots or f"{a.out}-snapshots",
                                         [60 * m for m in a.marks], device="cpu")  # fmt: skip
    return {"command": "convae " + " ".join(argv), "run": str(a.out),
            "snapshots": [str(s) for s in snaps], "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="train the photo denoiser with snapshots")
    t.add_argument("--photos", type=Path, required=True, help="where the photo folders go")
    t.add_argument("--out", type=Path, required=True, help="the run directory")
    t.add_argument("--snapshots", type=Path, help="default OUT-snapshots")
    t.add_argument("--marks", type=float, nargs="+", default=[5, 10, 20], help="CPU minutes")
    t.add_argument("extra", nargs="*", help="more convae train flags (after --)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.what == "train":
        res = _train(a)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
