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

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.adamw import adamw

from .config import OPTIMIZERS, TrainConfig
from .models import is_channels_last

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon: they push all singular values of
# the normalized update into ~[0.7, 1.2] in five iterations, which is all Muon needs.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)
# How the matrices of one step are batched for Newton-Schulz (see plan_batches): a batched call
# costs a fixed ~20 dispatches plus its multiply-adds. _CALL_MACS is the dispatch cost in
# multiply-adds (~0.2 ms of the ~50 G multiply-adds/s that small fp32 batched GEMMs reach on this
# 2-core CPU).
_CALL_MACS = 10_000_000


def ns_coefficients(
    gram: Tensor, steps: int = 5, eye_a: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Newton-Schulz in Gram form: ``(M, s)`` with ``orthogonalize(X) == M @ X * s``.

    ``gram`` is a batch ``[n, k, k]`` of ``X X^T`` for wide matrices ``X`` ``[k, cols]`` (float32;
    zero-padded rows and columns stay exact). Every Newton-Schulz iterate of the normalized
    ``X0 = X s`` is ``M X0`` with ``M`` a polynomial in ``A = X0 X0^T``, so the iteration runs on
    ``k x k`` matrices only: ``P = a I + b A + c A^2``, ``M <- P M``, ``A <- P A P``. One product
    with ``X`` at the end replaces the two ``[k, cols]`` products of every iteration; for
    seed-strided's ``12 x 1568`` code layers that is ~30x fewer multiply-adds, and all of a small
    model's matrices fit one batched call. ``s`` is ``[n, 1, 1]``: 1 / (Frobenius norm + 1e-7),
    as the textbook iteration normalizes. ``eye_a`` is ``a * I``, cached by callers that repeat.

    Precision: the Gram matrix squares the condition number, so in float32 singular values below
    ~3e-4 of the largest are resolved only to rounding, against ~1e-7 for the textbook float32
    iteration and ~4e-3 for the bf16 iteration that Muon commonly runs on GPUs. Training quality
    measured the same as with the textbook float32 iteration (docs/benchmarks.md).
    """
    a, b, c = _NS_COEFFS
    k = gram.size(-1)
    s = gram.diagonal(dim1=-2, dim2=-1).sum(-1).sqrt_().add_(1e-7).reciprocal_()[:, None, None]
    A = gram * (s * s)
    if eye_a is None:
        eye_a = torch.eye(k, dtype=A.dtype, device=A.device).mul_(a)
    M = None
    for i in range(steps):
        P = torch.baddbmm(torch.add(eye_a, A, alpha=b), A, A, alpha=c)
        M = P if M is None else torch.bmm(P, M)
        if i + 1 < steps:
            A = torch.bmm(torch.bmm(P, A), P)
    assert M is not None, "steps must be >= 1"
    return M, s


def orthogonalize(g: Tensor, steps: int = 5) -> Tensor:
    """Approximately the nearest semi-orthogonal matrix to ``g`` (U V^T of its SVD), float32.

    ``g`` is ``[rows, cols]`` or a batch ``[n, rows, cols]`` of same-shaped matrices. Five
    Newton-Schulz iterations, computed in Gram form (:func:`ns_coefficients`) as Muon's step does;
    ``tests/test_optim.py`` checks it against the textbook iteration on the matrix itself.
    """
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0)
    M, s = ns_coefficients(torch.bmm(x, x.mT), steps)
    o = torch.bmm(M * s, x)
    if not batched:
        o = o.squeeze(0)
    return o.mT if tall else o


def _ns_macs(count: int, k: int, steps: int = 5) -> int:
    """Multiply-adds of Gram-form Newton-Schulz (``steps`` iterations) on ``count`` ``[k, k]`` Grams."""
    return 4 * steps * count * k**3


def plan_batches(sizes: list[int]) -> list[list[int]]:
    """Group Gram matrices ``[k, k]`` (one per weight matrix) into Newton-Schulz batches.

    A batch is zero-padded to its largest k, which is exact (the padded rows and columns of
    ``A`` stay zero) but costs arithmetic; each batch costs a call's dispatches. Start with one
    batch per size and merge the pair that saves most, while any merge saves: a small model's
    dozen matrices end up in one call, while seed-dense's two 200-row code layers do not pad the
    9-row first conv to 200.
    """

    def cost(batch: list[int]) -> int:
        return _CALL_MACS + _ns_macs(len(batch), max(sizes[i] for i in batch))

    batches = list({k: [i for i, t in enumerate(sizes) if t == k] for k in sizes}.values())
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


@dataclass(frozen=True)
class _NSBatch:
    """One Newton-Schulz call: ``groups`` of same-shaped matrices at rows ``starts`` of a
    ``[count, k, k]`` Gram batch ``gram`` (zeros outside the matrices, reused every step);
    ``scale`` is each row's ``0.2 * sqrt(max(rows, cols))``."""

    groups: list[list[int]]
    starts: list[int]
    gram: Tensor
    scale: Tensor
    eye_a: Tensor  # a * I, the constant term of every Newton-Schulz polynomial


@dataclass(frozen=True)
class _MuonLayout:
    """How one param group's matrices are read, batched and written back (made once)."""

    tall: list[bool]  # the matrix has more rows than columns: iterate on its transpose
    # channels_last kernels [O, I, kh, kw] are read as [O, kh*kw*I], their memory order: a view,
    # not a copy. Orthogonalization commutes with permuting columns, so the update is the same.
    last: list[bool]
    batches: list[_NSBatch]

    @staticmethod
    def build(params: list[Tensor]) -> _MuonLayout:
        last = [is_channels_last(p) for p in params]
        shapes = [(p.size(0), p[0].numel()) for p in params]
        wide = [(min(r, c), max(r, c)) for r, c in shapes]
        device = params[0].device
        batches = []
        for members in plan_batches([k for k, _ in wide]):
            groups: dict[tuple[int, int], list[int]] = {}
            for i in members:
                groups.setdefault(wide[i], []).append(i)
            starts, scale, at = [], [], 0
            for idx in groups.values():
                starts.append(at)
                at += len(idx)
                scale += [0.2 * wide[i][1] ** 0.5 for i in idx]
            k = max(wide[i][0] for i in members)
            batches.append(
                _NSBatch(
                    groups=list(groups.values()),
                    starts=starts,
                    gram=torch.zeros(at, k, k, device=device),
                    scale=torch.tensor(scale, device=device)[:, None, None],
                    eye_a=torch.eye(k, device=device).mul_(_NS_COEFFS[0]),
                )
            )
        return _MuonLayout([r > c for r, c in shapes], last, batches)

    def matrix(self, i: int, t: Tensor) -> Tensor:
        """Parameter-shaped ``t`` as the wide float32 matrix that is orthogonalized."""
        m = (
            t.permute(0, 2, 3, 1).reshape(t.size(0), -1)
            if self.last[i]
            else t.reshape(t.size(0), -1)
        )
        m = m.float()
        return m.mT if self.tall[i] else m

    def add_to(self, i: int, p: Tensor, o: Tensor) -> None:
        """``p += o``, ``o`` being the wide matrix that :meth:`matrix` made of ``p``'s shape."""
        if self.tall[i]:
            o = o.mT
        if self.last[i]:
            q = p.permute(0, 2, 3, 1)
            q.add_(o.reshape(q.shape))
        else:
            p.add_(o.reshape(p.shape))


class Muon(torch.optim.Optimizer):
    """Muon for parameters with >= 2 dims, AdamW for the rest; decoupled weight decay on both.

    Param groups carry ``muon=True`` (matrices) or ``muon=False`` (AdamW); build them with
    :func:`build_optimizer`. A small model's step is dominated by per-operation overhead, so the
    momentum uses foreach ops, the AdamW half torch's fused kernel, and the matrices are
    orthogonalized in Gram form (:func:`ns_coefficients`) in as few batched calls as pay
    (:func:`plan_batches`).
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
        self._plans: dict[tuple, _MuonLayout] = {}  # (group, its parameters) -> Newton-Schulz calls

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
        # The layout depends only on the parameters, so it is made once per group: a small
        # model's step is per-operation overhead, and this keeps it to ~40 tensor operations.
        steps = group["ns_steps"]
        key = (id(group), tuple(id(p) for p in params))
        layout = self._plans.get(key)
        if layout is None:
            layout = self._plans[key] = _MuonLayout.build(params)
        lr = group["lr"]
        for batch in layout.batches:
            xs = []
            for idx, start in zip(batch.groups, batch.starts, strict=True):
                # same-shaped matrices: one stacked Gram product, written into the padded batch
                mats = [layout.matrix(i, updates[i]) for i in idx]
                x = torch.stack(mats) if len(mats) > 1 else mats[0][None]
                k = x.size(1)
                batch.gram[start : start + len(idx), :k, :k] = torch.bmm(x, x.mT)
                xs.append(x)
            m, s = ns_coefficients(batch.gram, steps, batch.eye_a)
            m.mul_(s.mul_(batch.scale).mul_(-lr))  # AdamW-matched update RMS
            for x, idx, start in zip(xs, batch.groups, batch.starts, strict=True):
                k = x.size(1)
                o = torch.bmm(m[start : start + len(idx), :k, :k], x)
                for j, i in enumerate(idx):
                    layout.add_to(i, params[i], o[j])

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
    if cfg.lr is None:  # the architecture decides it: Recipe.fill puts it in
        raise ValueError("no learning rate: fill the recipe first (convae.config.Recipe.fill)")
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


SCHEDULES = ("onecycle", "cosine", "constant")


def lr_at(
    step: int, total: int, peak: float, schedule: str = "onecycle", warmup: float = 0.15
) -> float:
    """The learning rate at ``step`` of ``total``: a pure function, so resuming needs no state.

    ``onecycle``: linear warm-up from peak/25 over the first ``warmup`` fraction of the steps, then
    cosine decay to peak/1e4. ``cosine``: the same from and to 0. ``constant``: ``peak``.
    """
    if schedule == "constant" or total <= 1:
        return peak
    warm = max(1, int(warmup * total))
    if step < warm:
        start = peak / 25 if schedule == "onecycle" else 0.0
        return start + (peak - start) * step / warm
    t = (step - warm) / max(1, total - warm)
    floor = peak / 1e4 if schedule == "onecycle" else 0.0
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
