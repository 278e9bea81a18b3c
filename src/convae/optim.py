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

from collections.abc import Iterable

import torch
from torch import Tensor

from .config import OPTIMIZERS, TrainConfig

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon: they push all singular values of
# the normalized update into ~[0.7, 1.2] in five iterations, which is all Muon needs.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Matrices of at most this many values are orthogonalized together, zero-padded to a common shape
# (32 x 512: padding costs arithmetic, which is cheap at this size, and saves dispatches, which
# are not).
_PAD_LIMIT = 16384


def orthogonalize(g: Tensor, steps: int = 5) -> Tensor:
    """Approximately the nearest semi-orthogonal matrix to ``g`` (U V^T of its SVD).

    ``g`` is ``[rows, cols]`` or a batch ``[n, rows, cols]`` of same-shaped matrices.
    """
    a, b, c = _NS_COEFFS
    x = g.float()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral <= Frobenius norm <= 1
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
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for parameters with >= 2 dims, AdamW for the rest; decoupled weight decay on both.

    Param groups carry ``muon=True`` (matrices) or ``muon=False`` (AdamW); build them with
    :func:`build_optimizer`. A small model's step is dominated by per-operation overhead, so the
    updates use foreach ops, and the matrices are orthogonalized in as few batched Newton-Schulz
    calls as possible: all small ones together (zero-padded), larger ones grouped by shape.
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
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            if group["muon"]:
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
        # Orthogonalize in as few batched calls as possible: a small model's matrices are tiny, so
        # each Newton-Schulz call costs its ~15 dispatches, not its arithmetic. Matrices up to
        # _PAD_LIMIT values go into one batch, zero-padded to the largest of them (exact: NS of
        # [[A, 0], [0, 0]] is [[NS(A), 0], [0, 0]]); larger ones are batched by equal shape.
        mats = [u.reshape(u.size(0), -1) for u in updates]
        wide = [m if m.size(0) <= m.size(1) else m.mT for m in mats]
        small = [i for i, m in enumerate(wide) if m.numel() <= _PAD_LIMIT]
        buckets = [small] if small else []
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, m in enumerate(wide):
            if m.numel() > _PAD_LIMIT:
                by_shape.setdefault(tuple(m.shape), []).append(i)
        buckets += by_shape.values()
        for idx in buckets:
            k = max(wide[i].size(0) for i in idx)
            n = max(wide[i].size(1) for i in idx)
            if all(tuple(wide[i].shape) == (k, n) for i in idx):
                x = torch.stack([wide[i] for i in idx])
            else:
                x = wide[idx[0]].new_zeros(len(idx), k, n)
                for j, i in enumerate(idx):
                    x[j, : wide[i].size(0), : wide[i].size(1)] = wide[i]
            o = orthogonalize(x, group["ns_steps"])
            for j, i in enumerate(idx):
                oi = o[j, : wide[i].size(0), : wide[i].size(1)]
                if wide[i] is not mats[i]:
                    oi = oi.mT
                rows, cols = mats[i].shape
                scale = -group["lr"] * 0.2 * max(rows, cols) ** 0.5  # AdamW-matched update RMS
                params[i].add_(oi.reshape(params[i].shape).to(params[i].dtype), alpha=scale)

    def _adamw(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        b1, b2 = group["betas"]
        avgs, sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        torch._foreach_add_(steps, 1)
        t = float(steps[0])  # every parameter of the group takes every step
        torch._foreach_lerp_(avgs, grads, 1 - b1)
        torch._foreach_mul_(sqs, b2)
        torch._foreach_addcmul_(sqs, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(sqs)
        torch._foreach_div_(denom, (1 - b2**t) ** 0.5)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, avgs, denom, value=-group["lr"] / (1 - b1**t))


def build_optimizer(params: list[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, at peak lr ``cfg.lr`` (the schedule sets it per step)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "muon":
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "muon": True},
            {"params": [p for p in params if p.ndim < 2], "muon": False},
        ]
        groups = [g for g in groups if g["params"]]
        return Muon(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {cfg.optimizer!r}")
