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

__all__ = ["loss_figure", "reconstruction_figure", "image_grid_figure", "save_figure", "to_display"]


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
    from .checkpoint import atomic_write

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
