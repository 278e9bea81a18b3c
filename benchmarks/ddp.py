"""One process vs several (torchrun + DistributedDataParallel) training the same model.

Every configuration trains the default ``convae`` model on ``mnist-sample`` with the same *global*
batch (``--batch-size``, split evenly over the processes, so N processes x B/N images take the same
optimizer steps as one process x B) and the default recipe otherwise. Each one is an ordinary
``convae train`` command run as a subprocess; its run directory gives the numbers:

* ``wall_s``: the whole command (interpreter and torch start-up, data, training, rank 0's test
  evaluation and plots) - what a user waits for;
* ``epoch_s``: mean seconds of the epochs after the first (steady state, from history.jsonl);
* ``img_per_s``: training images per second at that pace;
* ``cpu_s``: CPU seconds of the whole command, all its processes together - unlike the times above,
  it barely depends on what else the machine runs, so it tells the cost of the extra processes;
* ``val_loss``, ``test_mse``: quality, to show the processes trained the same model.

Configurations on CPU: 1 process with torch's default threads, 1 process with 1 thread, and for each
N in ``--procs`` N processes x 1 thread each (gloo; torchrun's default OMP_NUM_THREADS=1). On a
machine with CUDA (``--device cuda``): 1 process on one GPU and, when there are several GPUs, one
process per GPU (nccl).

    flock /tmp/convae-bench.lock python benchmarks/ddp.py --epochs 3        # the recorded table
    python benchmarks/ddp.py --epochs 1 --classes 1 --procs 2 --json        # a quick smoke run

Timings on a shared machine are only comparable when nothing else runs: take the lock (above),
and read ``load`` (the 1-minute load average before each configuration) next to each row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _short(arg: str) -> str:
    """The command as a person types it: `python`, `torchrun`, no temporary paths' prefixes."""
    if arg == sys.executable:
        return "python"
    return "torchrun" if arg.endswith("/torchrun") else arg


def configurations(args) -> list[dict]:
    """(name, launcher prefix, per-process batch, extra flags, environment) for every row."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    one = [sys.executable, "-m", "convae"]
    rows = []
    if args.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        rows.append(
            {
                "name": "1 process, 1 GPU",
                "procs": 1,
                "cmd": one,
                "batch": args.batch_size,
                "flags": ["--device", "cuda"],
                "env": env,
            }
        )
        if gpus > 1:
            rows.append(
                {
                    "name": f"{gpus} processes, 1 GPU each (nccl)",
                    "procs": gpus,
                    "cmd": [
                        *_torchrun(),
                        "--standalone",
                        f"--nproc_per_node={gpus}",
                        "-m",
                        "convae",
                    ],
                    "batch": args.batch_size // gpus,
                    "flags": ["--device", "cuda"],
                    "env": env,
                }
            )
        return rows
    import torch

    rows.append(
        {
            "name": f"1 process, {torch.get_num_threads()} threads (torch default)",
            "procs": 1,
            "cmd": one,
            "batch": args.batch_size,
            "flags": ["--device", "cpu"],
            "env": env,
        }
    )
    rows.append(
        {
            "name": "1 process, 1 thread",
            "procs": 1,
            "cmd": one,
            "batch": args.batch_size,
            "flags": ["--device", "cpu", "--threads", "1"],
            "env": env,
        }
    )
    for n in args.procs:
        if args.batch_size % n:
            raise SystemExit(
                f"--batch-size {args.batch_size} does not split evenly over {n} processes"
            )
        rows.append(
            {
                "name": f"{n} processes x 1 thread (gloo)",
                "procs": n,
                "cmd": [*_torchrun(), "--standalone", f"--nproc_per_node={n}", "-m", "convae"],
                "batch": args.batch_size // n,
                "flags": ["--device", "cpu"],
                "env": {**env, "OMP_NUM_THREADS": "1"},
            }
        )
    return rows


def run_one(row: dict, args, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)  # our own output from an earlier invocation
    argv = [
        *row["cmd"],
        "train",
        "--out",
        str(out),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(row["batch"]),
        "--seed",
        str(args.seed),
        "--data",
        args.data,
        "-q",
        *row["flags"],
    ]
    if args.classes:
        argv += ["--classes", args.classes]
    if args.precision:
        argv += ["--precision", args.precision]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=row["env"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every process of the command, summed
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    steady = history[1:] or history
    epoch_s = sum(r["seconds"] for r in steady) / len(steady)
    steps = history[-1]["step"] // len(history)  # optimizer steps per epoch
    return {
        "config": row["name"],
        "processes": row["procs"],
        "batch_per_process": row["batch"],
        "global_batch": row["batch"] * row["procs"],
        "steps_per_epoch": steps,
        "epochs": len(history),
        "wall_s": wall,
        "cpu_s": cpu,
        "train_s": sum(r["seconds"] for r in history),
        "epoch_s": epoch_s,
        "img_per_s": steps * row["batch"] * row["procs"] / epoch_s,
        "val_loss": history[-1]["val_loss"],
        "test_mse": metrics["mse"],
        "precision": config["train"]["precision"],
        "recipe": {k: config["train"][k] for k in ("optimizer", "lr", "schedule", "channels_last")},
        "load": load,
        "command": " ".join(_short(a) for a in argv),
    }


def _resolved(precision: str, device: str) -> str:
    import torch

    from convae.runtime import resolve_precision

    dtype = resolve_precision(precision, torch.device(device))
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


def table(rows: list[dict]) -> str:
    base = rows[0]["epoch_s"]
    lines = [
        "| configuration | batch / process | epoch s | images/s | speed-up | wall s | CPU s | val loss | test MSE | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['batch_per_process']} | {r['epoch_s']:.2f} | {r['img_per_s']:.0f} | "
            f"{base / r['epoch_s']:.2f}x | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['val_loss']:.5f} | {r['test_mse']:.5f} | "
            f"{r['load']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--batch-size", type=int, default=128, help="global batch, split over the processes"
    )
    p.add_argument("--procs", default="2", help="comma list of process counts to try (CPU)")
    p.add_argument("--data", default="mnist-sample")
    p.add_argument("--classes", help="keep only these labels (a quicker run)")
    p.add_argument("--precision", help="override the recipe's precision (default: auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per configuration; the fastest is kept"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--out", type=Path, help="keep the run directories here (default: a temporary folder)"
    )
    p.add_argument("--json", action="store_true", help="last stdout line: a JSON list of rows")
    args = p.parse_args(argv)
    args.procs = [int(v) for v in args.procs.split(",") if v.strip()]
    if args.epochs < 2:
        print("note: with 1 epoch, epoch_s includes the first epoch's warm-up", file=sys.stderr)

    root = args.out or Path(tempfile.mkdtemp(prefix="convae-ddp-bench-"))
    try:
        rows_cfg = configurations(args)
        best: dict[int, dict] = {}
        for rep in range(args.repeat):  # interleaved, so a busy spell does not hit one row only
            for i, row in enumerate(rows_cfg):
                r = run_one(row, args, root / f"run{i}")
                r["runs"] = rep + 1
                if i not in best or r["epoch_s"] < best[i]["epoch_s"]:
                    best[i] = r
                print(
                    f"{r['config']}: epoch {r['epoch_s']:.2f} s, wall {r['wall_s']:.1f} s, "
                    f"val {r['val_loss']:.5f}, load {r['load']:.1f}",
                    file=sys.stderr,
                )
        rows = [best[i] for i in range(len(rows_cfg))]
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"{os.cpu_count()} CPU cores, device {args.device}, {args.epochs} epochs, global batch {args.batch_size}, "
        f"precision {rows[0]['precision']} ({_resolved(rows[0]['precision'], args.device)}), data {args.data}"
        + (f" classes {args.classes}" if args.classes else "")
        + ", recipe "
        + " ".join(f"{k}={v}" for k, v in rows[0]["recipe"].items())
    )
    print(table(rows))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
