"""Rate-distortion measures on whole photos: PSNR, MS-SSIM, Bjøntegaard rate differences."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.interpolate import PchipInterpolator

__all__ = ["psnr", "ms_ssim", "bd_rate", "pareto"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images over all pixels and channels (peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean SSIM and mean contrast-structure term per channel over valid windows, each [C]."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    c = x.shape[1]
    wh = win.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = win.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean((0, 2, 3)), cs.mean((0, 2, 3))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (5 scales, 11x11 Gaussian window sigma 1.5, 2x2 average downsampling), averaged
    over channels. a, b: uint8 [H, W, C], each side at least 176 pixels."""

    def tensor(im: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.atleast_3d(im).transpose(2, 0, 1).astype(np.float64))[None]

    x, y = tensor(a), tensor(b)
    if min(x.shape[-2:]) < 11 * 2 ** (len(MS_SSIM_WEIGHTS) - 1):  # the window at the 5th scale
        raise ValueError("MS-SSIM needs images of at least 176 pixels on each side")
    win, vals = _gaussian_window(), []
    for i in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = _ssim_terms(x, y, win)
        vals.append(torch.relu(ssim if i == len(MS_SSIM_WEIGHTS) - 1 else cs))
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    w = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64)[:, None]
    return float(torch.prod(torch.stack(vals) ** w, dim=0).mean())


def pareto(rate, quality) -> tuple[np.ndarray, np.ndarray]:
    """Points sorted by rate, keeping only those better than every cheaper point."""
    order = np.argsort(rate)
    r, q = np.asarray(rate, float)[order], np.asarray(quality, float)[order]
    keep = q > np.maximum.accumulate(np.concatenate([[-np.inf], q[:-1]]))
    return r[keep], q[keep]


def bd_rate(rate_a, psnr_a, rate_b, psnr_b, rate_range: tuple[float, float] | None = None) -> float:
    """Bjøntegaard delta rate of B against A in percent (negative: B needs fewer bits).

    log-rate as a piecewise cubic (PCHIP) function of PSNR for each codec, integrated over the PSNR
    interval both cover; with ``rate_range`` (bpp) the interval is further limited to where both
    codecs' rates lie within it. NaN when the curves do not overlap.
    """
    curves = []
    for r, q in ((rate_a, psnr_a), (rate_b, psnr_b)):
        r, q = pareto(r, q)
        if len(r) < 2:
            return float("nan")
        curves.append((PchipInterpolator(q, np.log(r)), q.min(), q.max(),
                       PchipInterpolator(np.log(r), q)))  # fmt: skip
    lo = max(c[1] for c in curves)
    hi = min(c[2] for c in curves)
    if rate_range is not None:
        lr = np.log(rate_range)
        for _, _, _, inv in curves:
            lo = max(lo, float(inv(np.clip(lr[0], *inv.x[[0, -1]]))))
            hi = min(hi, float(inv(np.clip(lr[1], *inv.x[[0, -1]]))))
    if hi <= lo:
        return float("nan")
    ia, ib = (c[0].integrate(lo, hi) for c in curves)
    return float((np.exp((ib - ia) / (hi - lo)) - 1) * 100)
