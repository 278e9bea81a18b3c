"""The ``convae`` command line: argparse sub-commands, progress bars and human/JSON output.

``main(argv) -> int`` never lets a user's mistake become a traceback: bad input is printed as one
line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("convae")

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add(sub, name: str, help: str, example: str, **kw) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=f"{help}\n\nexample:\n  {example}",
        formatter_class=_formatter,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Argument types


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be at least 1")
    return v


def _int_list(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r} is not a comma list of integers, e.g. 1,5,6"
        ) from None


def _float_list(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r} is not a comma list of numbers, e.g. -8,0"
        ) from None


_THREADS_HELP = (
    "CPU threads for torch (default: one per core, minus cores other processes are busy on)"
)


def add_threads_arg(p, extra: str = "") -> None:
    """``--threads N``; without it :func:`set_threads` picks the load-aware count."""
    p.add_argument("--threads", type=_positive_int, help=_THREADS_HELP + extra)


def set_threads(args: argparse.Namespace) -> int:
    """Apply ``--threads`` or :func:`convae.train.auto_threads` (never oversubscribe a busy CPU)."""
    import torch

    from .train import auto_threads

    torch.set_num_threads(args.threads or auto_threads())
    return torch.get_num_threads()


def _channels(s: str) -> int:
    if s not in ("1", "3"):
        raise argparse.ArgumentTypeError("must be 1 or 3")
    return int(s)


def add_data_args(p: argparse.ArgumentParser, default_spec: str | None = "mnist-sample") -> None:
    """The data flags shared by every command that reads a dataset."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=default_spec,
        metavar="SPEC",
        help="mnist-sample (embedded, default), mnist, fashion-mnist, cifar10 or folder:PATH",
    )
    g.add_argument(
        "--data-dir", metavar="DIR", help="folder holding already-downloaded dataset files"
    )
    g.add_argument("--classes", type=_int_list, metavar="1,5,6", help="keep only these labels")
    g.add_argument("--channels", type=_channels, help="force 1 or 3 channels (folders)")
    g.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="N",
        help="resize + centre-crop to N x N (folders)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="unreadable images are an error, not skipped",
    )


def data_config_from_args(args: argparse.Namespace, base=None):
    """A DataConfig: ``base`` (e.g. the run's own) overridden by whatever data flags were given."""
    from .config import DataConfig

    d = base or DataConfig()
    over: dict[str, Any] = {}
    if getattr(args, "data", None) is not None:
        over["spec"] = args.data
    for k in ("data_dir", "classes", "channels", "image_size", "strict"):
        v = getattr(args, k, None)
        if v is not None:
            over[k] = v
    if "spec" in over and over["spec"] != d.spec:
        # another dataset: the run's data dir does not apply, nor its --classes (other labels)
        over.setdefault("data_dir", None)
        over.setdefault("classes", None)
    return replace(d, **over)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------
# train


def _train_parser(sub) -> None:
    from .config import PRESETS

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
    g = p.add_argument_group("training")
    g.add_argument(
        "--preset", choices=sorted(PRESETS), help="task recipe; explicit flags override it"
    )
    g.add_argument(
        "--epochs",
        type=_positive_int,
        help="passes over the training split (default: the architecture's, 10; seed-strided 30)",
    )
    g.add_argument("--batch-size", type=_positive_int)
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--optimizer", choices=["adam", "adamw"])
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


_MODEL_FLAGS = ("arch", "latent_dim", "width", "decoder", "norm")
_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "loss")
_TRAIN_FLAGS += ("precision", "patience", "seed")


def build_run_config(args: argparse.Namespace):
    """Defaults -> preset -> explicit flags."""
    from .config import RunConfig, apply_preset

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


def _init_distributed(device: str = "auto"):
    """Start the process group under torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU.

    Returns (rank, world, the device of this process or None when not distributed). Each process
    takes the GPU of its LOCAL_RANK; ``--device cpu`` keeps a CUDA machine on gloo.
    """
    import torch
    import torch.distributed as dist

    world = (
        dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    )
    if world <= 1:
        return 0, 1, None
    from .train import resolve_device

    if (
        resolve_device(device).type == "mps" and device != "auto"
    ):  # also rejects unknown/missing ones
        raise ValueError("distributed training runs on cuda or cpu, not mps; pass --device cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local >= gpus:
            raise ValueError(
                f"process {local} of this node has no GPU ({gpus} found); start at most "
                f"--nproc_per_node={gpus} processes per node, or pass --device cpu"
            )
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():  # else: the caller's own group (main() called from a DDP script)
        dist.init_process_group(backend)
    return dist.get_rank(), world, dev


# Flags that define a run; with --resume the run's own config.json decides them.
_DATA_FLAGS = ("data", "data_dir", "classes", "channels", "image_size", "strict", "val_fraction")
_RUN_FLAGS = (*_DATA_FLAGS, *_MODEL_FLAGS, "preset", *_TRAIN_FLAGS, "noise")


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from .train import train

    set_threads(args)
    log.debug("torch CPU threads: %d", torch.get_num_threads())
    owned = not dist.is_initialized()  # a group we start, we also end
    rank, world, ddp_device = _init_distributed(args.device)
    if rank != 0:  # one voice: the other ranks only warn
        log.setLevel(logging.WARNING)
    try:
        if args.resume:
            if not args.out:
                raise ValueError("--resume needs --out RUN (the run directory to continue)")
            given = [
                f"--{k.replace('_', '-')}"
                for k in _RUN_FLAGS
                if getattr(args, k, None) not in (None, False)
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
        device = ddp_device if ddp_device is not None else args.device
        bar = _ProgressBar(enabled=rank == 0 and not args.quiet and not args.json)
        try:
            out = train(cfg, args.out, resume=args.resume, device=device, progress=bar)
        finally:
            bar.close()
    finally:
        if world > 1 and owned:
            dist.destroy_process_group()
    if rank != 0:
        return 0
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    if args.json:
        _print_json({"run": str(out), **metrics})
    else:
        print(f"run directory: {out}")
        print(
            f"test MSE {metrics['mse']:.5f}  PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f}  "
            f"latent {metrics['latent_dim']} ({metrics['compression_ratio']:.1f}:1)  "
            f"trained {metrics['train_seconds']:.1f} s"
        )
        print(f"plots: {Path(out) / 'loss.png'}, {Path(out) / 'reconstructions.png'}")
    return 0


class _ProgressBar:
    """tqdm bar over all steps of the run, with the live loss; the only progress UI in convae."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, ev: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            total = ev["steps"] * ev["epochs"] if ev["event"] == "step" else None
            self.bar = tqdm(
                total=total, unit="step", dynamic_ncols=True, file=sys.stderr, leave=True
            )
        if ev["event"] == "step":
            done = (ev["epoch"] - 1) * ev["steps"] + ev["step"]
            self.bar.update(max(0, done - self.bar.n))
            self.bar.set_description(f"epoch {ev['epoch']}/{ev['epochs']}")
            self.bar.set_postfix(loss=f"{ev['loss']:.4f}")
        else:
            val = ev.get("val_loss")
            self.bar.write(
                f"epoch {ev['epoch']:>3}/{ev['epochs']}  train {ev['train_loss']:.5f}"
                + (f"  val {val:.5f}" if val is not None else "")
                + f"  {ev['seconds']:.1f}s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    from .data import load_split
    from .train import evaluate, load

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


def _check_images_fit(model, x, what: str) -> None:
    want = tuple(model.input_shape)
    if tuple(x.shape[1:]) != want:
        raise ValueError(
            f"{what} images are {tuple(x.shape[1:])} but the model takes {want}; "
            "pass --channels/--image-size to convert them"
        )


def _reconstruct_parser(sub) -> None:
    p = _add(
        sub,
        "reconstruct",
        "reconstruct image files or folders with a trained model",
        "convae reconstruct runs/strided digits/ --out recon/",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the reconstructed PNGs")
    p.add_argument(
        "--resize", action="store_true", help="resize + centre-crop inputs to the model's size"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_reconstruct)


def output_names(paths: list[Path]) -> list[str]:
    """PNG names for outputs: the input's stem, made unique when two inputs share one."""
    names, seen = [], set()
    for p in paths:
        stem, k = p.stem, 1
        name = f"{stem}.png"
        while name in seen:
            k += 1
            name = f"{stem}-{k}.png"
        seen.add(name)
        names.append(name)
    return names


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .data import read_image_files, write_png
    from .train import load, reconstruct

    model = load(args.run, args.device)
    c, s = model.config.channels, model.config.image_size
    x, paths = read_image_files(args.inputs, c, s, resize=args.resize)  # all read before any write
    y = reconstruct(model, x)
    out = Path(args.out)
    for name, img in zip(output_names(paths), y, strict=True):
        write_png(img, out / name)
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
    p.add_argument("--channels", type=_channels, default=1)
    p.add_argument("--image-size", type=_positive_int, default=28)
    p.add_argument("--width", type=_positive_int, help="base width (archs convae, convae-map)")
    p.add_argument("--decoder", choices=["upsample", "transpose"])
    p.set_defaults(func=cmd_summary)


def cmd_summary(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .models import available, build_model, summary
    from .train import load

    if args.list or not args.target:
        archs = available()
        if args.json:
            _print_json(archs)
        else:
            for k, v in archs.items():
                print(f"{k:<15} {v}")
        return 0
    if Path(args.target).is_dir():
        model = load(args.target)
    else:
        over: dict[str, Any] = {
            "arch": args.target,
            "channels": args.channels,
            "image_size": args.image_size,
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


# ---------------------------------------------------------------------------------------------
# Task commands (latent, codec, denoise, anomaly) are added below by their own sections; each
# section appends its parser builders to _COMMANDS (top level) or _BENCHES (`convae bench X`).

_COMMANDS: list = [_train_parser, _eval_parser, _reconstruct_parser, _summary_parser]
_BENCHES: list = []

# === latent commands ===
# latent / generate / interpolate / sweep: the code in the middle (issue 4). Library: convae.latent.


def _allow_negative_values(p: argparse.ArgumentParser) -> None:
    # argparse takes "-8,0" for an option; our values may start with "-" followed by a digit
    # (no option of ours does), so `--z -8,0` works as the seed writes it.
    import re

    p._negative_number_matcher = re.compile(r"^-\.?\d")  # type: ignore[attr-defined]


def _latent_codes(args: argparse.Namespace, model):
    """Encode the chosen split of the run's data (or --data ...): (codes, labels, spec)."""
    from .data import load_split
    from .latent import encode_images, subsample

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
    from .latent import latent_map_figure, project, silhouette, write_codes_csv
    from .plots import save_figure
    from .train import load

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

    from .data import write_png
    from .latent import (
        code_range,
        decode_codes,
        grid_extent,
        latent_grid,
        manifold_figure,
        map_and_image_figure,
        mosaic,
        project,
    )
    from .plots import save_figure, to_display
    from .train import load

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
            proj = project(
                codes
            )  # identity for 2-D codes, PCA otherwise (t-SNE cannot place a point)
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
    p.add_argument("--frames", metavar="DIR", help="also write each decoded point as a PNG")
    p.add_argument(
        "--resize", action="store_true", help="resize + centre-crop inputs to the model's size"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .data import read_image_files, write_png
    from .latent import decode_codes, encode_images, interpolate_codes, interpolation_figure
    from .plots import save_figure
    from .train import load, to_float

    for f in (args.a, args.b):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such image file (interpolate takes two image files)")
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2 (both ends), not {args.steps}")
    model = load(args.run, args.device)
    x, _ = read_image_files(
        [args.a, args.b], model.config.channels, model.config.image_size, resize=args.resize
    )
    z = encode_images(model, x)
    frames = decode_codes(model, interpolate_codes(z[0], z[1], args.steps))
    xf = to_float(x)
    save_figure(interpolation_figure(xf[0], frames, xf[1]), args.out)
    if args.frames:
        for i, f in enumerate(frames):
            write_png(f, Path(args.frames) / f"step-{i:03d}.png")
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
    from .config import RunConfig
    from .latent import sweep

    set_threads(args)
    base = (
        RunConfig()
    )  # the default recipe: only the architecture, the data and --epochs/--seed change
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
        from .latent import sweep_markdown

        print(sweep_markdown(rows), end="")
        print(
            f"table: {Path(args.out) / 'sweep.md'} (.json, .csv)  plot: {Path(args.out) / 'quality.png'}  "
            f"grids: {Path(args.out) / 'reconstructions.png'}"
        )
    return 0


_COMMANDS += [_latent_parser, _generate_parser, _interpolate_parser, _sweep_parser]
# === end latent commands ===

# === codec commands ===
# encode / decode / info for .cae files, and `convae bench codec` (see src/convae/codec.py).


def _encode_parser(sub) -> None:
    p = _add(
        sub,
        "encode",
        "compress images into one .cae file with a trained run's codec",
        "convae encode runs/codec digits/ --out digits.cae   |   convae encode runs/codec --data mnist-sample "
        "--split test --out test.cae",
    )
    p.add_argument("run", help="run directory (its codec is fitted once on first use)")
    p.add_argument("inputs", nargs="*", help="image files or folders (or use --data)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .cae file to write")
    add_data_args(p, default_spec=None)
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="with --data (default test)",
    )
    p.add_argument(
        "--quality",
        type=int,
        metavar="K",
        help="quality level, 0 = smallest (default: the codec's)",
    )
    p.add_argument(
        "--coder",
        default="range",
        choices=["range", "zlib", "lzma"],
        help="payload coder (range: per-channel probability tables, the smallest)",
    )
    p.add_argument(
        "--resize", action="store_true", help="resize + centre-crop image files to the model's size"
    )
    p.add_argument(
        "--no-run-path",
        action="store_true",
        help="do not record the run's path in the file (decode then needs --model)",
    )
    add_threads_arg(p)
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> int:
    from . import codec as cdc
    from .checkpoint import atomic_write, check_run_dir
    from .data import load_split, read_image_files

    # the thread count changes speed only: files and pixels are the same with 1 or 2 (tested)
    set_threads(args)
    run = check_run_dir(args.run)
    if args.inputs and args.data:
        raise ValueError("give image files/folders or --data SPEC, not both")
    if not args.inputs and not args.data:
        raise ValueError(
            "nothing to encode: give image files/folders or --data SPEC [--split test]"
        )
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(
            f"--out {out} is a folder; give a file name such as {out / 'images.cae'}"
        )
    codec = cdc.load_codec(run, progress=None)
    c, h, _ = codec.input_shape
    if args.inputs:
        x, paths = read_image_files(args.inputs, c, h, resize=args.resize)
        names: list[str] | None = output_names(paths)
        what = f"{len(paths)} image file(s)"
    else:
        data = data_config_from_args(args, codec.run_config.data)
        x, _ = load_split(data, args.split)
        if len(x) == 0:
            raise ValueError(f"{data.spec} {args.split}: no images")
        names, what = None, f"{data.spec} {args.split} ({len(x)} images)"
    blob = cdc.encode(
        codec,
        x,
        args.quality,
        names=names,
        coder=args.coder,
        run_hint=None if args.no_run_path else str(run.resolve()),
    )
    atomic_write(out, blob)
    header = cdc.verify(blob)
    pixels = len(x) * c * h * codec.input_shape[2]
    res = {
        "out": str(out),
        "images": len(x),
        "bytes": len(blob),
        "bytes_per_image": len(blob) / len(x),
        "bpp": 8 * len(blob) / pixels,
        "level": header.level,
        "step": header.step,
        "coder": header.coder,
        "model": header.fingerprint.hex(),
    }
    if args.json:
        _print_json(res)
    else:
        print(
            f"encoded {what} into {out}: {len(blob):,} bytes ({res['bytes_per_image']:.1f} B/image, "
            f"{res['bpp']:.3f} bpp), quality level {header.level}, model {header.fingerprint.hex()[:12]}"
        )
    return 0


def _decode_parser(sub) -> None:
    p = _add(
        sub,
        "decode",
        "decode a .cae file into PNG images",
        "convae decode digits.cae --out decoded/ [--model runs/codec]",
    )
    p.add_argument("file", help="the .cae file")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the PNGs (00000.png ... or the original names)",
    )
    p.add_argument(
        "--model",
        metavar="RUN",
        help="run directory that encoded the file (default: the path recorded in the file)",
    )
    add_threads_arg(p)
    p.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> int:
    from . import codec as cdc
    from .data import write_png

    set_threads(args)
    path = Path(args.file)
    header, _, _ = cdc.read_header(path)  # structure + checksum, before any model is loaded
    run = args.model or header.run
    if run is None:
        raise ValueError(
            f"{path} does not record its run; pass --model RUN (the run whose codec has model "
            f"{header.fingerprint.hex()[:12]})"
        )
    if args.model is None and not Path(run).is_dir():
        raise FileNotFoundError(
            f"{path} was encoded by the run {run}, which is not here; pass --model RUN "
            f"(model {header.fingerprint.hex()[:12]})"
        )
    codec = cdc.load_codec(run, fit_if_missing=False)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    try:
        images, names = cdc.decode(
            codec, path.read_bytes()
        )  # everything in memory before any write
    except cdc.CodecError as e:
        raise cdc.CodecError(f"{path}: {e}") from None
    names = names or tuple(f"{i:05d}.png" for i in range(len(images)))
    out.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, images, strict=True):
        write_png(img, out / name)
    if args.json:
        _print_json({"out": str(out), "images": len(images), "model": header.fingerprint.hex()})
    else:
        print(f"decoded {len(images)} image(s) into {out}")
    return 0


def _info_parser(sub) -> None:
    p = _add(
        sub,
        "info",
        "show a .cae file's header and check its checksum (no model needed)",
        "convae info digits.cae --json",
    )
    p.add_argument("file", help="the .cae file")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from . import codec as cdc

    header, payload, size = cdc.read_header(args.file)
    pixels = header.count * header.channels * header.height * header.width
    info = {
        "file": str(args.file),
        "bytes": size,
        "format_version": header.version,
        "images": header.count,
        "channels": header.channels,
        "height": header.height,
        "width": header.width,
        "latent_dim": header.latent_dim,
        "level": header.level,
        "step": header.step,
        "coder": header.coder,
        "model": header.fingerprint.hex(),
        "tables": header.tables_hash.hex(),
        "run": header.run,
        "names": list(header.names) if header.names else None,
        "payload_bytes": payload,
        "bytes_per_image": size / header.count,
        "bpp": 8 * size / pixels,
        "checksum": "ok",
    }
    if args.json:
        _print_json(info)
        return 0
    print(f"{args.file}: convae .cae format v{header.version}, {size:,} bytes, checksum ok")
    print(
        f"  images      {header.count} x {header.channels}x{header.height}x{header.width} "
        f"({info['bytes_per_image']:.1f} B/image, {info['bpp']:.3f} bpp)"
    )
    print(
        f"  quantizer   level {header.level}, step {header.step:g}, latent {header.latent_dim} values/image"
    )
    print(f"  payload     {payload:,} bytes, {header.coder} coder")
    print(f"  model       {header.fingerprint.hex()}  tables {header.tables_hash.hex()}")
    print(f"  run         {header.run or '(not recorded: decode needs --model)'}")
    if header.names:
        shown = ", ".join(header.names[:5]) + (", ..." if len(header.names) > 5 else "")
        print(f"  names       {shown}")
    return 0


_COMMANDS.append(_encode_parser)
_COMMANDS.append(_decode_parser)
_COMMANDS.append(_info_parser)


def _bench_codec_parser(bsub) -> None:
    p = _add(
        bsub,
        "codec",
        "rate-distortion of the codec against PNG, WebP and JPEG on a test split",
        "convae bench codec --data mnist-sample --out benchmarks/out/codec",
    )
    add_data_args(p)
    p.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN",
        help="codec runs to measure (default: train the codec preset once under --work)",
    )
    p.add_argument(
        "--work",
        default="runs/bench-codec",
        metavar="DIR",
        help="where the default codec run is trained and kept (reused when present)",
    )
    p.add_argument(
        "--out",
        default="benchmarks/out/codec",
        metavar="DIR",
        help="results: rd.json, rd.md, rd.png",
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timing repeats (best is kept)")
    add_threads_arg(p, "; give 2 for timings on 2 cores")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (faster)")
    p.set_defaults(func=cmd_bench_codec)


def cmd_bench_codec(args: argparse.Namespace) -> int:
    import torch

    from . import codec as cdc
    from .checkpoint import atomic_write, write_json
    from .config import RunConfig, apply_preset
    from .data import load_split
    from .plots import save_figure
    from .train import train

    set_threads(args)
    data = data_config_from_args(args)
    runs = [Path(r) for r in args.runs] if args.runs else []
    if not runs:
        run = Path(args.work) / data.spec.replace("folder:", "").replace(os.sep, "_").strip("_.")
        if not (run / "model.safetensors").is_file():
            log.info("training the codec preset on %s into %s (once)", data.spec, run)
            bar = _ProgressBar(enabled=not args.quiet and not args.json)
            try:
                train(
                    replace(apply_preset(RunConfig(), "codec"), data=data),
                    run,
                    device="cpu",
                    progress=bar,
                )
            finally:
                bar.close()
        runs = [run]
    codecs = [cdc.load_codec(r) for r in runs]
    x, _ = load_split(data, args.split)
    if args.limit:
        x = x[: args.limit]
    if len(x) == 0:
        raise ValueError(f"{data.spec} {args.split}: no images")
    rows = []
    for r, c in zip(runs, codecs, strict=True):
        name = "convae" if len(runs) == 1 else f"convae:{r.name}"
        rows += cdc.codec_rd(c, x, repeats=args.repeats, ssim=not args.no_ssim, name=name)
    ours = [dict(r) for r in rows]
    rows += cdc.baseline_rd(x, ssim=not args.no_ssim)
    compare = []
    for r in rows:
        if r["method"] == "webp" and r["psnr"] < 99:
            b = cdc.bytes_at_psnr(ours, r["psnr"])
            compare.append(
                {
                    "webp": r["setting"],
                    "psnr": r["psnr"],
                    "webp_bytes": r["bytes_per_image"],
                    "convae_bytes": b,
                    "ratio": None if b is None else b / r["bytes_per_image"],
                }
            )
    res = {
        "data": data.spec,
        "split": args.split,
        "images": len(x),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "runs": [str(r) for r in runs],
        "models": [c.fingerprint.hex() for c in codecs],
        "rows": rows,
        "equal_psnr_vs_webp": compare,
    }
    out = Path(args.out)
    write_json(out / "rd.json", res)
    table = cdc.rd_markdown(res)
    atomic_write(out / "rd.md", table)
    save_figure(
        cdc.rd_figure(rows, title=f"{data.spec} {args.split}: {len(x)} images"), out / "rd.png"
    )
    if args.json:
        _print_json(res)
    else:
        print(table)
        print(f"results: {out / 'rd.json'}, {out / 'rd.md'}, {out / 'rd.png'}")
    return 0


_BENCHES.append(_bench_codec_parser)
# === end codec commands ===

# === denoise commands ===
# denoise / bench denoise (issue 6). Library: convae.denoise.


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
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the denoised PNGs")
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

    from .data import write_png
    from .denoise import denoise_images, mean_psnr, read_images
    from .noise import corrupt
    from .train import load

    model = load(args.run, args.device)
    if not model.run_config.train.noise:
        log.warning(
            "%s was trained without --noise: it reconstructs its inputs rather than denoising them",
            args.run,
        )
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
    clean = [img.float().div_(255.0) for img in images]
    specs = tuple(x.strip() for item in args.add_noise or () for x in item.split(",") if x.strip())
    if specs:
        g = torch.Generator().manual_seed(args.seed)
        inputs = [corrupt(x[None], specs, g)[0] for x in clean]
    else:
        inputs = clean
    outputs = denoise_images(model, inputs, mode)
    out = Path(args.out)
    names = output_names(paths)
    for name, noisy, img in zip(names, inputs, outputs, strict=True):
        write_png(img, out / name)
        if specs:
            write_png(noisy, out / "noisy" / name)
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
    from .denoise import FILTERS

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

    from .checkpoint import write_json
    from .data import load_split
    from .denoise import benchmark, comparison_figure, level_name, parse_levels, train_denoiser
    from .plots import save_figure
    from .train import load, resolve_device

    t_start = time.perf_counter()
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
    from .denoise import level_name

    return level_name(level).replace(":", "-")


_COMMANDS.append(_denoise_parser)
_BENCHES.append(_bench_denoise_parser)
# === end denoise commands ===

# === anomaly commands ===


def _fpr_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number, e.g. 0.05") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{s!r} must be between 0 and 1 (exclusive), e.g. 0.05")
    return v


def _anomaly_parser(sub) -> None:
    from .anomaly import DEFAULT_SCORE, SCORES

    p = _add(
        sub,
        "anomaly",
        "score images by how badly a model of normal images reconstructs them; "
        "flag those above a threshold set on normal images only",
        "convae anomaly runs/digit3 --data mnist-sample --split test --normal-classes 3\n"
        "  convae anomaly runs/digit3 scans/ --csv scores.csv",
    )
    p.add_argument(
        "run", help="run directory of a model trained on normal images (e.g. --classes 3)"
    )
    p.add_argument("inputs", nargs="*", help="image files or folders to score (or --data SPEC)")
    add_data_args(p, default_spec=None)
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="with --data (default test)",
    )
    p.add_argument(
        "--normal-classes",
        type=_int_list,
        metavar="3",
        help="with --data: labels that are normal (default: the classes the run was trained on)",
    )
    p.add_argument("--csv", metavar="FILE", help="write one row per image: path, score, flagged")
    g = p.add_argument_group("threshold (stored in RUN/anomaly.json; changing it recalibrates)")
    g.add_argument(
        "--score",
        choices=list(SCORES),
        help="; ".join(f"{k}: {v}" for k, v in SCORES.items()) + f" (default {DEFAULT_SCORE})",
    )
    g.add_argument(
        "--fpr",
        type=_fpr_arg,
        metavar="RATE",
        help="target false-positive rate on normal images (default 0.05)",
    )
    g.add_argument(
        "--calibrate",
        action="store_true",
        help="recalibrate on the run's normal validation images even if a threshold is stored",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", metavar="DIR", help="folder for heatmaps.png and roc.png (default RUN/anomaly)"
    )
    g.add_argument(
        "--top",
        type=int,
        default=8,
        metavar="K",
        help="heat maps of the K most anomalous images (0 = none; default 8)",
    )
    p.add_argument(
        "--resize", action="store_true", help="resize + centre-crop input files to the model's size"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_anomaly)


def cmd_anomaly(args: argparse.Namespace) -> int:
    from .anomaly import ensure_detector
    from .train import load

    if args.inputs and args.data:
        raise ValueError("give image files/folders or --data SPEC, not both")
    if args.top < 0:
        raise ValueError("--top must be 0 or more")
    calibrate_only = not args.inputs and not args.data
    if calibrate_only and not (args.calibrate or args.score or args.fpr):
        raise ValueError(
            "nothing to score: give image files/folders, or --data SPEC for labelled data "
            "(or --calibrate to only set the threshold)"
        )
    model = load(args.run, args.device)
    # Read (and check) what is to be scored before calibrating: a user's mistake fails fast.
    x, paths, labelled = None, [], None
    if args.inputs:
        from .data import read_image_files

        c, s = model.config.channels, model.config.image_size
        x, paths = read_image_files(args.inputs, c, s, resize=args.resize)
    elif args.data:
        labelled = _anomaly_labelled_data(args, model)
        x = labelled["x"]
    if x is not None:
        _check_images_fit(model, x, "the")
    det, fresh = ensure_detector(model, score=args.score, fpr=args.fpr, recalibrate=args.calibrate)
    how = (
        f"{det.score} > {det.threshold:.6g} (target FPR {det.fpr:g} on {det.n_calibration} normal "
        f"validation images{', calibrated now' if fresh else ''})"
    )
    if calibrate_only:
        if args.json:
            _print_json({"run": str(model.run_dir), "calibrated_now": fresh, **det.to_dict()})
        else:
            print(f"threshold: {how}\nstored in {Path(model.run_dir) / 'anomaly.json'}")
        return 0
    out = Path(args.out) if args.out else Path(model.run_dir) / "anomaly"
    if labelled is None:
        return _anomaly_files(args, model, det, how, out, fresh, x, paths)
    return _anomaly_dataset(args, model, det, how, out, fresh, labelled)


def _anomaly_labelled_data(args, model) -> dict[str, Any]:
    """The --data split with its labels and which of them are normal."""
    import numpy as np

    from .data import load_split

    base = replace(
        model.run_config.data, classes=None
    )  # score every class, not only the trained ones
    data = data_config_from_args(args, base)
    normal = args.normal_classes or model.run_config.data.classes
    if not normal:
        raise ValueError(
            "which labels are normal? pass --normal-classes (the run was trained on all classes)"
        )
    x, y = load_split(data, args.split)
    if len(x) == 0:
        raise ValueError(f"{data.spec} {args.split}: no images")
    is_anom = ~np.isin(y.numpy(), np.asarray(normal))
    if is_anom.all() or not is_anom.any():
        raise ValueError(
            f"{data.spec} {args.split} has {int((~is_anom).sum())} normal and {int(is_anom.sum())} "
            f"anomalous images (normal labels {','.join(map(str, normal))}); AUROC needs both - "
            "check --normal-classes and --classes"
        )
    return {"data": data, "x": x, "y": y, "normal": list(normal), "is_anom": is_anom}


def _anomaly_outputs(model, det, x, names: list[str], titles: list[str], args, out: Path):
    """Scores, flags, the heat-map figure of the top K (``titles`` above them) and the CSV;
    returns (scores, flags, files)."""
    from .anomaly import heatmap_figure, score_images
    from .checkpoint import atomic_write
    from .plots import save_figure
    from .train import reconstruct, to_float

    recon = reconstruct(model, x)
    scores = score_images(model, x, det, recon=recon)
    flags = det.flag(scores)
    files: dict[str, str] = {}
    if args.top and len(x):
        top = list(scores.argsort()[::-1][: args.top])
        fig = heatmap_figure(
            to_float(x[top]),
            recon[top],
            [float(scores[i]) for i in top],
            [titles[i] if len(titles[i]) <= 14 else "..." + titles[i][-11:] for i in top],
            detector=det,
        )
        save_figure(fig, out / "heatmaps.png")
        files["heatmaps"] = str(out / "heatmaps.png")
    if args.csv:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "score", "flagged"])
        for n, s, f in zip(names, scores, flags, strict=True):
            w.writerow([n, f"{s:.8g}", int(f)])
        atomic_write(args.csv, buf.getvalue())
        files["csv"] = str(args.csv)
    return scores, flags, files


def _anomaly_files(args, model, det, how: str, out: Path, fresh: bool, x, paths: list[Path]) -> int:
    names = [str(p) for p in paths]
    scores, flags, files = _anomaly_outputs(
        model, det, x, names, [p.name for p in paths], args, out
    )
    if args.json:
        _print_json(
            {
                "score": det.score,
                "threshold": det.threshold,
                "fpr_target": det.fpr,
                "images": len(x),
                "flagged": int(flags.sum()),
                "calibrated_now": fresh,
                **files,
                "results": [
                    {"path": n, "score": float(v), "flagged": bool(f)}
                    for n, v, f in zip(names, scores, flags, strict=True)
                ],
            }
        )
        return 0
    if not args.csv:
        width = min(60, max(len(n) for n in names))
        for n, v, f in zip(names, scores, flags, strict=True):
            print(f"{n:<{width}}  {v:>10.6g}  {'ANOMALY' if f else 'normal'}")
    print(f"{int(flags.sum())} of {len(x)} image(s) flagged: {how}")
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0


def _anomaly_dataset(args, model, det, how: str, out: Path, fresh: bool, d: dict[str, Any]) -> int:
    from .anomaly import detection_metrics, roc_figure
    from .plots import save_figure

    data, x, y, normal, is_anom = d["data"], d["x"], d["y"], d["normal"], d["is_anom"]
    names = [f"{data.spec}/{args.split}/{i}" for i in range(len(x))]
    titles = [f"#{i} ({label})" for i, label in enumerate(y.tolist())]
    scores, flags, files = _anomaly_outputs(model, det, x, names, titles, args, out)
    m = detection_metrics(scores, is_anom, det.threshold)
    fig = roc_figure(
        {det.score: (scores, is_anom)},
        point=(m["fpr"], m["recall"]),
        title=f"{data.spec} {args.split}: normal = {','.join(map(str, normal))}",
    )
    save_figure(fig, out / "roc.png")
    files["roc"] = str(out / "roc.png")
    res = {
        "data": data.spec,
        "split": args.split,
        "normal_classes": normal,
        "score": det.score,
        "fpr_target": det.fpr,
        "calibrated_now": fresh,
        **m,
        **files,
    }
    if args.json:
        _print_json(res)
        return 0
    print(
        f"{len(x)} images ({data.spec}, {args.split}): {m['n_normal']} normal (labels "
        f"{','.join(map(str, normal))}), {m['n_anomalous']} anomalous"
    )
    print(f"AUROC {100 * m['auroc']:.2f}  AUPRC {100 * m['auprc']:.2f}")
    print(f"at the threshold, {how}:")
    print(
        f"  flagged {m['flagged']}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
        f"F1 {m['f1']:.3f}  false-positive rate {m['fpr']:.3f}"
    )
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0


def _bench_anomaly_parser(bsub) -> None:
    p = _add(
        bsub,
        "anomaly",
        "one-class benchmark: per class, train on it alone and score the test split "
        "(other classes = anomalies); AUROC per class vs a PCA baseline",
        "convae bench anomaly --data mnist-sample --json",
    )
    add_data_args(p)
    from .config import PRESETS

    p.add_argument(
        "--preset",
        default="anomaly",
        choices=sorted(PRESETS),
        help="training recipe of every model (default anomaly); the flags below override it",
    )
    p.add_argument("--epochs", type=_positive_int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=_positive_int, help="override the preset's batch size")
    p.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    p.add_argument("--width", type=_positive_int, help="override the preset's base width")
    p.add_argument(
        "--latent-dim", type=_positive_int, metavar="L", help="override the preset's latent size"
    )
    p.add_argument("--seed", type=int, help="training seed (default the preset's)")
    p.add_argument(
        "--fpr",
        type=_fpr_arg,
        default=0.05,
        metavar="RATE",
        help="target false-positive rate of the calibrated thresholds (default 0.05)",
    )
    p.add_argument(
        "--pca-components", type=_positive_int, default=16, metavar="K", help="PCA baseline size"
    )
    p.add_argument("--out", metavar="DIR", help="also write the results as DIR/bench.json")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPU threads for torch (default 1: these small models train no faster on more, and a "
        "busy CPU makes extra threads spin; measured in docs/anomaly.md)",
    )
    p.set_defaults(func=cmd_bench_anomaly)


def cmd_bench_anomaly(args: argparse.Namespace) -> int:
    import torch

    from .anomaly import DEFAULT_SCORE, SCORES, one_class_benchmark
    from .checkpoint import write_json
    from .config import RunConfig, apply_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = apply_preset(RunConfig(), args.preset)
    m = {k: getattr(args, k) for k in ("width", "latent_dim") if getattr(args, k) is not None}
    t = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "seed")
        if getattr(args, k) is not None
    }
    recipe = replace(recipe, model=replace(recipe.model, **m), train=replace(recipe.train, **t))
    data = replace(data_config_from_args(args), classes=None)
    scores = list(SCORES)
    cols = [*scores, "pca"]
    if not args.json:
        print(
            f"one-class benchmark on {data.spec}: AUROC (%) per normal class; threshold at target FPR "
            f"{args.fpr:g} from that class's validation images"
        )
        print(
            f"{'class':>5} "
            + " ".join(f"{c:>8}" for c in cols)
            + f" {'F1':>6} {'FPR':>6} {'seconds':>8}"
            f"   (F1, FPR: {DEFAULT_SCORE} at the threshold)"
        )

    main_ = DEFAULT_SCORE  # F1 and FPR columns: the default score at its calibrated threshold

    def show(r):
        if not args.json:
            print(
                f"{r['class']:>5} "
                + " ".join(f"{100 * r[c]['auroc']:>8.2f}" for c in cols)
                + f" {r[main_]['f1']:>6.3f} {r[main_]['fpr']:>6.3f} {r['seconds']:>8.1f}",
                flush=True,
            )

    res = one_class_benchmark(
        data,
        recipe,
        classes=args.classes,
        fpr=args.fpr,
        scores=scores,
        pca_components=args.pca_components,
        device=args.device,
        progress=show,
    )
    res["beats_pca"] = {
        s: [r["class"] for r in res["classes"] if r[s]["auroc"] >= r["pca"]["auroc"]]
        for s in scores
    }
    if args.out:
        write_json(Path(args.out) / "bench.json", res)
    if args.json:
        _print_json(res)
        return 0
    mean = res["mean"]
    print(
        f"{'mean':>5} "
        + " ".join(f"{100 * mean[c]['auroc']:>8.2f}" for c in cols)
        + f" {mean[main_]['f1']:>6.3f} {mean[main_]['fpr']:>6.3f} {res['seconds']:>8.1f}"
    )
    n = len(res["classes"])
    print(
        f"{main_} >= PCA on {len(res['beats_pca'][main_])} of {n} classes; total {res['seconds']:.0f} s"
    )
    return 0


_COMMANDS.append(_anomaly_parser)
_BENCHES.append(_bench_anomaly_parser)
# === end anomaly commands ===


# ---------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="convae",
        formatter_class=_formatter,
        description="Convolutional autoencoders on images: train, evaluate, explore the latent "
        "space, compress, denoise and detect anomalies.\n\nexample:\n  convae train",
    )
    parser.add_argument("--version", action="version", version=f"convae {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", help="print one JSON object as the last stdout line"
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors on stderr"
    )
    common.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    orig = sub.add_parser

    def add_parser(name, **kw):  # every sub-command gets the common flags
        kw.setdefault("parents", [common])
        return orig(name, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add in _COMMANDS:
        add(sub)
    bench = _add(sub, "bench", "benchmarks: codec, denoise, anomaly", "convae bench denoise --json")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bsub.required = True
    borig = bsub.add_parser

    def badd(name, **kw):
        kw.setdefault("parents", [common])
        return borig(name, **kw)

    bsub.add_parser = badd  # type: ignore[method-assign]
    for add in _BENCHES:
        add(bsub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``convae`` and ``python -m convae``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"convae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(
        getattr(args, "verbose", 0), getattr(args, "quiet", False) or getattr(args, "json", False)
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("convae: interrupted", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ConnectionError,
        UsageError,
    ) as e:
        print(f"convae: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except RuntimeError as e:
        from .train import TrainingDiverged

        if isinstance(e, TrainingDiverged):
            print(f"convae: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
