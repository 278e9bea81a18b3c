"""A run's codec (the fine-tuned model + its quality levels) and images <-> .cae bytes.

How an image becomes bytes: the encoder maps uint8 pixels to latents, the level quantizes them to
symbols, :mod:`.entropy` codes the symbols and :mod:`.format` packs header + payload + CRC-32.
Decoding checks the file against the codec first, then inverts each step.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import fingerprint
from ..config import RunConfig
from ..inference import apply_batched
from ..limits import check_fits
from ..models import AutoEncoder
from .entropy import Level, decode_symbols, encode_symbols
from .format import ZLIB_MAX_RATIO, CodecError, Header, pack, tiles_of, unpack

log = logging.getLogger(__name__)


@dataclass
class Codec:
    """A fine-tuned model with its quality levels: everything encoding and decoding need."""

    model: AutoEncoder  # eval mode, fp32, CPU
    levels: list[Level]
    default_level: int
    run_config: RunConfig
    run_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = self.model.float().eval()
        self.fingerprint = fingerprint(self.model.state_dict(), self.run_config.model)
        self.fast = inference_copy(self.model)  # what encode/decode run: same maths, faster

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.input_shape)  # type: ignore[return-value]

    def level(self, index: int | None) -> Level:
        i = self.default_level if index is None else index
        if not 0 <= i < len(self.levels):
            raise ValueError(
                f"quality level must be 0..{len(self.levels) - 1} (0 = smallest files), not {i}"
            )
        return self.levels[i]


# ---------------------------------------------------------------------------------------------
# Images <-> .cae bytes

_BATCH = 1024  # fixed chunking: the same file always decodes through the same batch shapes


def inference_copy(model: AutoEncoder) -> AutoEncoder:
    """A CPU copy for coding: each BatchNorm folded into the conv before it, channels_last memory.

    Measured about 2x faster than the training layout on CPU (docs/codec.md). Folding changes the
    float rounding slightly, so every path that makes or reads symbols uses this copy.
    """
    fast = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        for seq in [m for m in fast.modules() if isinstance(m, nn.Sequential)]:
            mods = list(seq.children())
            for i in range(1, len(mods)):
                conv, bn = mods[i - 1], mods[i]
                if not (
                    isinstance(bn, nn.BatchNorm2d)
                    and isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                ):
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [out]
                shape = (-1, 1, 1, 1) if isinstance(conv, nn.Conv2d) else (1, -1, 1, 1)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight = nn.Parameter(conv.weight * scale.reshape(shape))
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
                seq[i] = nn.Identity()
    return fast.to(memory_format=torch.channels_last)


@torch.inference_mode()
def latents(fast: AutoEncoder, x_u8: Tensor) -> Tensor:
    return apply_batched(
        lambda x: fast.encode(x.contiguous(memory_format=torch.channels_last)),
        x_u8,
        torch.device("cpu"),
        _BATCH,
    )


def quantize(codec: Codec, x_u8: Tensor, level: int | None = None) -> tuple[np.ndarray, int]:
    """Images -> (int symbols [N, L] clipped to the level's tables, number of values clipped)."""
    lv = codec.level(level)
    _check_geometry(codec, tuple(x_u8.shape[1:]))
    q = lv.quantize(latents(codec.fast, x_u8))
    lo = torch.from_numpy(lv.lo.astype(np.int64))
    hi = lo + torch.from_numpy(lv.size.astype(np.int64)) - 1
    clipped = int(((q < lo) | (q > hi)).sum())
    return torch.maximum(torch.minimum(q, hi), lo).numpy(), clipped


@torch.inference_mode()
def dequantize(codec: Codec, q: np.ndarray, level: int | None = None) -> Tensor:
    """Int symbols [N, L] -> uint8 images [N, C, H, W] (fp32 decoder, rounded to the nearest level)."""
    lv = codec.level(level)
    y = lv.dequantize(torch.from_numpy(np.asarray(q, dtype=np.int64)))
    outs = [
        codec.fast.decode(y[i : i + _BATCH])
        .contiguous()
        .float()
        .clamp_(0, 1)
        .mul_(255)
        .round_()
        .to(torch.uint8)
        for i in range(0, len(y), _BATCH)
    ]
    c, h, w = codec.input_shape
    return torch.cat(outs) if outs else torch.zeros(0, c, h, w, dtype=torch.uint8)


def _check_geometry(codec: Codec, shape: tuple[int, ...]) -> None:
    if tuple(shape) != codec.input_shape:
        raise ValueError(
            f"images are {tuple(shape)} (C, H, W) but the codec's model takes {codec.input_shape}; "
            "pass --resize (files) or --channels/--image-size (datasets)"
        )


def encode(
    codec: Codec,
    x_u8: Tensor | Sequence[Tensor],
    level: int | None = None,
    names: Sequence[str] | None = None,
    coder: str = "range",
    run_hint: str | None = None,
) -> bytes:
    """uint8 images [N, C, H, W] of the model's size -> .cae bytes (deterministic: same input,
    same bytes). A list of uint8 ``[C, H, W]`` images of other sizes is coded as photos: each
    covered by tiles of the model's size (its edge pixels repeated to fill the last ones), its
    own size kept in the file, so that :func:`decode` gives it back whole."""
    sizes = None
    if not isinstance(x_u8, Tensor):
        images = list(x_u8)
        if any(not isinstance(t, Tensor) or t.dtype != torch.uint8 or t.ndim != 3 for t in images):
            raise ValueError("encode takes uint8 images shaped [C, H, W]")
        c, h, w = codec.input_shape
        if images and all(tuple(t.shape) == (c, h, w) for t in images):
            x_u8 = torch.stack(images)
        elif images:
            if any(t.shape[0] != c for t in images):
                raise ValueError(f"images must have the model's {c} channel(s)")
            sizes = tuple((int(t.shape[1]), int(t.shape[2])) for t in images)
            x_u8 = torch.cat([tile(t, h, w) for t in images])
        else:
            x_u8 = torch.zeros(0, c, h, w, dtype=torch.uint8)
    if x_u8.dtype != torch.uint8 or x_u8.ndim != 4:
        raise ValueError("encode takes uint8 images shaped [N, C, H, W]")
    if len(x_u8) == 0:
        raise ValueError("no images to encode")
    i = codec.default_level if level is None else level
    lv = codec.level(i)
    q, clipped = quantize(codec, x_u8, i)
    if clipped:
        log.warning("%d of %d latent values fell outside the codec's tables and were clipped "
                    "(images unlike the training data)", clipped, q.size)  # fmt: skip
    c, h, w = codec.input_shape
    header = Header(fingerprint=codec.fingerprint, tables_hash=lv.hash(), channels=c, height=h,
                    width=w, latent_dim=lv.latent_dim, count=len(x_u8), level=i, step=lv.step,
                    coder=coder, names=tuple(names) if names is not None else None, run=run_hint,
                    sizes=sizes)  # fmt: skip
    return pack(header, encode_symbols(q, lv, coder))


def tile(image: Tensor, h: int, w: int) -> Tensor:
    """uint8 [C, H, W] -> the [k, C, h, w] tiles that cover it, row by row; the last row and
    column are filled by repeating the image's edge pixels."""
    c, height, width = image.shape
    rows, cols = tiles_of(height, width, h, w)
    pad = (0, cols * w - width, 0, rows * h - height)
    x = nn.functional.pad(image[None].float(), pad, mode="replicate")[0].to(torch.uint8)
    return x.reshape(c, rows, h, cols, w).permute(1, 3, 0, 2, 4).reshape(rows * cols, c, h, w)


def untile(tiles: Tensor, height: int, width: int) -> Tensor:
    """The inverse of :func:`tile`: [k, C, h, w] tiles -> the [C, height, width] image."""
    _, c, h, w = tiles.shape
    rows, cols = tiles_of(height, width, h, w)
    x = tiles.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)
    return x[:, :height, :width].contiguous()


def check_header(codec: Codec, header: Header) -> Level:
    """The level a file needs, after checking that ``codec`` is the model that wrote it."""
    if header.fingerprint != codec.fingerprint:
        where = f" (run {codec.run_dir})" if codec.run_dir else ""
        raise CodecError(
            f"this file was encoded with model {header.fingerprint.hex()[:12]}, not with "
            f"model {codec.fingerprint.hex()[:12]}{where}; decode it with the run that encoded "
            "it (--model RUN)"
        )
    if (header.channels, header.height, header.width) != codec.input_shape:
        raise CodecError("corrupt file: image geometry does not match its model")
    if not 0 <= header.level < len(codec.levels):
        raise CodecError(
            f"the file uses quality level {header.level}, the codec has {len(codec.levels)}"
        )
    lv = codec.levels[header.level]
    if header.tables_hash != lv.hash():
        raise CodecError(
            f"the file's quantizer/probability tables ({header.tables_hash.hex()}) differ from "
            f"the run's codec ({lv.hash().hex()}): was the codec refitted after encoding?"
        )
    if header.latent_dim != lv.latent_dim:  # the same tables, another size: the header is damaged
        raise CodecError(
            f"corrupt file: its header says {header.latent_dim} latent values per image, its "
            f"quality level has {lv.latent_dim}"
        )
    return lv


def check_count(level: Level, header: Header, payload_bytes: int) -> None:
    """Refuse an image count the payload cannot hold, or one that cannot be decoded in memory,
    before anything is allocated for it."""
    n, L = header.count, level.latent_dim
    if header.coder == "range":  # each image costs at least min_bits; the coder adds < 64
        need_bits = n * level.min_bits()
        if need_bits > 8 * payload_bytes + 64:
            raise CodecError(
                f"corrupt file: {n} images need at least {need_bits / 8:,.0f} bytes of payload "
                f"under the codec's tables, the file has {payload_bytes}"
            )
    elif header.coder == "zlib" and n * L > ZLIB_MAX_RATIO * payload_bytes + 64:
        raise CodecError(f"corrupt file: {n} x {L} symbols cannot fit in {payload_bytes} bytes")
    pixels = header.channels * header.height * header.width
    # int64 symbols and float64 latents (~4 copies while decoding), the uint8 images, and one
    # batch of float32 decoder output
    need = n * (32 * L + pixels) + 4 * pixels * min(n, _BATCH)
    check_fits(need, f"decoding {n} images of {header.channels}x{header.height}x{header.width}")


def decode(codec: Codec, data: bytes) -> tuple[Tensor | list[Tensor], tuple[str, ...] | None]:
    """.cae bytes -> (uint8 images [N, C, H, W], or a list of [C, H, W] photos of their own
    sizes for a file of photos; names or None). Everything is checked first."""
    header, payload = unpack(data)
    lv = check_header(codec, header)
    check_count(lv, header, len(payload))
    q = decode_symbols(payload, lv, header.count, header.coder)
    x = dequantize(codec, q, header.level)
    if header.sizes is None:
        return x, header.names
    photos, k = [], 0
    for height, width in header.sizes:
        n = math.prod(tiles_of(height, width, header.height, header.width))
        photos.append(untile(x[k : k + n], height, width))
        k += n
    return photos, header.names
