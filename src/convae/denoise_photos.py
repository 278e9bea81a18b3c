"""The photo benchmark of the blind denoiser: convae against BM3D and scikit-image's classical
filters on whole photos, at fixed noise levels, with PSNR, SSIM, colour shift and seconds per
megapixel.

Every method sees the same noisy floats (clipped to [0, 1], not re-quantized; one fixed seed per
photo and level). BM3D (``bm3d.bm3d_rgb``) is given the true noise std (for Poisson-Gaussian noise
the photo's effective std, sqrt(mean(a x + b^2))): a non-blind anchor. The scikit-image filters get
that std too, and their remaining parameters are tuned per level by grid search for the best mean
PSNR on crops of *training* photos with other noise draws; nothing is tuned on the scored photos.
convae is blind: it is given nothing but the noisy photo, through convae's whole-image path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .images import write_png
from .inference import finite_pixels, map_image, to_float
from .metrics import psnr_per_image, ssim_per_image
from .models import AutoEncoder
from .noise import gaussian, poisson_gaussian

__all__ = [
    "Level",
    "LEVELS",
    "METHODS",
    "add_noise",
    "score",
    "run_method",
    "tune",
    "score_photos",
    "classical_report",
    "model_report",
    "denoise_photo",
    "markdown",
    "summary",
]


@dataclass(frozen=True)
class Level:
    """A noise level of the benchmark: Gaussian ``sigma`` (on the 0-255 scale), or
    Poisson-Gaussian with gain ``a`` and read noise ``b`` (on the 0-1 scale)."""

    name: str
    sigma: float = 0.0
    a: float = 0.0
    b: float = 0.0


LEVELS: dict[str, Level] = {
    lv.name: lv
    for lv in (
        Level("gaussian-15", sigma=15),
        Level("gaussian-25", sigma=25),
        Level("gaussian-50", sigma=50),
        Level("poisson-gaussian-0.02-0.02", a=0.02, b=0.02),  # 50 photons at white + 5/255 read
    )
}


def add_noise(x: Tensor, level: Level, seed: int) -> tuple[Tensor, float]:
    """Corrupt float [1, C, H, W] -> (noisy, the std a non-blind method is given)."""
    g = torch.Generator().manual_seed(seed)
    if level.sigma:
        return gaussian(x, g, level.sigma / 255), level.sigma / 255
    sigma = float(torch.sqrt((level.a * x.double()).mean() + level.b**2))
    return poisson_gaussian(x, g, level.a, level.b), sigma


def score(clean: Tensor, out: Tensor) -> tuple[float, float]:
    """(PSNR dB, SSIM) of one float image [C, H, W] against the clean one (convae.metrics)."""
    return (
        float(psnr_per_image(clean[None], out[None])[0]),
        float(ssim_per_image(clean[None], out[None])[0]),
    )


# ---------------------------------------------------------------------------------------------
# Classical methods: fn(noisy float64 [H, W, C], sigma, **params) -> [H, W, C]


@dataclass(frozen=True)
class Method:
    """A classical denoiser and its parameter grid (a function of the level's name)."""

    fn: Callable[..., np.ndarray]
    grid: Callable[[str], list[dict[str, Any]]]


def _nlm(y: np.ndarray, s: float, k: float, patch: int) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(y, patch_size=patch, patch_distance=6, h=k * s, sigma=s,
                            fast_mode=True, channel_axis=-1)  # fmt: skip


def _wavelet(y: np.ndarray, s: float, k: float, method: str) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(y, sigma=k * s, method=method, mode="soft", channel_axis=-1,
                           convert2ycbcr=True, rescale_sigma=True)  # fmt: skip


def _tv(y: np.ndarray, s: float, k: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(y, weight=k * s, channel_axis=-1)


def _bilateral(y: np.ndarray, s: float, k: float, spatial: float) -> np.ndarray:
    from skimage.restoration import denoise_bilateral

    return denoise_bilateral(y, sigma_color=k * s, sigma_spatial=spatial, channel_axis=-1)


def _bm3d(y: np.ndarray, s: float) -> np.ndarray:
    try:
        import bm3d
    except ImportError as e:
        raise ValueError("BM3D needs the bm3d package: pip install 'convae[bench]'") from e

    return bm3d.bm3d_rgb(y, s)


def _nlm_grid(level: str) -> list[dict[str, Any]]:
    # at sigma 50 the best h sits low: the grid goes further down there
    ks = (
        (0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
        if level == "gaussian-50"
        else (0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    )
    return [{"k": k, "patch": p} for p in (5, 7) for k in ks]


METHODS: dict[str, Method] = {
    "bm3d": Method(_bm3d, lambda lv: [{}]),
    "nlm": Method(_nlm, _nlm_grid),
    "wavelet": Method(
        _wavelet,
        lambda lv: [
            {"k": k, "method": m}
            for m in ("BayesShrink", "VisuShrink")
            for k in (0.25, 0.5, 0.75, 1.0, 1.5)
        ],
    ),  # fmt: skip
    "tv": Method(_tv, lambda lv: [{"k": k} for k in (0.4, 0.6, 0.8, 1.0, 1.3, 1.7)]),
    "bilateral": Method(
        _bilateral,
        lambda lv: [
            {"k": k, "spatial": sp} for sp in (1.0, 2.0, 3.0) for k in (0.25, 0.5, 1.0, 2.0)
        ],
    ),  # fmt: skip
}


def _hwc(x: Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def _chw(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.clip(a, 0, 1)).permute(2, 0, 1).float()


def run_method(name: str, noisy: Tensor, sigma: float, params: dict[str, Any]) -> Tensor:
    """Classical method ``name`` with ``params`` on a float image [C, H, W] -> [C, H, W]."""
    return _chw(METHODS[name].fn(_hwc(noisy), sigma, **params))


def tune(name: str, level: Level, crops: Sequence[Tensor]) -> tuple[dict[str, Any], float]:
    """The grid point of classical method ``name`` with the best mean PSNR on ``crops`` (uint8
    [C, H, W] of training photos, noisy with seeds 10000 + i) -> (params, PSNR dB)."""
    noisy = []
    for i, c in enumerate(crops):
        x = to_float(c)
        y, s = add_noise(x[None], level, seed=10_000 + i)
        noisy.append((x, _hwc(y[0]), s))
    best: tuple[dict[str, Any], float] | None = None
    for params in METHODS[name].grid(level.name):
        fn = METHODS[name].fn
        p = float(np.mean([score(x, _chw(fn(y, s, **params)))[0] for x, y, s in noisy]))
        if best is None or p > best[1]:
            best = (params, p)
    assert best is not None
    return best


def score_photos(
    fn: Callable[[Tensor, float], Tensor], photos: dict[str, Tensor], level: Level
) -> list[dict[str, Any]]:
    """``fn(noisy float [C, H, W], sigma) -> denoised`` on each photo (uint8 [C, H, W]; photo i
    gets noise seed i) -> one row per photo: PSNR, SSIM, wall and CPU seconds per megapixel (of
    ``fn`` alone), and the largest shift of a channel's mean, in 8-bit steps."""
    rows = []
    for i, (name, u8) in enumerate(photos.items()):
        x = to_float(u8)
        y, s = add_noise(x[None], level, seed=i)
        t, c = time.perf_counter(), time.process_time()
        out = fn(y[0], s).clamp(0, 1)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        p, ss = score(x, out)
        mp = x[0].numel() / 1e6
        shift = float((out.double() - x.double()).mean((1, 2)).abs().max() * 255)
        rows.append({"photo": name, "psnr": p, "ssim": ss, "s_per_mp": wall / mp,
                     "cpu_s_per_mp": cpu / mp, "sigma_given": s,
                     "colour_shift_255": shift})  # fmt: skip
    return rows


def classical_report(
    photos: dict[str, Tensor],
    tune_crops: Sequence[Tensor],
    levels: Sequence[Level],
    methods: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """The noisy input and each classical method (tuned on ``tune_crops``) at every level ->
    {level: {method: {"params", "tune_psnr", "rows"}}}."""
    say = progress or (lambda msg: None)
    res: dict[str, dict[str, Any]] = {}
    for level in levels:
        res[level.name] = {
            "noisy": {"params": {}, "rows": score_photos(lambda y, s: y, photos, level)}
        }
        for m in methods:
            params, tuned = tune(m, level, tune_crops) if m != "bm3d" else ({}, None)
            rows = score_photos(lambda y, s, m=m, p=params: run_method(m, y, s, p), photos, level)
            res[level.name][m] = {"params": params, "tune_psnr": tuned, "rows": rows}
            say(f"{level.name} {m} {params}: " + " ".join(f"{r['psnr']:.2f}" for r in rows))
    return res


@torch.inference_mode()
def denoise_photo(model: AutoEncoder, noisy: Tensor) -> Tensor:
    """One float image [C, H, W] of any size through convae's whole-image path -> [C, H, W]."""
    return map_image(model, noisy, lambda x: finite_pixels(model(x), model))


def model_report(
    models: dict[str, AutoEncoder], photos: dict[str, Tensor], levels: Sequence[Level]
) -> dict[str, dict[str, Any]]:
    """Each model (blind: given only the noisy photo) at every level -> the report's shape."""
    res: dict[str, dict[str, Any]] = {}
    for level in levels:
        res[level.name] = {}
        for label, model in models.items():
            rows = score_photos(lambda y, s, m=model: denoise_photo(m, y), photos, level)
            res[level.name][label] = {"params": {"run": str(model.run_dir or "")}, "rows": rows}
    return res


ORDER = ("noisy", "convae", "bm3d", "nlm", "wavelet", "tv", "bilateral")


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def markdown(res: dict[str, dict[str, Any]]) -> str:
    """One row per level and method: PSNR / SSIM per photo and their mean, CPU and wall s/MP,
    the colour shift and the tuned parameters."""
    photos = [r["photo"] for r in next(iter(next(iter(res.values())).values()))["rows"]]
    head = ["level", "method", *photos, "mean", "CPU s/MP", "wall s/MP", "colour shift", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level, methods in res.items():
        keys = sorted(methods, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))
        for m in keys:
            rows = methods[m]["rows"]
            cells = [f"{r['psnr']:.2f} / {r['ssim']:.3f}" for r in rows]
            mean = f"{_mean(rows, 'psnr'):.2f} / {_mean(rows, 'ssim'):.3f}"
            if m.startswith("convae"):
                mean = f"**{mean}**"
            params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in methods[m]["params"].items() if k != "run")  # fmt: skip
            lines.append(
                f"| {level} | {m} | " + " | ".join(cells) + f" | {mean} | "
                f"{_mean(rows, 'cpu_s_per_mp'):.2f} | {_mean(rows, 's_per_mp'):.2f} | "
                f"{max(r['colour_shift_255'] for r in rows):.1f} | {params} |"
            )
    return "\n".join(lines)


def summary(res: dict[str, dict[str, Any]]) -> str:
    """One row per method: the mean PSNR / SSIM over the photos at each level, the mean CPU
    seconds per megapixel over all levels, and how many times faster than BM3D that is."""
    levels = list(res)
    # the known methods in their order, then the others (several runs) as they came
    methods = sorted(dict.fromkeys(m for lv in res.values() for m in lv),
                     key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))  # fmt: skip

    def cpu(m: str) -> float | None:
        rows = [r for lv in res.values() if m in lv for r in lv[m]["rows"]]
        return _mean(rows, "cpu_s_per_mp") if rows else None

    bm3d = cpu("bm3d")
    head = ["method", *levels, "CPU s/MP", "x BM3D's speed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = []
        for lv in levels:
            rows = res[lv].get(m, {}).get("rows")
            cells.append(f"{_mean(rows, 'psnr'):.2f} / {_mean(rows, 'ssim'):.3f}" if rows else "")
        c = cpu(m)
        fast = f"{bm3d / c:.0f}" if bm3d and c and m != "noisy" else ""
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {c:.2f} | {fast} |")
    return "\n".join(lines)


def merge(reports: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{level: {method: entry}} of several reports; a later report's method replaces an earlier's."""
    out: dict[str, dict[str, Any]] = {}
    for r in reports:
        for level, methods in r.items():
            out.setdefault(level, {}).update(methods)
    return out


def write_photos(root: str | os.PathLike, photos: dict[str, Tensor]) -> list[Path]:
    """Photos (uint8 [C, H, W]) as ``root/NAME.png``."""
    paths = []
    for name, img in photos.items():
        p = Path(root) / f"{name}.png"
        write_png(img, p)
        paths.append(p)
    return paths
