"""Runs `convae train` jobs under torchrun with a window into every rank (for tests/test_ddp.py).

    torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py JOBS.json

JOBS.json is a list of ``{"argv": [...], "dump": DIR or null, "stop_after": K or 0, "expect": CODE}``.
Every job is an ordinary ``convae.cli.main(argv)`` call; they share one process group, which the
worker starts itself (``main`` then uses it and leaves it open), because a gloo group cannot be
reliably started twice in one process - and one launch for several jobs saves start-up time.

Around :func:`convae.training.fit` the worker adds two things:

* ``dump``: after training, every rank writes its final ``state_dict`` (weights *and* BatchNorm
  buffers) to ``DIR/rank{R}.safetensors`` and the history it saw (the losses its decisions were
  taken on) to ``DIR/rank{R}.history.json``, so the test can check that all ranks agree.
* ``stop_after``: every rank raises :class:`Interrupted` after epoch K's checkpoint is written -
  a crash that the next job recovers from with ``--resume``.

The worker exits 0 when every job's exit code is its ``expect`` (0 unless given; 3 = interrupted).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from convae.cli import main

convae_train = importlib.import_module("convae.training")
_real_fit = convae_train.fit
_job: dict = {}


class Interrupted(Exception):
    """Raised on purpose by every rank after epoch ``stop_after``."""


def _fit_and_dump(model, *args, **kwargs):
    stop_after = int(_job.get("stop_after") or 0)
    if stop_after:
        inner = kwargs.get("progress")

        def progress(ev):
            if inner is not None:
                inner(ev)
            if ev["event"] == "epoch" and ev["epoch"] >= stop_after:
                raise Interrupted(f"stopped on purpose after epoch {ev['epoch']}")

        kwargs["progress"] = progress
    history = _real_fit(model, *args, **kwargs)
    if _job.get("dump"):
        rank = dist.get_rank() if dist.is_initialized() else 0
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        Path(_job["dump"]).mkdir(parents=True, exist_ok=True)
        save_file(state, str(Path(_job["dump"]) / f"rank{rank}.safetensors"))
        losses = [
            {k: v for k, v in row.items() if k not in ("seconds", "cpu_seconds")} for row in history
        ]
        (Path(_job["dump"]) / f"rank{rank}.history.json").write_text(json.dumps(losses))
    return history


convae_train.fit = _fit_and_dump  # train() looks `fit` up in its module at call time


def run(jobs: list[dict]) -> int:
    failed = 0
    for job in jobs:
        _job.clear()
        _job.update(job)
        try:
            code = main(job["argv"])
        except Interrupted as e:
            print(f"ddp_worker: {e}", file=sys.stderr)
            code = 3
        if code != job.get("expect", 0):
            print(
                f"ddp_worker: {job['argv']} exited {code}, expected {job.get('expect', 0)}",
                file=sys.stderr,
            )
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        code = run(spec)
    finally:
        if distributed:
            dist.destroy_process_group()
    sys.exit(code)
