"""denoise / bench denoise (issue 6). Library: convae.denoise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import (
    _add,
    _check_images_fit,
    _positive_int,
    _print_json,
    _ProgressBar,
    add_data_args,
    add_out_folder_args,
    add_threads_arg,
    check_out_folder,
    data_config_from_args,
    folder_targets,
    log,
    output_names,
    run_inputs,
    set_threads,
)


def _denoise_parser(sub) -> None:
    p = _add(
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
        help="images of another size: denoise overlapping model-sized tiles at full resolution",
    )
    g.add_argument(
        "--resize",
        action="store_true",
        help="images of another size: resize to the model's size, denoise, resize back",
    )
    p.add_argument(
        "--add-noise",
        action="append",
        metavar="KIND:AMOUNT",
        help="corrupt the (clean) inputs first, e.g. gaussian:0.4; also writes OUT/noisy/ and "
        "reports PSNR against the inputs",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --add-noise (default 0)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_denoise)


def cmd_denoise(args: argparse.Namespace) -> int:
    import torch

    from ..denoise import denoise_images, mean_psnr, read_images
    from ..images import write_png
    from ..inference import load
    from ..noise import corrupt

    check_out_folder(args.out)
    model = load(args.run, args.device)
    c, s = model.config.channels, model.config.image_size
    images, paths = read_images(args.inputs, c)  # all read before any write
    mode = "tile" if args.tile else "resize" if args.resize else "exact"
    if mode == "exact":
        for img, path in zip(images, paths, strict=True):
            if tuple(img.shape[-2:]) != (s, s):
                raise ValueError(
                    f"{path}: image is {img.shape[-1]}x{img.shape[-2]} but the model takes {s}x{s}; "
                    "pass --tile (overlapping tiles at full resolution) or --resize (there and back)"
                )
    specs = tuple(x.strip() for item in args.add_noise or () for x in item.split(",") if x.strip())
    out = Path(args.out)
    names = output_names(paths)
    # every target checked before the first write: OUT/NAME.png (+ OUT/noisy/NAME.png)
    targets = folder_targets(
        out,
        [*names, *(f"noisy/{n}" for n in names if specs)],
        [*paths, *run_inputs(args.run)],
        overwrite=args.overwrite,
    )
    # warned once the command line is known good (a mistake stays a one-line error)
    if not model.run_config.train.noise:
        log.warning(
            "%s was trained without --noise: it reconstructs its inputs rather than denoising them",
            args.run,
        )
    clean = [img.float().div_(255.0) for img in images]
    if specs:
        g = torch.Generator().manual_seed(args.seed)
        inputs = [corrupt(x[None], specs, g)[0] for x in clean]
    else:
        inputs = clean
    outputs = denoise_images(model, inputs, mode)
    for target, img in zip(targets[: len(names)], outputs, strict=True):
        write_png(img, target)
    if specs:
        for target, noisy in zip(targets[len(names) :], inputs, strict=True):
            write_png(noisy, target)
    res: dict[str, Any] = {
        "out": str(out),
        "images": len(paths),
        "mode": mode,
        "add_noise": list(specs) or None,
    }
    if specs:
        res["psnr_noisy"] = mean_psnr(clean, inputs)
        res["psnr_denoised"] = mean_psnr(clean, outputs)
    if args.json:
        _print_json(res)
    else:
        print(
            f"wrote {len(paths)} denoised image(s) to {out}"
            + (f" ({mode} mode)" if mode != "exact" else "")
        )
        if specs:
            print(f"added {'+'.join(specs)} (seed {args.seed}); noisy copies in {out / 'noisy'}")
            print(
                f"PSNR against the inputs: noisy {res['psnr_noisy']:.2f} dB -> denoised {res['psnr_denoised']:.2f} dB"
            )
    return 0


def _bench_denoise_parser(bsub) -> None:
    from ..denoise import FILTERS

    p = _add(
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
        type=_positive_int,
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
        type=_positive_int,
        default=200,
        metavar="N",
        help="validation images the filters' parameters are tuned on (default 200)",
    )
    p.add_argument(
        "--images",
        type=_positive_int,
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
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda or mps")
    add_threads_arg(p)
    p.set_defaults(func=cmd_bench_denoise)


def cmd_bench_denoise(args: argparse.Namespace) -> int:
    import time

    import torch

    from ..checkpoint import write_json
    from ..data import load_split
    from ..denoise import benchmark, comparison_figure, level_name, parse_levels, train_denoiser
    from ..inference import load
    from ..plots import save_figure
    from ..runtime import resolve_device

    t_start = time.perf_counter()
    if args.out:
        check_out_folder(args.out)
    set_threads(args)
    levels = parse_levels(args.noise)
    filters = [f.strip() for f in args.filters.split(",") if f.strip()]
    data = data_config_from_args(args)
    device = resolve_device(args.device)
    out = (
        Path(args.out) if args.out else Path("runs") / time.strftime("bench-denoise-%Y%m%d-%H%M%S")
    )
    runs = args.run or []
    if runs and len(runs) not in (1, len(levels)):
        raise ValueError(
            f"{len(runs)} --run for {len(levels)} noise levels: give one per level or one for all"
        )
    run_dirs = [runs[0]] * len(levels) if len(runs) == 1 else list(runs)
    if not runs:  # refuse up front rather than after training the first model
        for lvl in levels:
            d = out / "runs" / _level_dir(lvl)
            if d.exists():
                raise FileExistsError(
                    f"{d} holds a run from an earlier benchmark; pass it with --run or "
                    "choose another --out"
                )
    val_x, _ = load_split(data, "val")
    test_x, _ = load_split(data, "test")
    if args.images:
        test_x = test_x[
            torch.linspace(0, len(test_x) - 1, min(args.images, len(test_x))).round().long()
        ]
    train_seconds = 0.0
    if not runs:
        for lvl in levels:
            log.info("training a denoising model (preset denoise) for %s", level_name(lvl))
            bar = _ProgressBar(enabled=not args.quiet and not args.json)
            try:
                d = train_denoiser(
                    data,
                    lvl,
                    out / "runs" / _level_dir(lvl),
                    epochs=args.epochs,
                    seed=args.seed,
                    device=device,
                    progress=bar,
                )
            finally:
                bar.close()
            train_seconds += json.loads((d / "metrics.json").read_text())["train_seconds"]
            run_dirs.append(str(d))
    models = [load(r, device) for r in run_dirs]
    for m, r in zip(models, run_dirs, strict=True):
        _check_images_fit(m, test_x, data.spec)
        if not m.run_config.train.noise:
            log.warning("%s was trained without --noise; it is scored as a denoiser anyway", r)
    results = benchmark(
        models,
        levels,
        val_x,
        test_x,
        filters=filters,
        seed=args.seed,
        tune_images=args.tune_images,
        progress=log.info,
    )
    report: dict[str, Any] = {
        "data": data.spec,
        "out": str(out),
        "images": len(test_x),
        "tune_images": min(args.tune_images, len(val_x)),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "levels": [],
    }
    for r, lvl, run in zip(results, levels, run_dirs, strict=True):
        fig_path = out / f"denoise-{_level_dir(lvl)}.png"
        save_figure(comparison_figure(r["examples"], f"{data.spec} test, {r['noise']}"), fig_path)
        rows = r["methods"]
        best = max(
            (m for m in rows if m["method"] not in ("noisy", "convae")),
            key=lambda m: m["psnr"],
            default=None,
        )
        conv = next(m for m in rows if m["method"] == "convae")
        report["levels"].append(
            {
                "noise": r["noise"],
                "run": str(run),
                "figure": str(fig_path),
                "methods": rows,
                "best_filter": best["method"] if best else None,
                "gain_over_best_filter_db": conv["psnr"] - best["psnr"] if best else None,
            }
        )
    report["seconds"] = time.perf_counter() - t_start
    write_json(out / "results.json", report)
    if args.json:
        _print_json(report)
        return 0
    print(
        f"{report['images']} test images of {data.spec}; filters tuned on {report['tune_images']} validation images"
    )
    print(f"{'noise':<16} {'method':<10} {'PSNR dB':>8} {'SSIM':>7} {'ms/img':>8}  params")
    for lv in report["levels"]:
        for m in lv["methods"]:
            params = (
                ""
                if m["method"] in ("noisy", "convae")
                else " ".join(f"{k}={v}" for k, v in m["params"].items())
            )
            print(
                f"{lv['noise']:<16} {m['method']:<10} {m['psnr']:>8.2f} {m['ssim']:>7.4f} "
                f"{m['ms_per_image']:>8.3f}  {params}"
            )
        if lv["best_filter"]:
            print(
                f"{lv['noise']:<16} convae - best filter ({lv['best_filter']}): {lv['gain_over_best_filter_db']:+.2f} dB"
            )
    print(
        f"results: {out / 'results.json'}; figures: {out}/denoise-*.png; total {report['seconds']:.0f} s "
        f"(training {train_seconds:.0f} s)"
    )
    return 0


def _level_dir(level) -> str:
    """A file-name-safe name for a noise level: gaussian:0.4 -> gaussian-0.4."""
    from ..denoise import level_name

    return level_name(level).replace(":", "-")
