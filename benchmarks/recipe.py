"""Quality of one training recipe on mnist-sample: test MSE after every epoch (quality, not speed).

    python benchmarks/recipe.py arch=seed-strided latent_dim=12 epochs=10 batch_size=32 lr=0.01
    python benchmarks/recipe.py arch=convae width=16 latent_dim=12 epochs=15 precision=fp32

key=value arguments override ModelConfig (arch, width, latent_dim, decoder, norm, mean_image) and TrainConfig
(epochs, batch_size, patience, lr, weight_decay, warmup, schedule, optimizer, precision, loss).
Runs with one torch thread so several can run side by side; prints one JSON line with the final
test MSE, the validation loss and the per-epoch test-MSE curve. Used to choose the default recipe
(docs/benchmarks.md). The seconds it prints are wall time on whatever else the machine was doing.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from convae.config import ModelConfig, TrainConfig
from convae.data import load_dataset
from convae.inference import evaluate
from convae.models import build_model
from convae.training import fit


def _bool(v: str) -> bool:
    if v.lower() not in ("1", "0", "true", "false"):
        raise SystemExit(f"expected true/false, not {v!r}")
    return v.lower() in ("1", "true")


MODEL_KEYS = {"width": int, "latent_dim": int, "decoder": str, "norm": str, "mean_image": _bool}
TRAIN_KEYS = {
    "epochs": int,
    "batch_size": int,
    "patience": int,
    "seed": int,
    "lr": float,
    "weight_decay": float,
    "warmup": float,
    "schedule": str,
    "optimizer": str,
    "precision": str,
    "loss": str,
}


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    args = dict(a.split("=", 1) for a in argv)
    arch = args.pop("arch", "convae")
    unknown = set(args) - set(MODEL_KEYS) - set(TRAIN_KEYS)
    if unknown:
        raise SystemExit(f"unknown keys: {sorted(unknown)}")
    m = {k: MODEL_KEYS[k](v) for k, v in args.items() if k in MODEL_KEYS}
    t = {k: TRAIN_KEYS[k](v) for k, v in args.items() if k in TRAIN_KEYS}
    cfg = TrainConfig(**t)
    tr, _ = load_dataset("mnist-sample", "train")
    va, _ = load_dataset("mnist-sample", "val")
    te, _ = load_dataset("mnist-sample", "test")
    torch.manual_seed(cfg.seed)
    model = build_model(ModelConfig(arch=arch, **m))
    curve: list[float] = []

    def progress(ev: dict) -> None:
        if ev["event"] == "epoch":  # test MSE after each epoch (eval mode), then back to training
            curve.append(round(evaluate(model, te, ssim=False)["mse"], 5))
            model.train()

    t0 = time.perf_counter()
    hist = fit(model, tr, va, cfg, progress=progress)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "arch": arch,
                **m,
                **t,
                "test_mse": curve[-1],
                "val_loss": hist[-1]["val_loss"],
                "wall_seconds": round(seconds, 1),
                "curve": curve,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
