"""Anomaly detection: a model trained on "normal" images scores how badly it reconstructs the rest.

Scores (higher = more anomalous), one per image, from the input ``x`` and its reconstruction
``x_hat`` (pixels in [0, 1]):

``mse``
    Mean squared reconstruction error over pixels and channels, ``mean((x - x_hat)**2)``: the
    number a user can check by hand.
``ssim``
    ``1 - SSIM(x, x_hat)`` (scikit-image, 11-px Gaussian window, as ``convae eval``): structural
    dissimilarity. It weighs a wrong stroke (structure) over a slightly-off grey level, and detects
    clearly better than ``mse`` on digits (docs/anomaly.md).
``mse+ssim`` (the default for images of one size)
    ``mse / m_mse + ssim / m_ssim``, each term divided by its median over the normal calibration
    images: about 2 for a typical normal image, 4 for one "twice as badly reconstructed". The two
    errors fail on different anomalies, so their sum detects best on the digit benchmark.
``map`` (the default for a model trained on crops: images of any size)
    The largest value of the image's per-pixel anomaly map (:mod:`convae.anomaly_maps`: squared
    error, 1 - SSIM of the luma and the residual's chroma, smoothed and normalized per distance
    to the border, the largest of the three): a small defect anywhere in a large image counts
    in full, where a mean over the image would dilute it.

Every detector also carries the per-pixel map's calibration and its per-pixel threshold, so any
run can draw maps and masks of where an image differs.

The thresholds are calibrated on normal images only: the run's own validation split (the run was
trained on normal data, so its validation split is normal data too, and the model never trained on
it; whole files for a run trained on crops). The image threshold is the score quantile at
``1 - fpr`` with the unbiased plotting position ``k / (n + 1)``, so a new normal image lands above
it with probability ``fpr`` (the target false-positive rate). The ``map`` score grows with the
image's area, so its threshold is set per image size, from crops of that size of the validation
files, when an image of a new size is first scored. The per-pixel threshold is the ``1 -
pixel_fpr`` quantile of the map over the validation pixels. The :class:`Detector` - score,
scales, thresholds and the fingerprint of the weights it was fitted to - is stored atomically as
``anomaly.json`` in the run directory; every command reads it from there, and it is refitted
automatically when the weights change.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .anomaly_maps import (
    MapCalibration,
    anomaly_maps,
    component_maps,
    components_for,
    fit_map_calibration,
    image_scores,
    image_threshold,
    raw_maps,
    score_quantiles,
    size_key,
    threshold_at_fpr,
)
from .checkpoint import fingerprint, read_json, write_json
from .data import ArrayImages, load_images, load_split
from .inference import reconstruct, run_path, to_float
from .metrics import ssim_maps, ssim_per_image

log = logging.getLogger(__name__)

__all__ = [
    "SCORES",
    "DEFAULT_SCORE",
    "MAP_SCORE",
    "Detector",
    "default_score",
    "score_images",
    "inspect_image",
    "error_maps",
    "calibrate",
    "threshold_at_fpr",
    "model_fingerprint",
    "load_detector",
    "save_detector",
    "ensure_detector",
    "ensure_image_thresholds",
    "detection_metrics",
]

SCORES = {
    "mse": "mean squared reconstruction error per image (pixels in [0, 1])",
    "ssim": "1 - SSIM(input, reconstruction): structural dissimilarity",
    "mse+ssim": "mse and 1 - SSIM, each divided by its median on normal images, summed",
    "map": "largest value of the per-pixel anomaly map (squared error, 1 - SSIM of the luma, "
    "chroma; smoothed, normalized per border distance): for images of any size",
}
DEFAULT_SCORE = "mse+ssim"
MAP_SCORE = "map"
DEFAULT_FPR = 0.05
DEFAULT_PIXEL_FPR = 0.01
DETECTOR_FILE = "anomaly.json"
DETECTOR_VERSION = 2
_PARTS = {"mse": ("mse",), "ssim": ("ssim",), "mse+ssim": ("mse", "ssim"), "map": ("map",)}


@dataclass(frozen=True)
class Detector:
    """Everything needed to turn a model's output into scores, maps and decisions, stored as JSON."""

    score: str  # one of SCORES
    threshold: float  # flag an image when its score is strictly above this (at ``size``)
    fpr: float  # target false-positive rate of images the thresholds were set for
    fingerprint: str  # hex fingerprint of the weights + model config the detector was fitted to
    n_calibration: int  # normal images the thresholds (and the scales) came from
    scales: dict[str, float] = field(default_factory=dict)  # mse+ssim: median of each part on them
    calibration_data: dict[str, Any] = field(default_factory=dict)  # spec / split / classes used
    calibration_quantiles: dict[str, float] = field(default_factory=dict)  # their score spread
    # The per-pixel map: MapCalibration.to_dict() (components, normalization per border
    # distance, per-pixel threshold and its target rate). None in files without maps.
    pixel: dict[str, Any] | None = None
    size: list[int] | None = None  # [H, W] that ``threshold`` holds for ("map"); None: any size
    # "map": the image threshold per image size "HxW" -> {threshold, n, how, block}
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = DETECTOR_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Detector:
        if not isinstance(d, dict) or "score" not in d or "threshold" not in d:
            raise ValueError("not an anomaly detector file (needs 'score' and 'threshold')")
        if d["score"] not in SCORES:
            raise ValueError(f"unknown score {d['score']!r}")
        known = set(cls.__dataclass_fields__)
        det = cls(**{k: v for k, v in d.items() if k in known})
        _check_numbers(det.threshold, det.fpr, det.scales)
        if det.pixel is not None:
            MapCalibration.from_dict(det.pixel)  # checks it
        if not isinstance(det.thresholds, dict) or not all(
            isinstance(t, dict) and _is_number(t.get("threshold")) for t in det.thresholds.values()
        ):
            raise ValueError("thresholds must map image sizes to {'threshold': number, ...}")
        return det

    @property
    def maps(self) -> MapCalibration:
        """The per-pixel map calibration."""
        if self.pixel is None:
            raise ValueError("this detector has no per-pixel calibration; pass --calibrate")
        return MapCalibration.from_dict(self.pixel)

    def threshold_for(self, h: int, w: int) -> float:
        """The image threshold for an ``h x w`` image (the ``map`` score's depends on the size)."""
        if self.score != MAP_SCORE:
            return self.threshold
        t = self.thresholds.get(size_key(h, w))
        if t is None:
            raise ValueError(
                f"no image threshold for {h}x{w} images yet (ensure_image_thresholds sets it)"
            )
        return float(t["threshold"])

    def flag(self, scores: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """Boolean [N]: which scores (of images of ``size``) are above the threshold."""
        thr = self.threshold if size is None else self.threshold_for(*size)
        return np.asarray(scores) > thr


def default_score(model) -> str:
    """``map`` for a model trained on crops (it inspects images of any size), else ``mse+ssim``."""
    cfg = getattr(model, "run_config", None)
    return MAP_SCORE if cfg is not None and cfg.data.crop else DEFAULT_SCORE


# ---------------------------------------------------------------------------------------------
# Scores and heat maps


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"unknown anomaly score {score!r}; choose one of: {', '.join(SCORES)}")


def _part(x: Tensor, y: Tensor, name: str) -> np.ndarray:
    """One raw per-image error [N]: "mse" or "ssim" (= 1 - SSIM)."""
    if name == "mse":
        return (x.double() - y.double()).pow(2).flatten(1).mean(1).numpy()
    return 1.0 - ssim_per_image(x, y)


def _parts(images, recon, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-image errors of uint8 images (a batch, or a list of any sizes) and reconstructions."""
    if isinstance(images, Tensor) and images.ndim == 4:
        x = to_float(images)
        return {p: _part(x, recon, p) for p in names}
    rows = [_parts(img[None], r[None], names) for img, r in zip(images, recon, strict=True)]
    return {p: np.concatenate([r[p] for r in rows]) for p in names}


def _combine(parts: dict[str, Any], score: str, scales: dict[str, float]) -> Any:
    """The score from its raw parts (arrays or maps): one part as is, or the sum of scaled parts."""
    if len(_PARTS[score]) == 1:
        return parts[_PARTS[score][0]]
    missing = [p for p in _PARTS[score] if not scales.get(p)]
    if missing:
        raise ValueError(
            f"the {score} score needs a calibrated detector (scales of {', '.join(missing)} "
            "measured on normal images)"
        )
    return sum(parts[p] / scales[p] for p in _PARTS[score])


def _map_scores(model, images, cal: MapCalibration) -> np.ndarray:
    return image_scores(anomaly_maps(raw_maps(model, images, cal.components), cal))


def score_images(
    model, images_u8, detector: Detector | str = "mse", recon: Tensor | None = None
) -> np.ndarray:
    """Anomaly scores [N] (float64, higher = more anomalous) of uint8 images: a batch
    ``[N, C, H, W]``, or a list of ``[C, H, W]`` of any sizes.

    ``detector`` is a :class:`Detector`, or the name of a score that needs no calibration ("mse",
    "ssim"). Pass ``recon`` (float, like the images) to reuse reconstructions already made.
    """
    score, scales = (
        (detector, {}) if isinstance(detector, str) else (detector.score, detector.scales)
    )
    _check_score(score)
    if len(images_u8) == 0:
        return np.zeros(0)
    if score == MAP_SCORE:
        if isinstance(detector, str):
            raise ValueError("the map score needs a calibrated detector")
        return _map_scores(model, images_u8, detector.maps)
    y = reconstruct(model, images_u8) if recon is None else recon
    return _combine(_parts(images_u8, y, _PARTS[score]), score, scales)


def inspect_image(model, detector: Detector, image: Tensor) -> dict[str, Any]:
    """Map, score and decide one uint8 image ``[C, H, W]`` of any size the model takes.

    Returns ``map`` (float32 [H, W] in map units: 0 = a typical normal pixel, 1 = a component's
    normal 99th percentile), ``mask`` (bool [H, W]: pixels above the per-pixel threshold),
    ``pixel_threshold``, ``score`` (the detector's image score), ``threshold`` (the image
    threshold for this size; :func:`ensure_image_thresholds` sets it) and ``flagged``.
    """
    cal = detector.maps
    raw = raw_maps(model, [image], cal.components)[0]
    m = anomaly_maps([raw], cal)[0]
    if detector.score == MAP_SCORE:
        score = float(m.max())
    else:
        score = float(score_images(model, image[None], detector)[0])
    thr = detector.threshold_for(*image.shape[-2:])
    return {"map": m.numpy().astype(np.float32), "mask": (m > cal.pixel_threshold).numpy(),
            "pixel_threshold": cal.pixel_threshold, "score": score, "threshold": thr,
            "flagged": score > thr}  # fmt: skip


def error_maps(x: Tensor, recon: Tensor, detector: Detector | str = "mse") -> Tensor:
    """Per-pixel picture of a score: [N, C, H, W] x2 -> [N, H, W].

    ``mse``: the squared error averaged over channels, whose mean is the score. ``ssim``: ``1 -``
    the local SSIM, whose mean over the interior (scikit-image leaves out a border of half a
    window, 5 px) is the score. ``mse+ssim``: the two maps scaled as in the score and summed.
    ``map``: the calibrated anomaly map, whose largest value is the score.
    """
    score, scales = (
        (detector, {}) if isinstance(detector, str) else (detector.score, detector.scales)
    )
    _check_score(score)
    if score == MAP_SCORE:
        if isinstance(detector, str):
            raise ValueError("the map score needs a calibrated detector")
        cal = detector.maps
        return anomaly_maps(component_maps(x.float(), recon.float(), cal.components), cal)
    maps = {}
    for p in _PARTS[score]:
        if p == "ssim":
            maps[p] = torch.from_numpy(_dssim_maps(x, recon))
        else:
            maps[p] = (x.float() - recon.float()).pow(2).mean(1)
    return _combine(maps, score, scales)


def _dssim_maps(x: Tensor, y: Tensor) -> np.ndarray:
    """``1 - SSIM`` maps [N, H, W] with the window of :func:`convae.metrics.ssim_per_image`."""
    return 1.0 - ssim_maps(x, y)


# ---------------------------------------------------------------------------------------------
# Calibration on normal images, stored with the model


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_numbers(threshold: Any, fpr: Any, scales: Any) -> None:
    """A detector's numbers: a finite threshold, a rate in (0, 1), finite positive scales (a NaN
    threshold would flag nothing, silently)."""
    if not _is_number(threshold):
        raise ValueError(f"the threshold must be a finite number, not {threshold!r}")
    if not (_is_number(fpr) and 0 < fpr < 1):
        raise ValueError(f"the false-positive rate must be a number in (0, 1), not {fpr!r}")
    if not isinstance(scales, dict) or not all(_is_number(v) and v > 0 for v in scales.values()):
        raise ValueError(f"the scales must be finite positive numbers, not {scales!r}")


def model_fingerprint(model) -> str:
    """Hex fingerprint of a loaded model's weights and config: ties a detector to its model."""
    return fingerprint(model.state_dict(), model.config).hex()


def _as_store(normal) -> Any:
    """Normal images as an image store: a uint8 batch ``[N, C, H, W]`` wrapped, a store as is."""
    if isinstance(normal, Tensor):
        return ArrayImages(normal, np.zeros(len(normal), dtype=np.int64))
    return normal


def _whole_images(store) -> Tensor | list[Tensor]:
    """A store's images: one batch when they share a size, else a list."""
    sizes = np.asarray(store.sizes()).reshape(-1, 2)
    images = [store.image(i) for i in range(len(store))]
    return torch.stack(images) if len({tuple(s) for s in sizes}) == 1 else images


def _image_score_fit(model, images, score: str, fpr: float, recon) -> dict[str, Any]:
    """Threshold, scales and quantiles of a per-image score (mse, ssim, mse+ssim)."""
    y = reconstruct(model, images) if recon is None else recon
    parts = _parts(images, y, _PARTS[score])
    bad = [p for p, v in parts.items() if not np.isfinite(v).all()]
    if bad:  # a NaN threshold would be stored and flag nothing
        raise ValueError(
            f"the {bad[0]} scores of the normal images are NaN or infinite (the model's "
            "reconstructions are); no threshold can be calibrated - retrain the model"
        )
    # A median of 0 (a perfect reconstruction of most normal images) would divide by zero.
    scales = (
        {p: max(float(np.median(v)), 1e-12) for p, v in parts.items()} if len(parts) > 1 else {}
    )
    s = _combine(parts, score, scales)
    return {
        "threshold": threshold_at_fpr(s, fpr),
        "scales": scales,
        "quantiles": score_quantiles(s),
    }


def reference_size(model) -> tuple[int, int]:
    """The image size a ``map`` detector's main threshold is set for: the model's input size
    (the training crop, for a run trained on crops)."""
    return model.input_shape[-2], model.input_shape[-1]


def calibrate(
    model,
    normal,
    *,
    score: str | None = None,
    fpr: float = DEFAULT_FPR,
    pixel_fpr: float = DEFAULT_PIXEL_FPR,
    data: dict[str, Any] | None = None,
    recon: Tensor | None = None,
) -> Detector:
    """Fit a :class:`Detector` on normal images only.

    ``normal``: held-out normal images (the run's validation split, never seen in training), a
    uint8 batch or an image store of any sizes (whole files). The per-pixel map is normalized on
    all their pixels, its threshold is their ``1 - pixel_fpr`` quantile; the scales of
    ``mse+ssim`` are medians over the images, and the image threshold is their score quantile at
    ``1 - fpr`` (:func:`threshold_at_fpr`) - for ``map``, of crops of the model's input size
    (other sizes: :func:`ensure_image_thresholds`). ``data`` is recorded as where they came from.
    ``score`` defaults to :func:`default_score`.
    """
    score = score or default_score(model)
    _check_score(score)
    store = _as_store(normal)
    if len(store) == 0:
        raise ValueError(
            "no normal validation images to calibrate the threshold on; "
            "train with --val-fraction > 0 on normal images only"
        )
    images = _whole_images(store)
    names = components_for(model.input_shape[0])
    pix = fit_map_calibration(raw_maps(model, images, names), names, pixel_fpr)
    size, thresholds = None, {}
    if score == MAP_SCORE:
        size = reference_size(model)
        t = image_threshold(model, pix, store, size, fpr)
        fit = {"threshold": t.pop("threshold"), "scales": {}, "quantiles": t.pop("quantiles")}
        thresholds = {size_key(*size): {"threshold": fit["threshold"], **t}}
    else:
        fit = _image_score_fit(model, images, score, fpr, recon)
    _check_numbers(fit["threshold"], fpr, fit["scales"])
    return Detector(
        score=score,
        threshold=fit["threshold"],
        fpr=fpr,
        fingerprint=model_fingerprint(model),
        n_calibration=len(store),
        scales=fit["scales"],
        calibration_data=dict(data or {}),
        calibration_quantiles=fit["quantiles"],
        pixel=pix.to_dict(),
        size=list(size) if size else None,
        thresholds=thresholds,
    )


def save_detector(run_dir: str | os.PathLike, det: Detector) -> Path:
    """Write ``anomaly.json`` into the run directory (atomically)."""
    path = Path(run_dir) / DETECTOR_FILE
    write_json(path, det.to_dict())
    return path


def load_detector(run_dir: str | os.PathLike) -> Detector | None:
    """The stored detector of a run, or None when it has none yet."""
    path = Path(run_dir) / DETECTOR_FILE
    if not path.is_file():
        return None
    try:
        return Detector.from_dict(read_json(path))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}; delete it or pass --calibrate to rebuild it") from e


def _validation_images(model):
    """The run's normal validation images: whole files (a store) for a run trained on crops,
    else one uint8 batch."""
    cfg = model.run_config.data
    normal = load_images(cfg, "val") if cfg.crop else load_split(cfg, "val")[0]
    if len(normal) == 0:
        raise ValueError(
            f"{run_path(model)}: the run has no validation images to calibrate a threshold on; "
            "retrain with --val-fraction > 0 (e.g. 0.1) on normal images only"
        )
    return normal


def _stale(det: Detector | None, model, asked: dict[str, Any], recalibrate: bool) -> list[str]:
    """Why the stored detector cannot be used as it is (empty: it can)."""
    if det is None:
        return ["no stored threshold"]
    reasons = []
    if det.fingerprint != model_fingerprint(model):
        reasons.append("the weights changed since the threshold was stored")
    if det.pixel is None:
        reasons.append("the stored detector has no per-pixel calibration")
    stored = {"score": det.score, "fpr": det.fpr,
              "pixel_fpr": det.pixel["pixel_fpr"] if det.pixel else None}  # fmt: skip
    for k, v in asked.items():
        if v is not None and v != stored[k]:
            reasons.append(f"{k.replace('_', ' ')} {stored[k]} -> {v}")
    if recalibrate:
        reasons.append("--calibrate")
    return reasons


def ensure_detector(
    model,
    *,
    score: str | None = None,
    fpr: float | None = None,
    pixel_fpr: float | None = None,
    recalibrate: bool = False,
) -> tuple[Detector, bool]:
    """The run's stored detector, (re)calibrated first when needed -> (detector, calibrated now).

    Calibration happens when the run has no ``anomaly.json``, when its weights changed since, when
    ``score``/``fpr``/``pixel_fpr`` differ from the stored ones, or when ``recalibrate``. It uses
    the run's own validation split (normal images: the data the run was trained on); the result is
    stored so every later command uses the same thresholds.
    """
    run_dir = run_path(model)
    det = load_detector(run_dir)
    asked = {"score": score, "fpr": fpr, "pixel_fpr": pixel_fpr}
    reasons = _stale(det, model, asked, recalibrate)
    if not reasons:
        return det, False  # type: ignore[return-value]
    old = det.to_dict() if det is not None else {}
    score = score or old.get("score") or default_score(model)
    fpr = fpr if fpr is not None else old.get("fpr", DEFAULT_FPR)
    pixel_fpr = pixel_fpr or (old.get("pixel") or {}).get("pixel_fpr", DEFAULT_PIXEL_FPR)
    cfg = model.run_config.data
    data = {"spec": cfg.spec, "split": "val", "classes": list(cfg.classes) if cfg.classes else None}
    det = calibrate(model, _validation_images(model), score=score, fpr=fpr, pixel_fpr=pixel_fpr,
                    data=data)  # fmt: skip
    save_detector(run_dir, det)
    log.info("calibrated the %s threshold on %d normal validation images (%s): %.6g at target "
             "FPR %g", det.score, det.n_calibration, "; ".join(reasons), det.threshold,
             det.fpr)  # fmt: skip
    return det, True


def ensure_image_thresholds(model, det: Detector, sizes) -> Detector:
    """``det`` with an image threshold for every ``(H, W)`` in ``sizes`` (the ``map`` score's
    depends on the size): the missing ones are set from crops of that size of the run's normal
    validation images and stored in ``anomaly.json``. Other scores: ``det`` as it is."""
    missing = sorted({(int(h), int(w)) for h, w in sizes} - {
        tuple(map(int, k.split("x"))) for k in det.thresholds})  # fmt: skip
    if det.score != MAP_SCORE or not missing:
        return det
    store = _as_store(_validation_images(model))
    thresholds = dict(det.thresholds)
    for h, w in missing:
        t = image_threshold(model, det.maps, store, (h, w), det.fpr)
        t.pop("quantiles")
        thresholds[size_key(h, w)] = t
        bh, bw = t["block"]
        where = ("crops of that size" if t["how"] == "crops" else
                 f"{bh}x{bw} blocks: no validation image is that large")  # fmt: skip
        log.info("image threshold for %dx%d images: %.6g (from %d normal %s)", h, w,
                 t["threshold"], t["n"], where)  # fmt: skip
    det = replace(det, thresholds=thresholds)
    save_detector(run_path(model), det)
    return det


# ---------------------------------------------------------------------------------------------
# Metrics and figures


def detection_metrics(
    scores: np.ndarray, is_anomaly: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """AUROC, AUPRC (average precision), and precision/recall/F1/FPR of ``score > threshold``.

    Anomalies are the positive class. Both classes must be present.
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUROC needs both normal and anomalous images; got {n_neg} normal and {n_pos} "
            "anomalous (check --normal-classes)"
        )
    out: dict[str, Any] = {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "n_normal": n_neg,
        "n_anomalous": n_pos,
    }
    if threshold is not None:
        pred = s > threshold
        p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
        out.update(
            {
                "threshold": float(threshold),
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "fpr": float(pred[~y].mean()),
                "flagged": int(pred.sum()),
            }
        )
    return out
