"""One rank of tests/test_cache.py's torchrun job: open a folder's cache at the same moment as
the other ranks, then write what it saw to OUT/rank{R}.json.

    torchrun --standalone --nproc_per_node=2 tests/cache_worker.py FOLDER OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from convae.cache import open_folder, update_folder

if __name__ == "__main__":
    root, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()  # every rank starts together: one builds, the others wait on its lock
    report = update_folder(root, workers=1)
    store = open_folder(root)
    total = int(sum(int(store.image(i).sum()) for i in range(len(store))))
    out.mkdir(parents=True, exist_ok=True)
    res = {"state": report.state, "decoded": report.decoded, "cache": report.cache, "sum": total,
           "pid": os.getpid()}  # fmt: skip
    (out / f"rank{rank}.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()
