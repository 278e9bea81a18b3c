"""Do digits 1, 5 and 6 separate in a 2-D latent space? (the latent-space separation target)

Trains ``seed-keras2d`` with a 2-D code on digits 1, 5 and 6 of ``mnist-sample`` with the default
recipe (``convae train --arch seed-keras2d --classes 1,5,6``), encodes the test split and reports
the silhouette score of the test codes grouped by label. Target: >= 0.4.

    python benchmarks/latent_separation.py                       # the target: default recipe, seed 0
    python benchmarks/latent_separation.py --seeds 0,1,2          # the spread over seeds
    python benchmarks/latent_separation.py --batch-size 32 --epochs 30   # a recipe variant (labelled)

Recipe flags (--epochs, --batch-size, --lr, --optimizer, --schedule, --warmup, --precision,
--weight-decay, --noise) override the default recipe, and --no-mean-image drops the model's mean
image (an ablation of the mean image); all are printed in the table, so a variant is never mistaken
for the target. Runs and one latent map per run go to --out (git-ignored ``benchmarks/out/`` by
default); with --json the last stdout line is a JSON list of rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from convae.config import OPTIMIZERS, DataConfig, ModelConfig, RunConfig
from convae.data import load_split
from convae.inference import load, to_float
from convae.latent import encode_images, latent_map_figure, silhouette
from convae.plots import save_figure
from convae.training import train_or_reuse

TARGET = 0.4
CLASSES = (1, 5, 6)
RECIPE_FLAGS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "schedule",
    "warmup",
    "precision",
    "weight_decay",
    "noise",
)


def run_one(cfg: RunConfig, run_dir: Path, device: str, fresh: bool) -> dict:
    """Train one model in ``run_dir`` (or reuse a finished run of the same recipe) and measure its codes."""
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)  # our own output from an earlier invocation
    try:
        train_or_reuse(cfg, run_dir, device=device)
    except FileExistsError:  # an earlier run of another recipe (e.g. the defaults changed)
        shutil.rmtree(run_dir)
        train_or_reuse(cfg, run_dir, device=device)
    model = load(run_dir, "cpu")
    x, y = load_split(model.run_config.data, "test")
    z = encode_images(model, x)
    sil = silhouette(z, y)
    pairs = {}  # which digits overlap: the silhouette of each pair of digits alone
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i + 1 :]:
            keep = (y == a) | (y == b)
            pairs[f"{a}-{b}"] = silhouette(z[keep], y[keep])
    xt, yt = load_split(model.run_config.data, "train")
    sil_train = silhouette(encode_images(model, xt), yt)
    save_figure(
        latent_map_figure(z.numpy(), y.numpy(), title=f"{run_dir.name}: silhouette {sil:.3f}"),
        run_dir / "latent-map.png",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return {
        "silhouette": sil,
        "silhouette_train": sil_train,
        "pair_silhouette": pairs,
        "test_mse": metrics["mse"],
        "steps": history[-1]["step"],
        "epochs": len(history),
        "map": str(run_dir / "latent-map.png"),
    }


def pixel_pca_baseline(data: DataConfig) -> float:
    """Silhouette of the test images projected on the first 2 principal axes of the train pixels."""
    from sklearn.decomposition import PCA

    xt, _ = load_split(data, "train")
    x, y = load_split(data, "test")
    flat = lambda a: to_float(a).flatten(1).numpy()  # noqa: E731
    return silhouette(PCA(2, random_state=0).fit(flat(xt)).transform(flat(x)), y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0", help="comma list of training seeds (default 0)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup", type=float, help="fraction of steps warming up (default 0.15)")
    p.add_argument(
        "--noise", help="train as a denoiser on this input corruption, e.g. gaussian:0.2"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/out/latent_separation")
    p.add_argument(
        "--no-mean-image",
        action="store_true",
        help="the model without its mean image (an ablation)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the PCA-of-pixels baseline row")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="retrain even when a finished run of the recipe is there",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    base = RunConfig(
        model=ModelConfig(arch="seed-keras2d", latent_dim=2, mean_image=not args.no_mean_image),
        data=DataConfig(classes=CLASSES),
    )
    over = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    if "noise" in over:
        over["noise"] = (over["noise"],)  # TrainConfig.noise is a tuple of corruptions
    flag = lambda v: ",".join(v) if isinstance(v, tuple) else v  # noqa: E731
    words = [f"--{k.replace('_', '-')} {flag(v)}" for k, v in over.items()]
    tags = [f"{k}{flag(v)}" for k, v in over.items()]
    if args.no_mean_image:
        words, tags = ["--no-mean-image", *words], ["nomean", *tags]
    variant = " ".join(words) or "default recipe"
    tag = "-".join(tags) or "default"
    rows = []
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        cfg = replace(base, train=replace(base.train, seed=seed, **over))
        r = run_one(cfg, Path(args.out) / f"{tag}-seed{seed}", args.device, args.fresh)
        t = cfg.train
        row = {
            "variant": variant,
            "seed": seed,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "optimizer": t.optimizer,
            "schedule": t.schedule,
            "precision": t.precision,
            **r,
            "target": TARGET,
            "pass": r["silhouette"] is not None and r["silhouette"] >= TARGET,
        }
        rows.append(row)
        print(
            f"{variant:<40} seed {seed}: silhouette {r['silhouette']:.3f} "
            f"({'meets' if row['pass'] else 'misses'} >= {TARGET})  test MSE {r['test_mse']:.5f}  "
            f"{r['steps']} steps  map {r['map']}",
            file=sys.stderr,
            flush=True,
        )
    pair_names = list(rows[0]["pair_silhouette"])
    print(
        "| recipe | seed | steps | test MSE | silhouette, test codes | train codes | "
        + " | ".join(f"pair {p}" for p in pair_names)
        + " | >= 0.4 |"
    )
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * len(pair_names) + ":---:|")
    for r in rows:
        pairs = " | ".join(f"{r['pair_silhouette'][p]:.3f}" for p in pair_names)
        print(
            f"| {r['variant']} | {r['seed']} | {r['steps']} | {r['test_mse']:.4f} | {r['silhouette']:.3f} | "
            f"{r['silhouette_train']:.3f} | {pairs} | {'yes' if r['pass'] else 'no'} |"
        )
    if len(rows) > 1:
        sils = [r["silhouette"] for r in rows]
        print(
            f"| mean over {len(rows)} seeds | | | | {sum(sils) / len(sils):.3f} |"
            + " |" * (len(pair_names) + 2)
        )
    if not args.no_baseline:
        base_sil = pixel_pca_baseline(base.data)
        print(
            f"| baseline: PCA of the pixels to 2-D (no network) | | | | {base_sil:.3f} |"
            + " |" * (len(pair_names) + 2)
        )
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
