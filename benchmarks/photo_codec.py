"""Reproduce docs/codec.md's photo section: the photo split, a photo codec run, its benchmark.

    python benchmarks/photo_codec.py --work runs/photo-codec [--run RUN] [--threads 1]

Writes the photos (``WORK/photos/train``, ``WORK/photos/held-out``), trains ``convae train --preset
codec`` on the training photos into ``WORK/run`` unless ``--run`` names a finished run (a finished
run there is reused, a stopped one resumed), then runs ``convae bench codec`` on the held-out
photos into ``WORK/bench`` (rd.json, rd.md, rd.png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import photo_data  # noqa: E402

from convae.cli import main as convae  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/photo-codec"))
    p.add_argument("--run", type=Path, help="a finished photo codec run (default: train WORK/run)")
    p.add_argument("--threads", default="1", help="torch threads for training and the bench")
    args = p.parse_args()
    photos = photo_data.write_folders(args.work / "photos")
    run = args.run or args.work / "run"
    if args.run is None and not (run / "metrics.json").is_file():
        resume = ["--resume"] if (run / "trainer.json").is_file() else []
        code = convae(["train", "--preset", "codec", "--data", f"folder:{photos / 'train'}",
                       "--out", str(run), "--threads", args.threads, *resume])  # fmt: skip
        if code:
            return code
    return convae(["bench", "codec", "--data", f"folder:{photos / 'held-out'}", "--runs", str(run),
                   "--out", str(args.work / "bench"), "--threads", args.threads])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
