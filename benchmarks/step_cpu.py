"""Training-step throughput per CPU core for fp32/bf16 x contiguous/channels_last, by arch and batch.

    python benchmarks/step_cpu.py seed-strided:32 convae:16      # ARCH:WIDTH ...
    python benchmarks/step_cpu.py seed-pool:16 seed-upsample:16 seed-keras2d:16 seed-dense:16

One torch thread, timed with process CPU time (not wall time), so the numbers stay comparable on a
machine busy with other work: images per CPU-second of a plain eager AdamW step on mnist-sample.
This is how bf16 autocast and channels_last were chosen (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from convae.config import ModelConfig
from convae.data import load_dataset
from convae.models import build_model


def rate(
    x: torch.Tensor,
    arch: str,
    width: int,
    batch: int,
    bf16: bool,
    channels_last: bool,
    steps: int,
    latent: int | None = None,
) -> float:
    torch.manual_seed(0)
    if latent is None:  # 12 for the two archs of the speed table, else the arch's own default
        latent = 12 if arch in ("seed-strided", "convae") else None
    m = build_model(ModelConfig(arch=arch, latent_dim=latent, width=width))
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        xb = x[torch.randint(0, len(x), (batch,), generator=g)].float().div_(255)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = m(xb)
        loss = F.mse_loss(y.float(), xb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t = time.process_time()
    for _ in range(steps):
        step()
    return steps * batch / (time.process_time() - t)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    x, _ = load_dataset("mnist-sample", "train")
    print("| arch | width | batch | precision | layout | images / CPU-second |")
    print("|---|---|---|---|---|---|")
    for spec in argv or ["seed-strided:32", "convae:16"]:
        arch, width = spec.split(":")
        for batch in (32, 128):
            for bf16 in (False, True):
                for cl in (False, True):
                    r = rate(x, arch, int(width), batch, bf16, cl, steps=max(10, 1500 // batch))
                    print(
                        f"| {arch} | {width} | {batch} | {'bf16' if bf16 else 'fp32'} | "
                        f"{'channels_last' if cl else 'contiguous'} | {r:.0f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
