"""Input corruptions for denoising training and benchmarks: pure functions of (x, generator).

A spec is ``kind:amount``; several are applied in order. All outputs stay in [0, 1].

* ``gaussian:S``    x + S * N(0, 1), clipped (the Keras denoising example uses 0.4)
* ``salt-pepper:P`` a fraction P of pixels set to 0 or 1 (half each)
* ``speckle:S``     x + S * x * N(0, 1), clipped (multiplicative noise)
* ``mask:P``        random erasing: one rectangle per image covering a fraction P of it set to 0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["parse_noise", "corrupt", "NOISE_KINDS"]

NOISE_KINDS = ("gaussian", "salt-pepper", "speckle", "mask")


def parse_noise(spec: str) -> tuple[str, float]:
    """``"gaussian:0.4"`` -> ("gaussian", 0.4); raises ValueError with the accepted forms."""
    kind, sep, amount = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in NOISE_KINDS or not sep:
        raise ValueError(f"noise {spec!r} must look like KIND:AMOUNT with KIND one of {', '.join(NOISE_KINDS)}")
    try:
        a = float(amount)
    except ValueError:
        raise ValueError(f"noise {spec!r}: {amount!r} is not a number") from None
    if not (a >= 0) or (kind in ("salt-pepper", "mask") and a > 1):
        raise ValueError(f"noise {spec!r}: amount must be >= 0 (and <= 1 for {kind})")
    return kind, a


def _rand(shape, x: Tensor, g: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=g, device=x.device, dtype=x.dtype)


def corrupt(x: Tensor, specs: Sequence[str], generator: torch.Generator | None = None) -> Tensor:
    """Return a corrupted copy of ``x`` ([B, C, H, W] float in [0, 1]); ``x`` is not modified."""
    out = x.clone()
    for spec in specs:
        kind, a = parse_noise(spec)
        if a == 0:
            continue
        if kind == "gaussian":
            out = out + a * torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype)
        elif kind == "speckle":
            out = out + a * out * torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype)
        elif kind == "salt-pepper":
            b, _, h, w = out.shape
            u = _rand((b, 1, h, w), out, generator)  # same pixel hit in every channel
            salt = _rand((b, 1, h, w), out, generator) < 0.5
            hit = u < a
            out = torch.where(hit & salt, torch.ones_like(out), out)
            out = torch.where(hit & ~salt, torch.zeros_like(out), out)
        elif kind == "mask":
            b, _, h, w = out.shape
            # Rectangle of area a*h*w with aspect ratio in [1/2, 2], placed uniformly.
            r = _rand((b, 3), out, generator).float()
            aspect = torch.exp((r[:, 0] * 2 - 1) * 0.6931)
            rh = (torch.sqrt(a * h * w * aspect)).round().clamp(1, h)
            rw = (torch.sqrt(a * h * w / aspect)).round().clamp(1, w)
            top = (r[:, 1] * (h - rh + 1)).floor()
            left = (r[:, 2] * (w - rw + 1)).floor()
            ys = torch.arange(h, device=x.device).view(1, h, 1)
            xs = torch.arange(w, device=x.device).view(1, 1, w)
            inside = (
                (ys >= top.view(b, 1, 1)) & (ys < (top + rh).view(b, 1, 1))
                & (xs >= left.view(b, 1, 1)) & (xs < (left + rw).view(b, 1, 1))
            )
            out = out.masked_fill(inside.unsqueeze(1), 0.0)
    return out.clamp_(0.0, 1.0)
