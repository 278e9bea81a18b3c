"""``convae train``, ``eval``, ``reconstruct`` and ``summary``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from .common import (
    _add,
    _channels,
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

# ---------------------------------------------------------------------------------------------
# train


def _train_parser(sub) -> None:
    from ..config import OPTIMIZERS, PRESETS

    p = _add(
        sub,
        "train",
        "train a convolutional autoencoder and write a run directory",
        "convae train --data mnist-sample --arch seed-strided --latent-dim 12 --out runs/strided",
    )
    add_data_args(p, default_spec=None)
    p.add_argument(
        "--val-fraction", type=float, help="fraction of train used for validation (default 0.1)"
    )
    g = p.add_argument_group("model")
    g.add_argument("--arch", help="architecture name (see `convae summary --list`); default convae")
    g.add_argument("--latent-dim", type=_positive_int, metavar="L", help="bottleneck size")
    g.add_argument(
        "--width", type=_positive_int, help="base channel width (archs convae, convae-map)"
    )
    g.add_argument(
        "--decoder",
        choices=["upsample", "transpose"],
        help="decoder upsampling (archs convae, convae-map)",
    )
    g.add_argument(
        "--norm", choices=["batch", "none"], help="normalization layers (archs convae, convae-map)"
    )
    g.add_argument(
        "--mean-image",
        action=argparse.BooleanOptionalAction,
        help="the decoder adds the training images' mean image to its output, so it learns each "
        "image's difference from it (default: on for seed-strided and seed-keras2d, where it "
        "measured better; off for the others)",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--preset", choices=sorted(PRESETS), help="task recipe; explicit flags override it"
    )
    g.add_argument(
        "--epochs",
        type=_positive_int,
        help="passes over the training split (default: the architecture's, 10; 9 for seed-strided)",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        help="images per step, per process (default: the architecture's, 32; 64 for seed-strided)",
    )
    g.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default: the architecture's, 1e-2; 1.5e-2 for seed-strided)",
    )
    g.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="default: the architecture's own, as measured in docs/benchmarks.md",
    )
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["onecycle", "cosine", "constant"])
    g.add_argument("--loss", choices=["mse", "bce"])
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    g.add_argument(
        "--patience", type=int, help="early stop after N epochs without val improvement (0 = off)"
    )
    g.add_argument("--seed", type=int)
    g.add_argument(
        "--noise",
        action="append",
        metavar="KIND:AMOUNT",
        help="corrupt inputs (denoising): gaussian:0.4, salt-pepper:P, speckle:S, mask:P; "
        "repeat or comma-separate to combine",
    )
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="run directory (default runs/<time>-<arch>-<data>)")
    g.add_argument(
        "--resume", action="store_true", help="continue the stopped run in --out exactly"
    )
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda or mps")
    add_threads_arg(g)
    p.set_defaults(func=cmd_train)


_MODEL_FLAGS = ("arch", "latent_dim", "width", "decoder", "norm", "mean_image")
_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "loss")
_TRAIN_FLAGS += ("precision", "patience", "seed")


def build_run_config(args: argparse.Namespace):
    """Defaults -> preset -> explicit flags."""
    from ..config import RunConfig, apply_preset

    cfg = apply_preset(RunConfig(), args.preset)
    m = {k: getattr(args, k) for k in _MODEL_FLAGS if getattr(args, k) is not None}
    t: dict[str, Any] = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    if args.noise:
        t["noise"] = tuple(s.strip() for item in args.noise for s in item.split(",") if s.strip())
    data = data_config_from_args(args, cfg.data)
    if args.val_fraction is not None:
        data = replace(data, val_fraction=args.val_fraction)
    if "arch" in m and m["arch"] != cfg.model.arch and "latent_dim" not in m:
        m["latent_dim"] = None  # the new architecture's own default
    return replace(cfg, model=replace(cfg.model, **m), train=replace(cfg.train, **t), data=data)


# Flags that define a run; with --resume the run's own config.json decides them.
_DATA_FLAGS = ("data", "data_dir", "classes", "channels", "image_size", "strict", "val_fraction")
_RUN_FLAGS = (*_DATA_FLAGS, *_MODEL_FLAGS, "preset", *_TRAIN_FLAGS, "noise")


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .. import distributed
    from ..train import train

    if args.out:  # before threads, torchrun or data: a file in the way is the user's mistake
        check_out_folder(args.out)
    set_threads(args)
    log.debug("torch CPU threads: %d", torch.get_num_threads())
    with distributed.process_group(args.device) as device:
        rank, world = distributed.world()
        if rank != 0:  # one voice: the other ranks only warn
            log.setLevel(logging.WARNING)
        if args.resume:
            if not args.out:
                raise ValueError("--resume needs --out RUN (the run directory to continue)")
            given = [
                f"--{k.replace('_', '-')}"
                for k in _RUN_FLAGS
                if getattr(args, k, None) not in (None, False)
                or (k == "mean_image" and args.mean_image is False)  # --no-mean-image
            ]
            if given:
                raise ValueError(
                    f"--resume continues the run with its own config.json; drop {' '.join(given)} "
                    "(to train longer or differently, start a new run)"
                )
            cfg = None
        else:
            cfg = build_run_config(args)
        if world > 1 and not args.resume and not args.out:
            raise ValueError(
                "under torchrun pass --out DIR so every process agrees on the run directory"
            )
        bar = _ProgressBar(enabled=rank == 0 and not args.quiet and not args.json)
        try:
            out = train(cfg, args.out, resume=args.resume, device=device, progress=bar)
        finally:
            bar.close()
    if rank != 0:
        return 0
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    if args.json:
        _print_json({"run": str(out), **metrics})
    else:
        print(f"run directory: {out}")
        print(
            f"{metrics.get('split', 'test')} MSE {metrics['mse']:.5f}  PSNR {metrics['psnr']:.2f} dB  "
            f"SSIM {metrics['ssim']:.4f}  "
            f"latent {metrics['latent_dim']} ({metrics['compression_ratio']:.1f}:1)  "
            f"trained {metrics['train_seconds']:.1f} s"
        )
        print(f"plots: {Path(out) / 'loss.png'}, {Path(out) / 'reconstructions.png'}")
    return 0


# ---------------------------------------------------------------------------------------------
# eval, reconstruct, summary


def _eval_parser(sub) -> None:
    p = _add(
        sub,
        "eval",
        "test metrics of a trained run: MSE, PSNR, SSIM, compression ratio",
        "convae eval runs/strided --split test --json",
    )
    p.add_argument("run", help="run directory")
    add_data_args(p, default_spec=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import load_split
    from ..inference import evaluate, load

    model = load(args.run, args.device)
    data = data_config_from_args(args, model.run_config.data)
    x, _ = load_split(data, args.split)
    _check_images_fit(model, x, data.spec)
    m = evaluate(model, x)
    m.update({"split": args.split, "data": data.spec})
    if args.json:
        _print_json(m)
    else:
        print(
            f"{m['images']} images ({data.spec}, {args.split}): MSE {m['mse']:.5f}  PSNR {m['psnr']:.2f} dB  "
            f"SSIM {m['ssim']:.4f}  latent {m['latent_dim']}  ratio {m['compression_ratio']:.1f}:1"
        )
    return 0


def _reconstruct_parser(sub) -> None:
    p = _add(
        sub,
        "reconstruct",
        "reconstruct image files or folders with a trained model",
        "convae reconstruct runs/strided digits/ --out recon/",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    add_out_folder_args(p, "reconstructed PNGs, NAME.png per input")
    p.add_argument(
        "--resize", action="store_true", help="resize + centre-crop inputs to the model's size"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..images import read_image_files, write_png
    from ..inference import load, reconstruct

    check_out_folder(args.out)
    model = load(args.run, args.device)
    c, s = model.config.channels, model.config.image_size
    x, paths = read_image_files(args.inputs, c, s, resize=args.resize)  # all read before any write
    out = Path(args.out)
    targets = folder_targets(
        out, output_names(paths), [*paths, *run_inputs(args.run)], overwrite=args.overwrite
    )
    y = reconstruct(model, x)
    for target, img in zip(targets, y, strict=True):
        write_png(img, target)
    if args.json:
        _print_json({"out": str(out), "images": len(paths)})
    else:
        print(f"wrote {len(paths)} reconstruction(s) to {out}")
    return 0


def _summary_parser(sub) -> None:
    p = _add(
        sub,
        "summary",
        "layer shapes, parameter counts, latent size and compression ratio",
        "convae summary seed-strided --latent-dim 12   |   convae summary runs/strided",
    )
    p.add_argument("target", nargs="?", help="architecture name or run directory")
    p.add_argument("--list", action="store_true", help="list the registered architectures")
    p.add_argument("--latent-dim", type=_positive_int)
    p.add_argument("--channels", type=_channels, help="input channels (default 1)")
    p.add_argument("--image-size", type=_positive_int, help="input side in pixels (default 28)")
    p.add_argument("--width", type=_positive_int, help="base width (archs convae, convae-map)")
    p.add_argument("--decoder", choices=["upsample", "transpose"])
    p.set_defaults(func=cmd_summary)


def cmd_summary(args: argparse.Namespace) -> int:
    from ..config import ModelConfig
    from ..inference import load
    from ..models import available, build_model, summary

    if args.list or not args.target:
        archs = available()
        if args.json:
            _print_json(archs)
        else:
            for k, v in archs.items():
                print(f"{k:<15} {v}")
        return 0
    flags = ("latent_dim", "channels", "image_size", "width", "decoder")
    if Path(args.target).is_dir():
        given = [f"--{k.replace('_', '-')}" for k in flags if getattr(args, k) is not None]
        if given:  # a run's model is what it was trained as
            raise ValueError(f"{' '.join(given)} describe an architecture, not a run; drop them")
        model = load(args.target)
    else:
        over: dict[str, Any] = {
            "arch": args.target,
            "channels": args.channels or 1,
            "image_size": args.image_size or 28,
            "latent_dim": args.latent_dim,
        }
        if args.width:
            over["width"] = args.width
        if args.decoder:
            over["decoder"] = args.decoder
        if args.target not in available() and ("/" in args.target or os.sep in args.target):
            raise FileNotFoundError(f"{args.target}: no such run directory")
        model = build_model(ModelConfig(**over))
    s = summary(model)
    if args.json:
        _print_json(s)
        return 0
    print(
        f"{s['arch']}: input {s['input_shape']}, latent {s['latent_shape']} = {s['latent_dim']} values, "
        f"compression {s['compression_ratio']:.1f}:1, {s['params']:,} parameters"
    )
    print(f"{'part':<8} {'#':>3} {'layer':<18} {'output shape':<22} {'params':>10}")
    for r in s["layers"]:
        shape = "[B, " + ", ".join(str(d) for d in r["shape"][1:]) + "]"
        print(f"{r['part']:<8} {r['name']:>3} {r['kind']:<18} {shape:<22} {r['params']:>10,}")
    return 0
