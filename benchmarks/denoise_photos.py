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

import os

# One thread for every library (BM3D's and NumPy's pools read these at import): s/MP per thread.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import photo_data  # noqa: E402
import torch  # noqa: E402

from convae import denoise, denoise_photos  # noqa: E402

# Classical filters are tuned on these 256 x 256 crops of training photos: (name, top, left).
TUNE_CROPS = (("astronaut", 0, 128), ("rocket", 100, 200), ("flower", 150, 300))

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


def _photos() -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(photo_data.photo(n)) for n in photo_data.HELD_OUT}


def _tune_crops() -> list[torch.Tensor]:
    return [torch.from_numpy(photo_data.photo(n)[:, t : t + 256, q : q + 256].copy())
            for n, t, q in TUNE_CROPS]  # fmt: skip


def _levels(text: str) -> list[denoise_photos.Level]:
    return [denoise_photos.LEVELS[n] for n in text.split(",")]


def _classical(a: argparse.Namespace) -> dict:
    return denoise_photos.classical_report(
        _photos(), _tune_crops(), _levels(a.levels), a.methods.split(","),
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )  # fmt: skip


def _model(a: argparse.Namespace) -> dict:
    import convae

    models = {}
    for r in a.runs:
        label = "convae" if len(a.runs) == 1 else f"convae:{Path(r).name}"
        models[label] = convae.load(r, "cpu")
    return denoise_photos.model_report(models, _photos(), _levels(a.levels))


def _write(res: dict, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("train", help="train the photo denoiser with snapshots")
    t = tr
    t.add_argument("--photos", type=Path, required=True, help="where the photo folders go")
    t.add_argument("--out", type=Path, required=True, help="the run directory")
    t.add_argument("--snapshots", type=Path, help="default OUT-snapshots")
    t.add_argument("--marks", type=float, nargs="+", default=[5, 10, 20], help="CPU minutes")
    t.add_argument("extra", nargs="*", help="more convae train flags (after --)")
    levels = ",".join(denoise_photos.LEVELS)
    c = sub.add_parser("classical", help="tune and score BM3D and the scikit-image filters")
    c.add_argument("--levels", default=levels)
    c.add_argument("--methods", default=",".join(denoise_photos.METHODS))
    c.add_argument("--out", type=Path)
    m = sub.add_parser("model", help="score trained runs (blind)")
    m.add_argument("runs", nargs="+")
    m.add_argument("--levels", default=levels)
    m.add_argument("--out", type=Path)
    t = sub.add_parser("table", help="merge result files into one Markdown table")
    t.add_argument("inputs", nargs="+", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.what == "table":
        res = denoise_photos.merge([json.loads(f.read_text()) for f in a.inputs])
        print(denoise_photos.markdown(res))
        return 0
    res = {"train": _train, "classical": _classical, "model": _model}[a.what](a)
    if a.what != "train":
        _write(res, a.out)
        print(denoise_photos.markdown(res))
    else:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
