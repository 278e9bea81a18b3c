"""Sizes checked against memory before anything is allocated: one clear line instead of an
allocator's traceback (or a machine brought to a halt) for a size that cannot fit.

The limit is the memory this process can still get (:func:`available_memory`). A user who knows
better overrides it with ``CONVAE_MEMORY_LIMIT`` (``64G``, ``1.5e9``, or ``off``) or, in code,
``with memory_limit("64G"): ...``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import resource
from collections.abc import Iterator

__all__ = [
    "available_memory",
    "check_fits",
    "human_bytes",
    "memory_limit",
    "parse_size",
    "MemoryLimitError",
    "OVERRIDE_HINT",
]

# What every refusal tells the user to do when they know the estimate is wrong for their machine.
OVERRIDE_HINT = "set CONVAE_MEMORY_LIMIT (e.g. 64G, or off) to override"
_UNLIMITED = 1 << 62
_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# A limit set by memory_limit() for the current context; None = the environment's.
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("convae_memory", default=None)


class MemoryLimitError(ValueError):
    """A size whose estimated memory exceeds what this machine can give."""


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def parse_size(text: str | int, what: str = "a memory limit") -> int:
    """``"64G"`` / ``"512M"`` / ``"1.5e9"`` / ``4096`` -> bytes; ``"off"`` -> no limit.

    Suffixes K, M, G, T are powers of 1024 (an optional trailing ``B`` or ``iB`` is allowed)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{what} must be >= 0 bytes, not {text}")
        return text
    s = str(text).strip().lower()
    if s in ("off", "none", "unlimited"):
        return _UNLIMITED
    num = s.removesuffix("ib").removesuffix("b")
    unit = num[-1:] if num[-1:] in _SUFFIXES else ""
    try:
        value = float(num[: len(num) - len(unit)]) * _SUFFIXES[unit]
    except ValueError:
        value = math.nan
    if not (0 <= value < math.inf):
        raise ValueError(f"{what} {text!r} is not a size such as 64G, 512M, 1.5e9 or off")
    return min(int(value), _UNLIMITED)


@contextlib.contextmanager
def memory_limit(limit: str | int | None) -> Iterator[None]:
    """Use ``limit`` (bytes, ``"64G"``, ``"off"``; None = unchanged) instead of the machine's
    available memory for the checks inside the block (the library form of the override)."""
    if limit is None:
        yield
        return
    token = _LIMIT.set(parse_size(limit))
    try:
        yield
    finally:
        _LIMIT.reset(token)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    """The cgroup v2 memory limit minus what the group uses (None when unlimited or unknown)."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        return max(0, int(raw) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes this process can still allocate: the smallest of the free memory, the cgroup's
    limit and the address-space limit (``ulimit -v``). :func:`memory_limit`, then
    ``CONVAE_MEMORY_LIMIT``, override it (``off``: no limit)."""
    forced = _LIMIT.get()
    if forced is not None:
        return forced
    env = os.environ.get("CONVAE_MEMORY_LIMIT")
    if env:
        return parse_size(env, "CONVAE_MEMORY_LIMIT")
    limits = [x for x in (_meminfo_available(), _cgroup_limit()) if x is not None]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else _UNLIMITED


def check_fits(need: int, what: str, override: str | None = OVERRIDE_HINT) -> None:
    """Raise :class:`MemoryLimitError` when ``need`` bytes exceed :func:`available_memory`.

    ``what`` names the size in the message (``"a convae model of width 100000"``); ``override``
    says how to skip the check."""
    limit = available_memory()
    if need <= limit:
        return
    hint = f"; {override}" if override else ""
    raise MemoryLimitError(
        f"{what} needs about {human_bytes(need)}, more than the {human_bytes(limit)} of memory "
        f"available{hint}"
    )
