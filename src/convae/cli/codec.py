"""encode / decode / info for .cae files, and `convae bench codec` (see src/convae/codec/)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from .common import (
    _add,
    _positive_int,
    _print_json,
    _ProgressBar,
    add_data_args,
    add_out_folder_args,
    add_threads_arg,
    check_out_file,
    check_out_folder,
    data_config_from_args,
    folder_targets,
    log,
    output_names,
    run_inputs,
    set_threads,
)


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
    from .. import codec as cdc
    from ..checkpoint import atomic_write, check_run_dir
    from ..data import load_split
    from ..images import read_image_files

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
    check_out_file(out, run_inputs(run))
    codec = cdc.load_codec(run, progress=None)
    c, h, _ = codec.input_shape
    if args.inputs:
        x, paths = read_image_files(args.inputs, c, h, resize=args.resize)
        check_out_file(out, paths)
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
    add_out_folder_args(p, "PNGs, 00000.png ... or the original names")
    p.add_argument(
        "--model",
        metavar="RUN",
        help="run directory that encoded the file (default: the path recorded in the file)",
    )
    add_threads_arg(p)
    p.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> int:
    from .. import codec as cdc
    from ..images import write_png

    set_threads(args)
    path = Path(args.file)
    check_out_folder(args.out)
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
    names = header.names or tuple(f"{i:05d}.png" for i in range(header.count))
    targets = folder_targets(out, names, [path, *run_inputs(run)], overwrite=args.overwrite)
    try:
        # everything in memory before any write
        images, _ = cdc.decode(codec, path.read_bytes())
    except cdc.CodecError as e:
        raise cdc.CodecError(f"{path}: {e}") from None
    for target, img in zip(targets, images, strict=True):
        write_png(img, target)
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
    from .. import codec as cdc

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

    from .. import codec as cdc
    from ..checkpoint import atomic_write, write_json
    from ..config import RunConfig, apply_preset
    from ..data import load_split
    from ..plots import save_figure
    from ..train import train

    out = check_out_folder(args.out)
    if not args.runs:
        check_out_folder(args.work, flag="--work")
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
