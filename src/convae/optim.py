"""Optimizers: AdamW/Adam from torch, and Muon (orthogonalized momentum) for the weight matrices.

Muon (Keller Jordan, 2024) replaces each weight matrix's momentum update by the nearest
semi-orthogonal matrix, computed with a few Newton-Schulz iterations. Every direction of the
update then moves at the same speed, which is what a small conv autoencoder without normalization
lacks: `seed-strided` reaches the seeds' final test MSE in about half of AdamW's optimizer steps
(docs/benchmarks.md). Conv kernels are treated as matrices ``[out, in*k*k]`` (ConvTranspose:
``[in, out*k*k]``); biases and normalization parameters - and any parameter with fewer than two
dimensions - get an AdamW update inside the same optimizer, so the learning-rate schedule,
checkpoints and resume see one optimizer.

The Muon update is scaled to the RMS of a typical AdamW update, ``0.2 * sqrt(max(rows, cols))``
(Liu et al. 2025, "Muon is scalable for LLM training"), so one peak learning rate and one weight
decay serve both kinds of parameter.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from .config import OPTIMIZERS, TrainConfig

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon: they push all singular values of
# the normalized update into ~[0.7, 1.2] in five iterations, which is all Muon needs.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)
# How the matrices of one step are batched for Newton-Schulz (see plan_batches): a call costs a
# fixed ~15 dispatches plus its multiply-adds. _CALL_MACS is the dispatch cost in multiply-adds
# (~0.2 ms of the ~50 G multiply-adds/s that small fp32 batched GEMMs reach on this 2-core CPU).
_CALL_MACS = 10_000_000
# Calls of at least this many multiply-adds iterate in bf16 where the hardware has fast bf16
# GEMMs: on this CPU bf16 measured 1.3x faster at 130-150 M, 1.9x at 535 M and 3.4x for
# seed-dense's two 200 x 3136 matrices (2.6 G), and no faster below ~60 M.
_BF16_MACS = 100_000_000


def orthogonalize(g: Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Approximately the nearest semi-orthogonal matrix to ``g`` (U V^T of its SVD).

    ``g`` is ``[rows, cols]`` or a batch ``[n, rows, cols]`` of same-shaped matrices; the
    iterations run in ``dtype`` (bf16 is enough for Muon: its singular values only need to land
    near 1) and the result comes back in float32.
    """
    a, b, c = _NS_COEFFS
    x = g.float()
    x = (x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)).to(dtype)  # spectral <= Frobenius <= 1
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0)
    for _ in range(steps):  # x <- a x + (b S + c S^2) x with S = x x^T, as two fused GEMMs
        s = torch.bmm(x, x.mT)
        p = torch.baddbmm(s, s, s, beta=b, alpha=c)
        x = torch.baddbmm(x, p, x, beta=a)
    if not batched:
        x = x.squeeze(0)
    x = x.float()
    return x.mT if tall else x


def _ns_macs(count: int, k: int, n: int, steps: int = 5) -> int:
    """Multiply-adds of Newton-Schulz (``steps`` iterations) on ``count`` matrices ``[k, n]``, k <= n."""
    return steps * count * (2 * k * k * n + k**3)


def plan_batches(shapes: list[tuple[int, int]]) -> list[list[int]]:
    """Group matrices ``[k, n]`` (k <= n) into Newton-Schulz batches, cheapest first.

    A batch is zero-padded to its largest k and n, which is exact (NS of ``[[A, 0], [0, 0]]`` is
    ``[[NS(A), 0], [0, 0]]``) but costs arithmetic; each batch costs a call's dispatches. Start
    with one batch per shape and merge the pair that saves most, while any merge saves: a small
    model's dozen tiny matrices end up in one or two calls, while a 2 x 3136 code layer is not
    padded to 64 rows to join the 64 x 288 convs.
    """

    def cost(batch: list[int]) -> int:
        k = max(shapes[i][0] for i in batch)
        n = max(shapes[i][1] for i in batch)
        return _CALL_MACS + _ns_macs(len(batch), k, n)

    batches = list({s: [i for i, t in enumerate(shapes) if t == s] for s in shapes}.values())
    while len(batches) > 1:
        saving, a, b = max(
            (cost(x) + cost(y) - cost(x + y), i, j)
            for i, x in enumerate(batches)
            for j, y in enumerate(batches[i + 1 :], i + 1)
        )
        if saving <= 0:
            break
        batches[a] = sorted(batches[a] + batches[b])
        del batches[b]
    return batches


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 GEMMs are fast here: CUDA, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


class Muon(torch.optim.Optimizer):
    """Muon for parameters with >= 2 dims, AdamW for the rest; decoupled weight decay on both.

    Param groups carry ``muon=True`` (matrices) or ``muon=False`` (AdamW); build them with
    :func:`build_optimizer`. A small model's step is dominated by per-operation overhead, so the
    momentum uses foreach ops, the AdamW half torch's fused kernel, and the matrices are
    orthogonalized in as few batched Newton-Schulz calls as pay (:func:`plan_batches`), large
    batches in bf16 where that is fast.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        ns_steps: int = 5,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            betas=betas,
            eps=eps,
            ns_steps=ns_steps,
            muon=True,
        )
        super().__init__(params, defaults)
        self._plans: dict[tuple, list[list[int]]] = {}  # (group, shapes) -> Newton-Schulz batches

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["muon"]:
                lr, wd = group["lr"], group["weight_decay"]
                if wd:  # decoupled, as AdamW's
                    torch._foreach_mul_(params, 1 - lr * wd)
                self._muon(group, params, grads)
            else:
                self._adamw(group, params, grads)
        return loss

    def _muon(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        mom = group["momentum"]
        torch._foreach_mul_(bufs, mom)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=mom)  # Nesterov
        # Orthogonalize in as few batched calls as possible (plan_batches; the plan depends only on
        # the shapes, so it is made once per group).
        mats = [u.reshape(u.size(0), -1) for u in updates]
        wide = [m if m.size(0) <= m.size(1) else m.mT for m in mats]
        shapes = [(m.size(0), m.size(1)) for m in wide]
        key = (id(group), tuple(shapes))
        if key not in self._plans:
            self._plans[key] = plan_batches(shapes)
        bf16 = bf16_is_fast(params[0].device)
        for idx in self._plans[key]:
            k = max(shapes[i][0] for i in idx)
            n = max(shapes[i][1] for i in idx)
            if all(shapes[i] == (k, n) for i in idx):
                x = torch.stack([wide[i] for i in idx])
            else:
                x = wide[idx[0]].new_zeros(len(idx), k, n)
                for j, i in enumerate(idx):
                    x[j, : shapes[i][0], : shapes[i][1]] = wide[i]
            big = bf16 and _ns_macs(len(idx), k, n, group["ns_steps"]) >= _BF16_MACS
            o = orthogonalize(x, group["ns_steps"], torch.bfloat16 if big else torch.float32)
            for j, i in enumerate(idx):
                oi = o[j, : shapes[i][0], : shapes[i][1]]
                if wide[i] is not mats[i]:
                    oi = oi.mT
                rows, cols = mats[i].shape
                scale = -group["lr"] * 0.2 * max(rows, cols) ** 0.5  # AdamW-matched update RMS
                params[i].add_(oi.reshape(params[i].shape).to(params[i].dtype), alpha=scale)

    def _adamw(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        avgs, sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            elif state["step"].device != p.device:  # a checkpoint's state, loaded onto the CPU
                state["step"] = state["step"].to(p.device)
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        b1, b2 = group["betas"]
        # torch's own AdamW arithmetic (it counts the steps too); fused where torch has the kernel
        adamw(
            params,
            grads,
            avgs,
            sqs,
            [],
            steps,
            fused=_fusable(params) or None,
            amsgrad=False,
            beta1=b1,
            beta2=b2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )


def _fusable(params: list[Tensor]) -> bool:
    """torch's fused AdamW kernel applies: dense floating parameters on one CPU or CUDA device.

    Fused measured 3-4x faster than foreach for a small model's optimizer step on this CPU
    (docs/benchmarks.md). The kernel walks parameter, gradient and moments as flat memory, so all
    four must share a layout: autograd gives gradients their parameter's, zeros_like gives the
    moments theirs, and checkpoint.load_trainer_state restores them so.
    """
    return (
        bool(params)
        and len({p.device for p in params}) == 1
        and params[0].device.type in ("cpu", "cuda")
        and all(p.is_floating_point() and _dense(p) for p in params)
    )


def _dense(p: Tensor) -> bool:
    return p.is_contiguous() or (
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
    )


def build_optimizer(params: list[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, at peak lr ``cfg.lr`` (the schedule sets it per step)."""
    if cfg.lr is None:  # the architecture decides it: convae.train.resolve_recipe fills it in
        raise ValueError("no learning rate: resolve the recipe first (convae.train.resolve_recipe)")
    fused = _fusable(params) or None  # None: torch picks (a for-loop on the CPU, foreach on CUDA)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, fused=fused)
    if cfg.optimizer == "muon":
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "muon": True},
            {"params": [p for p in params if p.ndim < 2], "muon": False},
        ]
        groups = [g for g in groups if g["params"]]
        return Muon(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {cfg.optimizer!r}")
