"""The one-class benchmark of ``convae bench anomaly``: for each class, train on it alone,
calibrate on its validation images, and score the test split with every other class anomalous;
a PCA baseline in the same run."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .anomaly import (
    _PARTS,
    DEFAULT_FPR,
    SCORES,
    _check_score,
    _combine,
    _part,
    calibrate,
    detection_metrics,
    threshold_at_fpr,
)
from .checkpoint import write_json
from .data import load_split
from .inference import reconstruct, to_float
from .metrics import json_safe
from .runs import resolve_config
from .runtime import resolve_device
from .training import fit_config

__all__ = ["BENCH_SCORES", "pca_scores", "one_class_benchmark", "bench_anomaly"]

# The per-image scores the one-class benchmark compares (the map score inspects images of any
# size: docs/anomaly.md, "Textures").
BENCH_SCORES = tuple(s for s in SCORES if s != "map")


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
    scores: Sequence[str] = BENCH_SCORES,
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
    scores = list(BENCH_SCORES)
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
