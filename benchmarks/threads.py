"""Threads on a busy CPU: one training epoch beside a process that keeps one core busy.

    python benchmarks/threads.py                  # seed-keras2d, 3,584 training digits, 112 steps
    python benchmarks/threads.py --neighbours 2   # two busy processes (both cores taken)
    python benchmarks/threads.py --neighbours 0   # the idle machine
    python benchmarks/threads.py --neighbour-kind torch   # the neighbour trains a small conv net

Each job is a fresh subprocess that trains one epoch (``convae.training.fit``, default recipe) with a
given thread setting and reports its seconds: torch's default (one thread per core), the same with
``OMP_WAIT_POLICY=PASSIVE``, one thread, and ``auto`` (``convae.runtime.auto_threads``, what
``convae train`` uses). A neighbour is a pure-Python busy loop (one core held by someone else), or
with ``--neighbour-kind torch`` a one-thread torch loop training a small conv layer, like a second
training job.
Results: docs/benchmarks.md ("Threads").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

JOBS = {  # name -> (environment additions, threads: None = torch's default, "auto" or a number)
    "torch default": ({}, None),
    "torch default, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "1 thread": ({}, 1),
    "auto (convae train's default)": ({}, "auto"),
}

NEIGHBOURS = {
    "python": "while True: pass",
    "torch": (
        "import torch\ntorch.set_num_threads(1)\nm = torch.nn.Conv2d(1, 16, 3)\n"
        "x = torch.rand(64, 1, 28, 28)\nwhile True:\n    m(x).sum().backward()\n"
    ),
}


def job(threads: str, arch: str, n: int) -> dict:
    import torch

    from convae.config import ModelConfig, TrainConfig
    from convae.data import load_dataset
    from convae.models import build_model
    from convae.runtime import auto_threads
    from convae.training import fit

    if threads == "auto":
        torch.set_num_threads(auto_threads())
    elif threads != "none":
        torch.set_num_threads(int(threads))
    x, _ = load_dataset("mnist-sample", "train")
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]]
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch))
    hist = fit(model, x, None, TrainConfig(epochs=1))
    return {
        "seconds": hist[0]["seconds"],
        "steps": hist[0]["step"],
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", default="seed-keras2d")
    ap.add_argument(
        "--images", type=int, default=3584, help="training images (batch 32: images/32 steps)"
    )
    ap.add_argument(
        "--neighbours", type=int, default=1, help="busy processes running beside the jobs"
    )
    ap.add_argument("--neighbour-kind", choices=["python", "torch"], default="python")
    ap.add_argument("--job", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.job:
        print(json.dumps(job(a.job[0], a.job[1], int(a.job[2]))))
        return 0
    busy = NEIGHBOURS[a.neighbour_kind]
    neighbours = [subprocess.Popen([sys.executable, "-c", busy]) for _ in range(a.neighbours)]
    time.sleep(1.0)  # let the scheduler see them
    rows = []
    try:
        for name, (env, threads) in JOBS.items():
            r = subprocess.run(
                [sys.executable, __file__, "--job", str(threads).lower(), a.arch, str(a.images)],
                capture_output=True,
                text=True,
                env={**os.environ, **env},
            )
            if r.returncode:
                raise RuntimeError(f"job {name!r} failed:\n{r.stderr[-2000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append({"setting": name, **res})
            print(
                f"{name}: {res['seconds']:.2f} s ({res['threads']} threads)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for p in neighbours:
            p.kill()
            p.wait()
    where = (
        f"{a.neighbours} other busy {a.neighbour_kind} process(es)"
        if a.neighbours
        else "idle machine"
    )
    print(
        f"{a.arch}, one epoch of {rows[0]['steps']} steps (batch 32), {os.cpu_count()} cores, {where}"
    )
    print("| threads | torch threads | seconds |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['threads']} | {r['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
