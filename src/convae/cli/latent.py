"""latent / generate / interpolate / sweep: the code in the middle (issue 4).

Library: convae.latent.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from .common import (
    _add,
    _check_images_fit,
    _float_list,
    _int_list,
    _positive_int,
    _print_json,
    _ProgressBar,
    add_data_args,
    add_threads_arg,
    check_distinct,
    check_out_file,
    check_out_folder,
    data_config_from_args,
    folder_targets,
    run_inputs,
    set_threads,
)


def _allow_negative_values(p: argparse.ArgumentParser) -> None:
    # argparse takes "-8,0" for an option; our values may start with "-" followed by a digit
    # (no option of ours does), so `--z -8,0` works as the seed writes it.
    import re

    p._negative_number_matcher = re.compile(r"^-\.?\d")  # type: ignore[attr-defined]


def _latent_codes(args: argparse.Namespace, model):
    """Encode the chosen split of the run's data (or --data ...): (codes, labels, spec)."""
    from ..data import load_split
    from ..latent import encode_images, subsample

    data = data_config_from_args(args, model.run_config.data)
    x, y = load_split(data, args.split)
    if len(x) == 0:
        raise ValueError(
            f"the {args.split} split of {data.spec} is empty (check --classes/--split)"
        )
    _check_images_fit(model, x, data.spec)
    idx = subsample(len(x), getattr(args, "max_points", None), seed=0)
    return encode_images(model, x[idx]), y[idx], data.spec


def _latent_parser(sub) -> None:
    p = _add(
        sub,
        "latent",
        "map the latent codes of a split in 2-D, coloured by label (and save them as CSV)",
        "convae latent runs/k2d --classes 1,5,6 --out map.png --csv codes.csv",
    )
    p.add_argument("run", help="run directory")
    add_data_args(p, default_spec=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "pca", "tsne"],
        help="2-D codes are drawn as is; larger ones projected by PCA (auto) or t-SNE",
    )
    p.add_argument(
        "--max-points",
        type=_positive_int,
        metavar="N",
        help="encode a seeded random subset of N images (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    p.add_argument("--out", required=True, metavar="PNG", help="the map")
    p.add_argument("--csv", metavar="FILE", help="also write one row per image: label, z0, z1, ...")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_latent)


def cmd_latent(args: argparse.Namespace) -> int:
    from ..inference import load
    from ..latent import latent_map_figure, project, silhouette, write_codes_csv
    from ..plots import figure_format, save_figure

    check_out_file(args.out, run_inputs(args.run))
    figure_format(args.out)
    if args.csv:
        check_out_file(args.csv, run_inputs(args.run), flag="--csv")
        check_distinct([("--out", args.out), ("--csv", args.csv)])
    model = load(args.run, args.device)
    z, y, spec = _latent_codes(args, model)
    proj = project(z, args.method, seed=args.seed)
    name = {"pca": "PCA", "tsne": "t-SNE"}.get(proj.method)
    title = f"Latent space ({spec}, {args.split}, {len(z)} images, latent {model.latent_dim}"
    title += f", {name})" if name else ")"
    save_figure(latent_map_figure(proj.points, y.numpy(), proj.axes, title), args.out)
    if args.csv:
        write_codes_csv(args.csv, z, y)
    sil = silhouette(z, y)
    res = {
        "out": args.out,
        "csv": args.csv,
        "images": len(z),
        "latent_dim": model.latent_dim,
        "method": proj.method,
        "silhouette": sil,
        "explained_variance": proj.explained,
    }
    if args.json:
        _print_json(res)
    else:
        how = {"identity": "as is", "1-d": "along x"}.get(proj.method, f"projected by {name}")
        print(
            f"encoded {len(z)} images ({spec}, {args.split}) to {model.latent_dim}-D codes, drawn {how}"
        )
        if proj.explained:
            print(f"PCA keeps {100 * sum(proj.explained):.1f}% of the code variance")
        if sil is not None:
            print(f"silhouette of the codes by label: {sil:.3f}")
        print(f"map: {args.out}" + (f"  codes: {args.csv}" if args.csv else ""))
    return 0


def _generate_parser(sub) -> None:
    p = _add(
        sub,
        "generate",
        "decode a chosen latent point (or a grid of them) into an image",
        'convae generate runs/k2d --z "-8,0" --with-map --out fake.png',
    )
    p.add_argument("run", help="run directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--z", type=_float_list, metavar="Z0,Z1,...", help="the code to decode (a comma list)"
    )
    g.add_argument(
        "--grid",
        type=_positive_int,
        metavar="N",
        help="2-D codes: decode an N x N grid spanning the codes' range (the manifold picture)",
    )
    p.add_argument(
        "--with-map",
        action="store_true",
        help="two panels: the latent map with the point(s) marked, and the decoded image",
    )
    add_data_args(p, default_spec=None)
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="the codes that draw the map and set the grid's range",
    )
    p.add_argument("--out", required=True, metavar="PNG")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_generate)
    _allow_negative_values(p)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from ..images import write_png
    from ..inference import load
    from ..latent import (
        code_range,
        decode_codes,
        grid_extent,
        latent_grid,
        manifold_figure,
        map_and_image_figure,
        mosaic,
        project,
    )
    from ..plots import figure_format, save_figure, to_display

    check_out_file(args.out, run_inputs(args.run))
    if (
        args.z is not None
        and not args.with_map
        and Path(args.out).suffix.lower() not in ("", ".png")
    ):
        raise ValueError(f"{args.out}: the decoded image is written as .png")
    figure_format(args.out)
    model = load(args.run, args.device)
    L = model.latent_dim
    res: dict[str, Any] = {"out": args.out, "latent_dim": L}
    if args.z is not None:
        if len(args.z) != L:
            raise ValueError(f"--z has {len(args.z)} value(s) but this model's code has {L}")
        z = torch.tensor([args.z], dtype=torch.float32)
        img = decode_codes(model, z)[0]
        res["z"] = args.z
        if args.with_map:
            codes, y, _ = _latent_codes(args, model)
            # identity for 2-D codes, PCA otherwise (t-SNE cannot place a point)
            proj = project(codes)
            fig = map_and_image_figure(
                proj.points,
                y.numpy(),
                proj.transform(z),
                to_display(img),
                proj.axes,
                f"Generated image, z = ({', '.join(f'{v:g}' for v in args.z)})",
            )
            save_figure(fig, args.out)
        else:
            write_png(img, args.out)
    else:
        n = args.grid
        if L != 2:
            raise ValueError(
                f"--grid needs a 2-D latent code, this model's has {L}; decode points with --z"
            )
        if n < 2 or n > 100:
            raise ValueError(f"--grid must be between 2 and 100, not {n}")
        codes, y, spec = _latent_codes(args, model)
        lo, hi = (v.tolist() for v in code_range(codes))
        grid = latent_grid(lo, hi, n)
        imgs = decode_codes(model, grid)
        title = f"Decoded {n}x{n} grid over the range of the {args.split} codes"
        if args.with_map:
            fig = map_and_image_figure(
                codes.numpy(),
                y.numpy(),
                grid.numpy(),
                mosaic(imgs, n),
                ("z0", "z1"),
                title,
                extent=grid_extent(lo, hi, n),
            )
        else:
            fig = manifold_figure(imgs, lo, hi, n, title)
        save_figure(fig, args.out)
        res.update({"grid": n, "lo": lo, "hi": hi})
    if args.json:
        _print_json(res)
    else:
        what = (
            f"z = ({', '.join(f'{v:g}' for v in args.z)})"
            if args.z is not None
            else (
                f"a {args.grid}x{args.grid} grid over z0 in [{res['lo'][0]:.3g}, {res['hi'][0]:.3g}], "
                f"z1 in [{res['lo'][1]:.3g}, {res['hi'][1]:.3g}]"
            )
        )
        print(f"decoded {what} -> {args.out}")
    return 0


def _interpolate_parser(sub) -> None:
    p = _add(
        sub,
        "interpolate",
        "decode points on the line between the codes of two images",
        "convae interpolate runs/k2d one.png six.png --steps 8 --out strip.png",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("a", help="first image file")
    p.add_argument("b", help="second image file")
    p.add_argument(
        "--steps",
        type=_positive_int,
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
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    from ..images import read_image_files, write_png
    from ..inference import load, to_float
    from ..latent import decode_codes, encode_images, interpolate_codes, interpolation_figure
    from ..plots import figure_format, save_figure

    for f in (args.a, args.b):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such image file (interpolate takes two image files)")
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2 (both ends), not {args.steps}")
    # every output checked before anything is computed or written
    inputs = [args.a, args.b, *run_inputs(args.run)]
    check_out_file(args.out, inputs)
    figure_format(args.out)
    frame_files = []
    if args.frames:
        names = [f"step-{i:03d}.png" for i in range(args.steps)]
        frame_files = folder_targets(
            args.frames, names, inputs, overwrite=args.overwrite, flag="--frames"
        )
        check_distinct([("--out", args.out), *(("--frames", f) for f in frame_files)])
    model = load(args.run, args.device)
    x, _ = read_image_files(
        [args.a, args.b], model.config.channels, model.config.image_size, resize=args.resize
    )
    z = encode_images(model, x)
    frames = decode_codes(model, interpolate_codes(z[0], z[1], args.steps))
    xf = to_float(x)
    save_figure(interpolation_figure(xf[0], frames, xf[1]), args.out)
    if args.frames:
        for target, f in zip(frame_files, frames, strict=True):
            write_png(f, target)
    res = {
        "out": args.out,
        "steps": args.steps,
        "z_a": z[0].tolist(),
        "z_b": z[1].tolist(),
        "distance": float((z[1] - z[0]).norm()),
    }
    if args.json:
        _print_json(res)
    else:
        print(
            f"{args.steps} decoded points from {args.a} to {args.b} (code distance {res['distance']:.3g}) "
            f"-> {args.out}"
        )
    return 0


def _sweep_parser(sub) -> None:
    p = _add(
        sub,
        "sweep",
        "train one model per latent size (same seed and recipe): quality against compression",
        "convae sweep --arch seed-strided --latent-dims 2,4,8,16,32,64 --out runs/sweep",
    )
    add_data_args(p)
    p.add_argument("--arch", required=True, help="architecture name (see `convae summary --list`)")
    p.add_argument(
        "--latent-dims",
        type=_int_list,
        required=True,
        metavar="2,4,8",
        help="the latent sizes, one model each",
    )
    p.add_argument("--epochs", type=_positive_int, help="override the default recipe's epochs")
    p.add_argument("--seed", type=int, help="override the default recipe's seed")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="sweep folder: latent-L/ runs, sweep.{json,csv,md}, quality.png, reconstruction grids",
    )
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda or mps")
    add_threads_arg(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..config import RunConfig
    from ..latent import sweep

    out = check_out_folder(args.out)
    if (out / "config.json").exists():
        raise FileExistsError(
            f"--out {out} holds a run (it has config.json); give the sweep a folder of its own"
        )
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
        return _ProgressBar(enabled=human)

    def row(r: dict[str, Any]) -> None:
        if human:
            print(
                f"latent {r['latent_dim']:>4} ({r['compression_ratio']:.1f}:1)  MSE {r['mse']:.5f}  "
                f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  {r['train_seconds']:.1f} s",
                flush=True,
            )

    rows = sweep(cfg, args.latent_dims, args.out, device=args.device, progress=bar, on_row=row)
    if args.json:
        _print_json(rows)
    else:
        from ..latent import sweep_markdown

        print(sweep_markdown(rows), end="")
        print(
            f"table: {Path(args.out) / 'sweep.md'} (.json, .csv)  plot: {Path(args.out) / 'quality.png'}  "
            f"grids: {Path(args.out) / 'reconstructions.png'}"
        )
    return 0
