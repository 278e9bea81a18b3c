"""Entropy coding of integer symbols with per-channel categorical tables.

A :class:`Level` holds one quality level's transform, quantizer and probability tables;
:func:`encode_symbols` / :func:`decode_symbols` turn its symbols into a payload and back with the
range coder (or zlib / lzma, for comparison).
"""

from __future__ import annotations

import hashlib
import lzma
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .format import CODER_IDS, CodecError


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
        return rotate(y, self.mean, self.basis)

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

    def min_bits(self) -> float:
        """A lower bound on the bits the range coder spends on one image: every component's most
        probable symbol, its probability raised by the coder's fixed-point rounding (24 bits)."""
        p_max = np.array([self.probabilities(j).max() for j in range(self.latent_dim)])
        p_max = np.minimum(1.0, p_max + self.size.astype(np.float64) * 2.0**-23)
        return float(-np.log2(p_max).sum())

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
    raise ValueError(f"unknown coder {coder!r}; choose one of {', '.join(CODER_IDS)}")


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
        q = rel + level.lo[None, :]
        # The range decoder reads zeros past the payload's end instead of failing, so a count or
        # payload changed after encoding would still decode. Files are the encoder's exact output:
        # encoding the symbols again must give the payload back, byte for byte.
        if encode_symbols(q, level, "range") != payload:
            raise CodecError(
                f"corrupt file: the payload does not hold exactly {n} x {L} symbols "
                "(a changed image count or payload)"
            )
        return q
    dtype = np.dtype("<u1" if int(level.size.max()) <= 256 else "<u2")
    want = n * L * dtype.itemsize
    try:
        # At most `want` bytes out; then the stream must end exactly there (one more byte out, or
        # bytes after its end, mean a payload that does not hold exactly n x L symbols).
        if coder == "zlib":
            d = zlib.decompressobj()
            raw = d.decompress(payload, want)
            more = b"" if d.eof else d.decompress(d.unconsumed_tail, 1)
            ok = d.eof and not more and not d.unused_data
        elif coder == "lzma":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
            raw = d.decompress(payload, want)
            more = b"" if d.eof or d.needs_input else d.decompress(b"", 1)
            ok = d.eof and not more and not d.unused_data
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


def rotate(y: Tensor, mean: np.ndarray | None, basis: np.ndarray | None) -> Tensor:
    z = y.double()
    if basis is not None and mean is not None:
        z = (z - torch.from_numpy(mean).double()) @ torch.from_numpy(basis).double().T
    return z
