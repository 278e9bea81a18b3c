"""Integer probability tables (16-bit frequencies) for the photo codec's range coder.

Every table codes the integers ``offset .. offset + size - 1`` plus one escape symbol (index
``size``) for values outside that range, which are then coded separately. Frequencies are integers
>= 1 summing to ``2**PRECISION``; they are computed once from the model (float64) and stored next
to it (``RUN/codec.safetensors``), so the encoder and the decoder read the very same integers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import erfc, ndtri

from ..models.density import SCALE_MIN, FactorizedDensity

__all__ = ["CdfTables", "quantize_pmf", "gaussian_tables", "factorized_tables", "scale_table"]

PRECISION = 16
TAIL_MASS = 1e-9  # probability left outside each table's range, coded through the escape
SCALE_LEVELS = 64  # Gaussian scales in the table, log-spaced from SCALE_MIN to SCALE_MAX
SCALE_MAX = 256.0


@dataclass(frozen=True)
class CdfTables:
    """A stack of T integer tables."""

    freqs: np.ndarray  # int32 [T, width]: row t holds size[t] + 1 frequencies, then zeros
    sizes: np.ndarray  # int32 [T]: in-range symbols of table t (the escape excluded)
    offsets: np.ndarray  # int32 [T]: the integer value of symbol 0

    def probabilities(self, t: int) -> np.ndarray:
        """float64 [size + 1]: table t's frequencies / 2^PRECISION (exact in float64)."""
        return self.freqs[t, : self.sizes[t] + 1].astype(np.float64) / float(1 << PRECISION)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            prefix + k: torch.from_numpy(getattr(self, k).astype(np.int32).copy())
            for k in ("freqs", "sizes", "offsets")
        }

    @classmethod
    def from_tensors(cls, state: dict[str, torch.Tensor], prefix: str) -> CdfTables:
        """The tables under ``prefix``; ValueError when they are missing or malformed."""
        try:
            arrays = [state[prefix + k] for k in ("freqs", "sizes", "offsets")]
        except KeyError as e:
            raise ValueError(f"{e.args[0]} is missing") from None
        freqs, sizes, offsets = (a.numpy().astype(np.int32) for a in arrays)
        t = freqs.shape[0] if freqs.ndim == 2 else -1
        if t < 1 or sizes.shape != (t,) or offsets.shape != (t,):
            raise ValueError(f"{prefix}* tables have inconsistent shapes")
        if (sizes < 1).any() or (sizes + 1 > freqs.shape[1]).any():
            raise ValueError(f"{prefix}sizes do not fit the frequency rows")
        for i in range(t):
            row = freqs[i, : sizes[i] + 1].astype(np.int64)
            if (row < 1).any() or row.sum() != 1 << PRECISION:
                raise ValueError(f"{prefix}freqs row {i} is not positive with sum 2^{PRECISION}")
        return cls(freqs, sizes, offsets)

    def digest(self) -> bytes:
        """SHA-256 over the three arrays (shapes, then little-endian int32 bytes)."""
        h = hashlib.sha256()
        for a in (self.freqs, self.sizes, self.offsets):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a, dtype="<i4").tobytes())
        return h.digest()


def scale_table() -> np.ndarray:
    """Log-spaced Gaussian scales; each element codes with the table of the next scale up."""
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


def quantize_pmf(pmf: np.ndarray) -> np.ndarray:
    """float64 masses [n] -> int32 frequencies [n + 1] (last: escape), each >= 1, sum 2^PRECISION."""
    total = 1 << PRECISION
    p = np.append(pmf, max(1.0 - pmf.sum(), 0.0))
    n = p.size
    if n >= total // 2:
        raise ValueError(f"a table of {n} symbols does not fit {PRECISION}-bit frequencies")
    freq = np.floor(p / p.sum() * (total - n)).astype(np.int64) + 1
    freq[np.argmax(freq)] += total - freq.sum()
    return freq.astype(np.int32)


def _stack(pmfs: list[np.ndarray], offsets: list[int]) -> CdfTables:
    width = max(p.size for p in pmfs) + 1
    freqs = np.zeros((len(pmfs), width), np.int32)
    for t, p in enumerate(pmfs):
        freqs[t, : p.size + 1] = quantize_pmf(p)
    sizes = np.array([p.size for p in pmfs], np.int32)
    return CdfTables(freqs, sizes, np.array(offsets, np.int32))


def gaussian_tables(scales: np.ndarray) -> CdfTables:
    """One zero-mean table per scale, over +-ceil(scale * q) with q the TAIL_MASS quantile."""
    q = -ndtri(TAIL_MASS / 2)
    pmfs, offsets = [], []
    for s in scales:
        k = int(math.ceil(s * q))
        a = np.abs(np.arange(-k, k + 1, dtype=np.float64))
        # mass of [v - 1/2, v + 1/2] from the upper tail of |v|: accurate far from the mean
        pmfs.append(
            0.5 * (erfc((a - 0.5) / (s * math.sqrt(2))) - erfc((a + 0.5) / (s * math.sqrt(2))))
        )
        offsets.append(-k)
    return _stack(pmfs, offsets)


def factorized_tables(density: FactorizedDensity) -> CdfTables:
    """One table per channel of a factorized density (evaluated in float64), over its TAIL_MASS
    quantile range."""
    lo, hi = density.quantiles(TAIL_MASS)
    pmfs, offsets = [], []
    for c in range(density.channels):
        a, b = int(math.floor(lo[c])), int(math.ceil(hi[c]))
        if b - a > 4096:
            raise ValueError(f"hyper-latent channel {c} spans {b - a} values: the model diverged?")
        pmfs.append(density.pmf(c, a, b))
        offsets.append(a)
    return _stack(pmfs, offsets)
