"""latent / generate / interpolate / sweep: the code in the middle. Library: convae.latent."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..images import read_image_files, write_png
from ..inference import load, to_float
from ..latent import (
    code_range,
    decode_codes,
    encode_images,
    grid_extent,
    interpolate_codes,
    interpolation_figure,
    latent_grid,
    latent_map_figure,
    manifold_figure,
    map_and_image_figure,
    mosaic,
    project,
    silhouette,
    subsample,
    sweep,
    sweep_markdown,
    write_codes_csv,
)
from ..plots import figure_format, save_figure, to_display
from .common import (
    ProgressBar,
    add_command,
    add_data_args,
    add_device_arg,
    add_split_arg,
    add_threads_arg,
    check_distinct,
    check_images_fit,
    check_no_links,
    check_out_file,
    check_out_folder,
    data_config_from_args,
    finish,
    float_list,
    folder_targets,
    int_list,
    load_data_split,
    positive_int,
    run_inputs,
    run_outputs,
    set_threads,
)


def _allow_negative_values(p: argparse.ArgumentParser) -> None:
    # argparse takes "-8,0" for an option; our values may start with "-" followed by a digit
    # (no option of ours does), so `--z -8,0` works as the seed writes it.
    p._negative_number_matcher = re.compile(r"^-\.?\d")  # type: ignore[attr-defined]


def _latent_codes(args: argparse.Namespace, model):
    """Encode the chosen split of the run's data (or --data ...): (codes, labels, spec)."""
    data = data_config_from_args(args, model.run_config.data)
    x, y = load_data_split(data, args.split)
    if len(x) == 0:
        raise ValueError(
            f"the {args.split} split of {data.spec} is empty (check --classes/--split)"
        )
    check_images_fit(model, x, data.spec)
    idx = subsample(len(x), getattr(args, "max_points", None), seed=0)
    return encode_images(model, x[idx]), y[idx], data.spec


def _add_model_run_args(p) -> None:
    """The run directory and where its model runs."""
    p.add_argument("run", help="run directory")
    add_device_arg(p)
    add_threads_arg(p)


# ---------------------------------------------------------------------------------------------
# latent


def _add_latent_parser(sub) -> None:
    p = add_command(
        sub,
        "latent",
        "map the latent codes of a split in 2-D, coloured by label (and save them as CSV)",
        "convae latent runs/k2d --classes 1,5,6 --out map.png --csv codes.csv",
    )
    _add_model_run_args(p)
    add_data_args(p, default_spec=None)
    add_split_arg(p)
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "pca", "tsne"],
        help="2-D codes are drawn as is; larger ones projected by PCA (auto) or t-SNE",
    )
    p.add_argument(
        "--max-points",
        type=positive_int,
        metavar="N",
        help="encode a seeded random subset of N images (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    p.add_argument("--out", required=True, metavar="PNG", help="the map")
    p.add_argument("--csv", metavar="FILE", help="also write one row per image: label, z0, z1, ...")
    p.set_defaults(func=cmd_latent)


def cmd_latent(args: argparse.Namespace) -> int:
    check_out_file(args.out, run_inputs(args.run))
    figure_format(args.out)
    if args.csv:
        check_out_file(args.csv, run_inputs(args.run), flag="--csv")
        check_distinct([("--out", args.out), ("--csv", args.csv)])
    set_threads(args)
    model = load(args.run, args.device)
    z, y, spec = _latent_codes(args, model)
    proj = project(z, args.method, seed=args.seed)
    name = {"pca": "PCA", "tsne": "t-SNE"}.get(proj.method)
    title = f"Latent space ({spec}, {args.split}, {len(z)} images, latent {model.latent_dim}"
    title += f", {name})" if name else ")"
    save_figure(latent_map_figure(proj.points, y.numpy(), proj.axes, title), args.out)
    if args.csv:
        write_codes_csv(args.csv, z, y)
    res = {"out": args.out, "csv": args.csv, "images": len(z), "latent_dim": model.latent_dim,
           "method": proj.method, "silhouette": silhouette(z, y),
           "explained_variance": proj.explained}  # fmt: skip
    return finish(args, res, lambda: _latent_text(args, res, spec, name))


def _latent_text(args, res: dict[str, Any], spec: str, name: str | None) -> str:
    how = {"identity": "as is", "1-d": "along x"}.get(res["method"], f"projected by {name}")
    lines = [
        f"encoded {res['images']} images ({spec}, {args.split}) to {res['latent_dim']}-D codes, "
        f"drawn {how}"
    ]
    if res["explained_variance"]:
        lines.append(f"PCA keeps {100 * sum(res['explained_variance']):.1f}% of the code variance")
    if res["silhouette"] is not None:
        lines.append(f"silhouette of the codes by label: {res['silhouette']:.3f}")
    lines.append(f"map: {args.out}" + (f"  codes: {args.csv}" if args.csv else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# generate


def _add_generate_parser(sub) -> None:
    p = add_command(
        sub,
        "generate",
        "decode a chosen latent point (or a grid of them) into an image",
        'convae generate runs/k2d --z "-8,0" --with-map --out fake.png',
    )
    _add_model_run_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--z", type=float_list, metavar="Z0,Z1,...", help="the code to decode (a comma list)"
    )
    g.add_argument(
        "--grid",
        type=positive_int,
        metavar="N",
        help="2-D codes: decode an N x N grid spanning the codes' range (the manifold picture)",
    )
    p.add_argument(
        "--with-map",
        action="store_true",
        help="two panels: the latent map with the point(s) marked, and the decoded image",
    )
    add_data_args(p, default_spec=None)
    add_split_arg(p, "the codes that draw the map and set the grid's range")
    p.add_argument("--out", required=True, metavar="PNG")
    p.set_defaults(func=cmd_generate)
    _allow_negative_values(p)


def cmd_generate(args: argparse.Namespace) -> int:
    check_out_file(args.out, run_inputs(args.run))
    if (
        args.z is not None
        and not args.with_map
        and Path(args.out).suffix.lower() not in ("", ".png")
    ):
        raise ValueError(f"{args.out}: the decoded image is written as .png")
    figure_format(args.out)
    set_threads(args)
    model = load(args.run, args.device)
    res: dict[str, Any] = {"out": args.out, "latent_dim": model.latent_dim}
    if args.z is not None:
        _generate_point(args, model)
        res["z"] = args.z
        what = f"z = ({', '.join(f'{v:g}' for v in args.z)})"
    else:
        lo, hi = _generate_grid(args, model)
        res.update({"grid": args.grid, "lo": lo, "hi": hi})
        what = (
            f"a {args.grid}x{args.grid} grid over z0 in [{lo[0]:.3g}, {hi[0]:.3g}], "
            f"z1 in [{lo[1]:.3g}, {hi[1]:.3g}]"
        )
    return finish(args, res, f"decoded {what} -> {args.out}")


def _generate_point(args: argparse.Namespace, model) -> None:
    """Decode --z into --out: the image, or the map with the point beside it (--with-map)."""
    L = model.latent_dim
    if len(args.z) != L:
        raise ValueError(f"--z has {len(args.z)} value(s) but this model's code has {L}")
    z = torch.tensor([args.z], dtype=torch.float32)
    img = decode_codes(model, z)[0]
    if not args.with_map:
        write_png(img, args.out)
        return
    codes, y, _ = _latent_codes(args, model)
    proj = project(codes)  # identity for 2-D codes, PCA otherwise (t-SNE cannot place a point)
    title = f"Generated image, z = ({', '.join(f'{v:g}' for v in args.z)})"
    fig = map_and_image_figure(proj.points, y.numpy(), proj.transform(z), to_display(img),
                               proj.axes, title)  # fmt: skip
    save_figure(fig, args.out)


def _generate_grid(args: argparse.Namespace, model) -> tuple[list[float], list[float]]:
    """Decode an N x N grid over the split's 2-D codes into --out; returns its (lo, hi)."""
    n, L = args.grid, model.latent_dim
    if L != 2:
        raise ValueError(
            f"--grid needs a 2-D latent code, this model's has {L}; decode points with --z"
        )
    if n < 2 or n > 100:
        raise ValueError(f"--grid must be between 2 and 100, not {n}")
    codes, y, _ = _latent_codes(args, model)
    lo, hi = (v.tolist() for v in code_range(codes))
    grid = latent_grid(lo, hi, n)
    imgs = decode_codes(model, grid)
    title = f"Decoded {n}x{n} grid over the range of the {args.split} codes"
    if args.with_map:
        fig = map_and_image_figure(codes.numpy(), y.numpy(), grid.numpy(), mosaic(imgs, n),
                                   ("z0", "z1"), title, extent=grid_extent(lo, hi, n))  # fmt: skip
    else:
        fig = manifold_figure(imgs, lo, hi, n, title)
    save_figure(fig, args.out)
    return lo, hi


# ---------------------------------------------------------------------------------------------
# interpolate


def _add_interpolate_parser(sub) -> None:
    p = add_command(
        sub,
        "interpolate",
        "decode points on the line between the codes of two images",
        "convae interpolate runs/k2d one.png six.png --steps 8 --out strip.png",
    )
    _add_model_run_args(p)
    p.add_argument("a", help="first image file")
    p.add_argument("b", help="second image file")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=8,
        help="decoded points, both ends included (default 8)",
    )
    p.add_argument(
        "--out", required=True, metavar="PNG", help="the strip: A, the decoded points, B"
    )
    p.add_argument(
        "--frames",
        metavar="DIR",
        help="also write each decoded point as DIR/step-000.png, step-001.png, ... (files already "
        "there only with --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files of the same name already in the --frames folder (never an input)",
    )
    p.add_argument(
        "--resize", action="store_true", help="resize + centre-crop inputs to the model's size"
    )
    p.set_defaults(func=cmd_interpolate)


def _interpolate_targets(args: argparse.Namespace) -> list[Path]:
    """Every output checked before anything is computed or written: the strip, the frames."""
    for f in (args.a, args.b):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such image file (interpolate takes two image files)")
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2 (both ends), not {args.steps}")
    inputs = [args.a, args.b, *run_inputs(args.run)]
    check_out_file(args.out, inputs)
    figure_format(args.out)
    if not args.frames:
        return []
    names = [f"step-{i:03d}.png" for i in range(args.steps)]
    files = folder_targets(args.frames, names, inputs, overwrite=args.overwrite, flag="--frames")
    check_distinct([("--out", args.out), *(("--frames", f) for f in files)])
    return files


def cmd_interpolate(args: argparse.Namespace) -> int:
    frame_files = _interpolate_targets(args)
    set_threads(args)
    model = load(args.run, args.device)
    x, _ = read_image_files(
        [args.a, args.b], model.config.channels, model.config.image_size, resize=args.resize
    )
    z = encode_images(model, x)
    frames = decode_codes(model, interpolate_codes(z[0], z[1], args.steps))
    xf = to_float(x)
    save_figure(interpolation_figure(xf[0], frames, xf[1]), args.out)
    for target, f in zip(frame_files, frames if frame_files else [], strict=True):
        write_png(f, target)
    res = {"out": args.out, "steps": args.steps, "z_a": z[0].tolist(), "z_b": z[1].tolist(),
           "distance": float((z[1] - z[0]).norm())}  # fmt: skip
    return finish(
        args,
        res,
        f"{args.steps} decoded points from {args.a} to {args.b} (code distance "
        f"{res['distance']:.3g}) -> {args.out}",
    )


# ---------------------------------------------------------------------------------------------
# sweep


def _add_sweep_parser(sub) -> None:
    p = add_command(
        sub,
        "sweep",
        "train one model per latent size (same seed and recipe): quality against compression",
        "convae sweep --arch seed-strided --latent-dims 2,4,8,16,32,64 --out runs/sweep",
    )
    add_data_args(p)
    p.add_argument("--arch", required=True, help="architecture name (see `convae summary --list`)")
    p.add_argument(
        "--latent-dims",
        type=int_list,
        required=True,
        metavar="2,4,8",
        help="the latent sizes, one model each",
    )
    p.add_argument("--epochs", type=positive_int, help="override the default recipe's epochs")
    p.add_argument("--seed", type=int, help="override the default recipe's seed")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="sweep folder: latent-L/ runs, sweep.{json,csv,md}, quality.png, reconstruction grids",
    )
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_sweep)


def _sweep_outputs(out: Path, dims) -> list[Path]:
    """What convae.latent.sweep writes under ``out``: its tables and figures, a run per size."""
    names = ["sweep.json", "sweep.csv", "sweep.md", "quality.png", "reconstructions.png"]
    paths = [out / n for n in names]
    for L in dims:
        paths += [out / f"reconstructions-latent-{L}.png", *run_outputs(out / f"latent-{L}")]
    return paths


def cmd_sweep(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out)
    if (out / "config.json").exists():
        raise FileExistsError(
            f"--out {out} holds a run (it has config.json); give the sweep a folder of its own"
        )
    check_no_links(out, _sweep_outputs(out, args.latent_dims), "--out")
    set_threads(args)
    # the default recipe: only the architecture, the data and --epochs/--seed change
    base = RunConfig()
    over = {k: getattr(args, k) for k in ("epochs", "seed") if getattr(args, k) is not None}
    cfg = replace(
        base,
        model=replace(base.model, arch=args.arch, latent_dim=None),
        data=data_config_from_args(args, base.data),
        train=replace(base.train, **over),
    )
    human = not args.quiet and not args.json

    def bar(L: int):
        if human:
            print(f"latent {L}:", flush=True)
        return ProgressBar(enabled=human)

    def row(r: dict[str, Any]) -> None:
        if human:
            print(f"latent {r['latent_dim']:>4} ({r['compression_ratio']:.1f}:1)  MSE "
                  f"{r['mse']:.5f}  PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  "
                  f"{r['train_seconds']:.1f} s", flush=True)  # fmt: skip

    rows = sweep(cfg, args.latent_dims, out, device=args.device, progress=bar, on_row=row)
    return finish(
        args,
        rows,
        lambda: (
            sweep_markdown(rows) + f"table: {out / 'sweep.md'} (.json, .csv)  plot: "
            f"{out / 'quality.png'}  grids: {out / 'reconstructions.png'}"
        ),
    )


def add_commands(sub) -> None:
    """latent, generate, interpolate, sweep."""
    for add in (_add_latent_parser, _add_generate_parser, _add_interpolate_parser,
                _add_sweep_parser):  # fmt: skip
        add(sub)
