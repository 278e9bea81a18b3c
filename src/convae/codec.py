"""The ``.cae`` codec: quantize a trained model's latent code, entropy-code it, pack it in a file.

How an image becomes bytes (see docs/format.md for the byte layout)::

    uint8 [N, C, H, W] --/255--> encoder --> y [N, L] float32
    q = round((y - offset) / step)          per-channel offset, one step per quality level
    q clipped to each channel's table range, range-coded with per-channel categorical tables
    header + payload + CRC-32  ->  one .cae file for all N images

Decoding inverts it: ``y_hat = q * step + offset`` -> decoder -> round to uint8.

The model the codec uses is the run's autoencoder after a short rate-distortion fine-tune
(:func:`fit_codec`): uniform noise stands in for rounding, and a learned per-channel density (a
mixture of logistics) gives a differentiable bit count, so the loss is ``MSE + lambda * bpp``.
That fine-tuned model, the quantizer and the probability tables (histograms of the training
split's codes) are saved in ``RUN/codec.safetensors`` (+ a readable ``codec.json``). Each file
names its model by a 16-byte fingerprint of those weights and its tables by an 8-byte hash, so
decoding with anything else fails with one clear line instead of producing garbage.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import lzma
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import atomic_write, check_run_dir, fingerprint, write_json
from .config import RunConfig, TrainConfig
from .models import AutoEncoder, build_model

log = logging.getLogger(__name__)

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "CODERS",
    "CodecError",
    "Header",
    "Level",
    "Codec",
    "CodecFitConfig",
    "pack",
    "unpack",
    "verify",
    "read_header",
    "encode_symbols",
    "decode_symbols",
    "fit_codec",
    "save_codec",
    "load_codec",
    "encode",
    "decode",
    "codec_rd",
    "baseline_rd",
    "bytes_at_psnr",
    "rd_figure",
    "rd_markdown",
    "quantize",
    "dequantize",
    "check_header",
    "LogisticMixturePrior",
]

MAGIC = b"\x89CAE"  # high bit set: a 7-bit channel or a text file can never start like this
FORMAT_VERSION = 1  # the newest version this code writes; it reads every version <= this
CODERS = {1: "range", 2: "zlib", 3: "lzma"}  # payload coder id -> name
_CODER_IDS = {v: k for k, v in CODERS.items()}
CODEC_FILE = "codec.safetensors"
CODEC_JSON = "codec.json"
MAX_IMAGES = 1 << 28  # a sanity bound on the count field (268 M images)
_FLAG_NAMES = 0x01
_FLAG_RUN = 0x02

# Fixed part of the v1 header, little-endian: magic, version, coder, level, flags, model
# fingerprint, tables hash, channels, height, width, latent dim, step, count, payload length.
_FIXED = struct.Struct("<4sBBBB16s8sBHHHfII")
_CRC = struct.Struct("<I")


class CodecError(ValueError):
    """A .cae file that cannot be read: empty, foreign, truncated, corrupt or for another model."""


# ---------------------------------------------------------------------------------------------
# The container: pack / unpack / verify


@dataclass(frozen=True)
class Header:
    """Everything in a .cae file except the payload (see docs/format.md)."""

    fingerprint: bytes  # 16 bytes: checkpoint.fingerprint() of the codec model's weights + config
    tables_hash: bytes  # 8 bytes: hash of the level's quantizer and probability tables
    channels: int
    height: int
    width: int
    latent_dim: int
    count: int  # images in the file
    level: int  # quality level index into the run's codec tables
    step: float  # the level's quantizer step (float32), repeated for readers without the model
    coder: str = "range"  # "range", "zlib" or "lzma"
    names: tuple[str, ...] | None = None  # output file names, when the inputs were files
    run: str | None = None  # where the encoding run lived (a hint for `decode` without --model)
    version: int = FORMAT_VERSION


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00\n") or len(name) > 255:
        raise CodecError(f"corrupt file: invalid image name {name[:40]!r}")


def pack(header: Header, payload: bytes) -> bytes:
    """Serialize ``header`` and ``payload`` into .cae bytes (CRC-32 over everything at the end)."""
    if header.coder not in _CODER_IDS:
        raise ValueError(f"unknown coder {header.coder!r}; choose one of {', '.join(_CODER_IDS)}")
    if len(header.fingerprint) != 16 or len(header.tables_hash) != 8:
        raise ValueError("fingerprint must be 16 bytes and tables hash 8 bytes")
    if not 1 <= header.count <= MAX_IMAGES:
        raise ValueError(f"a .cae file holds 1 to {MAX_IMAGES} images, not {header.count}")
    flags = 0
    extra = b""
    if header.run is not None:
        run = header.run.encode("utf-8")
        if len(run) > 0xFFFF:
            raise ValueError("run path too long to record")
        flags |= _FLAG_RUN
        extra += struct.pack("<H", len(run)) + run
    if header.names is not None:
        if len(header.names) != header.count:
            raise ValueError(f"{len(header.names)} names for {header.count} images")
        for n in header.names:
            _check_name(n)
        blob = zlib.compress("\n".join(header.names).encode("utf-8"), 9)
        flags |= _FLAG_NAMES
        extra += struct.pack("<I", len(blob)) + blob
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        _CODER_IDS[header.coder],
        header.level,
        flags,
        header.fingerprint,
        header.tables_hash,
        header.channels,
        header.height,
        header.width,
        header.latent_dim,
        header.step,
        header.count,
        len(payload),
    )
    body = fixed + extra + payload
    return body + _CRC.pack(zlib.crc32(body))


def _take(data: bytes, pos: int, n: int, what: str) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise CodecError(f"truncated file: {what} runs past the end")
    return data[pos : pos + n], pos + n


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and check .cae bytes -> (header, payload); any defect raises :class:`CodecError`.

    Checks, in order: empty, magic, version, length, CRC-32, then every field's range.
    """
    if len(data) == 0:
        raise CodecError("empty file (0 bytes); not a .cae file")
    if data[: len(MAGIC)] != MAGIC[: len(data)] or len(data) < len(MAGIC):
        if data[: len(MAGIC)] != MAGIC[: min(len(data), len(MAGIC))]:
            raise CodecError("not a .cae file (wrong magic bytes)")
        raise CodecError(f"truncated file ({len(data)} bytes)")
    if len(data) < _FIXED.size + _CRC.size:
        raise CodecError(
            f"truncated file ({len(data)} bytes, a header alone is {_FIXED.size + _CRC.size})"
        )
    (magic, version, coder, level, flags, fp, th, c, h, w, lat, step, count, plen) = (
        _FIXED.unpack_from(data)
    )
    if version == 0:
        raise CodecError("corrupt file: format version 0")
    if version > FORMAT_VERSION:
        raise CodecError(
            f"file format version {version} is newer than this convae reads "
            f"(up to {FORMAT_VERSION}); upgrade convae"
        )
    body, crc = data[: -_CRC.size], _CRC.unpack_from(data, len(data) - _CRC.size)[0]
    if zlib.crc32(body) != crc:
        raise CodecError("corrupt or truncated file: checksum mismatch")
    # From here the bytes are what the writer wrote; field checks guard against buggy writers.
    if coder not in CODERS:
        raise CodecError(f"corrupt file: unknown payload coder {coder}")
    if flags & ~(_FLAG_NAMES | _FLAG_RUN):
        raise CodecError(f"corrupt file: unknown flags 0x{flags:02x}")
    if c not in (1, 3) or h < 1 or w < 1 or lat < 1 or not 1 <= count <= MAX_IMAGES:
        raise CodecError(f"corrupt file: bad geometry ({count} x {c}x{h}x{w}, latent {lat})")
    if not (math.isfinite(step) and step > 0):
        raise CodecError(f"corrupt file: bad quantizer step {step}")
    pos = _FIXED.size
    run = None
    if flags & _FLAG_RUN:
        raw, pos = _take(body, pos, 2, "run path length")
        raw, pos = _take(body, pos, struct.unpack("<H", raw)[0], "run path")
        try:
            run = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CodecError("corrupt file: run path is not UTF-8") from e
    names = None
    if flags & _FLAG_NAMES:
        raw, pos = _take(body, pos, 4, "names length")
        blob, pos = _take(body, pos, struct.unpack("<I", raw)[0], "names")
        try:
            d = zlib.decompressobj()
            text = d.decompress(blob, 300 * count)  # bounded: a name is at most 255 bytes + "\n"
            if d.unconsumed_tail or not d.eof:
                raise CodecError("corrupt file: names section too long or cut")
            names = tuple(text.decode("utf-8").split("\n"))
        except (zlib.error, UnicodeDecodeError) as e:
            raise CodecError(f"corrupt file: unreadable names ({e})") from e
        if len(names) != count:
            raise CodecError(f"corrupt file: {len(names)} names for {count} images")
        for n in names:
            _check_name(n)
    if pos + plen != len(body):
        raise CodecError(f"corrupt file: payload length {plen} does not match the file size")
    header = Header(
        fingerprint=fp,
        tables_hash=th,
        channels=c,
        height=h,
        width=w,
        latent_dim=lat,
        count=count,
        level=level,
        step=step,
        coder=CODERS[coder],
        names=names,
        run=run,
        version=version,
    )
    return header, bytes(body[pos:])


def verify(data: bytes) -> Header:
    """Check a file's structure and checksum without a model; return its header."""
    return unpack(data)[0]


def read_header(path: str | os.PathLike) -> tuple[Header, int, int]:
    """(header, payload bytes, file bytes) of a .cae file on disk; errors name the file."""
    p = Path(path)
    data = _read_file(p)
    try:
        header, payload = unpack(data)
    except CodecError as e:
        raise CodecError(f"{p}: {e}") from None
    return header, len(payload), len(data)


def _read_file(p: Path) -> bytes:
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a folder; give a .cae file")
    return p.read_bytes()


# ---------------------------------------------------------------------------------------------
# Entropy coding of integer symbols with per-channel categorical tables


@dataclass(frozen=True)
class Level:
    """One quality level: a decorrelating transform, a quantizer and per-component probability tables.

    The latent ``y`` is rotated onto the principal axes of the training codes,
    ``z = (y - mean) @ basis.T``, then ``q = round((z - offset) / step)``. Component ``j`` codes
    the integers ``lo[j] .. lo[j] + size[j] - 1`` with probabilities proportional to
    ``counts[j, :size[j]]`` (all >= 1, so every symbol in range is codable). Without ``basis``
    the transform is the identity.
    """

    step: float  # quantizer step (float32 value)
    offset: np.ndarray  # float32 [L]: centre of each component's rounding grid
    lo: np.ndarray  # int32 [L]: smallest symbol of each component's table
    size: np.ndarray  # int32 [L]: symbols in each table
    counts: np.ndarray  # int32 [L, max(size)], zero-padded past size[j]
    mean: np.ndarray | None = None  # float32 [L]: mean of the training codes
    basis: np.ndarray | None = None  # float32 [L, L]: orthonormal rows, by decreasing variance

    def hash(self) -> bytes:
        """8 bytes identifying the transform, quantizer and tables (what a file must agree with)."""
        h = hashlib.sha256()
        h.update(struct.pack("<f", self.step))
        arrays = [
            self.offset.astype("<f4"),
            self.lo.astype("<i4"),
            self.size.astype("<i4"),
            self.counts.astype("<i4"),
        ]
        if self.basis is not None and self.mean is not None:
            arrays += [self.mean.astype("<f4"), self.basis.astype("<f4")]
        for a in arrays:
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        return h.digest()[:8]

    def to_components(self, y: Tensor) -> Tensor:
        """float32 latents [N, L] -> float64 components (the transform runs in float64)."""
        return _rotate(y, self.mean, self.basis)

    def to_latent(self, z: Tensor) -> Tensor:
        """float64 components [N, L] -> float32 latents for the decoder."""
        if self.basis is not None and self.mean is not None:
            z = z @ torch.from_numpy(self.basis).double() + torch.from_numpy(self.mean).double()
        return z.float()

    def quantize(self, y: Tensor) -> Tensor:
        """float32 latents [N, L] -> int64 symbols [N, L], not yet clipped to the tables."""
        z = self.to_components(y)
        return torch.round((z - torch.from_numpy(self.offset).double()) / self.step).long()

    def dequantize(self, q: Tensor) -> Tensor:
        """int symbols [N, L] -> float32 latents [N, L]."""
        z = q.double() * self.step + torch.from_numpy(self.offset).double()
        return self.to_latent(z)

    @property
    def latent_dim(self) -> int:
        return len(self.lo)

    def probabilities(self, j: int) -> np.ndarray:
        c = self.counts[j, : self.size[j]].astype(np.float64)
        return c / c.sum()

    def entropy_bits(self, q: np.ndarray) -> float:
        """Ideal code length in bits of symbols ``q`` [N, L] (already clipped) under the tables."""
        total = 0.0
        for j in range(self.latent_dim):
            p = self.probabilities(j)
            total += float(-np.log2(p[q[:, j] - self.lo[j]]).sum())
        return total


def _categorical(p: np.ndarray):
    import constriction

    # perfect=False is constriction's fast, documented approximation; the exact fixed-point
    # tables it derives are part of the format, pinned by a golden-bytes test.
    return constriction.stream.model.Categorical(p, perfect=False)


def encode_symbols(q: np.ndarray, level: Level, coder: str = "range") -> bytes:
    """Entropy-code int symbols ``q`` [N, L] (within the tables' ranges), channel by channel."""
    n, L = q.shape
    assert L == level.latent_dim
    rel = (q - level.lo[None, :]).astype(np.int32)  # [N, L], each column in [0, size_j)
    if coder == "range":
        import constriction

        enc = constriction.stream.queue.RangeEncoder()
        for j in range(L):
            enc.encode(np.ascontiguousarray(rel[:, j]), _categorical(level.probabilities(j)))
        return enc.get_compressed().astype("<u4").tobytes()
    raw = _symbol_bytes(rel, level)
    if coder == "zlib":
        return zlib.compress(raw, 9)
    if coder == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    raise ValueError(f"unknown coder {coder!r}; choose one of {', '.join(_CODER_IDS)}")


_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _symbol_bytes(rel: np.ndarray, level: Level) -> bytes:
    """Channel-major fixed-width bytes: uint8 when every table has <= 256 symbols, else uint16."""
    dtype = "<u1" if int(level.size.max()) <= 256 else "<u2"
    return np.ascontiguousarray(rel.T).astype(dtype).tobytes()


def decode_symbols(payload: bytes, level: Level, n: int, coder: str = "range") -> np.ndarray:
    """Inverse of :func:`encode_symbols` -> int64 [n, L]; malformed payloads raise CodecError."""
    L = level.latent_dim
    rel = np.empty((n, L), dtype=np.int64)
    if coder == "range":
        import constriction

        if len(payload) % 4:
            raise CodecError("corrupt file: range-coded payload is not whole 32-bit words")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        try:
            dec = constriction.stream.queue.RangeDecoder(words)
            for j in range(L):
                rel[:, j] = dec.decode(_categorical(level.probabilities(j)), n)
        except Exception as e:  # noqa: BLE001 - any coder failure means a bad payload
            raise CodecError(f"corrupt file: payload does not decode ({e})") from e
        return rel + level.lo[None, :]
    dtype = np.dtype("<u1" if int(level.size.max()) <= 256 else "<u2")
    want = n * L * dtype.itemsize
    try:
        if coder == "zlib":
            d = zlib.decompressobj()
            raw = d.decompress(payload, want)
            ok = d.eof and not d.unconsumed_tail
        elif coder == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            raw = d.decompress(payload, want)
            ok = d.eof or len(raw) == want
        else:
            raise CodecError(f"corrupt file: unknown coder {coder!r}")
    except (zlib.error, lzma.LZMAError) as e:
        raise CodecError(f"corrupt file: payload does not decode ({e})") from e
    if not ok or len(raw) != want:
        raise CodecError("corrupt file: payload holds the wrong number of symbols")
    rel[:] = np.frombuffer(raw, dtype=dtype).reshape(L, n).T
    if (rel >= level.size[None, :]).any():
        raise CodecError("corrupt file: symbol outside its table")
    return rel + level.lo[None, :]


# ---------------------------------------------------------------------------------------------
# Rate-distortion fine-tuning (quantization-aware): noise for rounding, a learned prior for bits


class LogisticMixturePrior(nn.Module):
    """A density per latent channel (a mixture of ``k`` logistics) used as a differentiable rate.

    ``bits(y, step)`` is ``-log2 P(bin of width step around y)`` summed over channels: the code
    length an ideal entropy coder spends on the quantized latent, which the fine-tune minimizes.
    """

    def __init__(self, latent_dim: int, k: int = 4) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(latent_dim, k))
        self.loc = nn.Parameter(torch.linspace(-1.0, 1.0, k).repeat(latent_dim, 1))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim, k))

    @torch.no_grad()
    def init_from(self, y: Tensor) -> None:
        """Spread the components over each channel's quantiles of ``y`` [N, L]."""
        k = self.loc.shape[1]
        qs = torch.linspace(0.5 / k, 1 - 0.5 / k, k, dtype=y.dtype)
        self.loc.copy_(torch.quantile(y, qs, dim=0).T)
        spread = y.std(0, keepdim=True).T.clamp_min(1e-3) / k  # [L, 1]
        self.log_scale.copy_(spread.log().expand_as(self.log_scale))
        self.logits.zero_()

    def bits(self, y: Tensor, step: float = 1.0) -> Tensor:
        """[B, L] -> [B] bits."""
        y = y.unsqueeze(-1)  # [B, L, 1]
        inv = torch.exp(-self.log_scale)  # [L, K]
        upper = torch.sigmoid((y + 0.5 * step - self.loc) * inv)
        lower = torch.sigmoid((y - 0.5 * step - self.loc) * inv)
        p = (F.softmax(self.logits, dim=-1) * (upper - lower)).sum(-1)  # [B, L]
        return -torch.log2(p.clamp_min(1e-9)).sum(-1)


@dataclass(frozen=True)
class CodecFitConfig:
    """Settings of the rate-distortion fine-tune and of the quality levels fitted after it."""

    lmbda: float = 0.3  # rate weight: loss = distortion + lmbda * bits per pixel
    # "mse", or "psnr": log10 of each image's MSE, i.e. -PSNR/10 averaged over images - the
    # benchmark's score, which weighs every image's dB equally rather than every squared error
    distortion: str = "psnr"
    epochs: int = 10  # fine-tuning passes over the training split
    lr: float = 1e-3  # peak learning rate (cosine decay); the prior uses 10x
    batch_size: int = 32  # small batches: more steps - the rate term needs them to take effect
    mixture: int = 4  # logistic components per latent channel in the training prior
    quant: str = "noise"  # "noise" (additive uniform) or "ste" (straight-through rounding)
    # quality levels: quantizer steps, coarse first, sqrt(2) apart (for the codec preset 2.3 to
    # 0.6 dB and 4 to 10 B/image apart, 17-29 dB in all; docs/codec.md)
    steps: tuple[float, ...] = (8.0, 5.66, 4.0, 2.83, 2.0, 1.41, 1.0, 0.71)
    default_level: int = 5  # the level `convae encode` uses without --quality (step 1.41)
    margin: int = 2  # table symbols beyond the training codes' range, per side
    decorrelate: bool = True  # rotate the latent onto its principal axes before quantizing
    seed: int = 0


Progress = Callable[[dict[str, Any]], None]


def _batches(
    model: AutoEncoder, x_u8: Tensor, fn: Callable[[Tensor], Tensor], batch_size: int
) -> Tensor:
    from .train import to_float

    device = next(model.parameters()).device
    outs = [
        fn(to_float(x_u8[i : i + batch_size], device)).float().cpu()
        for i in range(0, len(x_u8), batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0)


def fit_codec(
    model: AutoEncoder,
    train_x: Tensor,
    cfg: CodecFitConfig | None = None,
    run_config: RunConfig | None = None,
    progress: Progress | None = None,
) -> Codec:
    """Fine-tune a copy of ``model`` for rate-distortion and fit the quality levels' tables.

    The copy is trained for ``cfg.epochs`` on ``MSE(decode(y + u), x) + lmbda * bits(y + u) / pixels``
    with ``u ~ U(-1/2, 1/2)`` (or straight-through rounding), then each level's probability
    tables are histograms of the training split's quantized codes.
    """
    from .train import lr_at, to_float

    cfg = cfg or CodecFitConfig()
    if cfg.quant not in ("noise", "ste"):
        raise ValueError(f"quant must be noise or ste, not {cfg.quant!r}")
    if cfg.distortion not in ("mse", "psnr"):
        raise ValueError(f"distortion must be mse or psnr, not {cfg.distortion!r}")
    if (
        not cfg.steps
        or any(not (s > 0) for s in cfg.steps)
        or not 0 <= cfg.default_level < len(cfg.steps)
        or any(a <= b for a, b in zip(cfg.steps, cfg.steps[1:], strict=False))
    ):
        raise ValueError(
            "steps must be positive and decreasing (level 0 = smallest files), "
            "and default_level one of their indices"
        )
    if len(cfg.steps) > 255:
        raise ValueError("at most 255 quality levels")
    if len(train_x) == 0:
        raise ValueError("no training images to fit the codec on")
    run_config = run_config or getattr(model, "run_config", None) or RunConfig(model=model.config)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = copy.deepcopy(model).float()
        prior = LogisticMixturePrior(net.latent_dim, cfg.mixture).to(device)
    net.eval()
    with torch.inference_mode():
        y0 = _batches(net, train_x, net.encode, 1024)
    prior.init_from(y0.to(device))
    opt = torch.optim.Adam(
        [
            {"params": list(net.parameters()), "lr": cfg.lr},
            {"params": list(prior.parameters()), "lr": 10 * cfg.lr},
        ]
    )
    n = len(train_x)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = steps_per_epoch * cfg.epochs
    sched = TrainConfig(lr=1.0, schedule="cosine", warmup=0.05)  # multiplier of each group's lr
    pixels = math.prod(net.input_shape)
    step = 0
    t0 = time.perf_counter()
    net.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        d_sum = torch.zeros(())
        r_sum = torch.zeros(())
        for i in range(steps_per_epoch):
            x = to_float(train_x[perm[i * batch : (i + 1) * batch]], device)
            mult = lr_at(step, total, sched)
            for grp, base in zip(opt.param_groups, (cfg.lr, 10 * cfg.lr), strict=True):
                grp["lr"] = base * mult
            y = net.encode(x)  # [B, L]
            noisy = y + (torch.rand(y.shape, generator=g) - 0.5).to(device)
            y_dec = noisy if cfg.quant == "noise" else y + (torch.round(y) - y).detach()
            x_hat = net.decode(y_dec)
            err = (x_hat.float() - x).pow(2).flatten(1).mean(1)  # [B] per-image MSE
            # "psnr" weighs each image by 1/MSE: the mean of per-image dB is what the benchmark reports
            d = err.mean() if cfg.distortion == "mse" else torch.log10(err + 1e-6).mean()
            r = prior.bits(noisy).mean()  # bits per image
            loss = d + cfg.lmbda * r / pixels
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            d_sum += d.detach().cpu()
            r_sum += r.detach().cpu()
        row = {
            "event": "epoch",
            "epoch": epoch + 1,
            "epochs": cfg.epochs,
            "distortion": float(d_sum) / steps_per_epoch,
            "bits": float(r_sum) / steps_per_epoch,
            "seconds": time.perf_counter() - t0,
        }
        log.info(
            "codec fine-tune epoch %d/%d: distortion %.5f, %.1f bits/image",
            epoch + 1,
            cfg.epochs,
            row["distortion"],
            row["bits"],
        )
        if progress is not None:
            progress(row)
    net = net.cpu().eval()
    y = _latents(_inference_copy(net), train_x)  # [N, L] float32, exactly as encode() computes it
    mean, basis = _principal_axes(y) if cfg.decorrelate else (None, None)
    z = _rotate(y, mean, basis)  # [N, L] float64
    offset = z.median(dim=0).values.float().numpy()  # centre of each component's rounding grid
    levels = [_fit_level(z, offset, s, cfg.margin, mean, basis) for s in cfg.steps]
    info = {
        "fit": asdict(cfg),
        "train_images": n,
        "seconds": time.perf_counter() - t0,
        "prior": {k: v.detach().cpu().tolist() for k, v in prior.state_dict().items()},
    }
    return Codec(net, levels, cfg.default_level, run_config, info=info)


def _rotate(y: Tensor, mean: np.ndarray | None, basis: np.ndarray | None) -> Tensor:
    z = y.double()
    if basis is not None and mean is not None:
        z = (z - torch.from_numpy(mean).double()) @ torch.from_numpy(basis).double().T
    return z


def _principal_axes(y: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and principal axes (rows, decreasing variance, sign-fixed) of codes ``y`` [N, L].

    Rotating onto them decorrelates the components, so per-component tables code them with
    fewer bits at the same quantization error (an orthonormal rotation keeps latent MSE).
    """
    yd = y.double()
    mean = yd.mean(0)
    _, _, vh = torch.linalg.svd(yd - mean, full_matrices=True)  # [L, L]
    big = vh.abs().argmax(1)
    vh = vh * torch.sign(vh[torch.arange(len(vh)), big]).unsqueeze(1)  # deterministic signs
    return mean.float().numpy(), vh.float().contiguous().numpy()


def _fit_level(z: Tensor, offset: np.ndarray, step: float, margin: int, mean, basis) -> Level:
    step32 = float(np.float32(step))
    offset = offset.astype(np.float32)
    q = torch.round((z - torch.from_numpy(offset).double()) / step32).long().numpy()  # [N, L]
    lo = q.min(0) - margin
    hi = q.max(0) + margin
    size = (hi - lo + 1).astype(np.int32)
    counts = np.zeros((q.shape[1], int(size.max())), dtype=np.int32)
    for j in range(q.shape[1]):
        h = np.bincount(q[:, j] - lo[j], minlength=int(size[j]))
        counts[j, : size[j]] = 2 * h + 1  # add-1/2 smoothing, kept in integers
    return Level(step32, offset, lo.astype(np.int32), size, counts, mean, basis)


# ---------------------------------------------------------------------------------------------
# A run's codec: the fine-tuned model + levels, saved next to the run


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
        self.fingerprint = fingerprint(self.model.state_dict(), self.run_config)
        self.fast = _inference_copy(self.model)  # what encode/decode run: same maths, faster

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


def save_codec(run_dir: str | os.PathLike, codec: Codec) -> Path:
    """Write ``codec.safetensors`` (weights, quantizers, tables) and ``codec.json`` atomically."""
    from safetensors.torch import save as st_save

    p = Path(run_dir)
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in codec.model.state_dict().items()
    }
    first = codec.levels[0]
    if first.basis is not None and first.mean is not None:  # one transform shared by every level
        tensors["transform.mean"] = torch.from_numpy(first.mean.copy())
        tensors["transform.basis"] = torch.from_numpy(first.basis.copy())
    for i, lv in enumerate(codec.levels):
        assert lv.basis is first.basis
        tensors[f"level.{i}.offset"] = torch.from_numpy(lv.offset.copy())
        tensors[f"level.{i}.lo"] = torch.from_numpy(lv.lo.copy())
        tensors[f"level.{i}.size"] = torch.from_numpy(lv.size.copy())
        tensors[f"level.{i}.counts"] = torch.from_numpy(lv.counts.copy())
    meta = {
        "format": "convae-codec",
        "version": "1",
        "steps": json.dumps([lv.step for lv in codec.levels]),
        "default_level": str(codec.default_level),
        "fingerprint": codec.fingerprint.hex(),
    }
    atomic_write(p / CODEC_FILE, st_save(tensors, metadata=meta))
    summary = {
        "fingerprint": codec.fingerprint.hex(),
        "default_level": codec.default_level,
        "levels": [
            {
                "level": i,
                "step": lv.step,
                "tables_hash": lv.hash().hex(),
                "symbols_per_channel": lv.size.tolist(),
            }
            for i, lv in enumerate(codec.levels)
        ],
        **{k: v for k, v in codec.info.items() if k != "prior"},
    }
    write_json(p / CODEC_JSON, summary)
    codec.run_dir = p
    return p / CODEC_FILE


def load_codec(
    run_dir: str | os.PathLike,
    fit_if_missing: bool = True,
    cfg: CodecFitConfig | None = None,
    progress: Progress | None = None,
) -> Codec:
    """The codec of a run directory; fitted once (and saved) when ``codec.safetensors`` is missing."""
    from safetensors import SafetensorError, safe_open

    from .checkpoint import read_json

    p = check_run_dir(run_dir)
    path = p / CODEC_FILE
    if not path.is_file():
        if not fit_if_missing:
            raise FileNotFoundError(
                f"{p}: no {CODEC_FILE}; run `convae encode {p} ...` once to fit it"
            )
        return _fit_and_save(p, cfg, progress)
    run_config = RunConfig.from_dict(read_json(p / "config.json"))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path}: corrupt codec file ({e}); delete it and run `convae encode` to refit"
        ) from e
    if meta.get("format") != "convae-codec":
        raise ValueError(f"{path}: not a convae codec file")
    model = build_model(run_config.model)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: codec weights do not match {p / 'config.json'} ({e})") from e
    steps = json.loads(meta["steps"])
    mean = tensors["transform.mean"].numpy() if "transform.mean" in tensors else None
    basis = tensors["transform.basis"].numpy() if "transform.basis" in tensors else None
    levels = [
        Level(
            step=float(np.float32(s)),
            offset=tensors[f"level.{i}.offset"].numpy(),
            lo=tensors[f"level.{i}.lo"].numpy(),
            size=tensors[f"level.{i}.size"].numpy(),
            counts=tensors[f"level.{i}.counts"].numpy(),
            mean=mean,
            basis=basis,
        )
        for i, s in enumerate(steps)
    ]
    info = read_json(p / CODEC_JSON) if (p / CODEC_JSON).is_file() else {}
    return Codec(model, levels, int(meta.get("default_level", 0)), run_config, run_dir=p, info=info)


def _fit_and_save(p: Path, cfg: CodecFitConfig | None, progress: Progress | None) -> Codec:
    from .data import load_split
    from .train import load

    model = load(p, "cpu")
    train_x, _ = load_split(model.run_config.data, "train")
    log.info(
        "fitting the codec of %s once (rate-distortion fine-tune on %d images)", p, len(train_x)
    )
    codec = fit_codec(model, train_x, cfg, run_config=model.run_config, progress=progress)
    save_codec(p, codec)
    return codec


# ---------------------------------------------------------------------------------------------
# Images <-> .cae bytes

_BATCH = 1024  # fixed chunking: the same file always decodes through the same batch shapes


def _inference_copy(model: AutoEncoder) -> AutoEncoder:
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
def _latents(fast: AutoEncoder, x_u8: Tensor) -> Tensor:
    return _batches(
        fast, x_u8, lambda x: fast.encode(x.contiguous(memory_format=torch.channels_last)), _BATCH
    )


def quantize(codec: Codec, x_u8: Tensor, level: int | None = None) -> tuple[np.ndarray, int]:
    """Images -> (int symbols [N, L] clipped to the level's tables, number of values clipped)."""
    lv = codec.level(level)
    _check_geometry(codec, tuple(x_u8.shape[1:]))
    q = lv.quantize(_latents(codec.fast, x_u8))
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
    x_u8: Tensor,
    level: int | None = None,
    names: Sequence[str] | None = None,
    coder: str = "range",
    run_hint: str | None = None,
) -> bytes:
    """uint8 images [N, C, H, W] -> .cae bytes (deterministic: same input, same bytes)."""
    if x_u8.dtype != torch.uint8 or x_u8.ndim != 4:
        raise ValueError("encode takes uint8 images shaped [N, C, H, W]")
    if len(x_u8) == 0:
        raise ValueError("no images to encode")
    i = codec.default_level if level is None else level
    lv = codec.level(i)
    q, clipped = quantize(codec, x_u8, i)
    if clipped:
        log.warning(
            "%d of %d latent values fell outside the codec's tables and were clipped "
            "(images unlike the training data)",
            clipped,
            q.size,
        )
    c, h, w = codec.input_shape
    header = Header(
        fingerprint=codec.fingerprint,
        tables_hash=lv.hash(),
        channels=c,
        height=h,
        width=w,
        latent_dim=lv.latent_dim,
        count=len(x_u8),
        level=i,
        step=lv.step,
        coder=coder,
        names=tuple(names) if names is not None else None,
        run=run_hint,
    )
    return pack(header, encode_symbols(q, lv, coder))


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
    if header.tables_hash != lv.hash() or header.latent_dim != lv.latent_dim:
        raise CodecError(
            f"the file's quantizer/probability tables ({header.tables_hash.hex()}) differ from "
            f"the run's codec ({lv.hash().hex()}): was the codec refitted after encoding?"
        )
    return lv


def decode(codec: Codec, data: bytes) -> tuple[Tensor, tuple[str, ...] | None]:
    """.cae bytes -> (uint8 images [N, C, H, W], names or None). Everything is checked first."""
    header, payload = unpack(data)
    lv = check_header(codec, header)
    q = decode_symbols(payload, lv, header.count, header.coder)
    return dequantize(codec, q, header.level), header.names


# ---------------------------------------------------------------------------------------------
# Rate-distortion benchmark: convae levels and Pillow's PNG / WebP / JPEG, measured the same way


def _quality(x_u8: Tensor, y_u8: Tensor, ssim: bool) -> dict[str, float]:
    from .metrics import psnr_per_image, ssim_per_image

    x, y = x_u8.float() / 255.0, y_u8.float() / 255.0
    out = {"psnr": float(psnr_per_image(x, y).mean())}
    if ssim:
        out["ssim"] = float(ssim_per_image(x, y).mean())
    return out


def _row(
    method: str,
    setting: str,
    n_bytes: int,
    n: int,
    pixels: int,
    t_enc: float,
    t_dec: float,
    q: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "method": method,
        "setting": setting,
        "bytes_per_image": n_bytes / n,
        "bpp": 8.0 * n_bytes / (n * pixels),
        "encode_per_s": n / t_enc,
        "decode_per_s": n / t_dec,
        "codec_per_s": n / (t_enc + t_dec),
        **q,
        **extra,
    }


def codec_rd(
    codec: Codec,
    x_u8: Tensor,
    levels: Sequence[int] | None = None,
    repeats: int = 3,
    ssim: bool = True,
    name: str = "convae",
) -> list[dict[str, Any]]:
    """One row per quality level: bytes/image of one .cae file holding all of ``x_u8``, bpp, PSNR,
    SSIM, encode and decode images/s (best of ``repeats``; timed from uint8 pixels to bytes and back),
    plus the payload size with zlib and lzma on the same symbols and the tables' ideal entropy.
    """
    n, pixels = len(x_u8), math.prod(x_u8.shape[1:])
    rows = []
    for i in levels if levels is not None else range(len(codec.levels)):
        lv = codec.level(i)
        t_enc = t_dec = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            data = encode(codec, x_u8, i)
            t_enc = min(t_enc, time.perf_counter() - t)
            t = time.perf_counter()
            y, _ = decode(codec, data)
            t_dec = min(t_dec, time.perf_counter() - t)
        q, clipped = quantize(codec, x_u8, i)
        overhead_bytes = len(data) - len(unpack(data)[1])  # header + CRC
        payload = {c: len(encode_symbols(q, lv, c)) for c in ("range", "zlib", "lzma")}
        rows.append(
            _row(
                name,
                f"level {i} (step {lv.step:g})",
                len(data),
                n,
                pixels,
                t_enc,
                t_dec,
                _quality(x_u8, y, ssim),
                level=i,
                step=lv.step,
                file_bytes=len(data),
                overhead_bytes=overhead_bytes,
                payload_range=payload["range"],
                payload_zlib=payload["zlib"],
                payload_lzma=payload["lzma"],
                entropy_bytes=lv.entropy_bits(q) / 8,
                clipped=clipped,
                single_image_file_bytes=len(encode(codec, x_u8[:1], i)),
            )
        )
    return rows


def _pillow_codec(fmt: str, channels: int, **kw: Any):
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"

    def enc(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **kw)
        return buf.getvalue()

    def dec(b: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im.convert(mode))  # WebP has no grey mode: it decodes to RGB

    return enc, dec


BASELINES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("png", "lossless", "PNG", {"optimize": True}),
    ("webp", "lossless", "WEBP", {"lossless": True, "quality": 100, "method": 6}),
    *[("webp", f"q{q}", "WEBP", {"quality": q}) for q in (0, 5, 10, 20, 40, 60, 80)],
    *[("jpeg", f"q{q}", "JPEG", {"quality": q}) for q in (5, 10, 30, 50, 70, 90)],
]


def baseline_rd(
    x_u8: Tensor,
    specs: Sequence[tuple[str, str, str, dict[str, Any]]] = BASELINES,
    ssim: bool = True,
) -> list[dict[str, Any]]:
    """PNG/WebP/JPEG through Pillow, one file per image (that is how those formats store images)."""
    n, pixels = len(x_u8), math.prod(x_u8.shape[1:])
    arrs = [a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0) for a in x_u8.numpy()]
    rows = []
    for method, setting, fmt, kw in specs:
        enc, dec = _pillow_codec(fmt, x_u8.shape[1], **kw)
        t = time.perf_counter()
        blobs = [enc(a) for a in arrs]
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        outs = [dec(b) for b in blobs]
        t_dec = time.perf_counter() - t
        y = torch.from_numpy(np.stack(outs))
        y = y[:, None] if y.ndim == 3 else y.permute(0, 3, 1, 2)
        rows.append(
            _row(
                method,
                setting,
                sum(len(b) for b in blobs),
                n,
                pixels,
                t_enc,
                t_dec,
                _quality(x_u8, y, ssim),
            )
        )
    return rows


def bytes_at_psnr(rows: Sequence[dict[str, Any]], psnr: float) -> float | None:
    """Bytes/image a rate-distortion curve needs for ``psnr``: log-linear interpolation between the
    points of its Pareto front (no point has both more PSNR and fewer bytes); None outside the
    measured range - no extrapolation."""
    pts = sorted((r["psnr"], r["bytes_per_image"]) for r in rows)
    pts = [(p, b) for p, b in pts if not any(p2 >= p and b2 < b for p2, b2 in pts)]
    for (p0, b0), (p1, b1) in zip(pts, pts[1:], strict=False):
        if p0 <= psnr <= p1:
            if p1 == p0:
                return min(b0, b1)
            t = (psnr - p0) / (p1 - p0)
            return float(math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))))
    if pts and any(p == psnr for p, _ in pts):
        return min(b for p, b in pts if p == psnr)
    return None


def rd_figure(rows: Sequence[dict[str, Any]], title: str = "Rate-distortion on test images"):
    """PSNR against bytes per image, one line per method (log-scaled bytes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["psnr"] < 99:  # lossless rows sit at the 100 dB cap; listed in the table instead
            methods.setdefault(r["method"], []).append(r)
    for m, rs in methods.items():
        rs = sorted(rs, key=lambda r: r["bytes_per_image"])
        ax.plot([r["bytes_per_image"] for r in rs], [r["psnr"] for r in rs], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return fig


def rd_markdown(res: dict[str, Any]) -> str:
    """The benchmark's tables as Markdown: every method, convae vs WebP at equal PSNR, coders."""
    has_ssim = all("ssim" in r for r in res["rows"])
    lines = [
        f"{res['images']} images of {res['data']} ({res['split']}), torch threads {res['threads']}",
        "",
        "| method | setting | bytes/image | bpp | PSNR dB | "
        + ("SSIM | " if has_ssim else "")
        + "encode/s | decode/s | enc+dec/s |",
        "|---|---|---:|---:|---:|" + ("---:|" if has_ssim else "") + "---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['bytes_per_image']:.1f} | {r['bpp']:.3f} | "
            f"{r['psnr']:.2f} | "
            + (f"{r['ssim']:.4f} | " if has_ssim else "")
            + f"{r['encode_per_s']:,.0f} | {r['decode_per_s']:,.0f} | {r['codec_per_s']:,.0f} |"
        )
    lines += [
        "",
        "convae at the PSNR of each WebP setting (interpolated on convae's Pareto front):",
        "",
        "| WebP | PSNR dB | WebP bytes | convae bytes | convae / WebP |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in res["equal_psnr_vs_webp"]:
        cb = "out of range" if c["convae_bytes"] is None else f"{c['convae_bytes']:.1f}"
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append(f"| {c['webp']} | {c['psnr']:.2f} | {c['webp_bytes']:.1f} | {cb} | {ratio} |")
    lines += [
        "",
        "Payload coders on the same symbols (bytes per file; ideal = the tables' entropy):",
        "",
        "| method | setting | range | zlib | lzma | ideal | header+CRC |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        if "payload_range" in r:
            lines.append(
                f"| {r['method']} | {r['setting']} | {r['payload_range']:,} | {r['payload_zlib']:,} | "
                f"{r['payload_lzma']:,} | {r['entropy_bytes']:,.0f} | {r['overhead_bytes']} |"
            )
    return "\n".join(lines) + "\n"
