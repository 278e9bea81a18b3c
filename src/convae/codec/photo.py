"""The learned photo codec: one whole image of any H x W <-> a version-2 .cae file.

How a photo becomes bytes (byte layout in docs/format.md)::

    uint8 [C, H, W] --/255, pad to 64--> encoder --> y [M, h, w] (h = ceil(H/16))
    z = round(hyper_encoder(y) * z_gain)     coded with the level's per-channel integer tables
    mean, scale = hyper_decoder(z)           float64, one thread: the decoder gets the same values
    q = round(y * gain - mean * gain)        coded with the Gaussian table of the scale's index
    header + payload (+ 16-bit check word) + CRC-32

Decoding rebuilds z, then mean and scale (the same float64 computation), then q, then
``x = decoder((q + mean * gain) * inverse_gain)`` cropped to H x W and rounded to uint8.
Only integers (symbols, table frequencies) and float64 computed on one thread cross between the
two sides, so files and pixels do not depend on the thread count.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..models.density import SCALE_MIN
from ..models.hyperprior import DEFAULT_LEVEL, GAIN_SCALE, Y_STRIDE, Z_STRIDE, HyperpriorCodec
from ..models.hyperprior import pad_to as _pad
from . import rangecode as rc
from .format import CodecError
from .format2 import LEVEL_STEPS, PhotoHeader, pack_photo, unpack_photo
from .tables import CdfTables

__all__ = ["PhotoCodec", "encode_photo", "decode_photo", "compress", "decompress", "grid_sizes"]


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread inside the block (restored after): thread-count-independent floats."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class PhotoCodec:
    """A trained photo model with its integer tables: everything coding needs."""

    model: HyperpriorCodec  # eval mode, fp32, CPU
    tables: dict[str, Tensor]  # "scales", "gaussian.*", "z{level}.*" (see codec/photo_store.py)
    fingerprint: bytes  # 16 bytes: checkpoint.fingerprint of the model
    run_dir: Path | None = None
    scales: np.ndarray = field(init=False)
    y_models: rc.TableModels = field(init=False)
    z_models: list[rc.TableModels] = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.model.float().cpu().eval()
        self.scales = self.tables["scales"].numpy().astype(np.float64)
        self.y_models = rc.TableModels(CdfTables.from_tensors(self.tables, "gaussian."))
        self.z_models = [
            rc.TableModels(CdfTables.from_tensors(self.tables, f"z{lv}."))
            for lv in range(self.model.levels)
        ]
        self.hyper64 = copy.deepcopy(self.model.hyper_decoder).double().eval()
        self.tables_hash = tables_digest(self.tables)[:4]

    @property
    def channels(self) -> int:
        return self.model.config.channels

    def check_level(self, level: float | None) -> float:
        """The level as a file stores it (a multiple of 1/8), or ValueError."""
        level = DEFAULT_LEVEL if level is None else level
        top = self.model.levels - 1
        q = round(level * LEVEL_STEPS) if math.isfinite(level) else -1
        if not 0 <= q <= top * LEVEL_STEPS:
            raise ValueError(f"quality level must be in [0, {top}] (0 = smallest), not {level}")
        return q / LEVEL_STEPS

    def gains(self, level: float) -> tuple[Tensor, Tensor]:
        """float64 gain and inverse gain [M] at a level: log-linear interpolation."""
        m = self.model
        lo = min(int(math.floor(level)), m.levels - 2)
        t = level - lo
        lg = torch.lerp(m.log_gain[lo].double(), m.log_gain[lo + 1].double(), t) * GAIN_SCALE
        lig = torch.lerp(m.log_inverse_gain[lo].double(), m.log_inverse_gain[lo + 1].double(), t)
        return lg.exp(), (lig * GAIN_SCALE).exp()

    def hyper(self, z: Tensor, level: float, y_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """Integer z [1, Nz, a, b] -> gained means (float64) and scale-table indices of y."""
        zl = min(int(level), self.model.levels - 1)
        with single_thread(), torch.no_grad():
            izg = self.model.log_z_inverse_gain[zl].double().exp()[None, :, None, None]
            params = self.hyper64(z.double() * izg)[:, :, : y_size[0], : y_size[1]]
            mean, scale = params.chunk(2, dim=1)
            g = self.gains(level)[0][None, :, None, None]
            mean_g = (mean * g).numpy()
            scale_g = np.maximum((scale * g).numpy(), SCALE_MIN)
        index = np.minimum(np.searchsorted(self.scales, scale_g, side="left"), self.scales.size - 1)
        return mean_g, index


def tables_digest(tables: dict[str, Tensor]) -> bytes:
    """SHA-256 over every table tensor (name, dtype, shape, little-endian bytes), names sorted."""
    h = hashlib.sha256()
    for k in sorted(tables):
        a = tables[k].contiguous().numpy()
        h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
        h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())
    return h.digest()


def grid_sizes(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Sizes of y and z for an image: ceil(H/16) x ceil(W/16), then ceil of those / 4."""
    y = (-(-height // Y_STRIDE), -(-width // Y_STRIDE))
    return y, (-(-y[0] // Z_STRIDE), -(-y[1] // Z_STRIDE))


def _z_tables(z_size: tuple[int, int], channels: int) -> np.ndarray:
    return np.repeat(np.arange(channels), z_size[0] * z_size[1])


@torch.no_grad()
def compress(codec: PhotoCodec, image: Tensor, level: float) -> bytes:
    """uint8 [C, H, W] -> payload (z symbols, y symbols, check word)."""
    m = codec.model
    zl = min(int(level), m.levels - 1)
    with single_thread():  # the symbols must not depend on the thread count
        x = _pad(image[None].float() / 255.0)
        y = m.encoder(x)  # [1, M, h, w]
        z = torch.round(m.hyper_encoder(y) * m.log_z_gain[zl].exp()[None, :, None, None])
    y_size = grid_sizes(*image.shape[1:])[0]  # the padding's extra rows/columns are not coded
    y = y[:, :, : y_size[0], : y_size[1]]
    zi = z.long().numpy().ravel()
    enc = rc.Encoder()
    rc.encode_symbols(enc, zi, _z_tables(z.shape[2:], z.shape[1]), codec.z_models[zl])
    mean_g, index = codec.hyper(z, level, y_size)
    g = codec.gains(level)[0].numpy()[None, :, None, None]
    yi = np.round(y.double().numpy() * g - mean_g).astype(np.int64).ravel()
    rc.encode_symbols(enc, yi, index.ravel(), codec.y_models)
    return rc.finish(enc, rc.check_word(zi, yi))


@torch.no_grad()
def decompress(codec: PhotoCodec, payload: bytes, height: int, width: int, level: float) -> Tensor:
    """A payload -> uint8 [C, height, width]; CodecError when it does not check."""
    m = codec.model
    zl = min(int(level), m.levels - 1)
    y_size, z_size = grid_sizes(height, width)
    nz = m.hyper_channels
    dec = rc.Decoder(payload)
    try:
        zi = rc.decode_symbols(dec, _z_tables(z_size, nz), codec.z_models[zl])
        mean_g, index = codec.hyper(torch.from_numpy(zi).reshape(1, nz, *z_size), level, y_size)
        yi = rc.decode_symbols(dec, index.ravel(), codec.y_models)
    except CodecError:
        raise
    except Exception as e:  # constriction raises on streams its models cannot decode
        raise CodecError(f"corrupt file: the payload does not decode ({e})") from None
    rc.verify(dec, rc.check_word(zi, yi))
    ig = codec.gains(level)[1][None, :, None, None]
    y_hat = (torch.from_numpy(yi.reshape(mean_g.shape) + mean_g) * ig).float()
    x = m.decoder(y_hat)[0, :, :height, :width]
    return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def encode_photo(
    codec: PhotoCodec,
    image: Tensor,
    level: float | None = None,
    name: str | None = None,
    run_hint: str | None = None,
) -> bytes:
    """uint8 [C, H, W] (any H, W up to 65535) -> version-2 .cae bytes (the same bytes every time)."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError("encode_photo takes one uint8 image shaped [C, H, W]")
    if image.shape[0] != codec.channels:
        raise ValueError(
            f"the image has {image.shape[0]} channel(s), the codec's model {codec.channels}"
        )
    level = codec.check_level(level)
    c, h, w = image.shape
    header = PhotoHeader(codec.fingerprint[:8], codec.tables_hash, c, h, w, level,
                         name=name, run=run_hint)  # fmt: skip
    pack_photo(header, b"")  # sizes and name checked before the (slower) coding
    return pack_photo(header, compress(codec, image, level))


def check_photo_header(codec: PhotoCodec, header: PhotoHeader) -> None:
    """CodecError unless ``codec`` is the model (and tables) that wrote the file."""
    if header.fingerprint != codec.fingerprint[:8]:
        where = f" (run {codec.run_dir})" if codec.run_dir else ""
        raise CodecError(
            f"this file was encoded with model {header.fingerprint.hex()}, not with model "
            f"{codec.fingerprint[:8].hex()}{where}; decode it with the run that encoded it "
            "(--model RUN)"
        )
    if header.tables_hash != codec.tables_hash:
        raise CodecError(
            f"the file's probability tables ({header.tables_hash.hex()}) differ from the run's "
            f"({codec.tables_hash.hex()}): was codec.safetensors rebuilt after encoding?"
        )
    if header.channels != codec.channels:
        raise CodecError("corrupt file: its channels do not match its model")
    if header.level > codec.model.levels - 1:
        raise CodecError(f"corrupt file: quality level {header.level} is not in the model")


def decode_photo(codec: PhotoCodec, data: bytes) -> tuple[Tensor, str | None]:
    """Version-2 .cae bytes -> (uint8 [C, H, W], the stored name or None). Checked first."""
    header, payload = unpack_photo(data)
    check_photo_header(codec, header)
    image = decompress(codec, payload, header.height, header.width, header.level)
    return image, header.name
