"""The latent space: encode a split, map it in 2-D, decode chosen points, walk between codes, and
size the bottleneck.

Everything starts from a trained model (``convae.load(run)``) and the same uint8 data the trainer
used. Codes are the model's flat ``[N, L]`` bottleneck in fp32; images come back as float
``[N, C, H, W]`` in [0, 1], clamped exactly as :func:`convae.inference.reconstruct` clamps them, so
decoding an image's code gives its reconstruction.

The figure builders at the bottom take data and return a matplotlib ``Figure`` (never shown).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .checkpoint import atomic_write, read_json, write_json
from .config import DataConfig, RunConfig, recipe_for
from .data import load_split
from .inference import finite_pixels, load, reconstruct, spread_indices, to_float
from .models import AutoEncoder, build_model
from .plots import save_figure, to_display
from .training import train_or_reuse

log = logging.getLogger(__name__)

__all__ = [
    "encode_images",
    "decode_codes",
    "subsample",
    "Projection",
    "project",
    "code_range",
    "latent_grid",
    "interpolate_codes",
    "silhouette",
    "checkerboard_energy",
    "write_codes_csv",
    "read_codes_csv",
    "sweep",
    "sweep_markdown",
    "mosaic",
    "grid_extent",
    "latent_map_figure",
    "manifold_figure",
    "map_and_image_figure",
    "rows_figure",
    "interpolation_figure",
    "sweep_quality_figure",
]


# ---------------------------------------------------------------------------------------------
# Codes in, images out


@torch.inference_mode()
def encode_images(model: AutoEncoder, images_u8: Tensor, batch_size: int = 1024) -> Tensor:
    """Codes (float32 [N, L], on CPU) of uint8 images, in fp32 and eval mode."""
    model.eval()
    device = next(model.parameters()).device
    outs = [
        model.encode(to_float(images_u8[i : i + batch_size], device)).float().cpu()
        for i in range(0, len(images_u8), batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0, model.latent_dim)


@torch.inference_mode()
def decode_codes(model: AutoEncoder, codes: Tensor, batch_size: int = 1024) -> Tensor:
    """Images (float32 [N, C, H, W] in [0, 1], on CPU) decoded from codes [N, L].

    The clamp is the one :func:`convae.inference.reconstruct` applies: linear-output models
    (seed-keras2d) can overshoot [0, 1].
    """
    codes = torch.as_tensor(codes, dtype=torch.float32)
    if codes.ndim != 2 or codes.shape[1] != model.latent_dim:
        raise ValueError(
            f"codes must be [N, {model.latent_dim}] for this model, not {list(codes.shape)}"
        )
    model.eval()
    device = next(model.parameters()).device
    outs = [
        finite_pixels(model.decode(codes[i : i + batch_size].to(device)), model).cpu()
        for i in range(0, len(codes), batch_size)
    ]
    if not outs:
        return torch.zeros(0, *model.input_shape)
    return torch.cat(outs)


def subsample(n: int, k: int | None, seed: int = 0) -> Tensor:
    """Sorted indices of a seeded random subset of ``k`` out of ``n`` (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


# ---------------------------------------------------------------------------------------------
# 2-D views of the codes


@dataclass(frozen=True)
class Projection:
    """2-D points for a set of codes and how they were made."""

    points: np.ndarray  # [N, 2]
    method: str  # "identity", "pca", "tsne" or "1-d"
    axes: tuple[str, str]  # axis labels
    pca: Any = None  # the fitted sklearn PCA (method "pca")
    explained: tuple[float, ...] | None = None  # PCA explained variance ratio of the two axes

    def transform(self, codes: Tensor | np.ndarray) -> np.ndarray:
        """Place new codes in the same 2-D view (identity and PCA only; t-SNE has no transform)."""
        if self.method == "tsne":
            raise ValueError("t-SNE cannot place new points in an existing map; use --method pca")
        z = np.asarray(codes, dtype=np.float64)
        z = z.reshape(len(z), -1) if z.ndim > 1 else z[None]
        if self.method == "pca":
            return self.pca.transform(z)
        if self.method == "1-d":
            return np.stack([z[:, 0], np.zeros(len(z))], 1)
        return z[:, :2].copy()  # identity


def project(codes: Tensor | np.ndarray, method: str = "auto", seed: int = 0) -> Projection:
    """2-D view of codes [N, L]: a 2-D code as is, a larger one by PCA (``auto``/``pca``) or t-SNE.

    A 1-D code is drawn along x (y = 0). t-SNE (scikit-learn, Barnes-Hut) is seeded with ``seed``.
    """
    z = np.asarray(codes, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"need a non-empty [N, L] array of codes, not shape {list(z.shape)}")
    if method not in ("auto", "pca", "tsne"):
        raise ValueError(f"projection method must be auto, pca or tsne, not {method!r}")
    n, L = z.shape
    if L == 1:
        return Projection(np.stack([z[:, 0], np.zeros(n)], 1), "1-d", ("z0", ""))
    if L == 2 and method == "auto":
        return Projection(z.copy(), "identity", ("z0", "z1"))
    if method == "tsne":
        from sklearn.manifold import TSNE

        if n < 5:
            raise ValueError(f"t-SNE needs at least 5 codes, not {n}")
        # perplexity must stay below the number of points; 30 is scikit-learn's default
        tsne = TSNE(
            n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed
        )
        return Projection(tsne.fit_transform(z), "tsne", ("t-SNE 1", "t-SNE 2"))
    from sklearn.decomposition import PCA

    if n < 2:
        raise ValueError("PCA needs at least 2 codes")
    pca = PCA(n_components=2, random_state=seed).fit(z)
    ev = tuple(float(v) for v in pca.explained_variance_ratio_)
    axes = (f"PC1 ({100 * ev[0]:.0f}% var.)", f"PC2 ({100 * ev[1]:.0f}% var.)")
    return Projection(pca.transform(z), "pca", axes, pca, ev)


def code_range(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension (min, max) of codes [N, L]; a flat dimension is widened to +-0.5."""
    if len(codes) == 0:
        raise ValueError("no codes to take a range from")
    lo, hi = codes.min(0).values.clone(), codes.max(0).values.clone()
    flat = hi - lo < 1e-6
    lo[flat] -= 0.5
    hi[flat] += 0.5
    return lo, hi


def latent_grid(lo: Sequence[float] | Tensor, hi: Sequence[float] | Tensor, n: int) -> Tensor:
    """An n x n grid of 2-D codes spanning [lo, hi] -> [n * n, 2], row-major as drawn.

    Row 0 is the top of the picture (largest z1), column 0 the left (smallest z0), so a mosaic of
    the decoded grid has the same orientation as the latent scatter plot.
    """
    lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if lo_t.shape != (2,) or hi_t.shape != (2,):
        raise ValueError("a latent grid needs 2-D codes (lo and hi of length 2)")
    if n < 2:
        raise ValueError(f"grid side must be at least 2, not {n}")
    xs = torch.linspace(float(lo_t[0]), float(hi_t[0]), n)
    ys = torch.linspace(float(hi_t[1]), float(lo_t[1]), n)  # top row = largest z1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


def interpolate_codes(a: Tensor, b: Tensor, steps: int) -> Tensor:
    """``steps`` codes evenly spaced on the segment from ``a`` to ``b`` (both ends included) -> [steps, L]."""
    a, b = (
        torch.as_tensor(a, dtype=torch.float32).reshape(-1),
        torch.as_tensor(b, dtype=torch.float32).reshape(-1),
    )
    if a.shape != b.shape:
        raise ValueError(f"codes differ in size: {a.numel()} and {b.numel()}")
    if steps < 2:
        raise ValueError(f"interpolation needs at least 2 steps, not {steps}")
    t = torch.linspace(0.0, 1.0, steps)[:, None]
    return torch.lerp(a[None], b[None], t)


def silhouette(codes: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float | None:
    """Silhouette score (scikit-learn, Euclidean) of the raw codes grouped by label; None when
    there are fewer than two labels or too few codes for a score."""
    from sklearn.metrics import silhouette_score

    z = np.asarray(codes, dtype=np.float64)
    y = np.asarray(labels)
    k = len(np.unique(y))
    if k < 2 or k > len(y) - 1:
        return None
    return float(silhouette_score(z, y))


def checkerboard_energy(images: Tensor, period: int = 2) -> Tensor:
    """Share of each image's non-DC spectral power at the frequencies of a ``period``-pixel grid -> [N].

    A decoder that upsamples by ``period`` with transposed convolutions paints a pattern that
    repeats every ``period`` pixels (uneven kernel overlap); such a pattern has power only at the
    2-D DFT bins whose indices are multiples of H/period and W/period. This returns that power over
    all the power except DC (0 for a flat image), in [0, 1]. Pure function of float [N, C, H, W].
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], not {list(images.shape)}")
    h, w = images.shape[-2:]
    if period < 2 or h % period or w % period:
        raise ValueError(f"period must be >= 2 and divide the image size {h}x{w}, not {period}")
    spec = torch.fft.fft2(images.double())  # [N, C, H, W] complex
    power = spec.real.square() + spec.imag.square()
    power = power.sum(1)  # [N, H, W]: channels together
    power[:, 0, 0] = 0.0  # DC is the mean brightness, not structure
    on_grid = power[:, :: h // period, :: w // period].sum((1, 2))  # bins at multiples of H/p, W/p
    total = power.sum((1, 2))
    return torch.where(
        total > 0, on_grid / total.clamp_min(1e-300), torch.zeros_like(total)
    ).float()


# ---------------------------------------------------------------------------------------------
# Codes as CSV


def write_codes_csv(path: str | os.PathLike, codes: Tensor, labels: Tensor | None) -> None:
    """One row per image: ``label, z0, z1, ...``, the raw float32 code (9 significant digits
    round-trip a float32 exactly). Written atomically."""
    z = np.asarray(codes, dtype=np.float32)
    y = np.asarray(labels) if labels is not None else np.full(len(z), -1)
    lines = ["label," + ",".join(f"z{i}" for i in range(z.shape[1]))]
    lines += [
        f"{int(lab)}," + ",".join(f"{v:.9g}" for v in row) for lab, row in zip(y, z, strict=True)
    ]
    atomic_write(path, "\n".join(lines) + "\n")


def read_codes_csv(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read a file written by :func:`write_codes_csv` -> (float32 codes [N, L], int64 labels [N])."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such codes file")
    rows = [r for r in p.read_text().splitlines() if r.strip()]
    if not rows or not rows[0].startswith("label,"):
        raise ValueError(f"{p}: not a codes CSV (expected a 'label,z0,...' header)")
    try:
        data = np.array([[float(v) for v in r.split(",")] for r in rows[1:]], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{p}: bad number in codes CSV ({e})") from e
    data = data.reshape(len(rows) - 1, len(rows[0].split(",")))
    return torch.from_numpy(data[:, 1:].astype(np.float32)), torch.from_numpy(
        data[:, 0].astype(np.int64)
    )


# ---------------------------------------------------------------------------------------------
# The bottleneck sweep


_SWEEP_COLUMNS = ("latent_dim", "compression_ratio", "mse", "psnr", "ssim", "train_seconds")


def sweep(
    base: RunConfig,
    latent_dims: Sequence[int],
    out: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    progress: Callable[[int], Any] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    shown: int = 10,
) -> list[dict[str, Any]]:
    """Train one model per latent size with ``base``'s seed and recipe; return the table rows.

    Each model goes to ``out/latent-L`` (a finished run with the same recipe is reused, a stopped
    one resumed). ``out`` receives ``sweep.json``, ``sweep.csv``, ``sweep.md``, ``quality.png``
    (quality against compression ratio), ``reconstructions-latent-L.png`` per size and
    ``reconstructions.png`` (all sizes on the same test images). ``progress(L)`` may return a
    trainer progress callback (closed afterwards if it has ``close``); ``on_row`` gets each row.
    """
    dims = [int(d) for d in latent_dims]
    if not dims:
        raise ValueError("give at least one latent size, e.g. --latent-dims 2,4,8")
    if len(set(dims)) != len(dims) or min(dims) < 1:
        raise ValueError(f"latent sizes must be distinct positive integers, not {dims}")
    out = Path(out)
    for L in dims:  # refuse a size the architecture cannot take before training anything
        build_model(replace(base.model, latent_dim=L))
    rows: list[dict[str, Any]] = []
    recons: dict[int, Tensor] = {}
    shown_x: Tensor | None = None
    for L in dims:
        run = out / f"latent-{L}"
        model, row = _sweep_one(replace(base, model=replace(base.model, latent_dim=L)), run,
                                device, progress(L) if progress is not None else None)  # fmt: skip
        rows.append(row)
        if shown_x is None:
            shown_x = _shown_images(model.run_config.data, shown)
        recons[L] = reconstruct(model, shown_x)
        _save_png(
            rows_figure([to_float(shown_x), recons[L]], ["input", f"latent {L}"]),
            out / f"reconstructions-latent-{L}.png",
        )
        if on_row is not None:
            on_row(row)
    assert shown_x is not None
    _write_sweep(out, base, rows)
    grid = [to_float(shown_x)] + [recons[L] for L in dims]
    _save_png(
        rows_figure(grid, ["input"] + [f"latent {L}" for L in dims]),
        out / "reconstructions.png",
    )
    return rows


def _sweep_one(cfg: RunConfig, run: Path, device, bar) -> tuple[AutoEncoder, dict[str, Any]]:
    """Train (or reuse) one sweep model -> (the model on CPU, its table row); ``bar`` is the
    trainer's progress callback, closed afterwards if it has ``close``."""
    try:
        train_or_reuse(cfg, run, device=device, progress=bar)
    finally:
        if hasattr(bar, "close"):
            bar.close()
    m = read_json(run / "metrics.json")
    model = load(run, device="cpu")
    row = {
        "latent_dim": cfg.model.latent_dim,
        "compression_ratio": m["compression_ratio"],
        "mse": m["mse"],
        "psnr": m["psnr"],
        "ssim": m["ssim"],
        "train_seconds": m["train_seconds"],
        "epochs": m["epochs"],
        "params": sum(p.numel() for p in model.parameters()),
        "run": str(run),
    }
    return model, row


def _shown_images(data: DataConfig, shown: int) -> Tensor:
    """``shown`` test images (validation ones when there is no test split), spread evenly."""
    x, _ = load_split(data, "test")
    if len(x) == 0:
        x, _ = load_split(data, "val")
    return x[spread_indices(len(x), shown)]


def _write_sweep(out: Path, base: RunConfig, rows: list[dict[str, Any]]) -> None:
    """sweep.json, sweep.csv, sweep.md and quality.png."""
    meta = {
        "arch": base.model.arch,
        "data": base.data.spec,
        "classes": base.data.classes,
        "epochs": base.train.epochs or recipe_for(base.model.arch).epochs,
        "seed": base.train.seed,
        "rows": rows,
    }
    write_json(out / "sweep.json", meta)
    csv = [",".join(_SWEEP_COLUMNS + ("epochs", "params"))]
    csv += [",".join(str(r[c]) for c in _SWEEP_COLUMNS + ("epochs", "params")) for r in rows]
    atomic_write(out / "sweep.csv", "\n".join(csv) + "\n")
    atomic_write(out / "sweep.md", sweep_markdown(rows))
    _save_png(
        sweep_quality_figure(rows, title=f"{base.model.arch} on {base.data.spec}"),
        out / "quality.png",
    )


def sweep_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep table as GitHub Markdown."""
    lines = [
        "| latent size | compression ratio | test MSE | PSNR (dB) | SSIM | training s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['latent_dim']} | {r['compression_ratio']:.1f}:1 | {r['mse']:.5f} | "
            f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _save_png(fig: Figure, path: Path) -> None:

    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Figures: data in, Figure out


def mosaic(images: Tensor, n_cols: int) -> np.ndarray:
    """Tile float images [K, C, H, W] row-major into one display array [rows*H, n_cols*W(, 3)]."""
    k, c, h, w = images.shape
    rows = math.ceil(k / n_cols)
    pad = rows * n_cols - k
    if pad:
        images = torch.cat([images, torch.zeros(pad, c, h, w)])
    t = (
        images.reshape(rows, n_cols, c, h, w)
        .permute(2, 0, 3, 1, 4)
        .reshape(c, rows * h, n_cols * w)
    )
    return to_display(t)


def _scatter(ax, points: np.ndarray, labels: np.ndarray | None, s: float) -> None:
    import matplotlib as mpl

    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=s, alpha=0.7)
        return
    classes = np.unique(labels)
    cmap = mpl.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, c in enumerate(classes):
        sel = labels == c
        ax.scatter(
            points[sel, 0],
            points[sel, 1],
            s=s,
            alpha=0.7,
            color=cmap(i % cmap.N),
            label=str(c),
            edgecolors="none",
        )
    ax.legend(title="label", fontsize=8, markerscale=2, loc="best")


def _map_axes(ax, points, labels, axes, title, marks=None, mark_label="chosen", s=None):
    labels = None if labels is None else np.asarray(labels)
    s = s if s is not None else (12 if len(points) <= 2000 else 4)
    _scatter(ax, points, labels, s)
    if marks is not None and len(marks):
        big = len(marks) == 1
        ax.scatter(
            marks[:, 0],
            marks[:, 1],
            c="k",
            marker="o" if big else ".",
            s=160 if big else 12,
            label=mark_label,
            zorder=3,
        )
        ax.legend(
            title="label" if labels is not None else None, fontsize=8, markerscale=1, loc="best"
        )
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)


def latent_map_figure(
    points: np.ndarray,
    labels: np.ndarray | None,
    axes: tuple[str, str] = ("z0", "z1"),
    title: str = "Latent space",
) -> Figure:
    """Scatter of 2-D points coloured by label, with a legend and equal axes (seed 004's map)."""
    fig = Figure(figsize=(6.5, 6))
    _map_axes(fig.add_subplot(), points, labels, axes, title)
    return fig


def grid_extent(
    lo: Sequence[float], hi: Sequence[float], n: int
) -> tuple[float, float, float, float]:
    # each tile is centred on its code: extend the range by half a step on every side
    dx, dy = (hi[0] - lo[0]) / (n - 1), (hi[1] - lo[1]) / (n - 1)
    return (lo[0] - dx / 2, hi[0] + dx / 2, lo[1] - dy / 2, hi[1] + dy / 2)


def manifold_figure(
    images: Tensor,
    lo: Sequence[float],
    hi: Sequence[float],
    n: int,
    title: str = "Decoded latent grid",
) -> Figure:
    """The decoded n x n grid of :func:`latent_grid` as one picture with the z0/z1 axes."""
    fig = Figure(figsize=(7, 7))
    ax = fig.add_subplot()
    a = mosaic(images, n)
    ax.imshow(
        a,
        cmap="gray" if a.ndim == 2 else None,
        vmin=0,
        vmax=1,
        extent=grid_extent(lo, hi, n),
        aspect="auto",
        interpolation="nearest",
    )
    ax.set_xlabel("z0")
    ax.set_ylabel("z1")
    ax.set_title(title)
    return fig


def map_and_image_figure(
    points: np.ndarray,
    labels: np.ndarray | None,
    marks: np.ndarray,
    image: np.ndarray,
    axes: tuple[str, str] = ("z0", "z1"),
    image_title: str = "Generated image",
    extent: tuple[float, float, float, float] | None = None,
) -> Figure:
    """Seed 004's two panels: the latent map with the chosen point(s) marked, and the decoded image
    (a single image, or a mosaic drawn over ``extent`` in latent coordinates)."""
    fig = Figure(figsize=(12, 5.5))
    ax1, ax2 = fig.subplots(1, 2)
    _map_axes(
        ax1,
        points,
        labels,
        axes,
        "Latent space",
        marks=marks,
        mark_label="new point" if len(marks) == 1 else "grid",
    )
    ax2.imshow(
        image,
        cmap="gray" if image.ndim == 2 else None,
        vmin=0,
        vmax=1,
        extent=extent,
        aspect="auto" if extent is not None else "equal",
        interpolation="nearest",
    )
    if extent is None:
        ax2.set_xticks([])
        ax2.set_yticks([])
    else:
        ax2.set_xlabel("z0")
        ax2.set_ylabel("z1")
    ax2.set_title(image_title)
    return fig


def rows_figure(
    rows: Sequence[Tensor],
    labels: Sequence[str],
    titles: Sequence[str] | None = None,
    scale: float = 1.0,
) -> Figure:
    """Rows of images [K, C, H, W] (same K), one labelled strip each; ``titles`` name the columns.

    One axes per row (a mosaic), not one per image: a 10 x 7 grid renders in a fraction of the time.
    """
    k, w = max(len(r) for r in rows), rows[0].shape[-1]
    fig = Figure(figsize=(scale * k, scale * len(rows) + (0.3 if titles else 0.1)))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for i, (ax, imgs, label) in enumerate(zip(axes, rows, labels, strict=True)):
        a = mosaic(imgs.float(), k)
        ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=9)
        for x in range(1, k):  # thin separators between images
            ax.axvline(x * w - 0.5, color="white", lw=1)
        if i == 0 and titles is not None:
            ax.set_xticks([(j + 0.5) * w - 0.5 for j in range(len(titles))], titles, fontsize=8)
            ax.xaxis.tick_top()
            ax.tick_params(length=0)
        else:
            ax.set_xticks([])
    fig.subplots_adjust(hspace=0.05)
    return fig


def interpolation_figure(a: Tensor, frames: Tensor, b: Tensor) -> Figure:
    """One strip: input A, the decoded points from A's code to B's, input B."""
    k = len(frames)
    titles = ["A"] + [f"t={i / (k - 1):.2f}" for i in range(k)] + ["B"]
    return rows_figure([torch.cat([a[None], frames, b[None]])], ["interpolation"], titles=titles)


def sweep_quality_figure(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Test MSE and SSIM against compression ratio (log axis), one point per latent size."""
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    ratio = [r["compression_ratio"] for r in rows]
    for ax, key, name in ((ax1, "mse", "test MSE"), (ax2, "ssim", "test SSIM")):
        vals = [r[key] for r in rows]
        ax.plot(ratio, vals, marker="o")
        for r, x, y in zip(rows, ratio, vals, strict=True):
            ax.annotate(
                f"L={r['latent_dim']}",
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.set_xticks(ratio, [f"{x:.0f}:1" if x >= 10 else f"{x:.1f}:1" for x in ratio], fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("compression ratio (input values / latent values)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3, which="both")
    ax1.set_yscale("log")
    if title:
        fig.suptitle(title)
    return fig
