"""Range coding of integer symbols with integer tables (constriction), escapes and a check word.

Symbols that share a table are coded together, in raster order, one table after another (ascending
table index): the decoder knows every element's table before it decodes, so it rebuilds the same
order, and constriction builds each table's model once instead of per symbol.
"""

from __future__ import annotations

import zlib

import constriction
import numpy as np

from .format import CodecError
from .tables import CdfTables

__all__ = ["TableModels", "encode_symbols", "decode_symbols", "check_word", "Encoder", "Decoder"]

_model = constriction.stream.model
CHECK_BITS = 16  # end-of-stream check word: a damaged or foreign payload fails with p = 1 - 2^-16
_MAX_ESCAPE_BITS = 32


class TableModels:
    """constriction models of a CdfTables stack, built on first use and kept."""

    def __init__(self, tables: CdfTables):
        self.tables = tables
        self._cache: dict[int, object] = {}

    def __getitem__(self, t: int):
        if t not in self._cache:
            self._cache[t] = _model.Categorical(self.tables.probabilities(t), perfect=False)
        return self._cache[t]


def encode_symbols(enc, values: np.ndarray, table: np.ndarray, models: TableModels) -> None:
    """Code int values [n] with per-element table indices [n]; out-of-range values escape."""
    tabs = models.tables
    escaped = []
    for t in np.unique(table):
        v = values[table == t]
        s = v - tabs.offsets[t]
        out = (s < 0) | (s >= tabs.sizes[t])
        s[out] = tabs.sizes[t]
        enc.encode(s.astype(np.int32), models[int(t)])
        escaped.append(v[out])
    _encode_escapes(enc, np.concatenate(escaped) if escaped else np.zeros(0, np.int64))


def decode_symbols(dec, table: np.ndarray, models: TableModels) -> np.ndarray:
    """Inverse of encode_symbols: int64 values [n] for the per-element table indices [n]."""
    tabs = models.tables
    values = np.empty(table.size, np.int64)
    escape_at = []
    for t in np.unique(table):
        where = np.flatnonzero(table == t)
        s = dec.decode(models[int(t)], where.size).astype(np.int64)
        values[where] = s + tabs.offsets[t]
        escape_at.append(where[s == tabs.sizes[t]])
    at = np.concatenate(escape_at) if escape_at else np.zeros(0, np.int64)
    values[at] = _decode_escapes(dec, at.size)
    return values


def _encode_escapes(enc, v: np.ndarray) -> None:
    """Each value as zigzag u: its bit length (uniform), then the bits below the leading one."""
    for x in v.tolist():
        u = 2 * x if x >= 0 else -2 * x - 1
        n = u.bit_length()
        if n > _MAX_ESCAPE_BITS:
            raise ValueError(f"latent value {x} is out of the codable range (the model diverged?)")
        enc.encode(n, _model.Uniform(_MAX_ESCAPE_BITS + 1))
        for shift, width in _chunks(n - 1):
            enc.encode((u >> shift) & ((1 << width) - 1), _model.Uniform(1 << width))


def _decode_escapes(dec, count: int) -> np.ndarray:
    out = np.empty(count, np.int64)
    for i in range(count):
        n = int(dec.decode(_model.Uniform(_MAX_ESCAPE_BITS + 1)))
        u = 1 << (n - 1) if n else 0
        for shift, width in _chunks(n - 1):
            u |= int(dec.decode(_model.Uniform(1 << width))) << shift
        out[i] = u // 2 if u % 2 == 0 else -(u + 1) // 2
    return out


def _chunks(bits: int) -> list[tuple[int, int]]:
    """(shift, width) pieces of at most 16 bits covering the low ``bits`` bits."""
    return [(s, min(16, bits - s)) for s in range(0, max(bits, 0), 16)]


def check_word(*arrays: np.ndarray) -> int:
    """CHECK_BITS of a CRC-32 over the decoded symbols: ties the check to the content."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a, dtype="<i8").tobytes(), crc)
    return crc & ((1 << CHECK_BITS) - 1)


def Encoder():  # noqa: N802 - a constructor
    """A new range encoder (constriction's queue coder: 32-bit words, 64-bit state)."""
    return constriction.stream.queue.RangeEncoder()


def finish(enc, check: int) -> bytes:
    """Append the check word; the payload is the big-endian words with trailing zero bytes cut."""
    enc.encode(check, _model.Uniform(1 << CHECK_BITS))
    return enc.get_compressed().astype(">u4").tobytes().rstrip(b"\0")


def Decoder(payload: bytes):  # noqa: N802 - a constructor
    """A range decoder over a payload made by :func:`finish` (its cut zero bytes restored)."""
    pad = (-len(payload)) % 4
    words = np.frombuffer(payload + b"\0" * pad, dtype=">u4").astype(np.uint32)
    return constriction.stream.queue.RangeDecoder(words)


def verify(dec, check: int) -> None:
    """CodecError unless the check word matches and no coded data is left over."""
    try:
        got = int(dec.decode(_model.Uniform(1 << CHECK_BITS)))
    except Exception as e:  # constriction raises on data it cannot decode
        raise CodecError(f"corrupt file: the payload does not decode ({e})") from None
    if got != check or not dec.maybe_exhausted():
        raise CodecError("corrupt file: the payload's check failed (damaged or cut)")
