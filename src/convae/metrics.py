"""Pure metric functions on float image tensors in [0, 1], shaped [N, C, H, W], and the JSON form
of their results (which may be infinite: the PSNR of a perfect reconstruction)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

__all__ = [
    "mse_per_image",
    "psnr_per_image",
    "ssim_per_image",
    "ssim_maps",
    "summarize",
    "json_safe",
    "json_restore",
]


def mse_per_image(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of each image -> [N] (float64 for stable sums)."""
    d = x.double() - y.double()
    return d.pow(2).flatten(1).mean(1)


def psnr_per_image(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image (data range 1) -> [N]; +inf where the
    reconstruction is perfect (MSE 0), as the definition gives: no finite cap pretends otherwise."""
    return -10.0 * torch.log10(mse_per_image(x, y))  # log10(0) = -inf


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


# ---------------------------------------------------------------------------------------------
# Results as JSON: JSON has no infinity and no NaN

INF_SUFFIX = "_inf"


def json_safe(obj: Any, where: str = "result") -> Any:
    """A copy of ``obj`` (dicts, lists, numbers, strings) that JSON can hold exactly.

    An infinite number under key ``k`` becomes ``null`` and gains a sibling ``k + "_inf"`` saying
    which infinity: ``{"psnr": inf}`` -> ``{"psnr": null, "psnr_inf": "+inf"}`` (``float()`` of
    that string gives the number back; :func:`json_restore` undoes it). A NaN is not a result but
    a failure: ``ValueError`` naming where it is. Infinite list items have no key to explain them
    and are refused the same way.
    """
    if isinstance(obj, np.generic | Tensor) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            raise ValueError(f"{where} is NaN (not a number): the computation failed")
        if math.isinf(obj):
            raise ValueError(f"{where} is infinite where JSON cannot say so")
        return obj
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if isinstance(v, np.generic | Tensor) and getattr(v, "ndim", 0) == 0:
                v = v.item()
            if isinstance(v, float) and math.isinf(v):
                if f"{k}{INF_SUFFIX}" in obj:
                    raise ValueError(f"{where}.{k}{INF_SUFFIX} exists: {where}.{k} cannot say inf")
                out[k], out[f"{k}{INF_SUFFIX}"] = None, "+inf" if v > 0 else "-inf"
            else:
                out[k] = json_safe(v, f"{where}.{k}")
        return out
    if isinstance(obj, list | tuple):
        return [json_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def json_restore(obj: Any) -> Any:
    """The inverse of :func:`json_safe`: ``null`` with a ``"<key>_inf"`` sibling becomes the
    infinity again (for JSON that convae wrote and now reads back)."""
    if isinstance(obj, list):
        return [json_restore(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        tag = obj.get(f"{k}{INF_SUFFIX}") if isinstance(k, str) else None
        if v is None and tag in ("+inf", "-inf"):
            out[k] = float(tag)
        elif not (isinstance(k, str) and k.endswith(INF_SUFFIX) and v in ("+inf", "-inf")):
            out[k] = json_restore(v)
    return out
