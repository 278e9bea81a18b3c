"""Input corruptions for denoising training and benchmarks: pure functions of (x, generator).

A spec is ``kind:amount``; several are applied in order, each to the previous one's (clipped)
output. All outputs stay in [0, 1].

* ``gaussian:S``    x + S * N(0, 1), clipped (the Keras denoising example uses 0.4)
* ``salt-pepper:P`` a fraction P of pixels set to 0 or 1 (half each; the same pixel in every channel)
* ``speckle:S``     x + S * x * N(0, 1), clipped (multiplicative noise: dark pixels stay dark)
* ``mask:P``        random erasing: one rectangle per image covering a fraction P of it set to 0

Randomness comes only from the ``generator``: the same generator state gives the same corruption.
The random numbers are drawn on the generator's device (a CPU generator works for a CUDA or MPS
batch, a CUDA generator keeps the draw on the GPU), so no device ever needs its own code path.
"""

from __future__ import annotations

import math
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
        raise ValueError(
            f"noise {spec!r} must look like KIND:AMOUNT with KIND one of {', '.join(NOISE_KINDS)}, "
            "e.g. gaussian:0.4"
        )
    try:
        a = float(amount)
    except ValueError:
        raise ValueError(f"noise {spec!r}: {amount.strip()!r} is not a number") from None
    if not math.isfinite(a) or a < 0 or (kind in ("salt-pepper", "mask") and a > 1):
        bound = " and <= 1" if kind in ("salt-pepper", "mask") else ""
        raise ValueError(f"noise {spec!r}: the amount must be a finite number >= 0{bound}")
    return kind, a


def _draw(kind: str, shape: tuple[int, ...], x: Tensor, g: torch.Generator | None) -> Tensor:
    """Uniform or normal float32 numbers drawn on the generator's device, returned on ``x``'s."""
    dev = g.device if g is not None else x.device
    fn = torch.rand if kind == "uniform" else torch.randn
    r = fn(shape, generator=g, device=dev, dtype=torch.float32)
    return r.to(x.device, non_blocking=True)


def corrupt(x: Tensor, specs: Sequence[str], generator: torch.Generator | None = None) -> Tensor:
    """Return a corrupted copy of ``x`` ([B, C, H, W] float in [0, 1]); ``x`` is not modified."""
    if not x.is_floating_point():
        raise ValueError(
            f"corrupt() takes float images in [0, 1], not {x.dtype} (use convae.inference.to_float)"
        )
    if x.ndim != 4:
        raise ValueError(
            f"corrupt() takes a batch [B, C, H, W], not a tensor of shape {tuple(x.shape)}"
        )
    parsed = [parse_noise(s) for s in specs]  # validate everything before drawing anything
    out = x.clone()
    b, _, h, w = out.shape
    for kind, a in parsed:
        if a == 0:
            continue
        if kind == "gaussian":
            out = out + a * _draw("normal", tuple(out.shape), out, generator).to(out.dtype)
        elif kind == "speckle":
            out = out + a * out * _draw("normal", tuple(out.shape), out, generator).to(out.dtype)
        elif kind == "salt-pepper":
            u = _draw("uniform", (b, 1, h, w), out, generator)  # [B, 1, H, W]: every channel alike
            salt = _draw("uniform", (b, 1, h, w), out, generator) < 0.5
            hit = u < a
            out = out.masked_fill(hit & salt, 1.0).masked_fill(hit & ~salt, 0.0)
        elif kind == "mask":
            out = out.masked_fill(_rectangles(a, b, h, w, out, generator), 0.0)
        out = out.clamp_(0.0, 1.0)  # the next corruption sees a valid image
    return out


def _rectangles(a: float, b: int, h: int, w: int, x: Tensor, g: torch.Generator | None) -> Tensor:
    """[B, 1, H, W] bool: one axis-aligned rectangle per image of area ~ a*h*w, placed uniformly.

    The aspect ratio is log-uniform in [1/2, 2]; when the rectangle would be taller (wider) than the
    image, the other side grows so that the area, not the shape, is what ``a`` controls.
    """
    r = _draw("uniform", (b, 3), x, g)  # float32 whatever x's dtype: exact integer sizes
    area = a * h * w
    aspect = torch.exp((r[:, 0] * 2 - 1) * math.log(2.0))  # height / width
    rh = torch.sqrt(area * aspect).round().clamp(1, h)
    rw = (area / rh).round().clamp(1, w)
    rh = (area / rw).round().clamp(1, h)  # re-balance once when the width was clamped
    top = (r[:, 1] * (h - rh + 1)).floor()  # in [0, h - rh]
    left = (r[:, 2] * (w - rw + 1)).floor()
    ys = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    inside = (
        (ys >= top.view(b, 1, 1))
        & (ys < (top + rh).view(b, 1, 1))
        & (xs >= left.view(b, 1, 1))
        & (xs < (left + rw).view(b, 1, 1))
    )
    return inside.unsqueeze(1)
