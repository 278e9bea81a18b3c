"""cache: decode a folder of images into convae's on-disk cache ahead of training, or check it.
Library: convae.cache (update_folder)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cache import update_folder
from ..limits import human_bytes
from .common import add_command, channels_arg, finish, positive_int


def add_commands(sub) -> None:
    """cache."""
    p = add_command(
        sub,
        "cache",
        "decode a folder of images into the cache that training reads from (or --check it)",
        "convae cache folder:photos --max-side 512   |   convae cache folder:photos --image-size 64 --check",
    )
    p.add_argument("data", metavar="folder:PATH", help="the folder of images (folder:PATH or PATH)")
    g = p.add_argument_group("what is stored (the same flags as training's)")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--image-size", type=positive_int, metavar="N",
                      help="resize + centre-crop every image to N x N")  # fmt: skip
    size.add_argument("--max-side", type=positive_int, metavar="M",
                      help="shrink images whose longer side is above M (default: own sizes)")  # fmt: skip
    g.add_argument("--channels", type=channels_arg, help="force 1 or 3 channels")
    g.add_argument("--strict", action="store_true",
                   help="an unreadable image is an error, not skipped")  # fmt: skip
    g.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="decode images of up to N pixels (default: Pillow's decompression-bomb "
                   "limit, 178,956,970)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="decoding processes (default: one per core)")  # fmt: skip
    p.add_argument("--check", action="store_true",
                   help="only report whether the cache is up to date; decode nothing")  # fmt: skip
    p.set_defaults(func=cmd_cache)


class _Bar:
    """tqdm over the folder's files while they are decoded (only if something is decoded)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="file", desc="caching", disable=None,
                            dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _folder(spec: str) -> Path:
    if spec.startswith("folder:"):
        return Path(spec[len("folder:") :])
    if Path(spec).is_dir():
        return Path(spec)
    raise ValueError(
        f"{spec!r}: convae cache takes a folder of images (folder:PATH); the built-in datasets "
        "are read from their downloaded files and need no cache"
    )


def cmd_cache(args: argparse.Namespace) -> int:
    root = _folder(args.data)
    bar = _Bar(enabled=not args.quiet and not args.json)
    try:
        report = update_folder(root, image_size=args.image_size, max_side=args.max_side,
                               channels=args.channels, strict=args.strict,
                               max_pixels=args.max_pixels, workers=args.workers,
                               progress=bar, build=not args.check)  # fmt: skip
    finally:
        bar.close()
    res = report.to_dict()
    return finish(args, res, lambda: _describe(res))


def _describe(r: dict[str, Any]) -> str:
    if r["state"] == "missing":
        return (
            f"{r['folder']}: no cache yet for {r['options']} ({r['files']} image files to decode)"
        )
    lines = [
        f"{r['folder']}: cache {r['state']} ({r['options']})",
        f"  {r['images']} images, {r['channels']} channel(s), {r['sizes']}, "
        f"{human_bytes(r['bytes'])} in {r['cache']}",
    ]
    if r["state"] == "stale":
        lines[0] += ": files changed since it was built; run without --check to update it"
    if r["decoded"] or r["reused"]:
        lines.append(f"  decoded {r['decoded']} file(s), kept {r['reused']}, {r['seconds']:.1f} s")
    if r["skipped"]:
        lines.append(f"  skipped {r['skipped']} unreadable file(s), e.g. {r['skipped_files'][0]}")
    return "\n".join(lines)
