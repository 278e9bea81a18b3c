"""Texture inspection: synthetic defects on held-out parts of scikit-image's brick, grass and
gravel, found by per-pixel anomaly maps of a convae model and of a PCA patch baseline.

    python benchmarks/inspect_textures.py --out benchmarks/out/textures \\
        --figure docs/img/anomaly-textures.png

The protocol (regions, parts, defects, metrics, false-positive rates) is
:mod:`convae.texture_bench`; docs/anomaly.md ("Textures") has the results. The convae model of each
texture is the ``anomaly`` preset on 64 x 64 crops (what ``convae train --preset anomaly --crop 64``
gives on RGB images), trained in ``OUT/runs/<texture>`` and reused by a later call with the same
recipe; ``--epochs`` shortens its training (each epoch: 2,048 crops, 128 steps of 16). Targets:
image and pixel AUROC >= 0.95 on subtle defects (contrast <= 30), averaged over the textures.
Writes ``OUT/results.json`` and prints the tables (``--json``: the results as the last line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from convae.anomaly_maps import (
    anomaly_maps,
    components_for,
    fit_map_calibration,
    heat_overlay,
    raw_maps,
)
from convae.checkpoint import atomic_write, write_json
from convae.defects import CONTRASTS, KINDS, add_defect
from convae.inference import load
from convae.texture_bench import (
    CALIBRATION,
    COLS,
    FOREIGN,
    PART,
    TEXTURES,
    load_texture,
    texture_benchmark,
    texture_parts,
    texture_recipe,
)

TARGET = 0.95


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def _names(s: str) -> list[str]:
    return [v for v in s.split(",") if v]


def summary_table(res: dict) -> str:
    """Subtle (c <= 30) and all-contrast means per texture and method."""
    lines = ["| texture | method | subtle image AUROC | subtle pixel AUROC | subtle PRO | "
             "all image | all pixel | all PRO |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in [*res["config"]["textures"], "mean"]:
        for m in ("convae", "pca"):
            s = res["mean"][m] if t == "mean" else res[t][m]["summary"]
            cells = [s[k] for k in ("subtle_image_auroc", "subtle_pixel_auroc", "subtle_pro",
                                    "all_image_auroc", "all_pixel_auroc", "all_pro")]  # fmt: skip
            lines.append(f"| {t} | {m} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def kind_table(res: dict) -> str:
    """Per defect kind: image / pixel AUROC / PRO, means over textures and subtle contrasts."""
    textures = res["config"]["textures"]
    lines = ["| kind | convae image / pixel / PRO | pca image / pixel / PRO |", "|---|---|---|"]
    for kind in res["config"]["kinds"]:
        row = [kind]
        for m in ("convae", "pca"):
            sets = [v for t in textures for k, v in res[t][m]["sets"].items()
                    if k.split("/")[0] == kind and int(k.split("/")[1]) <= 30]  # fmt: skip
            if not sets:
                row.append("-")
                continue
            vals = [np.mean([s[q] for s in sets]) for q in ("image_auroc", "pixel_auroc", "pro")]
            row.append(" / ".join(f"{v:.2f}" for v in vals))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def contrast_table(res: dict, texture: str) -> str:
    """One texture, every set: convae and PCA image / pixel AUROC / PRO."""
    lines = ["| kind | c | convae image / pixel / PRO | pca image / pixel / PRO |",
             "|---|---|---|---|"]  # fmt: skip
    for key in res[texture]["convae"]["sets"]:
        kind, c = key.split("/")
        row = [kind, c]
        for m in ("convae", "pca"):
            s = res[texture][m]["sets"][key]
            row.append(f"{s['image_auroc']:.2f} / {s['pixel_auroc']:.2f} / {s['pro']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def fpr_table(res: dict) -> str:
    """False-positive rates of normal test parts vs their targets: the checkerboard split, and
    the mean (sd) over random splits of the held-out cells."""
    keys = list(res[res["config"]["textures"][0]]["convae"]["fpr"])
    head = " | ".join(f"{k} (split) | {k} (mean +- sd, random splits)" for k in keys)
    lines = [f"| texture | method | {head} |", "|---|---|" + "---|" * (2 * len(keys))]
    for t in res["config"]["textures"]:
        for m in ("convae", "pca"):
            r = res[t][m]
            cells = []
            for k in keys:
                sp = r["fpr_splits"][k]
                cells += [
                    f"{100 * r['fpr'][k]:.1f} %",
                    f"{100 * sp['mean']:.1f} +- {100 * sp['sd']:.1f} %",
                ]
            lines.append(f"| {t} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _band_with_defects(name: str, contrast: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The left half of the held-out band (rows 256-511, columns 0-255, RGB) with one defect of
    every kind, each inside its own test cell -> (uint8 [3, 256, 256], bool mask [256, 256])."""
    parts = texture_parts(name)
    band = np.repeat(load_texture(name)[None, 256:, :256], 3, 0).copy()
    mask = np.zeros(band.shape[1:], dtype=bool)
    foreign = load_texture(FOREIGN[name])
    rng = np.random.default_rng([seed, 5])
    cells = [i for i in parts.test if i % COLS < 4]  # the 8 test cells of the left half
    for kind, cell in zip(KINDS, cells[::-1], strict=False):
        r, c = (cell // COLS) * PART, (cell % COLS) * PART
        window = band[:, r : r + PART, c : c + PART]
        x, m = add_defect(window, kind, float(contrast), rng, foreign)
        band[:, r : r + PART, c : c + PART] = x
        mask[r : r + PART, c : c + PART] = m
    return band, mask


def heat_figure(runs: Path, textures: list[str], contrast: int, seed: int):
    """Per texture: held-out parts with five defects, and their convae heat map (the per-pixel
    threshold at a 1 % target, set on the calibration cells; cyan: pixels above it)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.6, 3.9 * len(textures)))
    axes = fig.subplots(len(textures), 2, squeeze=False)
    for row, name in zip(axes, textures, strict=True):
        model = load(runs / name, "cpu")
        comps = components_for(3)
        cells = torch.from_numpy(texture_parts(name).cells[list(CALIBRATION)])
        cal = fit_map_calibration(raw_maps(model, cells, comps), comps, 0.01)
        band, mask = _band_with_defects(name, contrast, seed)
        m = anomaly_maps(raw_maps(model, [torch.from_numpy(band)], comps), cal)[0].numpy()
        rgb = band.transpose(1, 2, 0) / 255  # in colour: the colour spot shows here only
        shown = np.where(mask[..., None] & ~_eroded(mask)[..., None], (1.0, 0.0, 0.0), rgb)
        row[0].imshow(shown, interpolation="nearest")
        row[1].imshow(heat_overlay(band, m, cal.pixel_threshold), interpolation="nearest")
        row[0].set_title(f"{name} (held out), defects of {contrast} levels; red: truth", fontsize=8)
        row[1].set_title(f"{name}: anomaly map; cyan: above the 1 % pixel threshold", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def save_palette_png(fig, path: str) -> None:
    """The figure as a 256-colour PNG (a third of the bytes of a full-colour one), atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(256)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    atomic_write(path, out.getvalue())


def _eroded(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="benchmarks/out/textures", help="runs and results.json")
    p.add_argument("--textures", type=_names, default=list(TEXTURES))
    p.add_argument("--kinds", type=_names, default=list(KINDS))
    p.add_argument("--contrasts", type=_ints, default=list(CONTRASTS))
    p.add_argument("--epochs", type=int, help="training epochs (default: the preset's 16)")
    p.add_argument("--pca", type=_ints, default=[8, 32], help="PCA patch side, components")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--figure", help="also write the heat-map figure (PNG) here")
    p.add_argument("--figure-contrast", type=int, default=30)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    overrides = {"epochs": args.epochs} if args.epochs else {}
    recipe = texture_recipe("anomaly", **overrides)
    t0 = time.perf_counter()

    def progress(texture: str, method: str, r: dict) -> None:
        s = r["summary"]
        print(f"{texture:<7} {method:<7} subtle image {s['subtle_image_auroc']:.3f} pixel "
              f"{s['subtle_pixel_auroc']:.3f} PRO {s['subtle_pro']:.3f}  "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip

    res = texture_benchmark(recipe, out / "runs", textures=args.textures, kinds=args.kinds,
                            contrasts=args.contrasts, pca=tuple(args.pca), seed=args.seed,
                            progress=progress)  # fmt: skip
    res["config"]["textures"] = list(args.textures)
    res["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                      "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                      "seconds": time.perf_counter() - t0,
                      "command": "python benchmarks/inspect_textures.py " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
    write_json(out / "results.json", res)
    if args.figure:
        fig = heat_figure(out / "runs", args.textures, args.figure_contrast, args.seed)
        save_palette_png(fig, args.figure)
    mean = res["mean"]["convae"]
    met = mean["subtle_image_auroc"] >= TARGET and mean["subtle_pixel_auroc"] >= TARGET
    print(summary_table(res), kind_table(res), fpr_table(res), sep="\n\n")
    for t in args.textures:
        print(f"\n#### {t}\n\n{contrast_table(res, t)}")
    print(f"\ntarget (subtle image and pixel AUROC >= {TARGET}): {'met' if met else 'not met'}; "
          f"{res['machine']['seconds']:.0f} s")  # fmt: skip
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
