"""The GPU benchmark: `seed-strided` (latent 12), 30 epochs over 60,000 images resident on the GPU.

    python benchmarks/gpu.py                                  # cuda, 60,000 images, 30 epochs
    python benchmarks/gpu.py --data mnist --data-dir DIR      # the real MNIST training set
    python benchmarks/gpu.py --device cpu --images 2048 --epochs 1   # the same code path on a CPU

The training images are loaded once as uint8 and moved to the device before the clock starts;
`convae.training.fit` then slices, normalizes and trains on the device, with no host copies per step.
Without `--data mnist` (the GPU machines have no internet), the 3,600 training digits of the
embedded sample are repeated to `--images` — the same tensor shapes and the same work per epoch as
MNIST's 60,000, on fewer distinct digits. Reports the training seconds (CUDA synchronized), images/s,
peak GPU memory and the test MSE on the sample's 1,000 test digits. Target: < 10 s.

Prints one JSON line (the last stdout line). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from convae.config import ModelConfig, TrainConfig
from convae.data import load_dataset
from convae.inference import evaluate
from convae.models import build_model
from convae.runtime import resolve_device
from convae.training import fit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda", help="cuda (default), cpu or mps")
    ap.add_argument(
        "--data", default="mnist-sample", help="mnist-sample (repeated) or mnist (--data-dir)"
    )
    ap.add_argument("--data-dir", help="folder holding the MNIST IDX files")
    ap.add_argument("--images", type=int, default=60000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    device = resolve_device(a.device)
    x, _ = load_dataset(a.data, "train", data_dir=a.data_dir, val_fraction=0.0)
    if len(x) < a.images:
        x = x.repeat((a.images + len(x) - 1) // len(x), 1, 1, 1)
    x = x[: a.images].to(device)
    test, _ = load_dataset("mnist-sample", "test")
    torch.manual_seed(a.seed)
    model = build_model(ModelConfig(arch="seed-strided", latent_dim=12)).to(device)
    cfg = TrainConfig(
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, precision=a.precision, seed=a.seed
    )
    fit(
        model, x[: a.batch_size * 4], None, TrainConfig(epochs=1, batch_size=a.batch_size)
    )  # warm-up
    torch.manual_seed(a.seed)
    model = build_model(ModelConfig(arch="seed-strided", latent_dim=12)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    history = fit(model, x, None, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "data": a.data,
        "images": len(x),
        "epochs": len(history),
        "batch_size": a.batch_size,
        "lr": a.lr,
        "seconds": seconds,
        "images_per_s": len(history) * len(x) / seconds,
        "test_mse": evaluate(model, test, ssim=False)["mse"],
        "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        "target_seconds": 10.0,
    }
    print(
        f"seed-strided L12, {res['epochs']} epochs x {res['images']:,} images on {res['device']}: "
        f"{seconds:.1f} s ({res['images_per_s']:,.0f} images/s), test MSE {res['test_mse']:.5f}",
        file=sys.stderr,
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
