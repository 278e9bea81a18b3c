"""``convae train``, ``eval``, ``reconstruct`` and ``summary``."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import distributed
from ..checkpoint import read_json, read_state
from ..config import (
    OPTIMIZERS,
    PRESETS,
    DataConfig,
    ModelConfig,
    RunConfig,
    apply_preset,
    preset_crop,
    preset_for_data,
    preset_overrides,
    read_run_config,
    recipe_for,
)
from ..data import load_images
from ..images import read_image_files, read_images, write_png
from ..inference import evaluate_store, load, reconstruct
from ..metrics import json_restore
from ..models import available, build_model, summary
from ..runs import default_run_dir
from ..sampling import AUGMENTS
from ..training import train
from .common import (
    ProgressBar,
    add_command,
    add_data_args,
    add_device_arg,
    add_out_folder_args,
    add_split_arg,
    add_threads_arg,
    channels_arg,
    check_no_links,
    check_out_folder,
    data_config_from_args,
    finish,
    folder_targets,
    log,
    output_names,
    positive_int,
    run_inputs,
    run_outputs,
    set_threads,
)

# ---------------------------------------------------------------------------------------------
# train: the parser


def _add_train_parser(sub) -> None:
    p = add_command(
        sub,
        "train",
        "train a convolutional autoencoder and write a run directory",
        "convae train --data mnist-sample --arch seed-strided --latent-dim 12 --out runs/strided\n"
        "  convae train --data folder:photos --crop 32 --out runs/photos   "
        "# random 32x32 crops of photos of any size",
    )
    add_data_args(p, default_spec=None)
    p.add_argument(
        "--val-fraction", type=float, help="fraction of train used for validation (default 0.1)"
    )
    _add_crop_args(p)
    _add_model_args(p)
    _add_training_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="run directory (default runs/<time>-<arch>-<data>)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped run in --out exactly; the command that started it may be "
        "repeated as it was (flags that differ from the run's config.json are refused)",
    )
    add_device_arg(g)
    add_threads_arg(g)
    p.set_defaults(func=cmd_train)


def _add_crop_args(p) -> None:
    g = p.add_argument_group("crops (photos of any size)")
    g.add_argument(
        "--crop",
        type=positive_int,
        metavar="N",
        help="train on random N x N crops (and flips) of the training images, whatever their "
        "size; the model's input is N x N",
    )
    g.add_argument(
        "--augment",
        choices=AUGMENTS,
        help="crop augmentation: flip (left-right, default), dihedral (8 flips/rotations), "
        "dihedral+channels (and colour channel order), none",
    )
    g.add_argument(
        "--crops-per-epoch",
        type=positive_int,
        metavar="K",
        help="crops in an epoch with --crop (default 64 per training image, at least 2048)",
    )


def _add_model_args(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--arch",
        help="architecture name (see `convae summary --list`); default convae, or convae-map "
        "(fully convolutional) with --crop",
    )
    g.add_argument("--latent-dim", type=positive_int, metavar="L", help="bottleneck size")
    g.add_argument(
        "--width", type=positive_int, help="base channel width (archs convae, convae-map)"
    )
    g.add_argument(
        "--decoder",
        choices=["upsample", "transpose"],
        help="decoder upsampling (archs convae, convae-map)",
    )
    g.add_argument(
        "--norm", choices=["batch", "none"], help="normalization layers (archs convae, convae-map)"
    )
    add_code_map_args(g)
    g.add_argument(
        "--mean-image",
        action=argparse.BooleanOptionalAction,
        help="the decoder adds the training images' mean image to its output, so it learns each "
        "image's difference from it (default: on for seed-strided and seed-keras2d, where it "
        "measured better; off for the others)",
    )


def _add_training_args(p) -> None:
    g = p.add_argument_group("training")
    g.add_argument(
        "--preset", choices=sorted(PRESETS), help="task recipe; explicit flags override it"
    )
    g.add_argument(
        "--epochs",
        type=positive_int,
        help="passes over the training split (default: the architecture's, 10; 9 for seed-strided)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
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
    g.add_argument("--loss", choices=["mse", "l1", "bce"])
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    g.add_argument(
        "--patience", type=int, help="early stop after N epochs without val improvement (0 = off)"
    )
    g.add_argument("--seed", type=int)
    g.add_argument(
        "--noise",
        action="append",
        metavar="KIND:AMOUNT",
        help="corrupt inputs (denoising): gaussian:S, poisson-gaussian:A/B (gain/read noise), "
        "salt-pepper:P, speckle:S, mask:P, jpeg:Q, or blind (70%% gaussian:0-0.2, 30%% "
        "poisson-gaussian:0-0.04/0-0.1: one model for every level); an amount LO-HI is drawn "
        "per image (gaussian:0-0.2); repeat or comma-separate to combine. Default: none, or "
        "blind with --preset denoise --crop",
    )


# ---------------------------------------------------------------------------------------------
# train: flags -> config, and the same flags against a stored run

# The run-defining flags by dest, and the config section and field each one sets.
_MODEL_FLAGS = ("arch", "latent_dim", "width", "decoder", "norm", "depth", "code_channels",
                "padding", "mean_image")  # fmt: skip
_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "loss",
                "precision", "patience", "seed")  # fmt: skip
_DATA_FLAGS = ("data_dir", "classes", "channels", "image_size", "max_side", "split_by", "strict",
               "max_pixels", "val_fraction", "crop", "crops_per_epoch", "augment")  # fmt: skip
_FIELDS = {
    "data": ("data", "spec"),
    **{k: ("data", k) for k in _DATA_FLAGS},
    **{k: ("model", k) for k in _MODEL_FLAGS},
    **{k: ("train", k) for k in _TRAIN_FLAGS},
    "noise": ("train", "noise"),
}


def _noise_specs(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(s.strip() for item in args.noise or () for s in item.split(",") if s.strip())


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The run-defining flags on the command line: dest -> value as the config holds it."""
    given = {k: getattr(args, k) for k in _FIELDS if getattr(args, k, None) is not None}
    if args.noise:
        given["noise"] = _noise_specs(args)
    return given


def _folder_sizes(spec: str) -> set[tuple[int, int]]:
    """The (width, height) of every image in folder ``spec`` (headers only; unreadable files
    are left to the data loader to report)."""
    from PIL import Image

    from ..images import list_image_files

    root = Path(spec[len("folder:") :]).expanduser()
    if not root.is_dir():
        return set()
    sizes = set()
    for f in list_image_files([root]):
        try:
            with Image.open(f) as im:
                sizes.add(im.size)
        except Exception:  # noqa: BLE001 - the loader names unreadable files
            continue
    return sizes


def _on_crops(args: argparse.Namespace, preset: str | None) -> bool:
    """Whether the preset takes its crop form: ``--crop`` given, or a folder (no
    ``--image-size``) whose images differ in size or are all at least twice the preset's crop."""
    if args.crop is not None:
        return True
    crop, spec = preset_crop(preset), getattr(args, "data", None) or ""
    if crop is None or args.image_size is not None or not spec.startswith("folder:"):
        return False
    sizes = _folder_sizes(spec)
    if len(sizes) > 1 or (sizes and min(min(s) for s in sizes) >= 2 * crop):
        log.info("--preset %s on images of any size: training on %d x %d crops (--crop N to "
                 "choose)", preset, crop, crop)  # fmt: skip
        return True
    return False


def build_run_config(args: argparse.Namespace) -> RunConfig:
    """Defaults -> preset (its crop form on crops of images of any size) -> explicit flags."""
    preset = preset_for_data(args.preset, getattr(args, "data", None))
    base = RunConfig(data=_data_from_args(args, DataConfig()))
    cfg = apply_preset(base, preset, crops=_on_crops(args, preset))
    given = _given(args)
    m = {k: v for k, v in given.items() if _FIELDS[k][0] == "model"}
    t = {k: v for k, v in given.items() if _FIELDS[k][0] == "train"}
    data = _data_from_args(args, cfg.data)
    if "arch" in m and m["arch"] != cfg.model.arch and "latent_dim" not in m:
        m["latent_dim"] = None  # the new architecture's own default
    return replace(cfg, model=replace(cfg.model, **m), train=replace(cfg.train, **t), data=data)


def _data_from_args(args: argparse.Namespace, base: DataConfig) -> DataConfig:
    data = data_config_from_args(args, base)
    if getattr(args, "augment", None) is not None:
        data = replace(data, augment=args.augment)
    if args.val_fraction is not None:
        data = replace(data, val_fraction=args.val_fraction)
    return data


def _show(dest: str, v: Any) -> str:
    """A config value as the flag that sets it would say it."""
    if dest == "mean_image" and v is not None:
        return "--mean-image" if v else "--no-mean-image"
    if dest == "strict":
        return "--strict" if v else "no --strict"
    if v is None:
        return "none"
    if isinstance(v, tuple | list):
        return ",".join(map(str, v)) or "none"
    return str(v)


def _position(args: argparse.Namespace, dest: str) -> int:
    """Where flag ``dest`` first appears on the command line (differences are named in that
    order); flags not found sort last, in their usual order."""
    flag = f"--{dest.replace('_', '-')}"
    names = {flag, f"--no-{flag[2:]}"}
    argv = getattr(args, "argv", [])
    return next((i for i, a in enumerate(argv) if a.split("=", 1)[0] in names), len(argv))


def resume_differences(args: argparse.Namespace, stored: RunConfig) -> list[str]:
    """Each run-defining flag whose value differs from the stored run's resolved config, as
    "--epochs 20 differs from the run's 9". A ``--preset``'s values count as given."""
    stored = replace(stored, train=recipe_for(stored.model.arch).fill(stored.train))
    out = []
    given = _given(args)
    name = preset_for_data(args.preset, getattr(args, "data", None) or stored.data.spec)
    preset = preset_overrides(name, stored.data.crop is not None) if name else {}
    for section, fields in preset.items():
        for name, v in fields.items():
            if v is None or (name in given and _FIELDS.get(name, (None,))[0] == section):
                continue  # left to the architecture (resolved in the run), or given explicitly
            have = getattr(getattr(stored, section), name)
            if v != have:
                out.append(f"--preset {args.preset} ({name} {_show(name, v)}) differs from the "
                           f"run's {_show(name, have)}")  # fmt: skip
    for dest, v in sorted(given.items(), key=lambda kv: _position(args, kv[0])):
        section, name = _FIELDS[dest]
        have = getattr(getattr(stored, section), name)
        if v != have:
            flag = f"--{dest.replace('_', '-')}"
            said = (
                _show(dest, v) if dest in ("mean_image", "strict") else f"{flag} {_show(dest, v)}"
            )
            out.append(f"{said} differs from the run's {_show(dest, have)}")
    return out


def _check_resume(args: argparse.Namespace, out: Path) -> None:
    """``--resume`` with the run's own flags: what agrees with config.json is accepted, every
    difference is refused in one line."""
    if not (out / "config.json").is_file():
        return  # train() says there is nothing to resume
    diffs = resume_differences(args, read_run_config(out / "config.json"))
    if diffs:
        raise ValueError("; ".join(diffs) + " (to train differently, start a new run)")


def _config_and_run_dir(args: argparse.Namespace, world: int) -> tuple[RunConfig | None, Path]:
    """The config to train (None: the run's own, to resume) and the run directory, computed here
    so that an interrupted run can say where it is."""
    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out RUN (the run directory to continue)")
        out = Path(args.out)
        _check_resume(args, out)
        cfg = None
    else:
        cfg = build_run_config(args)
        if world > 1 and not args.out:
            raise ValueError(
                "under torchrun pass --out DIR so every process agrees on the run directory"
            )
        out = Path(args.out) if args.out else default_run_dir(cfg)
    check_no_links(out, run_outputs(out), "--out")
    return cfg, out


# ---------------------------------------------------------------------------------------------
# train: the command


def resume_command(argv: list[str], out: Path, has_out: bool) -> str:
    """The command that continues an interrupted run: the same one, ``--out RUN`` and ``--resume``."""
    words = [a for a in argv if a != "--resume"]
    if not has_out:
        words += ["--out", str(out)]
    return shlex.join(["convae", *words, "--resume"])


def interrupted_run(out: Path, command: str) -> str:
    """What an interrupted training leaves: the run directory, its last committed epoch and the
    command that continues it."""
    if not (out / "config.json").is_file():
        return f"the run directory {out} was not started; nothing to resume"
    try:
        cfg = read_run_config(out / "config.json")
        epochs = recipe_for(cfg.model.arch).fill(cfg.train).epochs
        found = read_state(out)
    except (OSError, ValueError):  # a damaged run: the command still says how to try
        return f"run directory {out}; continue it with: {command}"
    if found is None:
        return f"run directory {out} has no committed epoch yet; start it over with: {command}"
    return (
        f"run directory {out}: last committed epoch {found[0].epoch} of {epochs}; continue it "
        f"with: {command}"
    )


def cmd_train(args: argparse.Namespace) -> int:
    if args.out:  # before threads, torchrun or data: a file in the way is the user's mistake
        check_out_folder(args.out)
    set_threads(args)
    with distributed.process_group(args.device) as device:
        rank, world = distributed.world()
        if rank != 0:  # one voice: the other ranks only warn
            log.setLevel(logging.WARNING)
        cfg, out = _config_and_run_dir(args, world)
        bar = ProgressBar(enabled=rank == 0 and not args.quiet and not args.json)
        try:
            train(cfg, out, resume=args.resume, device=device, progress=bar)
        except KeyboardInterrupt as e:
            command = resume_command(getattr(args, "argv", []), out, has_out=bool(args.out))
            raise type(e)(interrupted_run(out, command)) from None
        finally:
            bar.close()
    if rank != 0:
        return 0
    metrics = json_restore(read_json(out / "metrics.json"))
    return finish(args, {"run": str(out), **metrics}, lambda: _train_text(out, metrics))


def _train_text(out: Path, m: dict[str, Any]) -> str:
    return (
        f"run directory: {out}\n"
        f"{m.get('split', 'test')} MSE {m['mse']:.5f}  PSNR {m['psnr']:.2f} dB  "
        f"SSIM {m['ssim']:.4f}  latent {m['latent_dim']} ({m['compression_ratio']:.1f}:1)  "
        f"trained {m['train_seconds']:.1f} s ({m.get('train_cpu_seconds', 0.0):.1f} CPU s)\n"
        f"plots: {out / 'loss.png'}, {out / 'reconstructions.png'}"
    )


# ---------------------------------------------------------------------------------------------
# eval, reconstruct, summary


def _add_eval_parser(sub) -> None:
    p = add_command(
        sub,
        "eval",
        "test metrics of a trained run: MSE, PSNR, SSIM, compression ratio",
        "convae eval runs/strided --split test --json\n"
        "  convae eval runs/photos --data folder:photos --split all --by-class",
    )
    p.add_argument("run", help="run directory")
    add_data_args(p, default_spec=None)
    add_split_arg(p)
    p.add_argument("--by-class", action="store_true",
                   help="also one row per class (a folder's first-level sub-folders)")  # fmt: skip
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    set_threads(args)
    model = load(args.run, args.device)
    data = data_config_from_args(args, model.run_config.data)
    store = load_images(data, args.split)
    if len(store) == 0:
        raise ValueError(f"{data.spec} {args.split}: no images")
    c = model.input_shape[0]
    if store.channels != c:
        raise ValueError(f"{data.spec} has {store.channels}-channel images and the model takes "
                         f"{c}: add --channels {c} to convert them")  # fmt: skip
    m = {**evaluate_store(model, store, by_class=args.by_class), "split": args.split,
         "data": data.spec}  # fmt: skip
    return finish(args, m, lambda: _eval_text(m))


def _eval_text(m: dict[str, Any]) -> str:
    lines = [
        f"{m['images']} images ({m['data']}, {m['split']}): MSE {m['mse']:.5f}  PSNR "
        f"{m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  latent {m['latent_dim']}  ratio "
        f"{m['compression_ratio']:.1f}:1"
    ]
    rows = m.get("classes", {})
    width = max((len(k) for k in rows), default=0)
    for name, r in rows.items():
        lines.append(
            f"  {name:<{width}}  {r['images']:>6} images  MSE {r['mse']:.5f}  PSNR "
            f"{r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}"
        )
    return "\n".join(lines)


def _add_reconstruct_parser(sub) -> None:
    p = add_command(
        sub,
        "reconstruct",
        "reconstruct image files or folders with a trained model, each at its own size",
        "convae reconstruct runs/strided digits/ --out recon/",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    add_out_folder_args(p, "reconstructed PNGs, NAME.png per input")
    p.add_argument(
        "--resize",
        action="store_true",
        help="resize + centre-crop inputs to the model's size (default: each image whole, at its own size)",
    )
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    check_out_folder(args.out)
    set_threads(args)
    model = load(args.run, args.device)
    c, s = model.config.channels, model.config.image_size
    # all read before any write; each image at its own size unless --resize asks for the model's
    if args.resize:
        x, paths = read_image_files(args.inputs, c, s, resize=True)
    else:
        x, paths = read_images(args.inputs, c)
    out = Path(args.out)
    targets = folder_targets(
        out, output_names(paths), [*paths, *run_inputs(args.run)], overwrite=args.overwrite
    )
    for target, img in zip(targets, reconstruct(model, x), strict=True):
        write_png(img, target)
    res = {"out": str(out), "images": len(paths)}
    return finish(args, res, f"wrote {len(paths)} reconstruction(s) to {out}")


def _add_summary_parser(sub) -> None:
    p = add_command(
        sub,
        "summary",
        "layer shapes, parameter counts, latent size and compression ratio",
        "convae summary seed-strided --latent-dim 12   |   convae summary runs/strided",
    )
    p.add_argument("target", nargs="?", help="architecture name or run directory")
    p.add_argument("--list", action="store_true", help="list the registered architectures")
    p.add_argument("--latent-dim", type=positive_int)
    p.add_argument("--channels", type=channels_arg, help="input channels (default 1)")
    p.add_argument("--image-size", type=positive_int, help="input side in pixels (default 28)")
    p.add_argument("--width", type=positive_int, help="base width (archs convae, convae-map)")
    p.add_argument("--decoder", choices=["upsample", "transpose"])
    add_code_map_args(p)
    p.set_defaults(func=cmd_summary)


_SUMMARY_FLAGS = ("latent_dim", "channels", "image_size", "width", "decoder", "depth",
                  "code_channels", "padding")  # fmt: skip


def _summary_model(args: argparse.Namespace):
    """The model to describe: a run's (architecture flags refused), or an architecture's."""
    if Path(args.target).is_dir():
        given = [f"--{k.replace('_', '-')}" for k in _SUMMARY_FLAGS if getattr(args, k) is not None]
        if given:  # a run's model is what it was trained as
            raise ValueError(f"{' '.join(given)} describe an architecture, not a run; drop them")
        return load(args.target)
    if args.target not in available() and ("/" in args.target or os.sep in args.target):
        raise FileNotFoundError(f"{args.target}: no such run directory")
    over: dict[str, Any] = {"arch": args.target, "channels": args.channels or 1,
                            "image_size": args.image_size or 28, "latent_dim": args.latent_dim}  # fmt: skip
    for k in ("width", "decoder", "depth", "code_channels", "padding"):
        if getattr(args, k) is not None:
            over[k] = getattr(args, k)
    return build_model(ModelConfig(**over))


def add_code_map_args(g) -> None:
    """The code map's flags (convae-map): its depth, its channels, its border padding."""
    g.add_argument(
        "--depth", type=positive_int, help="stride-2 stages before the code map (convae-map; 2)"
    )
    g.add_argument(
        "--code-channels",
        type=positive_int,
        metavar="K",
        help="channels of the code map (convae-map, seed-pool, seed-upsample): fits any image size",
    )
    g.add_argument(
        "--padding",
        choices=["zeros", "reflect"],
        help="how convae-map pads borders (default: reflect when training on --crop, else zeros)",
    )


def cmd_summary(args: argparse.Namespace) -> int:
    if args.list or not args.target:
        archs = available()
        return finish(args, archs, "\n".join(f"{k:<15} {v}" for k, v in archs.items()))
    s = summary(_summary_model(args))
    lines = [
        f"{s['arch']}: input {s['input_shape']}, latent {s['latent_shape']} = {s['latent_dim']} "
        f"values, compression {s['compression_ratio']:.1f}:1, {s['params']:,} parameters",
        f"{'part':<8} {'#':>3} {'layer':<18} {'output shape':<22} {'params':>10}",
    ]
    for r in s["layers"]:
        shape = "[B, " + ", ".join(str(d) for d in r["shape"][1:]) + "]"
        lines.append(
            f"{r['part']:<8} {r['name']:>3} {r['kind']:<18} {shape:<22} {r['params']:>10,}"
        )
    return finish(args, s, "\n".join(lines))


def add_commands(sub) -> None:
    """train, eval, reconstruct, summary."""
    for add in (_add_train_parser, _add_eval_parser, _add_reconstruct_parser, _add_summary_parser):
        add(sub)
