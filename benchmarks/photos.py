"""Quality on real photos: the fully convolutional photo architecture against seed-dense at equal
code size, trained on random crops of six photos and scored on three whole photos held out.

    python benchmarks/photos.py --steps 3000 --out benchmarks/out/photos

All models see the same number of crop pixels (batch 32 of 32x32 crops, or 8 of 64x64; horizontal
flips) of the training photos
(benchmarks/photo_data.py names them) with their architecture's default recipe. The held-out photos
go through convae's whole-image path: the photo architecture runs on each photo at once, seed-dense
(tied to 32x32) on half-overlapping tiles blended with a smooth window. Codes of equal size: 200
values per 32x32 tile for seed-dense (0.195 per pixel), 3 channels at 1/4 or 12 channels at 1/8
resolution (0.188 per pixel) for the photo architecture. Prints a per-photo table (PSNR dB / SSIM) and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import photo_data
import torch

from convae.config import ModelConfig, RunConfig, TrainConfig
from convae.inference import evaluate
from convae.runs import resolve_config
from convae.sampling import ImageList, RandomCrops
from convae.training import fit_config

MODELS = {
    "convae-map (3 code channels at 1/4)": ModelConfig(
        arch="convae-map", channels=3, image_size=32, code_channels=3, width=32, padding="reflect"
    ),
    "convae-map (12 code channels at 1/8, 64-px crops)": ModelConfig(
        arch="convae-map",
        channels=3,
        image_size=64,
        depth=3,
        code_channels=12,
        width=32,
        padding="reflect",
    ),  # fmt: skip
    "seed-dense (latent 200)": ModelConfig(arch="seed-dense", channels=3, image_size=32),
}


def run(name: str, model_cfg: ModelConfig, steps: int, batch: int, seed: int) -> dict:
    """Train one model for ``steps`` steps of ``batch`` 32x32 crops' worth of pixels (fewer,
    larger crops for a larger crop size) and score it on the held-out photos."""
    train = ImageList(photo_data.photos(photo_data.TRAIN))
    batch = max(1, batch * 32**2 // model_cfg.image_size**2)
    per_epoch = 100 * batch
    cfg = resolve_config(
        RunConfig(
            model=model_cfg,
            train=TrainConfig(epochs=max(1, steps // 100), batch_size=batch, seed=seed),
        )
    )
    crops = RandomCrops(train, model_cfg.image_size, per_epoch, torch.device("cpu"))
    t0 = time.perf_counter()
    model, history = fit_config(cfg, crops, None, device="cpu")
    seconds = time.perf_counter() - t0
    held = [torch.from_numpy(p) for p in photo_data.photos(photo_data.HELD_OUT)]
    m = evaluate(model, held, per_image=True)
    rows = {
        n: {"psnr": m["per_image"]["psnr"][i], "ssim": m["per_image"]["ssim"][i]}
        for i, n in enumerate(photo_data.HELD_OUT)
    }
    values_per_pixel = model.latent_dim / (model_cfg.image_size**2)
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "code_values_per_pixel": values_per_pixel,
        "steps": history[-1]["step"],
        "train_seconds": seconds,
        "photos": rows,
        "mean_psnr": m["psnr"],
        "mean_ssim": m["ssim"],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/out/photos")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(n, c, args.steps, args.batch, args.seed) for n, c in MODELS.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    head = "| model | code values/px | params | steps | train s | " + " | ".join(
        photo_data.HELD_OUT
    )
    print(head + " | mean |")
    print("|" + "---|" * (6 + len(photo_data.HELD_OUT)))
    for r in results:
        cells = [
            f"{r['photos'][n]['psnr']:.2f} / {r['photos'][n]['ssim']:.3f}"
            for n in photo_data.HELD_OUT
        ]
        print(
            f"| {r['model']} | {r['code_values_per_pixel']:.3f} | {r['params']:,} | {r['steps']} | "
            f"{r['train_seconds']:.0f} | "
            + " | ".join(cells)
            + f" | {r['mean_psnr']:.2f} / {r['mean_ssim']:.3f} |"
        )


if __name__ == "__main__":
    main()
