"""Where and how the arithmetic runs: device, autocast precision, CPU threads. Resolved once by the
caller (the CLI, or :func:`convae.train`); library functions take the device from the model."""

from __future__ import annotations

import contextlib
import functools
import os
import time

import torch

__all__ = [
    "resolve_device",
    "resolve_precision",
    "autocast",
    "bf16_is_fast",
    "auto_threads",
    "channels_last_default",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or mps, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda requested but no CUDA GPU is available; use --device auto or cpu"
        )
    if name == "mps" and not _mps_available():
        raise ValueError(
            "--device mps requested but MPS is not available; use --device auto or cpu"
        )
    return torch.device(name)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_precision(
    precision: str, device: torch.device, cpu_bf16: bool = True
) -> torch.dtype | None:
    """The autocast dtype (None = fp32).

    ``auto`` picks bf16 where it measured faster: CUDA, and a CPU with fast bf16 unless
    ``cpu_bf16`` is False (an architecture whose step measured faster in fp32 there; its
    :class:`~convae.config.Recipe` says so).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16 and bf16_is_fast(device):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 GEMMs are fast here: CUDA, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def channels_last_default(device: torch.device) -> bool:
    """Channels-last memory measured faster for every registered architecture on CPU (oneDNN) and
    CUDA; MPS is untested, so it stays contiguous there."""
    return device.type in ("cpu", "cuda")


def _other_runnable_tasks(samples: int = 5, gap: float = 0.01) -> int | None:
    """Runnable tasks on the machine besides this process (Linux ``/proc/loadavg``), median of a few
    snapshots; None where that file does not exist."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(running - 1)  # the reading process is itself runnable
        if i + 1 < samples:
            time.sleep(gap)
    return sorted(counts)[len(counts) // 2]


# torch's own choice, read before anything here lowers it: a second auto_threads() in the same
# process (a notebook, the CLI's main() called twice) starts again from the machine's cores.
_TORCH_THREADS = torch.get_num_threads()


def auto_threads(default: int | None = None, busy: int | None = None) -> int:
    """CPU threads for torch that do not oversubscribe a busy machine.

    torch's default is one OpenMP thread per core, and its threads wait for each other in every
    operation: when another process holds one of the cores, the descheduled thread stalls the rest.
    On the 2-core CPU beside one other training process an epoch took 2.8x longer with 2 threads
    than with 1 (``benchmarks/threads.py``, docs/benchmarks.md). So: ``default`` (torch's) minus
    ``busy``, the other runnable tasks (read from ``/proc/loadavg`` when not given), at least 1.
    An explicit ``OMP_NUM_THREADS`` (torchrun sets it to 1 per process) is respected.
    """
    n = default if default is not None else _TORCH_THREADS
    if os.environ.get("OMP_NUM_THREADS"):
        return n
    if busy is None:
        busy = _other_runnable_tasks()
    if busy is None:  # not Linux: nothing to go by
        return n
    return max(1, min(n, (os.cpu_count() or n) - busy))
