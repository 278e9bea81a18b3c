"""The photo denoiser against BM3D and scikit-image's classical filters on three held-out photos.

    python benchmarks/denoise_photos.py train --photos DIR --out RUN [--snapshots DIR]
    python benchmarks/denoise_photos.py classical --out classical.json
    python benchmarks/denoise_photos.py model RUN [RUN...] --out model.json
    python benchmarks/denoise_photos.py table classical.json model.json
    python benchmarks/denoise_photos.py example RUN --classical classical.json --out FIG.png

``train`` writes the photo folders (benchmarks/photo_data.py) and runs exactly
``convae train --preset denoise --data folder:DIR/train --val-fraction 0 --threads 1
--device cpu --out RUN`` (the same flags through convae's own parser and trainer; the preset
trains on 64 x 64 crops of a folder), keeping the weights at 2.5, 5 and 10 CPU minutes for the
training-time curve. The scoring lives in :mod:`convae.denoise_photos`; this script parses,
calls and prints.
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

TRAIN_FLAGS = ["--preset", "denoise", "--val-fraction", "0", "--threads", "1", "--device", "cpu"]


def _train(a: argparse.Namespace) -> dict:
    from convae.cli import build_parser
    from convae.cli.common import set_threads
    from convae.cli.train import build_run_config

    root = photo_data.write_folders(a.photos)
    train = root / "train" if a.max_side is None else _shrunk(root / "train", a.max_side)
    argv = ["train", "--data", f"folder:{train}", *TRAIN_FLAGS, "--out", str(a.out),
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


def _shrunk(folder: Path, side: int) -> Path:
    """``folder``'s photos with the longer side shrunk to ``side`` (antialiased) in
    ``folder-SIDE``: the large photos (retina, hubble_deep_field) then weigh about as much as the
    others in the crops, which are drawn in proportion to a photo's area."""
    from PIL import Image

    out = folder.with_name(f"{folder.name}-{side}")
    out.mkdir(exist_ok=True)
    for p in sorted(folder.glob("*.png")):
        target = out / p.name
        if target.is_file() and target.stat().st_mtime >= p.stat().st_mtime:
            continue  # made before: rewriting it would change what a running job reads
        with Image.open(p) as im:
            im = im.convert("RGB")
            scale = side / max(im.size)
            if scale < 1:
                size = (round(im.width * scale), round(im.height * scale))
                im = im.resize(size, Image.Resampling.LANCZOS)
            tmp = out / f".{p.stem}.{os.getpid()}.png"
            im.save(tmp)
            os.replace(tmp, target)  # a reader sees the old file or the new one, never half
    return out


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


def _cpu_minutes(run: Path) -> float:
    """Training CPU minutes of a run (metrics.json) or of a snapshot (snapshot.json)."""
    snap = run / "snapshot.json"
    if snap.is_file():
        return json.loads(snap.read_text())["cpu_seconds"] / 60
    return json.loads((run / "metrics.json").read_text())["train_cpu_seconds"] / 60


def _model(a: argparse.Namespace) -> dict:
    import convae

    models = {}
    for r in a.runs:
        label = "convae" if len(a.runs) == 1 else f"convae ({_cpu_minutes(r):.1f} CPU min)"
        models[label] = convae.load(r, "cpu")
    return denoise_photos.model_report(models, _photos(), _levels(a.levels))


def _example(a: argparse.Namespace) -> dict:
    """Clean, noisy, convae, BM3D and NLM (its tuned parameters) on a crop of one held-out photo;
    each method runs on the whole photo with the benchmark's own noise draw."""
    import convae
    from convae.inference import to_float
    from convae.plots import image_grid_figure, save_figure

    level = denoise_photos.LEVELS[a.level]
    tuned = json.loads(a.classical.read_text())[level.name]
    x = to_float(torch.from_numpy(photo_data.photo(a.photo)))
    y, s = denoise_photos.add_noise(x[None], level, seed=photo_data.HELD_OUT.index(a.photo))
    outs = {"noisy": y[0], "convae": denoise_photos.denoise_photo(convae.load(a.run, "cpu"), y[0])}
    for m in ("bm3d", "nlm"):
        outs[m] = denoise_photos.run_method(m, y[0], s, tuned[m]["params"])
    psnr = {k: denoise_photos.score(x, v.clamp(0, 1))[0] for k, v in outs.items()}
    top, left, size = a.crop
    crops = [v[:, top : top + size, left : left + size].clamp(0, 1) for v in (x, *outs.values())]
    titles = ["clean", *(f"{k} {psnr[k]:.2f} dB" for k in outs)]
    save_figure(image_grid_figure([crops], titles=titles, scale=2.4), a.out)
    return {"out": str(a.out), "photo": a.photo, "level": level.name, "psnr": psnr}


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
    t.add_argument("--marks", type=float, nargs="+", default=[2.5, 5, 10], help="CPU minutes")
    t.add_argument("--max-side", type=int, help="train on the photos shrunk to this longer side")
    t.add_argument("extra", nargs="*", help="more convae train flags (after --)")
    levels = ",".join(denoise_photos.LEVELS)
    c = sub.add_parser("classical", help="tune and score BM3D and the scikit-image filters")
    c.add_argument("--levels", default=levels)
    c.add_argument("--methods", default=",".join(denoise_photos.METHODS))
    c.add_argument("--out", type=Path)
    m = sub.add_parser("model", help="score trained runs (blind)")
    m.add_argument("runs", nargs="+", type=Path)
    m.add_argument("--levels", default=levels)
    m.add_argument("--out", type=Path)
    e = sub.add_parser("example", help="a figure: one held-out photo's crop, every method")
    e.add_argument("run", type=Path)
    e.add_argument("--classical", type=Path, required=True, help="the classical JSON (tuned)")
    e.add_argument("--level", default="gaussian-25", choices=list(denoise_photos.LEVELS))
    e.add_argument("--photo", default="chelsea", choices=photo_data.HELD_OUT)
    e.add_argument(
        "--crop", type=int, nargs=3, default=[40, 150, 200], metavar=("TOP", "LEFT", "SIZE")
    )
    e.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    t = sub.add_parser("table", help="merge result files into Markdown tables")
    t.add_argument("inputs", nargs="+", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.what == "table":
        res = denoise_photos.merge([json.loads(f.read_text()) for f in a.inputs])
        print(denoise_photos.summary(res) + "\n\n" + denoise_photos.markdown(res))
        return 0
    res = {"train": _train, "classical": _classical, "model": _model, "example": _example}[a.what](
        a
    )
    if a.what in ("classical", "model"):
        _write(res, a.out)
        print(denoise_photos.summary(res) + "\n\n" + denoise_photos.markdown(res))
    else:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
