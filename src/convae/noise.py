"""Input corruptions for denoising training and benchmarks: pure functions of (x, generator).

A spec is ``kind:amount``; several are applied in order, each to the previous one's (clipped)
output. All outputs stay in [0, 1]. An amount ``LO-HI`` is a range: each image draws its own
amount uniformly from it (a model trained on a range serves every level in it).

* ``gaussian:S``             x + S * N(0, 1), clipped (the Keras denoising example uses 0.4;
                             photos: S = 25/255 ~ 0.1; ``gaussian:0-0.2`` for a range)
* ``poisson-gaussian:A/B``   camera-like, signal-dependent: Poisson(x / A) * A + B * N(0, 1), so
                             the variance is A * x + B^2 (A the gain, B the read noise; each may
                             be a range: ``poisson-gaussian:0-0.04/0-0.1``)
* ``salt-pepper:P``          a fraction P of pixels set to 0 or 1 (half each; the same pixel in
                             every channel)
* ``speckle:S``              x + S * x * N(0, 1), clipped (multiplicative: black stays black)
* ``mask:P``                 random erasing: one rectangle per image covering a fraction P of it
* ``jpeg:Q``                 a JPEG encode/decode round trip at quality Q (1-100; Pillow, 4:2:0
                             chroma as cameras write it) - compression artefacts
* ``blind``                  the mixture a blind photo denoiser trains on: per image 70 %
                             ``gaussian:0-0.2`` (up to ~50/255), 30 % ``poisson-gaussian:0-0.04/0-0.1``

Randomness comes only from the ``generator``: the same generator state gives the same corruption.
The random numbers are drawn on the generator's device (a CPU generator works for a CUDA or MPS
batch, a CUDA generator keeps the draw on the GPU), so no device ever needs its own code path.
Noise is drawn independently per channel and is zero-mean before clipping, so it does not shift
an image's colour (clipping at 0 and 1 does, a little, near black and white).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "parse_noise",
    "corrupt",
    "NOISE_KINDS",
    "Noise",
    "gaussian",
    "poisson_gaussian",
    "salt_pepper",
    "jpeg",
    "blind",
    "BLIND",
]

NOISE_KINDS = ("gaussian", "poisson-gaussian", "salt-pepper", "speckle", "mask", "jpeg", "blind")

# Parameters per kind, and each one's upper bound (None: any finite value >= 0).
_PARAMS: dict[str, tuple[float | None, ...]] = {
    "gaussian": (None,),
    "poisson-gaussian": (None, None),
    "salt-pepper": (1.0,),
    "speckle": (None,),
    "mask": (1.0,),
    "jpeg": (100.0,),
    "blind": (),
}
_NUMBER = r"\s*(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)\s*"
_RANGE = re.compile(f"^{_NUMBER}-{_NUMBER}$")

# The blind mixture: (share of images, kind, parameter ranges).
BLIND = (
    (0.7, "gaussian", ((0.0, 0.2),)),
    (0.3, "poisson-gaussian", ((0.0, 0.04), (0.0, 0.1))),
)


@dataclass(frozen=True)
class Noise:
    """One parsed corruption: its kind and a (low, high) range per parameter (low == high: fixed)."""

    kind: str
    ranges: tuple[tuple[float, float], ...] = ()

    def __str__(self) -> str:
        """The canonical spec: ``gaussian:0.4``, ``gaussian:0-0.2``, ``poisson-gaussian:0.02/0.01``."""
        if not self.ranges:
            return self.kind
        parts = [f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}" for lo, hi in self.ranges]
        return f"{self.kind}:{'/'.join(parts)}"

    @property
    def fixed(self) -> bool:
        return all(lo == hi for lo, hi in self.ranges)


def _amount(spec: str, text: str, bound: float | None, kind: str) -> tuple[float, float]:
    """``"0.4"`` -> (0.4, 0.4); ``"0-0.2"`` -> (0.0, 0.2); checked against the kind's bounds."""
    m = _RANGE.match(text)
    try:
        lo, hi = (float(m.group(1)), float(m.group(2))) if m else (float(text),) * 2
    except ValueError:
        raise ValueError(
            f"noise {spec!r}: {text.strip()!r} is not a number or a range LO-HI"
        ) from None
    if not all(math.isfinite(v) and v >= 0 for v in (lo, hi)) or (bound and hi > bound):
        limit = f" and <= {bound:g}" if bound else ""
        raise ValueError(f"noise {spec!r}: the amount must be a finite number >= 0{limit}")
    if lo > hi:
        raise ValueError(f"noise {spec!r}: a range goes from low to high, not {text.strip()}")
    if kind == "jpeg" and lo < 1:
        raise ValueError(f"noise {spec!r}: JPEG quality goes from 1 to 100")
    return lo, hi


def parse_noise(spec: str) -> Noise:
    """``"gaussian:0.4"`` -> Noise("gaussian", ((0.4, 0.4),)); a ValueError names the accepted forms."""
    kind, sep, amount = spec.partition(":")
    kind = kind.strip().lower()
    forms = (
        "KIND:AMOUNT with KIND one of gaussian, salt-pepper, speckle, mask, jpeg (AMOUNT a number "
        "or a range LO-HI), poisson-gaussian:A/B, or blind; e.g. gaussian:0.4"
    )
    if kind not in _PARAMS or (bool(sep) != bool(_PARAMS[kind])):
        raise ValueError(f"noise {spec!r} must look like {forms}")
    texts = amount.split("/") if sep else []
    if len(texts) != len(_PARAMS[kind]):
        raise ValueError(f"noise {spec!r}: {kind} takes {len(_PARAMS[kind])} amount(s) A/B")
    ranges = tuple(_amount(spec, t, b, kind) for t, b in zip(texts, _PARAMS[kind], strict=True))
    return Noise(kind, ranges)


def _draw(kind: str, shape: tuple[int, ...], x: Tensor, g: torch.Generator | None) -> Tensor:
    """Uniform or normal float32 numbers drawn on the generator's device, returned on ``x``'s."""
    dev = g.device if g is not None else x.device
    fn = torch.rand if kind == "uniform" else torch.randn
    r = fn(shape, generator=g, device=dev, dtype=torch.float32)
    return r.to(x.device, non_blocking=True)


def _per_image(r: tuple[float, float], x: Tensor, g: torch.Generator | None) -> Tensor | float:
    """A fixed amount as a float (no random draw: the stream stays as it was), a range as one
    uniform amount per image, [B, 1, 1, 1]."""
    lo, hi = r
    if lo == hi:
        return lo
    u = _draw("uniform", (len(x), 1, 1, 1), x, g).to(x.dtype)
    return lo + (hi - lo) * u


def gaussian(x: Tensor, g: torch.Generator | None, sigma: float | Tensor) -> Tensor:
    """x + sigma * N(0, 1), clipped; ``sigma`` a float or one value per image [B, 1, 1, 1]."""
    if isinstance(sigma, float | int) and sigma == 0:
        return x.clamp(0.0, 1.0)
    return (x + sigma * _draw("normal", tuple(x.shape), x, g).to(x.dtype)).clamp_(0.0, 1.0)


def poisson_gaussian(
    x: Tensor, g: torch.Generator | None, a: float | Tensor, b: float | Tensor
) -> Tensor:
    """Shot noise of gain ``a`` (x / a photons at level x) plus read noise of std ``b``, clipped.

    The Poisson draw is exact (``torch.poisson``), so dark regions get a real sensor's skewed
    noise; ``a = 0`` means no shot noise. ``a``, ``b``: floats or one value per image [B, 1, 1, 1].
    """
    a_t = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    safe = a_t.clamp_min(1e-6)
    dev = g.device if g is not None else x.device
    rate = (x / safe).expand_as(x).contiguous().to(dev, torch.float32)
    shot = torch.poisson(rate, generator=g).to(x.device, x.dtype) * safe
    y = torch.where(a_t > 0, shot, x)
    return gaussian(y, g, b)


def salt_pepper(x: Tensor, g: torch.Generator | None, p: float | Tensor) -> Tensor:
    """A fraction ``p`` of pixels (every channel at once, like dead and hot pixels) set to 0 or 1."""
    b, _, h, w = x.shape
    u = _draw("uniform", (b, 1, h, w), x, g)  # [B, 1, H, W]: every channel alike
    salt = _draw("uniform", (b, 1, h, w), x, g) < 0.5
    hit = u < p
    return x.masked_fill(hit & salt, 1.0).masked_fill(hit & ~salt, 0.0)


def jpeg(x: Tensor, quality: float | Tensor) -> Tensor:
    """A JPEG round trip of each image at ``quality`` (1-100; a float or [B, 1, 1, 1]).

    Pillow codes one image at a time: ~0.1 ms for a 64 x 64 crop, far below a training step.
    Deterministic: it needs no generator.
    """
    from PIL import Image

    q = torch.as_tensor(quality).reshape(-1).round().int().tolist()
    u8 = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    out = np.empty(tuple(u8.shape), dtype=np.uint8)
    for i, img in enumerate(u8.cpu().numpy()):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
            buf, format="JPEG", quality=int(q[i % len(q)])
        )
        out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype).div_(255.0)


def blind(x: Tensor, g: torch.Generator | None) -> Tensor:
    """The blind mixture (:data:`BLIND`): each image gets one kind and its own strength."""
    shares = torch.tensor([s for s, _, _ in BLIND])
    u = _draw("uniform", (len(x),), x, g).cpu()
    kind = torch.bucketize(u, shares.cumsum(0)[:-1], right=True)  # [B] index into BLIND
    out = x.clone()
    for k, (_, name, ranges) in enumerate(BLIND):
        idx = (kind == k).nonzero().flatten().to(x.device)
        if len(idx):
            out[idx] = _apply(Noise(name, ranges), x[idx], g)
    return out


def _apply(n: Noise, x: Tensor, g: torch.Generator | None) -> Tensor:
    """One corruption on a batch; amounts drawn per image where they are ranges."""
    if n.kind == "blind":
        return blind(x, g)
    amounts = [_per_image(r, x, g) for r in n.ranges]
    if n.fixed and amounts[0] == 0 and n.kind != "jpeg":
        return x
    if n.kind == "gaussian":
        return gaussian(x, g, amounts[0])
    if n.kind == "poisson-gaussian":
        return poisson_gaussian(x, g, amounts[0], amounts[1])
    if n.kind == "speckle":
        return x + amounts[0] * x * _draw("normal", tuple(x.shape), x, g).to(x.dtype)
    if n.kind == "salt-pepper":
        return salt_pepper(x, g, amounts[0])
    if n.kind == "jpeg":
        return jpeg(x, amounts[0])
    if not n.fixed:  # mask: one area per image
        return torch.stack([_apply(Noise("mask", ((float(a),) * 2,)), xi[None], g)[0]
                            for a, xi in zip(amounts[0].flatten(), x, strict=True)])  # fmt: skip
    b, _, h, w = x.shape
    return x.masked_fill(_rectangles(amounts[0], b, h, w, x, g), 0.0)


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
    if len(out) == 0:
        return out
    for n in parsed:
        out = _apply(n, out, generator).clamp_(0.0, 1.0)  # the next corruption sees a valid image
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
