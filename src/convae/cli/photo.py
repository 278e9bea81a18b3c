"""encode / decode / info for version-2 .cae files (learned photo codec runs); `convae encode`,
`decode` and `info` hand over here when the run or the file is a photo codec's."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..codec.photo_bench import FILES as BENCH_FILES
from ..codec.photo_bench import bench_photos, photo_rd_markdown
from ..codec.photo_io import decode_file, encode_file, photo_info
from ..codec.photo_store import CODEC_FILE, load_photo_codec
from ..config import DataConfig
from ..images import list_image_files, read_images, write_png
from .common import (
    check_no_links,
    check_out_file,
    check_out_folder,
    finish,
    folder_targets,
    output_names,
    run_inputs,
    set_threads,
)


def cmd_encode_photo(args: argparse.Namespace, run: Path) -> int:
    """One image file -> one .cae v2 file at its own size."""
    if not args.inputs:
        raise ValueError(f"give the photo to encode: convae encode {run} PHOTO --out FILE.cae")
    if args.coder != "range" or args.resize:
        raise ValueError("a photo codec run codes whole photos with its range coder: "
                         "--coder and --resize do not apply")  # fmt: skip
    paths = list_image_files(args.inputs)
    if len(paths) != 1:
        raise ValueError(f"a photo codec .cae file holds one photo; {len(paths)} were given")
    out = check_out_file(args.out, [*paths, *run_inputs(run)])
    check_no_links(run, [run / CODEC_FILE])
    codec = load_photo_codec(run)
    run_hint = None if args.no_run_path else str(run.resolve())
    res = encode_file(codec, paths[0], out, args.quality, output_names(paths)[0], run_hint)
    return finish(
        args,
        res,
        f"encoded {paths[0]} ({res['width']}x{res['height']}) into {out}: {res['bytes']:,} "
        f"bytes ({res['bpp']:.3f} bpp), quality level {res['level']:g}, model {res['model']}",
    )


def cmd_decode_photo(args: argparse.Namespace, path: Path) -> int:
    """One .cae v2 file -> one PNG in the --out folder (its stored name, or 00000.png)."""
    check_out_folder(args.out)
    info = photo_info(path)  # structure + checksum, before any model is loaded
    run = args.model or info["run"]
    if run is None:
        raise ValueError(f"{path} does not record its run; pass --model RUN "
                         f"(the run whose model is {info['model']})")  # fmt: skip
    if args.model is None and not Path(run).is_dir():
        raise FileNotFoundError(f"{path} was encoded by the run {run}, which is not here; pass "
                                f"--model RUN (model {info['model']})")  # fmt: skip
    image, header, seconds = decode_file(path, run)  # in memory before anything is written
    names = (header.name or "00000.png",)
    (target,) = folder_targets(args.out, names, [path, *run_inputs(run)], overwrite=args.overwrite)
    write_png(image, target)
    res = {"out": str(args.out), "images": 1, "file": str(target), "height": header.height,
           "width": header.width, "model": header.fingerprint.hex(),
           "decode_seconds": seconds}  # fmt: skip
    return finish(args, res, f"decoded {header.width}x{header.height} photo into {target}")


def cmd_info_photo(args: argparse.Namespace) -> int:
    info = photo_info(args.file)
    text = (
        f"{args.file}: convae .cae format v2 (learned photo codec), {info['bytes']:,} bytes, "
        f"checksum ok\n  image       {info['channels']}x{info['height']}x{info['width']} "
        f"({info['bpp']:.3f} bpp = file bits per pixel)\n  quality     level {info['level']:g}\n"
        f"  payload     {info['payload_bytes']:,} bytes\n  model       {info['model']}  tables "
        f"{info['tables']}\n  run         {info['run'] or '(not recorded: decode needs --model)'}"
    )
    if info["names"]:
        text += f"\n  name        {info['names'][0]}"
    return finish(args, info, text)


def cmd_bench_photos(args: argparse.Namespace, data: DataConfig, out: Path) -> int:
    """`convae bench codec --data folder:PHOTOS --runs RUN`: every photo of the folder, whole."""
    if len(args.runs) != 1:
        raise ValueError("the photo benchmark measures one photo codec run: give one --runs RUN")
    if not data.spec.startswith("folder:"):
        raise ValueError("the photo benchmark reads whole photos: pass --data folder:PHOTOS")
    check_no_links(out, [out / n for n in BENCH_FILES], "--out")
    set_threads(args)
    images, paths = read_images([data.spec[len("folder:") :]], 3)
    pairs = list(zip(paths, images, strict=True))[: args.limit]
    photos = {p.stem: img.numpy().transpose(1, 2, 0) for p, img in pairs}
    res = bench_photos(args.runs[0], photos, out, repeats=args.repeats)
    files = ", ".join(str(out / n) for n in BENCH_FILES)
    return finish(args, res, lambda: photo_rd_markdown(res) + f"results: {files}")
