"""Pure metric functions on float image tensors in [0, 1], shaped [N, C, H, W]."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["mse_per_image", "psnr_per_image", "ssim_per_image", "ssim_maps", "summarize"]

PSNR_CAP = 100.0  # dB reported for a perfect reconstruction (MSE 0)


def mse_per_image(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of each image -> [N] (float64 for stable sums)."""
    d = x.double() - y.double()
    return d.pow(2).flatten(1).mean(1)


def psnr_per_image(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image (data range 1) -> [N]; capped at 100 dB."""
    mse = mse_per_image(x, y)
    return torch.where(
        mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, PSNR_CAP)
    ).clamp_max(PSNR_CAP)


def _ssim_options(shape: tuple[int, ...]) -> dict:
    """scikit-image SSIM settings for images of ``shape`` [..., H, W]: an 11-px Gaussian window
    (sigma 1.5, Wang et al.); images under 11 px fall back to the largest odd box window <= 7."""
    small = min(shape[-2:]) < 11
    return {
        "data_range": 1.0,
        "channel_axis": 0,
        "gaussian_weights": not small,
        "sigma": 1.5,
        "use_sample_covariance": small,
        "win_size": None if not small else min(7, min(shape[-2:]) // 2 * 2 - 1),
    }


def ssim_per_image(x: Tensor, y: Tensor) -> np.ndarray:
    """Structural similarity of each image (scikit-image, Gaussian window as Wang et al.) -> [N]."""
    from skimage.metrics import structural_similarity

    a = x.detach().float().cpu().numpy()
    b = y.detach().float().cpu().numpy()
    opts = _ssim_options(a.shape)
    out = np.empty(len(a), dtype=np.float64)
    for i in range(len(a)):
        out[i] = structural_similarity(a[i], b[i], **opts)
    return out


def ssim_maps(x: Tensor, y: Tensor) -> np.ndarray:
    """Local SSIM of each pixel, averaged over channels -> float32 [N, H, W] (same window as
    :func:`ssim_per_image`, whose value is the mean of this map away from the border)."""
    from skimage.metrics import structural_similarity

    a = x.detach().float().cpu().numpy()
    b = y.detach().float().cpu().numpy()
    opts = _ssim_options(a.shape)
    out = np.empty((len(a), *a.shape[-2:]), dtype=np.float32)
    for i in range(len(a)):
        _, smap = structural_similarity(a[i], b[i], full=True, **opts)
        out[i] = smap.mean(0)
    return out


def summarize(x: Tensor, y: Tensor, ssim: bool = True) -> dict[str, float]:
    """Mean MSE, PSNR (mean of per-image dB) and SSIM of reconstructions ``y`` of ``x``."""
    out = {
        "mse": float(mse_per_image(x, y).mean()),
        "psnr": float(psnr_per_image(x, y).mean()),
    }
    if ssim:
        out["ssim"] = float(ssim_per_image(x, y).mean())
    return out
