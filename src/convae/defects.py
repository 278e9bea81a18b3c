"""Synthetic defects with ground-truth masks, and the metrics of per-pixel anomaly maps.

Every defect changes an RGB uint8 image [3, H, W] by an amount set by ``contrast`` in grey levels:

``scratch-dark`` / ``scratch-bright``
    A thin (1-2 px), slightly curved line 16-40 px long; ``contrast`` is the change of its core.
``blob``
    A soft-edged ellipse (radii 3-7 px), darker or brighter by ``contrast`` (random sign).
``colour``
    An ellipse (radii 4-8 px) shifted along a random hue that leaves the luma unchanged
    (``0.299 R + 0.587 G + 0.114 B``): invisible in grey; ``contrast`` is the largest channel change.
``patch``
    A 12-24 px square of another texture, matched to the mean and spread of the pixels it covers,
    blended in so that the RMS change is ``contrast`` (full replacement at most).

The mask marks the pixels changed by at least half the core change (the whole square for
``patch``). All randomness comes from the ``numpy.random.Generator`` passed in. Images must be
at least 48 x 48 (a scratch of 40 px must fit).

Metrics (:func:`image_auroc`, :func:`pixel_auroc`, :func:`pro_score`) follow the MVTec AD
evaluation: PRO is the per-region overlap integrated over the pixel false-positive rate up to 0.3.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "KINDS",
    "CONTRASTS",
    "add_defect",
    "defect_set",
    "image_auroc",
    "pixel_auroc",
    "pro_score",
    "regions",
]

KINDS = ("scratch-dark", "scratch-bright", "blob", "colour", "patch")
CONTRASTS = (10, 20, 30, 40)
LUMA = np.array([0.299, 0.587, 0.114])


def _scratch_alpha(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage in [0, 1] [H, W] of a curved line (quadratic Bezier) that lies inside the image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    while True:
        length = rng.uniform(16, 40)
        angle = rng.uniform(0, np.pi)
        p0 = rng.uniform([4, 4], [h - 4, w - 4])
        p2 = p0 + length * np.array([np.sin(angle), np.cos(angle)])
        bend = rng.uniform(-0.2, 0.2) * length  # the control point's offset across the chord
        p1 = (p0 + p2) / 2 + bend * np.array([np.cos(angle), -np.sin(angle)])
        t = np.linspace(0, 1, int(4 * length) + 2)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2  # [P, 2]
        if pts.min() >= 3 and pts[:, 0].max() <= h - 4 and pts[:, 1].max() <= w - 4:
            break
    d = np.full((h, w), np.inf)
    for y, x in pts:  # distance to the nearest sample point, 4 samples per pixel of length
        np.minimum(d, np.hypot(yy - y, xx - x), out=d)
    width = rng.uniform(1.0, 2.0)
    return np.clip(width / 2 + 0.5 - d, 0.0, 1.0)  # an anti-aliased box profile


def _ellipse_alpha(
    h: int, w: int, rmin: float, rmax: float, rng: np.random.Generator
) -> np.ndarray:
    """Coverage [H, W] of a rotated ellipse with radii in [rmin, rmax] and a 1-px soft edge."""
    ra, rb = rng.uniform(rmin, rmax, 2)
    m = int(np.ceil(rmax)) + 2
    cy, cx = rng.uniform([m, m], [h - m, w - m])
    th = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
    v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
    rho = np.hypot(u / ra, v / rb)  # 1 on the boundary
    return np.clip((1 - rho) * (ra + rb) / 2 + 0.5, 0.0, 1.0)


def _hue_direction(rng: np.random.Generator) -> np.ndarray:
    """A random RGB direction with zero luma change, scaled so its largest channel is +-1."""
    basis = np.linalg.svd(LUMA[None, :])[2][1:]  # [2, 3]: orthonormal, both orthogonal to LUMA
    phi = rng.uniform(0, 2 * np.pi)
    d = np.cos(phi) * basis[0] + np.sin(phi) * basis[1]
    return d / np.abs(d).max()


def _patch(
    img: np.ndarray, contrast: float, foreign: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A square of ``foreign`` texture, moment-matched and blended to RMS change ``contrast``."""
    _, h, w = img.shape
    s = int(rng.integers(12, 25))
    r, c = rng.integers(2, h - s - 1), rng.integers(2, w - s - 1)
    fr, fc = rng.integers(0, foreign.shape[0] - s), rng.integers(0, foreign.shape[1] - s)
    base = img[:, r : r + s, c : c + s].mean(0)  # grey of the covered pixels [s, s]
    f = foreign[fr : fr + s, fc : fc + s].astype(np.float64)
    f = (f - f.mean()) / max(f.std(), 1e-6) * base.std() + base.mean()
    rms = np.sqrt(np.mean((f - base) ** 2))
    alpha = min(1.0, contrast / max(rms, 1e-6))
    delta = np.zeros((h, w))
    delta[r : r + s, c : c + s] = alpha * (f - base)
    mask = np.zeros((h, w), dtype=bool)
    mask[r : r + s, c : c + s] = True
    return delta[None].repeat(3, 0), mask


def add_defect(
    img: np.ndarray,
    kind: str,
    contrast: float,
    rng: np.random.Generator,
    foreign: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One defect of ``kind`` written into uint8 [3, H, W] ``img`` -> (uint8 image, bool mask [H, W]).

    ``foreign``: a grey uint8 texture the ``patch`` defect is cut from (needed for that kind only).
    """
    if img.ndim != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 48:
        raise ValueError(
            f"defects go into RGB images [3, H, W] of at least 48 x 48, not {img.shape}"
        )
    _, h, w = img.shape
    if kind in ("scratch-dark", "scratch-bright"):
        a = _scratch_alpha(h, w, rng)
        delta = (1 if kind == "scratch-bright" else -1) * contrast * a[None].repeat(3, 0)
        mask = a >= 0.5
    elif kind == "blob":
        a = _ellipse_alpha(h, w, 3.0, 7.0, rng)
        delta = rng.choice([-1.0, 1.0]) * contrast * a[None].repeat(3, 0)
        mask = a >= 0.5
    elif kind == "colour":
        a = _ellipse_alpha(h, w, 4.0, 8.0, rng)
        delta = contrast * _hue_direction(rng)[:, None, None] * a[None]
        mask = a >= 0.5
    elif kind == "patch":
        if foreign is None:
            raise ValueError("the patch defect needs a foreign texture")
        delta, mask = _patch(img, contrast, foreign, rng)
    else:
        raise ValueError(f"unknown defect kind {kind!r}; choose one of {', '.join(KINDS)}")
    out = np.clip(np.rint(img.astype(np.float64) + delta), 0, 255).astype(np.uint8)
    return out, mask


def defect_set(
    bases: np.ndarray,
    kind: str,
    contrast: int,
    seed: int,
    foreign: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One defect per base image -> (uint8 [N, 3, H, W], bool masks [N, H, W]).

    Image ``i`` draws from ``default_rng([seed, kind index, contrast, i])``: every set is
    reproducible on its own, and changing one kind or contrast leaves the others as they were.
    """
    k = KINDS.index(kind) if kind in KINDS else -1
    if k < 0:
        raise ValueError(f"unknown defect kind {kind!r}; choose one of {', '.join(KINDS)}")
    images, masks = [], []
    for i, base in enumerate(bases):
        rng = np.random.default_rng([seed, k, int(contrast), i])
        x, m = add_defect(base, kind, float(contrast), rng, foreign)
        images.append(x)
        masks.append(m)
    return np.stack(images), np.stack(masks)


# ---------------------------------------------------------------------------------------------
# Metrics of anomaly maps


def image_auroc(normal_scores: np.ndarray, defect_scores: np.ndarray) -> float:
    """AUROC of defect images (positive) against normal images, from one score per image."""
    from sklearn.metrics import roc_auc_score

    s = np.concatenate([normal_scores, defect_scores])
    y = np.r_[np.zeros(len(normal_scores)), np.ones(len(defect_scores))]
    return float(roc_auc_score(y, s))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of defect pixels against all other pixels; ``maps`` float [N, H, W], ``masks`` bool."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def regions(masks: np.ndarray) -> list[np.ndarray]:
    """Flat pixel indices of every 8-connected defect region of bool ``masks`` [N, H, W]."""
    out = []
    structure = np.ones((3, 3), dtype=bool)
    per_image = masks[0].size
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=structure)
        for r in range(1, n + 1):
            out.append(i * per_image + np.flatnonzero(lab == r))
    return out


def pro_score(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3, steps: int = 301) -> float:
    """Per-region overlap integrated over the false-positive rate up to ``max_fpr``, normalized.

    As in the MVTec AD evaluation: at each threshold, the overlap of a defect region is the
    fraction of its pixels above the threshold, PRO is its mean over all regions (every region
    weighs the same, whatever its size), and the FPR is the fraction of defect-free pixels above
    it. Thresholds are the quantiles of the defect-free pixels at ``steps`` FPRs evenly spaced in
    [0, max_fpr], so the curve is integrated (trapezoid) on an exact grid and divided by
    ``max_fpr``: 1 is perfect, a random map gives about ``max_fpr / 2``.
    """
    flat = maps.reshape(-1).astype(np.float64)
    neg = np.sort(flat[~masks.reshape(-1)])
    fprs = np.linspace(0.0, max_fpr, steps)
    # threshold t_k with fraction fprs[k] of the negatives strictly above it
    idx = np.clip(np.ceil((1.0 - fprs) * len(neg)).astype(int) - 1, 0, len(neg) - 1)
    thr = neg[idx]
    thr[0] = np.inf if fprs[0] == 0 else thr[0]
    regs = regions(masks)
    if not regs:
        raise ValueError("PRO needs at least one defect region")
    overlap = np.zeros(steps)
    for r in regs:
        s = np.sort(flat[r])
        overlap += 1.0 - np.searchsorted(s, thr, side="right") / len(s)
    pro = overlap / len(regs)
    return float(np.trapezoid(pro, fprs) / max_fpr)
