"""Sizes checked against memory before anything is allocated: one clear line instead of an
allocator's traceback (or a machine brought to a halt) for a size that cannot fit."""

from __future__ import annotations

import os
import resource

__all__ = ["available_memory", "check_fits", "human_bytes", "MemoryLimitError"]


class MemoryLimitError(ValueError):
    """A size whose estimated memory exceeds what this machine can give."""


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


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
    limit and the address-space limit (``ulimit -v``); ``CONVAE_MEMORY_LIMIT`` (bytes) overrides."""
    env = os.environ.get("CONVAE_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise ValueError(f"CONVAE_MEMORY_LIMIT={env!r} is not a number of bytes") from None
    limits = [x for x in (_meminfo_available(), _cgroup_limit()) if x is not None]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else 1 << 62


def check_fits(need: int, what: str, override: str | None = None) -> None:
    """Raise :class:`MemoryLimitError` when ``need`` bytes exceed :func:`available_memory`.

    ``what`` names the size in the message; ``override`` the flag that skips the check."""
    limit = available_memory()
    if need <= limit:
        return
    hint = f"; {override} skips this check" if override else ""
    raise MemoryLimitError(
        f"{what} needs about {human_bytes(need)}, more than the {human_bytes(limit)} of memory "
        f"available{hint}"
    )
