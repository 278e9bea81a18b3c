"""Choosing the codec preset: train candidate models, fine-tune each for rate-distortion, measure.

For every candidate (architecture, width, latent size, epochs) this trains a model on the train
split exactly as `convae train` does (`convae.train.fit`, the default recipe plus the candidate's
overrides), prints its test PSNR with a float latent, then runs the codec fine-tune
(`convae.codec.fit_codec`) for each rate weight and prints bytes/image and PSNR of every quality
level on the test split (one .cae file for all test images, as `convae bench codec` measures).

    python benchmarks/codec.py --out /tmp/codec-sweep            # the grid in docs/codec.md
    python benchmarks/codec.py --only 2 --lmbda 0.01 --threads 1  # one candidate, one rate weight

Results go to OUT/sweep.jsonl (one line per fit) and OUT/sweep.md. Trained models are cached in
OUT/models/ so re-running only re-does the fine-tunes. Quality numbers do not depend on machine
load; the training seconds do (they are printed for orientation only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from convae import codec as C
from convae.config import ModelConfig, RunConfig, TrainConfig
from convae.data import load_dataset
from convae.models import build_model
from convae.train import evaluate, fit

# (model overrides, train overrides): the candidates compared in docs/codec.md
GRID: list[tuple[dict, dict]] = [
    ({"arch": "seed-upsample", "latent_dim": 392}, {"epochs": 15}),
    ({"arch": "convae", "width": 16, "latent_dim": 64, "decoder": "transpose"}, {"epochs": 60}),
    ({"arch": "convae", "width": 16, "latent_dim": 128, "decoder": "transpose"}, {"epochs": 40}),
    ({"arch": "convae", "width": 16, "latent_dim": 128, "decoder": "transpose"}, {"epochs": 100}),
    ({"arch": "convae", "width": 16, "latent_dim": 128, "decoder": "transpose"}, {"epochs": 250}),
    ({"arch": "convae", "width": 12, "latent_dim": 128, "decoder": "transpose"}, {"epochs": 100}),
    ({"arch": "convae", "width": 8, "latent_dim": 128, "decoder": "transpose"}, {"epochs": 100}),
    ({"arch": "convae", "width": 12, "latent_dim": 192, "decoder": "transpose"}, {"epochs": 100}),
]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="benchmarks/out/codec-sweep")
    ap.add_argument("--data", default="mnist-sample")
    ap.add_argument("--only", type=int, nargs="*", help="indices into the grid (default: all)")
    ap.add_argument(
        "--lmbda",
        type=float,
        nargs="+",
        default=[C.CodecFitConfig.lmbda],
        help="rate weights to fine-tune (default: the codec's)",
    )
    ap.add_argument("--distortion", default=C.CodecFitConfig.distortion, choices=["mse", "psnr"])
    ap.add_argument("--fit-epochs", type=int, default=C.CodecFitConfig.epochs)
    ap.add_argument("--fit-batch", type=int, default=C.CodecFitConfig.batch_size)
    ap.add_argument(
        "--no-decorrelate", action="store_true", help="quantize the latent without the rotation"
    )
    ap.add_argument("--threads", type=int, help="torch threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    train_x, _ = load_dataset(args.data, "train")
    test_x, _ = load_dataset(args.data, "test")
    lines = [
        "| model | train | float PSNR | rate weight | bytes/image @ PSNR dB per quality level |",
        "|---|---|---:|---:|---|",
    ]
    for i, (m_over, t_over) in enumerate(GRID):
        if args.only and i not in args.only:
            continue
        mcfg = ModelConfig(**m_over)
        tcfg = replace(TrainConfig(), **t_over)
        key = hashlib.sha256(json.dumps([m_over, t_over, args.data]).encode()).hexdigest()[:12]
        path = out / "models" / f"{key}.safetensors"
        torch.manual_seed(0)
        model = build_model(mcfg)
        t0 = time.perf_counter()
        if path.is_file():
            model.load_state_dict(load_file(path))
        else:
            fit(model, train_x, None, tcfg)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        model.eval()
        base = evaluate(model, test_x, ssim=False)["psnr"]
        print(
            f"[{i}] {m_over} {t_over}: float-latent test PSNR {base:.2f} dB ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        for lm in args.lmbda:
            cfg = C.CodecFitConfig(
                lmbda=lm,
                epochs=args.fit_epochs,
                batch_size=args.fit_batch,
                distortion=args.distortion,
                decorrelate=not args.no_decorrelate,
            )
            codec = C.fit_codec(model, train_x, cfg, run_config=RunConfig(model=mcfg))
            rows = C.codec_rd(codec, test_x, repeats=1, ssim=False)
            pts = " · ".join(f"{r['bytes_per_image']:.1f} B @ {r['psnr']:.2f}" for r in rows)
            print(f"    lambda {lm}: {pts}", flush=True)
            with open(out / "sweep.jsonl", "a") as f:
                f.write(
                    json.dumps(
                        {
                            "model": m_over,
                            "train": t_over,
                            "float_psnr": base,
                            "lmbda": lm,
                            "distortion": args.distortion,
                            "decorrelate": not args.no_decorrelate,
                            "fit_epochs": args.fit_epochs,
                            "fit_batch": args.fit_batch,
                            "levels": [
                                {k: r[k] for k in ("step", "bytes_per_image", "psnr")} for r in rows
                            ],
                        }
                    )
                    + "\n"
                )
            label = f"{lm} {args.distortion}" + ("" if not args.no_decorrelate else ", no rotation")
            lines.append(f"| {m_over} | {t_over} | {base:.2f} | {label} | {pts} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
