"""Figures: data in, matplotlib Figure out. Never ``plt.show()``; the Agg backend is used explicitly."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .checkpoint import atomic_write

__all__ = [
    "loss_figure",
    "reconstruction_figure",
    "image_grid_figure",
    "roc_figure",
    "heatmap_figure",
    "overlay_figure",
    "save_figure",
    "to_display",
]


def to_display(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] float in [0, 1] (or uint8) -> [H, W] or [H, W, 3] float array for imshow."""
    a = (
        img.detach().float().cpu().numpy()
        if isinstance(img, torch.Tensor)
        else np.asarray(img, dtype=np.float32)
    )
    if a.max() > 1.0 + 1e-6:
        a = a / 255.0
    a = np.clip(a, 0.0, 1.0)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


FIGURE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}


def figure_format(path: str | os.PathLike) -> str:
    """The format a figure at ``path`` is written in, from its suffix (none: PNG)."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "png"
    if suffix not in FIGURE_FORMATS:
        raise ValueError(
            f"{path}: a figure is written as {', '.join(FIGURE_FORMATS)}, not {suffix}"
        )
    return FIGURE_FORMATS[suffix]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Render in the format of ``path``'s suffix (PNG, PDF or SVG) and write atomically (a crash
    never leaves half a file)."""

    buf = io.BytesIO()
    fig.savefig(buf, format=figure_format(path), dpi=dpi, bbox_inches="tight")
    atomic_write(path, buf.getvalue())


def loss_figure(history: Sequence[dict[str, Any]]) -> Figure:
    """Train and validation loss per epoch (log scale)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ep = [r["epoch"] for r in history]
    ax.plot(ep, [r["train_loss"] for r in history], marker="o", label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("Training loss")
    return fig


def image_grid_figure(
    rows: Sequence[torch.Tensor],
    row_labels: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    scale: float = 1.2,
) -> Figure:
    """A grid: one row per sequence of images [C, H, W] (a tensor [K, C, H, W] is one), each image
    at its own size; optional row labels."""
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(scale * ncols, scale * nrows + 0.3))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, imgs in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(imgs):
                a = to_display(imgs[c])
                ax.imshow(
                    a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
                )
            if r == 0 and titles is not None and c < len(titles):
                ax.set_title(titles[c], fontsize=8)
        if row_labels is not None:
            axes[r][0].set_ylabel(row_labels[r], fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def reconstruction_figure(
    inputs: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    noisy: Sequence[torch.Tensor] | None = None,
) -> Figure:
    """Inputs above their reconstructions (and the noisy inputs between, when denoising)."""
    if noisy is None:
        return image_grid_figure([inputs, outputs], ["input", "reconstruction"])
    return image_grid_figure([inputs, noisy, outputs], ["clean", "noisy", "denoised"])


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
    inputs: torch.Tensor,
    recons: torch.Tensor,
    heat: np.ndarray,
    scores: Sequence[float],
    labels: Sequence[str] | None = None,
    heat_name: str = "squared error",
) -> Figure:
    """Columns of (input, reconstruction, per-pixel heat map ``heat`` [N, H, W]), one per image,
    titled with ``labels`` and ``scores``.

    All heat maps share one colour scale (0 .. the largest value shown), so they compare.
    """
    k = len(inputs)
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
    for r, name in enumerate(("input", "reconstruction", heat_name)):
        axes[r][0].set_ylabel(name, fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=[axes[2][c] for c in range(k)], fraction=0.05, pad=0.02)
    return fig


def overlay_figure(overlays: Sequence[np.ndarray], titles: Sequence[str]) -> Figure:
    """A row of RGB uint8 images ``[H, W, 3]`` of any sizes (heat maps over the images), each
    at its own aspect, titled."""
    k = max(len(overlays), 1)
    fig = Figure(figsize=(2.4 * k, 2.9))
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, a, t in zip(axes, overlays, titles, strict=False):
        ax.imshow(a, interpolation="nearest")
        ax.set_title(t, fontsize=7)
    if not overlays:
        axes[0].set_axis_off()
    return fig
