"""Several processes, one training: the process group, this process's place in it, and the few
collective steps the trainer needs. Usable without the CLI::

    from convae import distributed, train
    with distributed.process_group("auto") as device:   # under torchrun; a no-op otherwise
        train(cfg, "runs/ddp", device=device)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from .runtime import resolve_device

__all__ = [
    "world",
    "requested_world",
    "process_group",
    "average_buffers",
    "all_sum",
    "broadcast_object",
    "barrier",
]


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def requested_world() -> int:
    """Processes of the job: the running group's size, else torchrun's ``WORLD_SIZE`` (1 if unset)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _start(device: str) -> torch.device:
    """Join torchrun's process group: nccl on CUDA (one GPU per local rank), gloo on CPU."""
    if resolve_device(device).type == "mps" and device != "auto":
        raise ValueError("distributed training runs on cuda or cpu, not mps; pass --device cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local >= gpus:
            raise ValueError(
                f"process {local} of this node has no GPU ({gpus} found); start at most "
                f"--nproc_per_node={gpus} processes per node, or pass --device cpu"
            )
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():  # else: the caller's own group (a DDP script calling us)
        dist.init_process_group(backend)
    return dev


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[torch.device | str]:
    """Under torchrun (``WORLD_SIZE`` > 1) start the process group for the block and yield this
    process's device; a group started here is also ended here. Outside torchrun it yields
    ``device`` unchanged and starts nothing."""
    if requested_world() <= 1:
        yield device
        return
    owned = not dist.is_initialized()
    dev = _start(device)
    try:
        yield dev
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating buffers (BatchNorm running mean/var) over ranks, in place; a sync point."""
    _, n = world()
    if n == 1:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(n)
        else:  # num_batches_tracked: already equal, every rank took the same number of steps
            dist.broadcast(b, src=0)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over ranks (``t`` itself outside a group), in place."""
    if world()[1] > 1:
        dist.all_reduce(t)
    return t


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a group)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing outside a group)."""
    if world()[1] > 1:
        dist.barrier()
