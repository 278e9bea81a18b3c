"""Images for the ``convae anomaly --map`` example of docs/anomaly.md ("Textures"):

    python benchmarks/inspect_demo.py DIR

writes ``DIR/normal/`` (rows 0-255 of scikit-image's brick as eight 128 x 128 tiles: the normal
images to train on), ``DIR/parts/brick_defects.png`` (the whole 512 x 512 brick with one defect of
every kind, 40 grey levels, in the rows 256-511 no training image holds) and
``DIR/parts/chelsea.png`` (scikit-image's 451 x 300 cat photo: a part of another kind and size).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from convae.defects import KINDS, add_defect
from convae.images import write_png
from convae.texture_bench import load_texture

TILE = 128


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", help="folder to write normal/ and parts/ into")
    p.add_argument("--contrast", type=float, default=40.0)
    args = p.parse_args(argv)
    out = Path(args.out)
    brick = load_texture("brick")
    for r in range(0, 256, TILE):
        for c in range(0, 512, TILE):
            tile = brick[None, r : r + TILE, c : c + TILE]
            write_png(
                torch.from_numpy(np.ascontiguousarray(tile)), out / "normal" / f"brick_{r}_{c}.png"
            )
    part = np.repeat(brick[None], 3, 0).copy()
    rng = np.random.default_rng(0)
    for i, kind in enumerate(KINDS):  # one defect per 96-px column of the held-out rows
        r, c = 300 + 100 * (i % 2), 16 + 96 * i
        window = part[:, r : r + 64, c : c + 64]
        part[:, r : r + 64, c : c + 64] = add_defect(window, kind, args.contrast, rng,
                                                     load_texture("gravel"))[0]  # fmt: skip
    write_png(torch.from_numpy(part), out / "parts" / "brick_defects.png")
    import skimage.data

    cat = np.ascontiguousarray(skimage.data.chelsea().transpose(2, 0, 1))
    write_png(torch.from_numpy(cat), out / "parts" / "chelsea.png")
    print(f"{out / 'normal'}: 8 tiles; {out / 'parts'}: brick_defects.png, chelsea.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
