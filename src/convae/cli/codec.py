"""encode / decode / info for .cae files, and `convae bench codec` (see src/convae/codec/)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import codec as cdc
from ..checkpoint import atomic_write, check_run_dir
from ..codec.bench import BENCH_FILES, bench_codec, default_codec_run
from ..codec.format2 import VERSION as PHOTO_VERSION
from ..codec.format2 import file_version
from ..codec.photo_store import is_photo_run
from ..codec.store import CODEC_FILE, CODEC_JSON
from ..images import read_image_files, read_images, write_png
from .common import (
    THREADS_HELP,
    ProgressBar,
    add_command,
    add_data_args,
    add_inputs_or_data,
    add_out_folder_args,
    add_split_arg,
    add_threads_arg,
    check_no_links,
    check_out_file,
    check_out_folder,
    data_config_from_args,
    finish,
    folder_targets,
    inputs_or_data,
    load_data_split,
    output_names,
    positive_int,
    run_inputs,
    run_outputs,
    set_threads,
)
from .photo import cmd_bench_photos, cmd_decode_photo, cmd_encode_photo, cmd_info_photo

# ---------------------------------------------------------------------------------------------
# encode


def _add_encode_parser(sub) -> None:
    p = add_command(
        sub,
        "encode",
        "compress images into one .cae file with a trained run's codec (photos of another size "
        "than the model's: in tiles of its size, decoded whole)",
        "convae encode runs/codec digits/ --out digits.cae\n"
        "  convae encode runs/codec --data mnist-sample --split test --out test.cae\n"
        "  convae encode runs/photos chelsea.jpg --out chelsea.cae   (a run trained with --crop)\n"
        "  convae encode runs/photo chelsea.jpg --out chelsea.cae --quality 2.5   (a learned photo "
        "codec run)",
    )
    p.add_argument("run", help="run directory (its codec is fitted once on first use)")
    add_inputs_or_data(p, "to encode")
    p.add_argument("--out", required=True, metavar="FILE", help="the .cae file to write")
    p.add_argument(
        "--quality",
        type=float,
        metavar="K",
        help="quality level, 0 = smallest (default: the codec's); photo codec runs take steps of "
        "1/8 between 0 and 5",
    )
    p.add_argument(
        "--coder",
        default="range",
        choices=["range", "zlib", "lzma"],
        help="payload coder (range: per-channel probability tables, the smallest)",
    )
    p.add_argument(
        "--resize",
        action="store_true",
        help="resize + centre-crop image files to the model's size (else each is coded whole, in tiles)",
    )
    p.add_argument(
        "--no-run-path",
        action="store_true",
        help="do not record the run's path in the file (decode then needs --model)",
    )
    add_threads_arg(p)
    p.set_defaults(func=cmd_encode)


def _encode_images(args: argparse.Namespace, codec, out: Path):
    """(uint8 images, their output names or None, what they are) from the files or --data."""
    c, h, _ = codec.input_shape
    if args.inputs and args.resize:
        x, paths = read_image_files(args.inputs, c, h, resize=True)
        check_out_file(out, paths)
        return x, output_names(paths), f"{len(paths)} image file(s)"
    if args.inputs:  # each at its own size: photos not of the model's size are coded in tiles
        images, paths = read_images(args.inputs, c)
        check_out_file(out, paths)
        return images, output_names(paths), f"{len(paths)} image file(s)"
    data = data_config_from_args(args, codec.run_config.data)
    x, _ = load_data_split(data, args.split)
    if len(x) == 0:
        raise ValueError(f"{data.spec} {args.split}: no images")
    return x, None, f"{data.spec} {args.split} ({len(x)} images)"


def cmd_encode(args: argparse.Namespace) -> int:
    # the thread count changes speed only: files and pixels are the same with 1 or 2 (tested)
    set_threads(args)
    run = check_run_dir(args.run)
    if is_photo_run(run):  # a learned photo codec: one whole photo per version-2 file
        return cmd_encode_photo(args, run)
    if args.quality is not None and not float(args.quality).is_integer():
        raise ValueError(f"--quality must be a whole level for this run, not {args.quality:g}")
    if inputs_or_data(args) is None:
        raise ValueError(
            "nothing to encode: give image files/folders or --data SPEC [--split test]"
        )
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(
            f"--out {out} is a folder; give a file name such as {out / 'images.cae'}"
        )
    check_out_file(out, run_inputs(run))
    check_no_links(run, [run / CODEC_FILE, run / CODEC_JSON])
    codec = cdc.load_codec(run, progress=None)
    x, names, what = _encode_images(args, codec, out)
    run_hint = None if args.no_run_path else str(run.resolve())
    quality = None if args.quality is None else int(args.quality)
    blob = cdc.encode(codec, x, quality, names=names, coder=args.coder, run_hint=run_hint)
    atomic_write(out, blob)
    header = cdc.verify(blob)
    pixels = sum(t.shape[-2] * t.shape[-1] for t in x)  # bpp: file bits per image pixel
    res = {"out": str(out), "images": len(x), "bytes": len(blob),
           "bytes_per_image": len(blob) / len(x), "bpp": 8 * len(blob) / pixels,
           "level": header.level, "step": header.step, "coder": header.coder,
           "model": header.fingerprint.hex()}  # fmt: skip
    return finish(
        args,
        res,
        f"encoded {what} into {out}: {len(blob):,} bytes ({res['bytes_per_image']:.1f} B/image, "
        f"{res['bpp']:.3f} bpp), quality level {header.level}, model "
        f"{header.fingerprint.hex()[:12]}",
    )


# ---------------------------------------------------------------------------------------------
# decode, info


def _add_decode_parser(sub) -> None:
    p = add_command(
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


def _decode_run(path: Path, header, model: str | None) -> str:
    """The run directory whose codec decodes the file: --model, else the one it records."""
    run = model or header.run
    if run is None:
        raise ValueError(
            f"{path} does not record its run; pass --model RUN (the run whose codec has model "
            f"{header.fingerprint.hex()[:12]})"
        )
    if model is None and not Path(run).is_dir():
        raise FileNotFoundError(
            f"{path} was encoded by the run {run}, which is not here; pass --model RUN "
            f"(model {header.fingerprint.hex()[:12]})"
        )
    return run


def cmd_decode(args: argparse.Namespace) -> int:
    set_threads(args)
    path = Path(args.file)
    if _version(path) == PHOTO_VERSION:
        return cmd_decode_photo(args, path)
    check_out_folder(args.out)
    header, _, _ = cdc.read_header(path)  # structure + checksum, before any model is loaded
    run = _decode_run(path, header, args.model)
    codec = cdc.load_codec(run, fit_if_missing=False)
    out = Path(args.out)
    try:  # a forged file fails here, before its count makes names or output paths
        images, _ = cdc.decode(codec, path.read_bytes())  # everything in memory before any write
    except cdc.CodecError as e:
        raise cdc.CodecError(f"{path}: {e}") from None
    names = header.names or tuple(f"{i:05d}.png" for i in range(header.photos))
    targets = folder_targets(out, names, [path, *run_inputs(run)], overwrite=args.overwrite)
    for target, img in zip(targets, images, strict=True):
        write_png(img, target)
    res = {"out": str(out), "images": len(images), "model": header.fingerprint.hex()}
    return finish(args, res, f"decoded {len(images)} image(s) into {out}")


def _add_info_parser(sub) -> None:
    p = add_command(
        sub,
        "info",
        "show a .cae file's header and check its checksum (no model needed)",
        "convae info digits.cae --json",
    )
    p.add_argument("file", help="the .cae file")
    p.set_defaults(func=cmd_info)


def _version(path: Path) -> int:
    """The format version byte of a .cae file (its magic checked; errors name the file)."""
    if not path.is_file():
        cdc.read_header(path)  # the usual one-line error for a missing file or a folder
    with open(path, "rb") as f:
        head = f.read(5)
    try:
        return file_version(head)
    except cdc.CodecError as e:
        raise cdc.CodecError(f"{path}: {e}") from None


def cmd_info(args: argparse.Namespace) -> int:
    if _version(Path(args.file)) == PHOTO_VERSION:
        return cmd_info_photo(args)
    header, payload, size = cdc.read_header(args.file)
    pixels = (  # bpp: file bits per image pixel
        sum(h * w for h, w in header.sizes)
        if header.sizes
        else header.count * header.height * header.width
    )
    info = {"file": str(args.file), "bytes": size, "format_version": header.version,
            "images": header.photos, "tiles": header.count if header.sizes else None,
            "sizes": [list(hw) for hw in header.sizes] if header.sizes else None,
            "channels": header.channels, "height": header.height,
            "width": header.width, "latent_dim": header.latent_dim, "level": header.level,
            "step": header.step, "coder": header.coder, "model": header.fingerprint.hex(),
            "tables": header.tables_hash.hex(), "run": header.run,
            "names": list(header.names) if header.names else None, "payload_bytes": payload,
            "bytes_per_image": size / header.photos, "bpp": 8 * size / pixels,
            "checksum": "ok"}  # fmt: skip
    return finish(args, info, lambda: _info_text(args.file, header, info))


def _images_text(header) -> str:
    c, h, w = header.channels, header.height, header.width
    if header.sizes is None:
        return f"{header.count} x {c}x{h}x{w}"
    shown = ", ".join(f"{pw}x{ph}" for ph, pw in header.sizes[:3])
    more = ", ..." if len(header.sizes) > 3 else ""
    tiles = f"{header.count} tiles of {w}x{h}"
    return f"{header.photos} photo(s) of {shown}{more} ({c} channel(s)) in {tiles}"


def _info_text(file: str, header, info: dict[str, Any]) -> str:
    lines = [
        f"{file}: convae .cae format v{header.version}, {info['bytes']:,} bytes, checksum ok",
        f"  images      {_images_text(header)} ({info['bytes_per_image']:.1f} B/image, "
        f"{info['bpp']:.3f} bpp = file bits per pixel)",
        f"  quantizer   level {header.level}, step {header.step:g}, latent {header.latent_dim} "
        "values/image",
        f"  payload     {info['payload_bytes']:,} bytes, {header.coder} coder",
        f"  model       {header.fingerprint.hex()}  tables {header.tables_hash.hex()}",
        f"  run         {header.run or '(not recorded: decode needs --model)'}",
    ]
    if header.names:
        shown = ", ".join(header.names[:5]) + (", ..." if len(header.names) > 5 else "")
        lines.append(f"  names       {shown}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# bench codec


def _add_bench_codec_parser(bsub) -> None:
    p = add_command(
        bsub,
        "codec",
        "rate-distortion of the codec against PNG, WebP and JPEG on a test split (photo codec "
        "runs: whole photos of a folder against JPEG, WebP and AVIF)",
        "convae bench codec --data mnist-sample --out benchmarks/out/codec   |   convae bench "
        "codec --data folder:photos/held-out --runs runs/photo --out benchmarks/out/photo-codec",
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
    add_split_arg(p)
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images")
    p.add_argument("--repeats", type=positive_int, default=3, help="timing repeats (best is kept)")
    add_threads_arg(p, help=THREADS_HELP + "; give 2 for timings on 2 cores")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (faster)")
    p.set_defaults(func=cmd_bench_codec)


def cmd_bench_codec(args: argparse.Namespace) -> int:
    out = check_out_folder(args.out)
    check_no_links(out, [out / n for n in BENCH_FILES], "--out")
    data = data_config_from_args(args)
    if any(is_photo_run(r) for r in args.runs or ()):  # whole photos against JPEG/WebP/AVIF
        return cmd_bench_photos(args, data, out)
    for run in args.runs or ():  # their codec is fitted and saved on first use
        check_no_links(run, [Path(run) / CODEC_FILE, Path(run) / CODEC_JSON])
    if not args.runs:
        check_out_folder(args.work, flag="--work")
        run = default_codec_run(data, args.work)
        codec_files = [run / CODEC_FILE, run / CODEC_JSON]
        check_no_links(args.work, [*run_outputs(run), *codec_files], "--work")
    set_threads(args)
    x, _ = load_data_split(data, args.split)
    if args.limit:
        x = x[: args.limit]
    bar = ProgressBar(enabled=not args.quiet and not args.json)
    try:
        res = bench_codec(x, out, data=data, split=args.split, runs=args.runs or (),
                          work=args.work, repeats=args.repeats, ssim=not args.no_ssim,
                          progress=bar)  # fmt: skip
    finally:
        bar.close()
    return finish(
        args,
        res,
        lambda: (
            cdc.rd_markdown(res) + f"results: {out / 'rd.json'}, {out / 'rd.md'}, {out / 'rd.png'}"
        ),
    )


def add_commands(sub) -> None:
    """encode, decode, info."""
    for add in (_add_encode_parser, _add_decode_parser, _add_info_parser):
        add(sub)


def add_benches(bsub) -> None:
    """bench codec."""
    _add_bench_codec_parser(bsub)
