"""Per layer: torch's convolution kernels against the same layer written as matrix products.

    python benchmarks/conv_layers.py                      # seed-strided, latent 12, batch 32
    python benchmarks/conv_layers.py --arch seed-keras2d --latent-dim 2 --json

For every convolution of the model that has a matrix-product form here, times forward + backward
(input, weight and bias gradients) on a batch of the layer's real input shape, three ways:

The first layer computes no input gradient (training needs none for the images).

* ``torch fp32`` / ``torch bf16``: the module itself, channels_last (oneDNN on this CPU), fp32 or
  under bf16 autocast, as ``convae train`` runs it;
* ``GEMM fp32``: the same weights as channels-last matrix products - im2col by one strided view
  (3x3 stride-2 convolutions), sub-pixel products + depth-to-space (3x3 stride-2 transposed
  convolutions), one plain product (a kernel that covers the whole input, or a transposed
  convolution from a 1x1 code). The outputs and gradients are checked against the module's.

The question it answers: is a step of these small models held back by the convolution kernels'
overhead (then the products would be faster) or by the arithmetic (then they are on par)? The
best of ``--rounds`` timings of ``--iters`` calls; results are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convae.config import ModelConfig
from convae.models import build_model


def _im2col_s2(x: Tensor) -> Tensor:
    """NHWC [B, H, W, C] -> [B*H/2*W/2, 9*C]: the patches of a 3x3, stride-2, padding-1 conv."""
    b, h, w, c = x.shape
    xp = F.pad(x, (0, 0, 1, 0, 1, 0))  # the bottom/right padding row is never read
    s = xp.stride()
    view = xp.as_strided((b, h // 2, w // 2, 3, 3, c), (s[0], 2 * s[1], 2 * s[2], s[1], s[2], s[3]))
    return view.reshape(-1, 9 * c)


# Transposed 3x3, stride 2, padding 1, output padding 1: output row 2m+a is fed by input row m+u
# through kernel row t, for (a, u) -> t below (the same for columns).
_SUBPIXEL_TAPS = {(0, 0): 1, (1, 0): 2, (1, 1): 0}


def _subpixel_weight(w: Tensor) -> Tensor:
    """ConvTranspose2d weight [C, O, 3, 3] -> [(u, v, c), (a, b, o)] for the sub-pixel product."""
    c, o = w.shape[:2]
    out = w.new_zeros(2, 2, c, 2, 2, o)
    for (a, u), ti in _SUBPIXEL_TAPS.items():
        for (b, v), tj in _SUBPIXEL_TAPS.items():
            out[u, v, :, a, b, :] = w[:, :, ti, tj]
    return out.reshape(4 * c, 4 * o)


def _convT_s2(x: Tensor, w: Tensor) -> Tensor:
    """NHWC transposed conv (3x3, stride 2, padding 1, output padding 1) without bias."""
    b, h, wd, c = x.shape
    o = w.shape[1]
    xp = F.pad(x, (0, 0, 0, 1, 0, 1))
    s = xp.stride()
    cols = xp.as_strided((b, h, wd, 2, 2, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    y = cols.reshape(-1, 4 * c) @ _subpixel_weight(w)
    return y.view(b, h, wd, 2, 2, o).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * wd, o)


class _ConvS2(torch.autograd.Function):
    """3x3 stride-2 padding-1 conv on NHWC input; backward by the same products."""

    @staticmethod
    def forward(ctx, x, w, bias):
        b, h, wd, c = x.shape
        cols = _im2col_s2(x)
        y = torch.addmm(bias, cols, w.permute(2, 3, 1, 0).reshape(9 * c, -1))
        ctx.save_for_backward(cols, w)
        return y.view(b, h // 2, wd // 2, -1)

    @staticmethod
    def backward(ctx, dy):
        cols, w = ctx.saved_tensors
        o, c = w.shape[:2]
        dy2 = dy.reshape(-1, o)
        dw = (cols.t() @ dy2).view(3, 3, c, o).permute(3, 2, 0, 1)
        # a conv's input gradient is its transpose (not needed for the network's first layer)
        dx = _convT_s2(dy, w) if ctx.needs_input_grad[0] else None
        return dx, dw, dy2.sum(0)


class _ConvTS2(torch.autograd.Function):
    """Transposed 3x3 stride-2 conv on NHWC input; backward by the same products."""

    @staticmethod
    def forward(ctx, x, w, bias):
        ctx.save_for_backward(x, w)
        return _convT_s2(x, w) + bias

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        c, o = w.shape[:2]
        cols = _im2col_s2(dy)  # the transposed conv's adjoint is the stride-2 conv
        dx = (cols @ w.permute(2, 3, 1, 0).reshape(9 * o, c)).view(x.shape)
        dw = (cols.t() @ x.reshape(-1, c)).view(3, 3, o, c).permute(3, 2, 0, 1)
        return dx, dw, dy.reshape(-1, o).sum(0)


def gemm_form(m: nn.Module, in_shape: tuple[int, ...]) -> Callable[[Tensor], Tensor] | None:
    """The layer as matrix products (NCHW channels_last in and out), or None if it has no such form."""
    _, _, h, w = in_shape
    if m.groups != 1 or m.dilation != (1, 1):
        return None
    k, s, p = m.kernel_size, m.stride, m.padding
    if isinstance(m, nn.ConvTranspose2d):
        if k == (3, 3) and s == (2, 2) and p == (1, 1) and m.output_padding == (1, 1):
            return lambda x: _ConvTS2.apply(x.permute(0, 2, 3, 1), m.weight, m.bias).permute(
                0, 3, 1, 2
            )
        if (h, w) == (1, 1) and s == (1, 1) and p == (0, 0):

            def full_t(x: Tensor) -> Tensor:
                wt = m.weight.permute(0, 2, 3, 1).reshape(m.in_channels, -1)
                y = (x.reshape(len(x), -1) @ wt).view(len(x), *k, -1) + m.bias
                return y.permute(0, 3, 1, 2)

            return full_t
        return None
    if k == (3, 3) and s == (2, 2) and p == (1, 1) and h % 2 == 0 and w % 2 == 0:
        return lambda x: _ConvS2.apply(x.permute(0, 2, 3, 1), m.weight, m.bias).permute(0, 3, 1, 2)
    if k == (h, w) and p == (0, 0):

        def full(x: Tensor) -> Tensor:
            wt = m.weight.permute(0, 2, 3, 1).reshape(m.out_channels, -1)
            y = F.linear(x.permute(0, 2, 3, 1).reshape(len(x), -1), wt, m.bias)
            return y.view(len(x), -1, 1, 1)

        return full
    return None


def _step(
    f: Callable[[Tensor], Tensor], x: Tensor, wrt: list[Tensor], g: Tensor, bf16: bool = False
) -> Callable[[], None]:
    """One forward + backward (the gradients of ``wrt``) of ``f`` on ``x``."""

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = f(x)
        torch.autograd.grad(y, wrt, g.to(y.dtype))

    return run


def _time(fn: Callable[[], None], iters: int, rounds: int) -> float:
    for _ in range(max(3, iters // 10)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t) / iters)
    return best * 1e6


def measure(arch: str, latent_dim: int | None, batch: int, iters: int, rounds: int) -> list[dict]:
    model = build_model(ModelConfig(arch=arch, latent_dim=latent_dim))
    model.to(memory_format=torch.channels_last)
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(mod: nn.Module, args: tuple) -> None:  # a pre-hook returning a value replaces args
        shapes.setdefault(mod, tuple(args[0].shape))

    hooks = [
        mod.register_forward_pre_hook(record)
        for mod in model.modules()
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    with torch.no_grad():
        model(torch.rand(1, *model.input_shape))
    for h in hooks:
        h.remove()
    rows: list[dict] = []
    first = next(iter(shapes))  # hooks fire in forward order: the layer that sees the images
    first = next(n for n, m in model.named_modules() if m is first)
    for name, mod in model.named_modules():
        if mod not in shapes:
            continue
        shape = (batch, *shapes[mod][1:])
        gemm = gemm_form(mod, shape)
        if gemm is None:
            continue
        x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(bool(rows) or name != first)  # training needs no gradient of the images
        params = [mod.weight, mod.bias]
        wrt = [x, *params] if x.requires_grad else params
        ref = mod(x)
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, wrt, g)
        got_y = gemm(x)
        got = torch.autograd.grad(got_y, wrt, g)
        err = max(
            ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
            for a, b in zip((got_y, *got), (ref, *want), strict=True)
        )

        macs = ref[0].numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] * batch
        if isinstance(mod, nn.ConvTranspose2d):  # each input value feeds k*k*out outputs
            macs = x[0].numel() * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1] * batch
        us = {
            "torch fp32": _time(_step(mod, x, wrt, g), iters, rounds),
            "torch bf16": _time(_step(mod, x, wrt, g, bf16=True), iters, rounds),
            "GEMM fp32": _time(_step(gemm, x, wrt, g), iters, rounds),
        }
        rows.append(
            {
                "layer": name,
                "module": repr(mod),
                "input": list(shape),
                "mmacs_fwd": macs / 1e6,
                "us_fwd_bwd": us,
                "gemm_max_rel_err": err,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="seed-strided")
    p.add_argument("--latent-dim", type=int, default=12)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.arch, args.latent_dim, args.batch, args.iters, args.rounds)
    if not rows:
        print(f"{args.arch}: no convolution with a matrix-product form here", file=sys.stderr)
        return 1
    print(
        f"{args.arch}, latent {args.latent_dim}, batch {args.batch}, {args.threads} threads: "
        "microseconds per forward + backward (best of rounds)"
    )
    print("| layer | module | M multiply-adds (fwd) | torch fp32 | torch bf16 | GEMM fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        u = r["us_fwd_bwd"]
        print(
            f"| {r['layer']} | `{r['module']}` | {r['mmacs_fwd']:.2f} | {u['torch fp32']:.0f} | "
            f"{u['torch bf16']:.0f} | {u['GEMM fp32']:.0f} |"
        )
    tot = {k: sum(r["us_fwd_bwd"][k] for r in rows) for k in rows[0]["us_fwd_bwd"]}
    print(
        f"| total | | | {tot['torch fp32']:.0f} | {tot['torch bf16']:.0f} | {tot['GEMM fp32']:.0f} |"
    )
    worst = max(r["gemm_max_rel_err"] for r in rows)
    print(f"GEMM forms match the modules: max relative error {worst:.1e} (outputs and gradients)")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
