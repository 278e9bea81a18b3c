"""Checkerboard artifacts: transposed-convolution vs upsample+conv decoders at equal latent size.

Two pairs, each trained with the default recipe on ``mnist-sample`` (all digits, same seed) but one
optimizer for both decoders of a pair (``--optimizer``, AdamW by default); the
first runs by default, ``--pairs seed,convae`` adds the second (about 8x the training time):

* ``seed-pool`` (ConvTranspose k2 s2, seed 001) vs ``seed-upsample`` (nearest upsample + 3x3 conv),
  the same encoder and a 4x7x7 = 196-value code;
* ``convae --decoder transpose`` (ConvTranspose k3 s2) vs ``convae --decoder upsample`` (16 values).

For the test split it reports the reconstruction MSE and the checkerboard energy of the
reconstructions (:func:`convae.latent.checkerboard_energy`: the share of non-DC spectral power on
the frequency grid of a 2- and a 4-pixel period, which is where a stride-2 / stride-2x2 decoder's
uneven kernel overlap puts its pattern), next to the same measure on the test images themselves.

    python benchmarks/checkerboard.py                # seed-pool vs seed-upsample, default recipe
    python benchmarks/checkerboard.py --pairs seed,convae   # and the convae pair
    python benchmarks/checkerboard.py --epochs 1     # a quick look (not the recorded numbers)

Finished runs of the same recipe in --out are reused (stopped ones resumed; --fresh retrains).
Writes runs, ``checkerboard.json``/``.md`` and ``checkerboard-examples.png`` (inputs, both
reconstructions, each with its centre enlarged 2x) to --out; --json prints the rows last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from convae.checkpoint import atomic_write, write_json
from convae.config import OPTIMIZERS, DataConfig, RunConfig
from convae.data import load_split
from convae.inference import load, reconstruct, to_float
from convae.latent import checkerboard_energy
from convae.plots import image_grid_figure, save_figure
from convae.training import train_or_reuse as reuse

PAIRS = {
    "seed": [("seed-pool", {"arch": "seed-pool"}), ("seed-upsample", {"arch": "seed-upsample"})],
    "convae": [
        ("convae transpose", {"arch": "convae", "decoder": "transpose"}),
        ("convae upsample", {"arch": "convae", "decoder": "upsample"}),
    ],
}


def zoom(x: torch.Tensor) -> torch.Tensor:
    """The central half of each image, enlarged 2x without smoothing: pixel-level patterns show."""
    h, w = x.shape[-2:]
    crop = x[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
    return crop.repeat_interleave(2, -2).repeat_interleave(2, -1)


def train_or_reuse(cfg: RunConfig, run: Path, device: str, fresh: bool = False) -> None:
    """convae's train-or-reuse rule on this benchmark's own output folder: a run of another recipe
    (e.g. after the defaults changed), or any run with ``fresh``, is trained again."""
    if run.exists() and fresh:
        shutil.rmtree(run)
    try:
        reuse(cfg, run, device=device)
    except FileExistsError:
        shutil.rmtree(run)
        reuse(cfg, run, device=device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pairs", default="seed", help="comma list of: seed (default), convae")
    p.add_argument("--epochs", type=int, help="override the default recipe's epochs")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adamw",
        help="the same for both decoders of a pair, so only the decoder differs (default adamw: "
        "the recorded numbers; the architectures' own defaults differ, e.g. Muon for seed-upsample)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/out/checkerboard")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="retrain even when a finished run of the recipe is there",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    data = DataConfig(spec="mnist-sample")
    test_x, _ = load_split(data, "test")
    x = to_float(test_x)
    shown = test_x[torch.linspace(0, len(test_x) - 1, 6).round().long()]
    rows = [
        {
            "model": "test images (reference)",
            "decoder": "-",
            "latent_dim": None,
            "mse": None,
            "energy_p2": float(checkerboard_energy(x, 2).mean()),
            "energy_p4": float(checkerboard_energy(x, 4).mean()),
        }
    ]
    fig_rows, fig_labels = [to_float(shown), zoom(to_float(shown))], ["input", "centre\nx2"]
    for pair in (s.strip() for s in args.pairs.split(",") if s.strip()):
        if pair not in PAIRS:
            raise SystemExit(f"unknown pair {pair!r}; choose from {', '.join(PAIRS)}")
        for name, model_over in PAIRS[pair]:
            base = RunConfig(data=data)
            t_over = {
                "seed": args.seed,
                "optimizer": args.optimizer,
                **({"epochs": args.epochs} if args.epochs else {}),
            }
            cfg = replace(
                base,
                model=replace(base.model, latent_dim=None, **model_over),
                train=replace(base.train, **t_over),
            )
            run = out / name.replace(" ", "-")
            train_or_reuse(cfg, run, args.device, fresh=args.fresh)
            model = load(run, "cpu")
            y = reconstruct(model, test_x)
            row = {
                "model": name,
                "decoder": "transposed conv"
                if "transpose" in name or name == "seed-pool"
                else "upsample + conv",
                "latent_dim": model.latent_dim,
                "mse": float((y.double() - x.double()).pow(2).mean()),
                "energy_p2": float(checkerboard_energy(y, 2).mean()),
                "energy_p4": float(checkerboard_energy(y, 4).mean()),
                "run": str(run),
            }
            rows.append(row)
            print(
                f"{name:<18} latent {row['latent_dim']:>3}  MSE {row['mse']:.5f}  checkerboard energy "
                f"p2 {row['energy_p2']:.5f}  p4 {row['energy_p4']:.5f}",
                file=sys.stderr,
                flush=True,
            )
            r = reconstruct(model, shown)
            fig_rows += [r, zoom(r)]
            fig_labels += [name.replace(" ", "\n"), "centre\nx2"]
    md = [
        "| model | decoder | latent | test MSE | checkerboard energy, period 2 | period 4 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = "-" if r["latent_dim"] is None else str(r["latent_dim"])
        mse = "-" if r["mse"] is None else f"{r['mse']:.5f}"
        md.append(
            f"| {r['model']} | {r['decoder']} | {lat} | {mse} | {r['energy_p2']:.5f} | {r['energy_p4']:.5f} |"
        )
    table = "\n".join(md) + "\n"
    print(table, end="")
    write_json(out / "checkerboard.json", rows)
    atomic_write(out / "checkerboard.md", table)
    save_figure(
        image_grid_figure(fig_rows, fig_labels, scale=1.3),
        out / "checkerboard-examples.png",
        dpi=65,
    )
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
