"""Anomaly detection: a model trained on "normal" images scores how badly it reconstructs the rest.

Scores (higher = more anomalous), all per image, from the input ``x`` and its reconstruction
``x_hat`` (pixels in [0, 1]):

``mse``
    Mean squared reconstruction error over pixels and channels, ``mean((x - x_hat)**2)``: the
    number a user can check by hand.
``ssim``
    ``1 - SSIM(x, x_hat)`` (scikit-image, 11-px Gaussian window, as ``convae eval``): structural
    dissimilarity. It weighs a wrong stroke (structure) over a slightly-off grey level, and detects
    clearly better than ``mse`` on digits (docs/anomaly.md).
``mse+ssim`` (the default)
    ``mse / m_mse + ssim / m_ssim``, each term divided by its median over the normal calibration
    images: about 2 for a typical normal image, 4 for one "twice as badly reconstructed". The two
    errors fail on different anomalies, so their sum detects best on the benchmark.

The threshold is calibrated on normal images only: the run's own validation split (the run was
trained on normal data, so its validation split is normal data too, and the model never trained on
it). It is the score quantile at ``1 - fpr`` with the unbiased plotting position ``k / (n + 1)``,
so a new normal image lands above it with probability ``fpr`` (the target false-positive rate).
The :class:`Detector` - score name, scales, threshold and the fingerprint of the weights it was
fitted to - is stored atomically as ``anomaly.json`` in the run directory; every command reads it
from there, and it is refitted automatically when the weights change.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .checkpoint import fingerprint, read_json, write_json
from .data import load_split
from .inference import reconstruct, run_path, to_float
from .metrics import json_safe, ssim_maps, ssim_per_image
from .runs import resolve_config
from .runtime import resolve_device
from .training import fit_config

log = logging.getLogger(__name__)

__all__ = [
    "SCORES",
    "DEFAULT_SCORE",
    "Detector",
    "score_images",
    "error_maps",
    "calibrate",
    "threshold_at_fpr",
    "model_fingerprint",
    "load_detector",
    "save_detector",
    "ensure_detector",
    "detection_metrics",
    "roc_figure",
    "heatmap_figure",
    "pca_scores",
    "one_class_benchmark",
    "bench_anomaly",
]

SCORES = {
    "mse": "mean squared reconstruction error per image (pixels in [0, 1])",
    "ssim": "1 - SSIM(input, reconstruction): structural dissimilarity",
    "mse+ssim": "mse and 1 - SSIM, each divided by its median on normal images, summed",
}
DEFAULT_SCORE = "mse+ssim"
DEFAULT_FPR = 0.05
DETECTOR_FILE = "anomaly.json"
DETECTOR_VERSION = 1
_PARTS = {"mse": ("mse",), "ssim": ("ssim",), "mse+ssim": ("mse", "ssim")}


@dataclass(frozen=True)
class Detector:
    """Everything needed to turn a model's output into a score and a decision, stored as JSON."""

    score: str  # one of SCORES
    threshold: float  # flag an image when its score is strictly above this
    fpr: float  # target false-positive rate the threshold was set for
    fingerprint: str  # hex fingerprint of the weights + model config the detector was fitted to
    n_calibration: int  # normal images the threshold (and the scales) came from
    scales: dict[str, float] = field(default_factory=dict)  # mse+ssim: median of each part on them
    calibration_data: dict[str, Any] = field(default_factory=dict)  # spec / split / classes used
    calibration_quantiles: dict[str, float] = field(default_factory=dict)  # their score spread
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
        return det

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """Boolean [N]: which scores are above the threshold."""
        return np.asarray(scores) > self.threshold


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


def _combine(parts: dict[str, Any], score: str, scales: dict[str, float]) -> Any:
    """The score from its raw parts (arrays or maps): one part as is, or the sum of scaled parts."""
    if len(_PARTS[score]) == 1:
        return parts[score]
    missing = [p for p in _PARTS[score] if not scales.get(p)]
    if missing:
        raise ValueError(
            f"the {score} score needs a calibrated detector (scales of {', '.join(missing)} "
            "measured on normal images)"
        )
    return sum(parts[p] / scales[p] for p in _PARTS[score])


def score_images(
    model, images_u8: Tensor, detector: Detector | str = "mse", recon: Tensor | None = None
) -> np.ndarray:
    """Anomaly scores [N] (float64, higher = more anomalous) of uint8 images [N, C, H, W].

    ``detector`` is a :class:`Detector`, or the name of a score that needs no calibration ("mse",
    "ssim"). Pass ``recon`` (float [N, C, H, W]) to reuse reconstructions already made.
    """
    score, scales = (
        (detector, {}) if isinstance(detector, str) else (detector.score, detector.scales)
    )
    _check_score(score)
    if len(images_u8) == 0:
        return np.zeros(0)
    x = to_float(images_u8)
    y = reconstruct(model, images_u8) if recon is None else recon
    return _combine({p: _part(x, y, p) for p in _PARTS[score]}, score, scales)


def error_maps(x: Tensor, recon: Tensor, detector: Detector | str = "mse") -> Tensor:
    """Per-pixel picture of a score, averaged over channels: [N, C, H, W] x2 -> [N, H, W].

    ``mse``: the squared error, whose mean is the score. ``ssim``: ``1 -`` the local SSIM, whose mean
    over the interior (scikit-image leaves out a border of half a window, 5 px) is the score.
    ``mse+ssim``: the two maps scaled as in the score and summed.
    """
    score, scales = (
        (detector, {}) if isinstance(detector, str) else (detector.score, detector.scales)
    )
    _check_score(score)
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


def threshold_at_fpr(normal_scores: np.ndarray, fpr: float) -> float:
    """Score threshold that a new normal image exceeds with probability ``fpr``.

    The order statistic at plotting position ``k / (n + 1)`` (numpy's "weibull" quantile): for
    i.i.d. scores, ``P(new > X_(k)) = (n + 1 - k) / (n + 1)``, so it is unbiased where the plain
    sample quantile flags too many normal images when ``n`` is small.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"the false-positive rate must be in (0, 1), e.g. 0.05, not {fpr}")
    s = np.asarray(normal_scores, dtype=np.float64)
    if len(s) == 0:
        raise ValueError("no normal images to calibrate the threshold on")
    if fpr < 1.0 / (len(s) + 1):
        log.warning(
            "%d normal images cannot resolve a false-positive rate of %g (the finest is %.3g); "
            "the threshold is the largest normal score",
            len(s),
            fpr,
            1.0 / (len(s) + 1),
        )
    return float(np.quantile(s, 1.0 - fpr, method="weibull"))


def calibrate(
    model,
    normal_u8: Tensor,
    *,
    score: str = DEFAULT_SCORE,
    fpr: float = DEFAULT_FPR,
    data: dict[str, Any] | None = None,
    recon: Tensor | None = None,
) -> Detector:
    """Fit a :class:`Detector` on normal images only.

    ``normal_u8``: held-out normal images (the run's validation split, never seen in training); the
    scales of ``mse+ssim`` are medians over them and the threshold is their score quantile at
    ``1 - fpr`` (:func:`threshold_at_fpr`). ``data`` is recorded as where they came from. ``model``
    needs ``run_config`` (as :func:`convae.load` gives it).
    """
    _check_score(score)
    if len(normal_u8) == 0:
        raise ValueError(
            "no normal validation images to calibrate the threshold on; "
            "train with --val-fraction > 0 on normal images only"
        )
    x = to_float(normal_u8)
    y = reconstruct(model, normal_u8) if recon is None else recon
    parts = {p: _part(x, y, p) for p in _PARTS[score]}
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
    threshold = threshold_at_fpr(s, fpr)
    _check_numbers(threshold, fpr, scales)
    qs = np.quantile(s, [0.0, 0.25, 0.5, 0.75, 0.95, 1.0])
    return Detector(
        score=score,
        threshold=threshold,
        fpr=fpr,
        fingerprint=model_fingerprint(model),
        n_calibration=len(normal_u8),
        scales=scales,
        calibration_data=dict(data or {}),
        calibration_quantiles=dict(
            zip(("min", "q25", "median", "q75", "q95", "max"), map(float, qs), strict=True)
        ),
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


def ensure_detector(
    model, *, score: str | None = None, fpr: float | None = None, recalibrate: bool = False
) -> tuple[Detector, bool]:
    """The run's stored detector, (re)calibrated first when needed -> (detector, calibrated now).

    Calibration happens when the run has no ``anomaly.json``, when its weights changed since, when
    ``score``/``fpr`` differ from the stored ones, or when ``recalibrate``. It uses the run's own
    validation split (normal images: the data the run was trained on); the result is stored so every
    later command uses the same threshold.
    """
    run_dir = run_path(model)
    det = load_detector(run_dir)
    fp = model_fingerprint(model)
    reasons = []
    if det is None:
        reasons.append("no stored threshold")
    else:
        if det.fingerprint != fp:
            reasons.append("the weights changed since the threshold was stored")
        if score is not None and score != det.score:
            reasons.append(f"score {det.score} -> {score}")
        if fpr is not None and fpr != det.fpr:
            reasons.append(f"false-positive rate {det.fpr} -> {fpr}")
        if recalibrate:
            reasons.append("--calibrate")
    if not reasons:
        return det, False  # type: ignore[return-value]
    score = score or (det.score if det is not None else DEFAULT_SCORE)
    fpr = fpr if fpr is not None else (det.fpr if det is not None else DEFAULT_FPR)
    cfg = model.run_config.data
    normal, _ = load_split(cfg, "val")
    if len(normal) == 0:
        raise ValueError(
            f"{run_dir}: the run has no validation images to calibrate a threshold on; "
            "retrain with --val-fraction > 0 (e.g. 0.1) on normal images only"
        )
    data = {"spec": cfg.spec, "split": "val", "classes": list(cfg.classes) if cfg.classes else None}
    det = calibrate(model, normal, score=score, fpr=fpr, data=data)
    save_detector(run_dir, det)
    log.info(
        "calibrated the %s threshold on %d normal validation images (%s): %.6g at target FPR %g",
        det.score,
        det.n_calibration,
        "; ".join(reasons),
        det.threshold,
        det.fpr,
    )
    return det, True


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


def roc_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    point: tuple[float, float] | None = None,
    title: str = "ROC",
) -> Figure:
    """ROC curves ``{label: (scores, is_anomaly)}``; ``point`` marks the threshold's (FPR, TPR)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(4.8, 4.5))
    ax = fig.add_subplot()
    for label, (s, y) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{label} (AUROC {100 * roc_auc_score(y, s):.1f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    if point is not None:
        ax.plot(
            *point, "o", color="black", label=f"threshold (FPR {point[0]:.3f}, TPR {point[1]:.3f})"
        )
    ax.set_xlabel("false-positive rate (normal flagged)")
    ax.set_ylabel("true-positive rate (anomalies flagged)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    return fig


def heatmap_figure(
    inputs: Tensor,
    recons: Tensor,
    scores: Sequence[float],
    labels: Sequence[str] | None = None,
    detector: Detector | str = "mse",
) -> Figure:
    """Columns of (input, reconstruction, per-pixel heat map of the score), one per image.

    All heat maps share one colour scale (0 .. the largest value shown), so they compare.
    """
    from .plots import to_display

    k = len(inputs)
    heat = error_maps(inputs, recons, detector).numpy()
    score = detector if isinstance(detector, str) else detector.score
    vmax = float(heat.max()) if k and heat.max() > 0 else 1.0
    fig = Figure(figsize=(1.25 * max(k, 1) + 0.8, 4.2))
    axes = fig.subplots(3, max(k, 1), squeeze=False)
    im = None
    for c in range(max(k, 1)):
        for r in range(3):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= k:
                ax.set_axis_off()
                continue
            if r < 2:
                a = to_display((inputs if r == 0 else recons)[c])
                ax.imshow(
                    a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
                )
            else:
                im = ax.imshow(heat[c], cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        if c < k:
            t = f"{scores[c]:.4g}" if labels is None else f"{labels[c]}\n{scores[c]:.4g}"
            axes[0][c].set_title(t, fontsize=7)
    heat_name = {"mse": "squared error", "ssim": "1 - local SSIM"}.get(score, f"{score}\nper pixel")
    for r, name in enumerate(("input", "reconstruction", heat_name)):
        axes[r][0].set_ylabel(name, fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=[axes[2][c] for c in range(k)], fraction=0.05, pad=0.02)
    return fig


# ---------------------------------------------------------------------------------------------
# The one-class benchmark


def pca_scores(
    train_u8: Tensor, images_u8: Tensor, components: int = 16, seed: int = 0
) -> np.ndarray:
    """Baseline: per-image MSE of a scikit-learn PCA reconstruction fitted on ``train_u8``."""
    from sklearn.decomposition import PCA

    xtr = to_float(train_u8).flatten(1).double().numpy()
    x = to_float(images_u8).flatten(1).double().numpy()
    k = min(components, len(xtr), xtr.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(xtr)
    r = pca.inverse_transform(pca.transform(x))
    return ((x - r) ** 2).mean(1)


def _one_class_row(
    data, recipe, c: int, test_x: Tensor, test_y: Tensor, fpr: float, scores: Sequence[str],
    pca_components: int, dev: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """Class ``c`` of the one-class protocol: train on it, calibrate on its validation images,
    score the test split (every other class anomalous) with each score and with PCA."""
    t0 = time.perf_counter()
    dc = replace(data, classes=(c,))
    train_x, _ = load_split(dc, "train")
    val_x, _ = load_split(dc, "val")
    cfg = resolve_config(replace(recipe, data=dc), train_x.shape[1], train_x.shape[-1])
    model, _ = fit_config(cfg, train_x, val_x, device=dev)
    train_s = time.perf_counter() - t0
    is_anom = (test_y != c).numpy()
    recon = reconstruct(model, test_x)
    val_recon = reconstruct(model, val_x)
    row: dict[str, Any] = {"class": c, "train_images": len(train_x), "val_images": len(val_x)}
    x = to_float(test_x)
    parts = {p: _part(x, recon, p) for p in {p for s in scores for p in _PARTS[s]}}  # SSIM once
    for s in scores:
        det = calibrate(model, val_x, score=s, fpr=fpr, recon=val_recon)
        row[s] = detection_metrics(_combine(parts, s, det.scales), is_anom, det.threshold)
    pca = pca_scores(train_x, torch.cat([val_x, test_x]), pca_components, cfg.train.seed)
    pca_threshold = threshold_at_fpr(pca[: len(val_x)], fpr)  # calibrated the same way
    row["pca"] = detection_metrics(pca[len(val_x) :], is_anom, pca_threshold)
    row["train_seconds"] = train_s
    row["seconds"] = time.perf_counter() - t0
    return row


def one_class_benchmark(
    data,
    recipe,
    *,
    classes: Sequence[int] | None = None,
    fpr: float = DEFAULT_FPR,
    scores: Sequence[str] = tuple(SCORES),
    pca_components: int = 16,
    device: str | torch.device = "cpu",
    progress=None,
) -> dict[str, Any]:
    """The one-class protocol: for each class, train on that class's training images only, calibrate
    on its validation images only, and score the whole test split with every other class anomalous.

    ``data`` is a :class:`~convae.config.DataConfig` (its ``classes`` ignored), ``recipe`` a
    :class:`~convae.config.RunConfig` giving the model and training recipe (e.g. the anomaly preset).
    The PCA baseline is fitted on the same training images. ``progress(row)`` gets each class's row.
    Returns per-class rows and means; AUROC/AUPRC in [0, 1].
    """
    for s in scores:
        _check_score(s)
    dev = resolve_device(device)
    test_x, test_y = load_split(replace(data, classes=None), "test")
    labels = sorted(set(test_y.tolist()))
    classes = list(classes) if classes else labels
    rows = []
    for c in classes:
        row = _one_class_row(data, recipe, int(c), test_x, test_y, fpr, scores, pca_components, dev)
        rows.append(row)
        if progress is not None:
            progress(row)
    methods = [*scores, "pca"]
    mean = {
        m: {
            k: float(np.mean([r[m][k] for r in rows]))
            for k in ("auroc", "auprc", "precision", "recall", "f1", "fpr")
        }
        for m in methods
    }
    return {
        "classes": rows,
        "mean": mean,
        "fpr_target": fpr,
        "pca_components": pca_components,
        "recipe": recipe.to_dict(),
        "seconds": float(sum(r["seconds"] for r in rows)),
        "data": data.spec,
        "test_images": len(test_x),
    }


def bench_anomaly(
    data,
    recipe,
    out: str | os.PathLike | None = None,
    *,
    classes: Sequence[int] | None = None,
    fpr: float = DEFAULT_FPR,
    pca_components: int = 16,
    device: str | torch.device = "cpu",
    progress=None,
) -> dict[str, Any]:
    """``convae bench anomaly``: :func:`one_class_benchmark` with every score, plus
    ``beats_pca`` (per score, the classes where its AUROC is at least PCA's); written to
    ``out/bench.json`` when ``out`` is given. Returns the report."""
    scores = list(SCORES)
    res = one_class_benchmark(data, recipe, classes=classes, fpr=fpr, scores=scores,
                              pca_components=pca_components, device=device,
                              progress=progress)  # fmt: skip
    res["beats_pca"] = {
        s: [r["class"] for r in res["classes"] if r[s]["auroc"] >= r["pca"]["auroc"]]
        for s in scores
    }
    if out is not None:
        write_json(Path(out) / "bench.json", json_safe(res))
    return res
