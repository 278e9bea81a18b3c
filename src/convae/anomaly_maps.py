"""Per-pixel anomaly maps of whole images at full resolution, and the thresholds that turn them
into decisions, set on normal images only.

The map of an image ``x`` (uint8 ``[C, H, W]``, any size) compares it with its reconstruction
``r``, made by :func:`convae.inference.map_images` (the whole-image mechanism: padded, or tiled,
never resized). Raw components, per pixel, pixels in [0, 1]:

``sq``
    ``sum_c (x - r)**2``: intensity error.
``dssim``
    ``1 - SSIM`` of the luma (mean of the channels), 11-px Gaussian window (sigma 1.5): a wrong
    or missing structure counts more than a slightly-off grey level.
``chroma``
    The squared part of the residual ``x - r`` off the grey axis (R = G = B), RGB models only: a
    model of grey normal images returns grey, so a colour spot is the residual itself.

Each component is smoothed by a Gaussian (``smooth`` px) and put on a common scale by its own
statistics on normal calibration pixels: ``z = (m - median) / (q99 - median)``, 0 for a typical
normal pixel and 1 at the component's 99th percentile. Median and q99 are taken separately for
each distance to the image border (0 .. ``BORDER - 1`` px; farther in pooled): a convolutional
model pads at the border and errs more there, and without this the largest value of most normal
images would sit on their border. The map is the largest ``z`` over the components.

Thresholds (:class:`MapCalibration`):

- per pixel: the ``1 - pixel_fpr`` quantile of the map over all calibration pixels;
- per image: the image score is the largest value of the map, which grows with the image's area,
  so its threshold is set for each image size (:func:`image_threshold`): the ``k / (n + 1)``
  quantile of the scores of normal crops of that size.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import atomic_write
from .inference import finite_pixels, map_images

log = logging.getLogger(__name__)

__all__ = [
    "COMPONENTS",
    "MapCalibration",
    "components_for",
    "component_maps",
    "raw_maps",
    "gaussian_blur",
    "chroma",
    "border_distance",
    "fit_map_calibration",
    "anomaly_maps",
    "image_scores",
    "random_crops",
    "image_threshold",
    "threshold_at_fpr",
    "score_quantiles",
    "size_key",
    "map_to_u16",
    "heat_overlay",
    "write_map_files",
]

COMPONENTS = {
    "sq": "squared error summed over channels",
    "dssim": "1 - local SSIM of the luma (11-px Gaussian window, sigma 1.5)",
    "chroma": "squared chroma of the residual (its part off the grey axis; RGB models)",
}
BORDER = 12  # border distances normalized separately (px); farther in is pooled
SMOOTH = 2.0  # Gaussian sigma (px) applied to every raw component
QUANTILE = 0.99  # normal-pixel quantile that sets each component's spread
U16_AT_THRESHOLD = 10000  # the per-pixel threshold's value in the 16-bit map PNG
_MAX_VALUES = 1 << 22  # calibration values kept per component and border distance


@dataclass(frozen=True)
class MapCalibration:
    """How raw component maps become one map, and its per-pixel threshold (JSON as a dict)."""

    components: tuple[str, ...]  # names of the raw components, in the order of the raw maps
    centre: dict[str, list[float]]  # median of each smoothed component, per border distance
    spread: dict[str, list[float]]  # its q99 - median, per border distance
    pixel_threshold: float  # a pixel is anomalous when its map value is above this
    pixel_fpr: float  # the target false-positive rate of pixels it was set for
    n_images: int  # normal calibration images
    n_pixels: int  # their pixels
    smooth: float = SMOOTH
    quantile: float = QUANTILE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MapCalibration:
        if not isinstance(d, dict) or "components" not in d or "pixel_threshold" not in d:
            raise ValueError("not a per-pixel calibration (needs 'components', 'pixel_threshold')")
        known = set(cls.__dataclass_fields__)
        cal = cls(**{k: v for k, v in d.items() if k in known})
        cal = MapCalibration(**{**asdict(cal), "components": tuple(cal.components)})
        _check(cal)
        return cal


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check(cal: MapCalibration) -> None:
    """A stored calibration's numbers: known components, BORDER finite values each, positive
    spreads, a finite threshold and a rate in (0, 0.5]."""
    bad = [c for c in cal.components if c not in COMPONENTS and c != "pca"]
    if bad or not cal.components:
        raise ValueError(f"unknown map components {bad or '(none)'}")
    for c in cal.components:
        cs, sp = cal.centre.get(c), cal.spread.get(c)
        if not (isinstance(cs, list) and isinstance(sp, list) and len(cs) == len(sp) == BORDER):
            raise ValueError(f"component {c}: needs {BORDER} centres and spreads")
        if not all(_finite(v) for v in cs) or not all(_finite(v) and v > 0 for v in sp):
            raise ValueError(f"component {c}: centres must be finite, spreads positive")
    if not _finite(cal.pixel_threshold) or not (
        _finite(cal.pixel_fpr) and 0 < cal.pixel_fpr <= 0.5
    ):
        raise ValueError("the per-pixel threshold must be finite and its rate in (0, 0.5]")


def components_for(channels: int) -> tuple[str, ...]:
    """The components of a model with ``channels`` input channels (chroma needs RGB)."""
    return ("sq", "dssim", "chroma") if channels == 3 else ("sq", "dssim")


# ---------------------------------------------------------------------------------------------
# Raw component maps


def _kernel(sigma: float) -> Tensor:
    """Sampled Gaussian of radius ceil(3 sigma) (sigma 1.5: the 11-px SSIM window), sum 1."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of ``[..., H, W]`` (same size out; borders reflected, or
    repeated where the image is narrower than the kernel). ``sigma`` 0 returns ``x``."""
    if sigma <= 0:
        return x
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:]).float()
    k = _kernel(sigma)
    r = len(k) // 2
    for axis, kern in ((-2, k.view(1, 1, -1, 1)), (-1, k.view(1, 1, 1, -1))):
        pad = (0, 0, r, r) if axis == -2 else (r, r, 0, 0)
        mode = "reflect" if r < y.shape[axis] else "replicate"
        y = F.conv2d(F.pad(y, pad, mode=mode), kern)
    return y.reshape(shape)


def chroma(x: Tensor) -> Tensor:
    """Two opponent channels ``[B, 2, H, W]`` orthogonal to the grey axis (orthonormal basis)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.cat([(r - g) / math.sqrt(2), (r + g - 2 * b) / math.sqrt(6)], 1)


def _dssim(x: Tensor, y: Tensor, sigma: float = 1.5) -> Tensor:
    """``1 - SSIM`` per pixel of single-channel ``[B, 1, H, W]`` images in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    mx, my = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
    sxx = gaussian_blur(x * x, sigma) - mx * mx
    syy = gaussian_blur(y * y, sigma) - my * my
    sxy = gaussian_blur(x * y, sigma) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return 1.0 - s


def component_maps(x: Tensor, r: Tensor, names: Sequence[str]) -> Tensor:
    """Raw components ``names`` of inputs ``x`` and reconstructions ``r`` (float
    ``[B, C, H, W]`` in [0, 1]) -> ``[B, K, H, W]``."""
    out = []
    for name in names:
        if name == "sq":
            out.append((x - r).pow(2).sum(1, keepdim=True))
        elif name == "dssim":
            out.append(_dssim(x.mean(1, keepdim=True), r.mean(1, keepdim=True)))
        elif name == "chroma":
            if x.shape[1] != 3:
                raise ValueError("the chroma component needs RGB images")
            out.append(chroma(x - r).pow(2).sum(1, keepdim=True))
        else:
            raise ValueError(f"unknown map component {name!r}; choose from {', '.join(COMPONENTS)}")
    return torch.cat(out, 1)


def raw_maps(model, images, names: Sequence[str]) -> Tensor | list[Tensor]:
    """Raw component maps of uint8 images through the whole-image mechanism: a batch
    ``[N, C, H, W]`` -> ``[N, K, H, W]``, a list of ``[C, H, W]`` -> a list of ``[K, H, W]``."""

    def fn(x: Tensor) -> Tensor:
        return component_maps(x, finite_pixels(model(x), model), names)

    return map_images(model, images, fn)


# ---------------------------------------------------------------------------------------------
# Calibration: normalization per border distance and the per-pixel threshold


def border_distance(h: int, w: int) -> Tensor:
    """Distance of every pixel to the nearest border, capped at ``BORDER - 1`` -> long [H, W]."""
    r, c = torch.arange(h), torch.arange(w)
    d = torch.minimum(torch.minimum(r, h - 1 - r)[:, None], torch.minimum(c, w - 1 - c)[None, :])
    return d.clamp_max(BORDER - 1)


def _values(smoothed: Sequence[Tensor], k: int, d: int) -> np.ndarray:
    """Component ``k``'s values at border distance ``d`` over all images (evenly thinned to at
    most ``_MAX_VALUES``: the interior of large images holds millions)."""
    parts = [m[k][border_distance(*m.shape[-2:]) == d] for m in smoothed]
    v = torch.cat(parts).double().numpy()
    return v[:: max(1, len(v) // _MAX_VALUES)]


def _normalized(smoothed: Tensor, cal: MapCalibration) -> Tensor:
    """The map ``[..., H, W]`` of smoothed components ``[..., K, H, W]``: max of their z."""
    d = border_distance(*smoothed.shape[-2:])
    z = [
        (smoothed[..., k, :, :] - torch.tensor(cal.centre[c])[d]) / torch.tensor(cal.spread[c])[d]
        for k, c in enumerate(cal.components)
    ]
    return torch.stack(z).max(0).values


def fit_map_calibration(
    raw: Sequence[Tensor] | Tensor, names: Sequence[str], pixel_fpr: float
) -> MapCalibration:
    """Fit the normalization and the per-pixel threshold on raw maps ``[K, H, W]`` of normal
    images (any sizes)."""
    if not 0 < pixel_fpr <= 0.5:
        raise ValueError(f"the per-pixel false-positive rate must be in (0, 0.5], not {pixel_fpr}")
    if len(raw) == 0:
        raise ValueError("no normal images to calibrate the per-pixel threshold on")
    sm = [gaussian_blur(m, SMOOTH) for m in raw]
    if not all(bool(m.isfinite().all()) for m in sm):
        raise ValueError("the anomaly maps of the normal images are NaN or infinite")
    centre: dict[str, list[float]] = {c: [] for c in names}
    spread: dict[str, list[float]] = {c: [] for c in names}
    for k, c in enumerate(names):
        pooled: np.ndarray | None = None
        for d in range(BORDER):
            v = _values(sm, k, d)
            if len(v) == 0:  # a small image has no pixel this far in: use the nearest distance
                v = pooled if pooled is not None else np.zeros(1)
            med, hi = np.quantile(v, [0.5, QUANTILE])
            centre[c].append(float(med))
            spread[c].append(float(max(hi - med, 1e-12)))
            pooled = v
    cal = MapCalibration(tuple(names), centre, spread, 0.0, pixel_fpr, len(sm),
                         sum(m.shape[-2] * m.shape[-1] for m in sm))  # fmt: skip
    values = torch.cat([_normalized(m, cal).flatten() for m in sm]).double().numpy()
    thr = float(np.quantile(values[:: max(1, len(values) // (4 * _MAX_VALUES))], 1 - pixel_fpr))
    return MapCalibration(**{**asdict(cal), "pixel_threshold": thr})


def anomaly_maps(raw: Tensor | Sequence[Tensor], cal: MapCalibration) -> Tensor | list[Tensor]:
    """Calibrated maps: raw ``[N, K, H, W]`` -> ``[N, H, W]``, or a list of ``[K, H, W]`` -> a
    list of ``[H, W]`` (map units: 0 = typical normal pixel, 1 = a component's normal q99)."""
    if isinstance(raw, Tensor) and raw.ndim == 4:
        return _normalized(gaussian_blur(raw, cal.smooth), cal)
    return [_normalized(gaussian_blur(m, cal.smooth), cal) for m in raw]


def image_scores(maps: Tensor | Sequence[Tensor]) -> np.ndarray:
    """The image score of each map (its largest value) -> float64 [N]."""
    return np.array([float(m.max()) for m in maps], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# The per-image threshold, for each image size


def size_key(h: int, w: int) -> str:
    """How a size names its threshold in anomaly.json: "HxW"."""
    return f"{h}x{w}"


def random_crops(store, h: int, w: int, count: int, seed: int = 0) -> list[Tensor]:
    """Up to ``count`` crops ``h x w`` of the store's images that hold one -> uint8 [C, h, w]
    each: every position when there are no more than ``count`` (whole images of that size once
    each), else ``count`` at seeded random positions (images drawn in proportion to the
    positions they offer); [] when no image is that large."""
    sizes = np.asarray(store.sizes(), dtype=np.int64).reshape(-1, 2)
    rows, cols = np.clip(sizes[:, 0] - h + 1, 0, None), np.clip(sizes[:, 1] - w + 1, 0, None)
    room = rows * cols
    if room.sum() == 0:
        return []
    if room.sum() <= count:
        where = [
            (i, t, q) for i in range(len(sizes)) for t in range(rows[i]) for q in range(cols[i])
        ]
    else:
        rng = np.random.default_rng([seed, h, w])
        which = rng.choice(len(sizes), size=count, p=room / room.sum())
        where = [(i, int(rng.integers(0, rows[i])), int(rng.integers(0, cols[i]))) for i in which]
    return [torch.from_numpy(np.array(store.crop(int(i), t, q, h, w)))  # a writable copy
            for i, t, q in where]  # fmt: skip


def threshold_at_fpr(normal_scores: np.ndarray, fpr: float, *, quiet: bool = False) -> float:
    """Score threshold that a new normal image exceeds with probability ``fpr``.

    The order statistic at plotting position ``k / (n + 1)`` (numpy's "weibull" quantile): for
    i.i.d. scores, ``P(new > X_(k)) = (n + 1 - k) / (n + 1)``, so it is unbiased where the plain
    sample quantile flags too many normal images when ``n`` is small. Below the finest rate ``n``
    scores resolve, ``1 / (n + 1)``, it is the largest normal score (with a warning unless
    ``quiet``).
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"the false-positive rate must be in (0, 1), e.g. 0.05, not {fpr}")
    s = np.asarray(normal_scores, dtype=np.float64)
    if len(s) == 0:
        raise ValueError("no normal images to calibrate the threshold on")
    if fpr < 1.0 / (len(s) + 1) and not quiet:
        log.warning(
            "%d normal images cannot resolve a false-positive rate of %g (the finest is %.3g); "
            "the threshold is the largest normal score",
            len(s),
            fpr,
            1.0 / (len(s) + 1),
        )
    return float(np.quantile(s, 1.0 - fpr, method="weibull"))


def score_quantiles(s: np.ndarray) -> dict[str, float]:
    """The spread of normal image scores, as anomaly.json records it."""
    qs = np.quantile(s, [0.0, 0.25, 0.5, 0.75, 0.95, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "q95", "max"), map(float, qs), strict=True))


def image_threshold(
    model, cal: MapCalibration, store, size: tuple[int, int], fpr: float, *,
    max_crops: int = 200, max_pixels: int = 1 << 23, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The per-image threshold for images of ``size`` (H, W), from normal images ``store``
    (an :class:`~convae.sampling.ImageStore`, e.g. the run's validation files).

    Crops of that size at random positions (at most ``max_crops``, and ``max_pixels`` pixels in
    all, at least 20) are mapped and scored; the threshold is their ``k / (n + 1)`` quantile at
    ``1 - fpr``. Images larger than every normal image are scored as ``B`` blocks of the largest
    size they hold, taken as independent: the block threshold at rate ``1 - (1 - fpr)**(1/B)``.
    Returns ``{"threshold", "n", "how", "block", "quantiles"}``.
    """
    h, w = size
    n = int(min(max_crops, max(20, max_pixels // max(1, h * w))))
    crops = random_crops(store, h, w, n, seed)
    how, block, rate = "crops", [h, w], fpr
    if not crops:  # larger than every normal image: blocks of the largest size they all hold
        sizes = np.asarray(store.sizes()).reshape(-1, 2)
        bh = min(h, int(sizes[:, 0].max()))
        bw = min(w, int(sizes[sizes[:, 0] >= bh, 1].max()))
        crops = random_crops(store, bh, bw, n, seed)
        blocks = math.ceil(h / bh) * math.ceil(w / bw)
        how, block, rate = "blocks", [bh, bw], 1.0 - (1.0 - fpr) ** (1.0 / blocks)
    same = len({tuple(c.shape) for c in crops}) == 1
    batch = torch.stack(crops) if same else crops
    scores = image_scores(anomaly_maps(raw_maps(model, batch, cal.components), cal))
    return {
        "threshold": threshold_at_fpr(scores, rate),
        "n": len(crops),
        "how": how,
        "block": block,
        "quantiles": score_quantiles(scores),
    }


# ---------------------------------------------------------------------------------------------
# Map files


def map_to_u16(m: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Map [H, W] -> uint16 with the per-pixel threshold at ``U16_AT_THRESHOLD`` (10000):
    ``round(10000 * map / pixel_threshold)`` clipped to [0, 65535]."""
    scale = U16_AT_THRESHOLD / pixel_threshold
    return np.clip(np.rint(m.astype(np.float64) * scale), 0, 65535).astype(np.uint16)


def heat_overlay(image: np.ndarray, m: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the image in grey, the map in 'inferno' blended in where it is high
    (0 at a typical normal pixel, full colour at twice the threshold), and the outline of the
    pixels above the threshold in cyan."""
    from matplotlib import colormaps
    from scipy import ndimage

    grey = image.astype(np.float64).mean(0)[..., None].repeat(3, 2) / 255.0
    v = np.clip(m.astype(np.float64) / (2 * pixel_threshold), 0, 1)
    heat = colormaps["inferno"](v)[..., :3]
    alpha = 0.15 + 0.6 * v[..., None]
    out = (1 - alpha) * grey + alpha * heat
    mask = m > pixel_threshold
    out[mask & ~ndimage.binary_erosion(mask)] = (0.0, 1.0, 1.0)
    return np.rint(out * 255).astype(np.uint8)


def _png(a: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def map_file_names(stem: str) -> dict[str, str]:
    """The files written for one image: kind -> file name."""
    return {"heat": f"{stem}_heat.png", "map16": f"{stem}_map.png", "npy": f"{stem}_map.npy",
            "mask": f"{stem}_mask.png"}  # fmt: skip


def write_map_files(
    out_dir: str | os.PathLike, stem: str, image: np.ndarray, m: np.ndarray, pixel_threshold: float
) -> dict[str, str]:
    """Write the heat map over ``image`` (uint8 [C, H, W]), the map as 16-bit PNG and float32
    .npy, and the mask of pixels above ``pixel_threshold`` (0/255 PNG), each atomically, as
    ``OUT/{stem}_heat.png``, ``_map.png``, ``_map.npy``, ``_mask.png``. Returns kind -> path."""

    out = Path(out_dir)
    names = map_file_names(stem)
    npy = io.BytesIO()
    np.save(npy, m.astype(np.float32))
    note = {"convae": f"anomaly map: value = map * {U16_AT_THRESHOLD} / {pixel_threshold!r} "
                      f"(the per-pixel threshold is {U16_AT_THRESHOLD})"}  # fmt: skip
    data = {
        "heat": _png(heat_overlay(image, m, pixel_threshold)),
        "map16": _png(map_to_u16(m, pixel_threshold), note),
        "npy": npy.getvalue(),
        "mask": _png(((m > pixel_threshold) * 255).astype(np.uint8)),
    }
    for kind, payload in data.items():
        atomic_write(out / names[kind], payload)
    return {k: str(out / v) for k, v in names.items()}
