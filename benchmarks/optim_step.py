"""What one optimizer step costs, per architecture: torch's AdamW (foreach), convae's AdamW and Muon.

    python benchmarks/optim_step.py                      # every registered arch, 2 threads
    python benchmarks/optim_step.py seed-strided convae --threads 1

A small model's training step is a few milliseconds, and the optimizer's share of it is mostly
per-operation overhead, not arithmetic. The parameters are laid out as `fit` trains them
(channels_last) and carry fixed random gradients; every candidate is timed in `--rounds`
interleaved rounds of `--steps` steps (this VM's speed drifts within minutes) and the best round
counts. Prints a Markdown table of milliseconds per step; `--json` adds a JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from convae.config import ModelConfig, TrainConfig
from convae.models import available, build_model
from convae.optim import build_optimizer

LATENT = {
    "seed-strided": 12,
    "convae": 12,
}  # the speed table's latent sizes; the others use their default


def candidates(arch: str) -> dict[str, torch.optim.Optimizer]:
    out = {}
    for name in ("torch AdamW (foreach)", "convae adamw", "convae muon"):
        torch.manual_seed(0)
        m = build_model(ModelConfig(arch=arch, latent_dim=LATENT.get(arch)))
        m = m.to(memory_format=torch.channels_last)
        params = list(m.parameters())
        g = torch.Generator().manual_seed(1)
        for p in params:
            # in the parameter's layout (channels_last for conv kernels), as autograd gives it
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
        if name.startswith("torch"):
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, foreach=True)
        else:
            opt = build_optimizer(params, TrainConfig(optimizer=name.split()[1], lr=1e-3))
        out[name] = opt
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("archs", nargs="*", help="architectures (default: all registered)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for arch in args.archs or list(available()):
        opts = candidates(arch)
        for opt in opts.values():  # warm-up: state allocation, first-call dispatch
            for _ in range(5):
                opt.step()
        best = dict.fromkeys(opts, float("inf"))
        for _ in range(args.rounds):
            for name, opt in opts.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    opt.step()
                best[name] = min(best[name], (time.perf_counter() - t) / args.steps * 1e3)
        n = sum(p.numel() for p in opts["convae adamw"].param_groups[0]["params"])
        rows.append({"arch": arch, "params": n, "ms_per_step": best})
    names = list(rows[0]["ms_per_step"])
    print(f"| arch | parameters | {' | '.join(names)} |")
    print("|---|---:|" + "---:|" * len(names))
    for r in rows:
        cells = " | ".join(f"{r['ms_per_step'][k]:.3f}" for k in names)
        print(f"| {r['arch']} | {r['params']:,} | {cells} |")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
