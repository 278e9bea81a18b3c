"""denoise / bench denoise. Library: convae.denoise."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from ..denoise import (
    FILTERS,
    bench_denoise,
    bench_denoise_outputs,
    denoise_images,
    mean_psnr,
    parse_levels,
)
from ..images import read_images, write_png
from ..inference import load
from ..noise import corrupt
from .common import (
    ProgressBar,
    add_command,
    add_data_args,
    add_device_arg,
    add_out_folder_args,
    add_threads_arg,
    check_no_links,
    check_out_folder,
    data_config_from_args,
    finish,
    folder_targets,
    log,
    output_names,
    positive_int,
    run_inputs,
    set_threads,
)

# ---------------------------------------------------------------------------------------------
# denoise


def _add_denoise_parser(sub) -> None:
    p = add_command(
        sub,
        "denoise",
        "denoise image files or folders with a run trained with --noise (same names and sizes out)",
        "convae denoise runs/denoise noisy/ --out clean/   |   convae denoise RUN digits/ --add-noise gaussian:0.4 --out d/",
    )
    p.add_argument(
        "run",
        help="run directory (trained with --noise, e.g. --preset denoise --noise gaussian:0.4)",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    add_out_folder_args(p, "denoised PNGs, NAME.png per input")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--tile",
        action="store_true",
        help="images of another size: denoise overlapping model-sized tiles at full resolution "
        "(a fully convolutional run, e.g. --preset denoise --crop, takes any size whole anyway)",
    )
    g.add_argument(
        "--resize",
        action="store_true",
        help="images of another size: resize to the model's size, denoise, resize back "
        "(only when asked, also for a fully convolutional run)",
    )
    p.add_argument(
        "--add-noise",
        action="append",
        metavar="KIND:AMOUNT",
        help="corrupt the (clean) inputs first, e.g. gaussian:0.4, gaussian:0.1, "
        "poisson-gaussian:0.02/0.02, jpeg:30 (see convae train --help); also writes OUT/noisy/ "
        "and reports PSNR against the inputs",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --add-noise (default 0)")
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_denoise)


def _check_sizes(images, paths, size: int) -> None:
    """Without --tile or --resize every image must have the model's size."""
    for img, path in zip(images, paths, strict=True):
        if tuple(img.shape[-2:]) != (size, size):
            raise ValueError(
                f"{path}: image is {img.shape[-1]}x{img.shape[-2]} but the model takes "
                f"{size}x{size}; pass --tile (overlapping tiles at full resolution) or --resize "
                "(there and back)"
            )


def cmd_denoise(args: argparse.Namespace) -> int:
    check_out_folder(args.out)
    set_threads(args)
    model = load(args.run, args.device)
    images, paths = read_images(args.inputs, model.config.channels)  # all read before any write
    mode = "tile" if args.tile else "resize" if args.resize else "exact"
    if model.fully_conv and mode != "resize":
        mode = "whole"  # any size at full resolution, in one call
    if mode == "exact":
        _check_sizes(images, paths, model.config.image_size)
    specs = tuple(x.strip() for item in args.add_noise or () for x in item.split(",") if x.strip())
    out, names = Path(args.out), output_names(paths)
    # every target checked before the first write: OUT/NAME.png (+ OUT/noisy/NAME.png)
    targets = folder_targets(out, [*names, *(f"noisy/{n}" for n in names if specs)],
                             [*paths, *run_inputs(args.run)], overwrite=args.overwrite)  # fmt: skip
    # warned once the command line is known good (a mistake stays a one-line error)
    if not model.run_config.train.noise:
        log.warning(
            "%s was trained without --noise: it reconstructs its inputs rather than denoising them",
            args.run,
        )
    clean = [img.float().div_(255.0) for img in images]
    g = torch.Generator().manual_seed(args.seed)
    inputs = [corrupt(x[None], specs, g)[0] for x in clean] if specs else clean
    t0 = time.perf_counter()
    outputs = denoise_images(model, inputs, "exact" if mode == "whole" else mode)
    seconds = time.perf_counter() - t0  # the model's work alone: no decoding, no PNG writing
    mp = sum(x.shape[-2] * x.shape[-1] for x in inputs) / 1e6
    for target, img in zip(targets, [*outputs, *(inputs if specs else [])], strict=True):
        write_png(img, target)
    res: dict[str, Any] = {"out": str(out), "images": len(paths), "mode": mode,
                           "add_noise": list(specs) or None, "megapixels": mp,
                           "seconds": seconds, "seconds_per_mp": seconds / mp if mp else None}  # fmt: skip
    if specs:
        res["psnr_noisy"] = mean_psnr(clean, inputs)
        res["psnr_denoised"] = mean_psnr(clean, outputs)
    return finish(args, res, lambda: _denoise_text(res, specs, args.seed, out))


def _denoise_text(res: dict[str, Any], specs, seed: int, out: Path) -> str:
    mode = res["mode"]
    lines = [
        f"wrote {res['images']} denoised image(s) to {out}"
        + (f" ({mode} mode)" if mode not in ("exact", "whole") else ""),
        f"{res['megapixels']:.2f} MP in {res['seconds']:.2f} s"
        + (f" ({res['seconds_per_mp']:.2f} s per megapixel)" if res["seconds_per_mp"] else ""),
    ]
    if specs:
        lines.append(f"added {'+'.join(specs)} (seed {seed}); noisy copies in {out / 'noisy'}")
        lines.append(
            f"PSNR against the inputs: noisy {res['psnr_noisy']:.2f} dB -> denoised "
            f"{res['psnr_denoised']:.2f} dB"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# bench denoise


def _add_bench_denoise_parser(bsub) -> None:
    p = add_command(
        bsub,
        "denoise",
        "PSNR/SSIM of convae against classical filters tuned on the validation split",
        "convae bench denoise --data mnist-sample --noise gaussian:0.2,0.4,0.6 --json",
    )
    add_data_args(p)
    p.add_argument(
        "--noise",
        default="gaussian:0.2,0.4,0.6",
        metavar="KIND:A,B,...",
        help="noise levels, comma-separated (a bare number keeps the kind; '+' combines kinds "
        "in one level); default gaussian:0.2,0.4,0.6",
    )
    p.add_argument(
        "--run",
        action="append",
        metavar="RUN",
        help="use this trained run instead of training one (repeat: one per level, in order; "
        "or one for all levels)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        help="epochs of each trained model (default: the denoise preset's)",
    )
    p.add_argument(
        "--filters",
        default=",".join(FILTERS),
        metavar="A,B",
        help=f"classical filters to compare (default {','.join(FILTERS)})",
    )
    p.add_argument(
        "--tune-images",
        type=positive_int,
        default=200,
        metavar="N",
        help="validation images the filters' parameters are tuned on (default 200)",
    )
    p.add_argument(
        "--images",
        type=positive_int,
        metavar="N",
        help="score N test images spread over the split (default all)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of training and of the benchmark noise"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="results.json, one figure per level and the trained runs "
        "(default runs/bench-denoise-<time>)",
    )
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_bench_denoise)


def cmd_bench_denoise(args: argparse.Namespace) -> int:
    if args.out:
        check_out_folder(args.out)
    out = Path(args.out or Path("runs") / time.strftime("bench-denoise-%Y%m%d-%H%M%S"))
    levels = parse_levels(args.noise)
    check_no_links(out, bench_denoise_outputs(out, levels, trains=not args.run), "--out")
    set_threads(args)
    filters = [f.strip() for f in args.filters.split(",") if f.strip()]
    bar = ProgressBar(enabled=not args.quiet and not args.json)
    try:
        report = bench_denoise(data_config_from_args(args), levels, out, runs=args.run or (),
                               epochs=args.epochs, filters=filters, tune_images=args.tune_images,
                               images=args.images, seed=args.seed, device=args.device,
                               progress=bar)  # fmt: skip
    finally:
        bar.close()
    return finish(args, report, lambda: _bench_text(report))


def _bench_text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['images']} test images of {report['data']}; filters tuned on "
        f"{report['tune_images']} validation images",
        f"{'noise':<16} {'method':<10} {'PSNR dB':>8} {'SSIM':>7} {'ms/img':>8}  params",
    ]
    for lv in report["levels"]:
        for m in lv["methods"]:
            shown = m["method"] in ("noisy", "convae")
            params = "" if shown else " ".join(f"{k}={v}" for k, v in m["params"].items())
            lines.append(
                f"{lv['noise']:<16} {m['method']:<10} {m['psnr']:>8.2f} {m['ssim']:>7.4f} "
                f"{m['ms_per_image']:>8.3f}  {params}"
            )
        if lv["best_filter"]:
            lines.append(
                f"{lv['noise']:<16} convae - best filter ({lv['best_filter']}): "
                f"{lv['gain_over_best_filter_db']:+.2f} dB"
            )
    out = report["out"]
    lines.append(
        f"results: {Path(out) / 'results.json'}; figures: {out}/denoise-*.png; total "
        f"{report['seconds']:.0f} s (training {report['train_seconds']:.0f} s)"
    )
    return "\n".join(lines)


def add_commands(sub) -> None:
    """denoise."""
    _add_denoise_parser(sub)


def add_benches(bsub) -> None:
    """bench denoise."""
    _add_bench_denoise_parser(bsub)
