"""Denoising: clean users' images with a trained run, and benchmark it against classical filters.

A denoising model is an ordinary run trained with ``--noise`` (the input is corrupted per batch, the
target is the clean image), normally with ``--preset denoise``. This module

* applies such a run to images of any size (:func:`denoise_images`): images of the model's size go
  straight through; others are cut into overlapping tiles or resized there and back;
* measures it (:func:`benchmark`) against classical filters - median, Gaussian blur, total variation
  and non-local means from SciPy / scikit-image - whose parameters are tuned on the validation split
  at the same noise level, all scored by PSNR and SSIM on the same noisy test images.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import atomic_write, last_weights, read_json, write_json
from .config import DataConfig, RunConfig, apply_preset
from .data import load_split
from .inference import finite_pixels, load, map_image, spread_indices, to_float
from .metrics import json_safe, psnr_per_image, ssim_per_image
from .models import AutoEncoder
from .noise import corrupt, parse_noise
from .plots import image_grid_figure, save_figure
from .runtime import resolve_device
from .training import train

log = logging.getLogger(__name__)

__all__ = [
    "FILTERS",
    "MODES",
    "parse_levels",
    "level_name",
    "denoise_tensor",
    "denoise_images",
    "mean_psnr",
    "apply_filter",
    "tune_filter",
    "train_denoiser",
    "benchmark",
    "comparison_figure",
    "level_dir",
    "bench_denoise_outputs",
    "bench_denoise",
    "train_with_snapshots",
]

MODES = ("exact", "tile", "resize")

# Seeds of the fixed noise drawn in the benchmark: tuning (validation) and scoring (test) never share it.
_VAL_STREAM, _TEST_STREAM = 1, 2


# ---------------------------------------------------------------------------------------------
# Noise levels of the benchmark


def parse_levels(text: str | Sequence[str]) -> list[tuple[str, ...]]:
    """``"gaussian:0.2,0.4,0.6"`` -> ``[("gaussian:0.2",), ("gaussian:0.4",), ("gaussian:0.6",)]``.

    Commas separate levels; a bare number reuses the previous item's kind; ``+`` combines
    corruptions into one level (``gaussian:0.2+mask:0.25``). A list of strings is joined by commas.
    """
    if not isinstance(text, str):
        text = ",".join(text)
    levels: list[tuple[str, ...]] = []
    kind = None
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        parts = []
        for part in (p.strip() for p in item.split("+")):
            if ":" not in part and kind is not None and part[:1].isdigit() | part.startswith("."):
                part = f"{kind}:{part}"
            n = parse_noise(part)
            kind = n.kind
            parts.append(str(n))
        levels.append(tuple(parts))
    if not levels:
        raise ValueError("no noise level given; e.g. --noise gaussian:0.2,0.4,0.6")
    return levels


def level_name(level: Sequence[str]) -> str:
    """``("gaussian:0.4",)`` -> ``"gaussian:0.4"``; combined corruptions are joined by ``+``."""
    return "+".join(level)


# ---------------------------------------------------------------------------------------------
# Applying a model


@torch.inference_mode()
def denoise_tensor(model: AutoEncoder, x: Tensor, batch_size: int = 512) -> Tensor:
    """Denoise float images ``x`` [N, C, S, S] in [0, 1] of the model's size -> float32 on the CPU."""
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(
            f"images must be [N, {', '.join(map(str, model.input_shape))}] for this model, not "
            f"{list(x.shape)} (denoise_images tiles or resizes other sizes)"
        )
    model.eval()
    device = next(model.parameters()).device
    outs = [
        finite_pixels(model(x[i : i + batch_size].to(device, torch.float32)), model).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0, *model.input_shape)


def _finite(model: AutoEncoder):
    return lambda x: finite_pixels(model(x), model)


def _starts(n: int, s: int) -> list[int]:
    """Tile offsets along one axis of length ``n >= s``: half-overlapping, the last one flush."""
    starts = list(range(0, n - s + 1, max(1, s // 2)))
    if starts[-1] != n - s:
        starts.append(n - s)
    return starts


def _window(s: int) -> Tensor:
    """[S, S] blending weights: sin^2 in each axis (sums to ~1 at half overlap), never exactly 0."""
    i = torch.arange(s, dtype=torch.float32) + 0.5
    w = torch.sin(math.pi * i / s).pow(2) + 1e-3
    return w[:, None] * w[None, :]


def _denoise_tiled(model: AutoEncoder, img: Tensor, batch_size: int) -> Tensor:
    """One float image [C, H, W] of any size: overlapping model-sized tiles, blended."""
    s = model.config.image_size
    c, h, w = img.shape
    ph, pw = max(0, s - h), max(0, s - w)
    x = img[None]
    if ph or pw:  # smaller than a tile: pad (reflect when the image is big enough for it)
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
    hh, ww = x.shape[-2:]
    ys, xs = _starts(hh, s), _starts(ww, s)
    tiles = torch.stack([x[0, :, y : y + s, q : q + s] for y in ys for q in xs])  # [T, C, S, S]
    out_tiles = denoise_tensor(model, tiles, batch_size)
    win = _window(s)
    acc = torch.zeros(c, hh, ww)
    norm = torch.zeros(1, hh, ww)
    k = 0
    for y in ys:
        for q in xs:
            acc[:, y : y + s, q : q + s] += out_tiles[k] * win
            norm[:, y : y + s, q : q + s] += win
            k += 1
    out = acc / norm
    return out[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(
        0, 1
    )


def denoise_images(
    model: AutoEncoder, images: Sequence[Tensor], mode: str = "exact", batch_size: int = 512
) -> list[Tensor]:
    """Denoise float images [C, H, W] in [0, 1]; each output has its input's size.

    ``mode``: "exact" - every image must have the model's size, except for a fully convolutional
    model, which takes any size whole (convae's whole-image path: padded to its stride, large
    overlapping tiles above 2 MP); "tile" - any size, denoised in half-overlapping model-sized
    tiles blended with a smooth window (full resolution, for models tied to their size; a fully
    convolutional model runs whole as in "exact"); "resize" - resized to the model's size and the
    result back (for whole objects such as digits drawn at another size).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    c, s = model.config.channels, model.config.image_size
    for img in images:
        if img.ndim != 3 or img.shape[0] != c:
            raise ValueError(
                f"images must be [C, H, W] with C = {c} (the model's), not {tuple(img.shape)}"
            )
    if mode in ("exact", "tile") and model.fully_conv:
        # any size as it is: the whole image at once (padded to the stride; tiled above 2 MP)
        return [map_image(model, img.float(), _finite(model), batch_size) for img in images]
    if mode == "tile":
        return [_denoise_tiled(model, img.float(), batch_size) for img in images]
    if mode == "resize":
        small = (
            torch.cat([_resize(img[None].float(), (s, s)) for img in images]) if images else None
        )
        out = denoise_tensor(model, small, batch_size) if small is not None else []
        return [
            _resize(o[None], tuple(img.shape[-2:]))[0] for o, img in zip(out, images, strict=True)
        ]
    for img in images:
        if tuple(img.shape[-2:]) != (s, s):
            raise ValueError(
                f"an image is {img.shape[-1]}x{img.shape[-2]} but the model takes {s}x{s}; use tile mode "
                "(overlapping tiles at full resolution) or resize mode (resized there and back)"
            )
    if not images:
        return []
    return list(denoise_tensor(model, torch.stack([img.float() for img in images]), batch_size))


def mean_psnr(clean: Sequence[Tensor], images: Sequence[Tensor]) -> float:
    """Mean over image pairs of different sizes of the PSNR (dB) of ``images[i]`` against ``clean[i]``."""
    if len(clean) != len(images) or not clean:
        raise ValueError(
            f"mean_psnr needs as many images as references, at least one ({len(images)} vs {len(clean)})"
        )
    return sum(
        float(psnr_per_image(c[None], y[None])[0]) for c, y in zip(clean, images, strict=True)
    ) / len(clean)


# ---------------------------------------------------------------------------------------------
# Classical filters: float32 [N, C, H, W] in [0, 1] -> same, each with a parameter grid to tune.


def _median(x: np.ndarray, size: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.median_filter(x, size=(1, 1, size, size), mode="reflect")


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="reflect")


def _tv(x: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    n, c, h, w = x.shape
    # channel_axis makes scikit-image solve every (image, channel) plane on its own.
    return denoise_tv_chambolle(x.reshape(n * c, h, w), weight=weight, channel_axis=0).reshape(
        x.shape
    )


def _nlm(x: np.ndarray, h: float, patch_size: int, patch_distance: int) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    out = np.empty_like(x)
    rgb = x.shape[1] == 3
    for i, img in enumerate(x):  # patches are compared within one image: no batching possible
        a = img.transpose(1, 2, 0) if rgb else img[0]
        y = denoise_nl_means(
            a,
            patch_size=patch_size,
            patch_distance=patch_distance,
            h=h,
            fast_mode=True,
            channel_axis=-1 if rgb else None,
        )
        out[i] = y.transpose(2, 0, 1) if rgb else y[None]
    return out


@dataclass(frozen=True)
class Filter:
    """A classical denoiser: ``fn(x, **params)`` and the grid its parameters are tuned over."""

    fn: Callable[..., np.ndarray]
    grid: tuple[dict[str, Any], ...]
    label: str


FILTERS: dict[str, Filter] = {
    "median": Filter(_median, tuple({"size": k} for k in (3, 5, 7)), "median (SciPy)"),
    "gaussian": Filter(
        _gaussian, tuple({"sigma": s} for s in (0.5, 0.75, 1.0, 1.5, 2.0)), "Gaussian blur (SciPy)"
    ),
    "tv": Filter(
        _tv,
        tuple({"weight": w} for w in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)),
        "total variation, Chambolle (scikit-image)",
    ),
    "nlm": Filter(
        _nlm,
        tuple(
            {"h": h, "patch_size": p, "patch_distance": 5}
            for p in (3, 5)
            for h in (0.05, 0.1, 0.15, 0.2, 0.3)
        ),
        "non-local means (scikit-image)",
    ),
}


def apply_filter(name: str, x: Tensor, params: dict[str, Any]) -> Tensor:
    """Run classical filter ``name`` on float images [N, C, H, W] in [0, 1] -> float32, clipped."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; choose one of: {', '.join(FILTERS)}")
    a = np.ascontiguousarray(x.detach().float().cpu().numpy())
    y = FILTERS[name].fn(a, **params)
    return torch.from_numpy(np.clip(y, 0.0, 1.0).astype(np.float32, copy=False))


def tune_filter(name: str, clean: Tensor, noisy: Tensor) -> tuple[dict[str, Any], float]:
    """The grid point of filter ``name`` with the best mean PSNR on (clean, noisy) -> (params, dB)."""
    best: tuple[dict[str, Any], float] | None = None
    for params in FILTERS[name].grid:
        p = float(psnr_per_image(clean, apply_filter(name, noisy, params)).mean())
        if best is None or p > best[1]:
            best = (params, p)
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# The benchmark


def train_denoiser(
    data: DataConfig,
    level: Sequence[str],
    out: str | os.PathLike,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress=None,
) -> Path:
    """Train a ``--preset denoise`` run on ``data`` with input corruption ``level``; its directory."""
    # the benchmark scores images of one size: the preset's model for them unless asked for crops
    cfg = apply_preset(RunConfig(data=data), "denoise", crops=data.crop is not None)
    t = replace(cfg.train, noise=tuple(level), seed=seed)
    if epochs is not None:
        t = replace(t, epochs=epochs)
    return train(replace(cfg, train=t), out, device=device, progress=progress)


def _spread(n: int, k: int) -> Tensor:
    """k indices spread evenly over [0, n) (every class when the split is sorted by label)."""
    k = min(k, n)
    return torch.linspace(0, n - 1, k).round().long() if k else torch.zeros(0, dtype=torch.long)


def _noisy(x: Tensor, level: Sequence[str], seed: int, stream: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + stream)
    return corrupt(x, level, g)


def _score(clean: Tensor, out: Tensor) -> dict[str, float]:
    return {
        "psnr": float(psnr_per_image(clean, out).mean()),
        "ssim": float(ssim_per_image(clean, out).mean()),
    }


def benchmark(
    models: Sequence[AutoEncoder],
    levels: Sequence[Sequence[str]],
    val_u8: Tensor,
    test_u8: Tensor,
    *,
    filters: Sequence[str] = tuple(FILTERS),
    seed: int = 0,
    tune_images: int = 200,
    show: int = 10,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Score noisy input, each model and each tuned classical filter at every noise level.

    ``models[i]`` denoises ``levels[i]``. The test images are corrupted once per level with a fixed
    seed and every method sees exactly those; the filters' parameters are the grid points with the
    best PSNR on ``tune_images`` validation images (spread over the split) under the same level with
    other noise. Returns one dict per level: ``{"noise", "methods": [{"method", "psnr", "ssim",
    "params", "ms_per_image"}...], "examples": {"clean" | "noisy" | method: [show, C, H, W]}}``.
    """
    if len(models) != len(levels):
        raise ValueError(f"{len(models)} model(s) for {len(levels)} noise level(s)")
    if len(test_u8) == 0:
        raise ValueError("the test split is empty: nothing to score")
    unknown = [f for f in filters if f not in FILTERS]
    if unknown:
        raise ValueError(
            f"unknown filter(s) {', '.join(unknown)}; choose from {', '.join(FILTERS)}"
        )
    clean = to_float(test_u8)
    tune_clean = to_float(val_u8[_spread(len(val_u8), tune_images)]) if len(val_u8) else clean[:0]
    shown = _spread(len(clean), show)
    say = progress or (lambda msg: None)
    results = []
    for model, level in zip(models, levels, strict=True):
        name = level_name(level)
        noisy = _noisy(clean, level, seed, _TEST_STREAM)
        rows = [{"method": "noisy", **_score(clean, noisy), "params": {}, "ms_per_image": 0.0}]
        examples = {"clean": clean[shown], "noisy": noisy[shown]}
        t0 = time.perf_counter()
        y = denoise_tensor(model, noisy)
        ms = 1000 * (time.perf_counter() - t0) / len(clean)
        rows.append({"method": "convae", **_score(clean, y),
                     "params": {"run": str(model.run_dir or "")}, "ms_per_image": ms})  # fmt: skip
        examples["convae"] = y[shown]
        say(f"{name}: noisy {rows[0]['psnr']:.2f} dB, convae {rows[1]['psnr']:.2f} dB")
        tune_noisy = _noisy(tune_clean, level, seed, _VAL_STREAM)
        for f in filters:
            row, y = _filter_row(f, clean, noisy, tune_clean, tune_noisy)
            rows.append(row)
            examples[f] = y[shown]
            say(f"{name}: {f} {row['params']} -> {row['psnr']:.2f} dB")
        results.append({"noise": name, "images": len(clean), "methods": rows, "examples": examples})
    return results


def _filter_row(
    f: str, clean: Tensor, noisy: Tensor, tune_clean: Tensor, tune_noisy: Tensor
) -> tuple[dict[str, Any], Tensor]:
    """Filter ``f`` tuned on (tune_clean, tune_noisy), then scored on ``noisy``: (row, output)."""
    if len(tune_clean):
        params, tuned = tune_filter(f, tune_clean, tune_noisy)
    else:  # no validation split: the first grid point, untuned (no validation PSNR)
        params, tuned = FILTERS[f].grid[0], None
    t0 = time.perf_counter()
    y = apply_filter(f, noisy, params)
    ms = 1000 * (time.perf_counter() - t0) / len(clean)
    row = {"method": f, **_score(clean, y), "params": params, "ms_per_image": ms, "val_psnr": tuned}
    return row, y


def comparison_figure(examples: dict[str, Tensor], title: str | None = None):
    """Rows clean, noisy, then each method's output, over the same test images."""
    labels = list(examples)
    fig = image_grid_figure([examples[k] for k in labels], labels)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
        fig.subplots_adjust(top=0.95)
    return fig


# ---------------------------------------------------------------------------------------------
# `convae bench denoise`: train (or take) one model per level, score, write the report


def level_dir(level: Sequence[str]) -> str:
    """A file-name-safe name for a noise level: gaussian:0.4 -> gaussian-0.4."""
    return level_name(level).replace(":", "-")


def bench_denoise_outputs(
    out: str | os.PathLike, levels: Sequence[Sequence[str]], trains: bool
) -> list[Path]:
    """Every path :func:`bench_denoise` writes under ``out``: a run folder per level when it
    ``trains`` its models, a figure per level and ``results.json``."""
    out = Path(out)
    runs = [out / "runs" / level_dir(lvl) for lvl in levels] if trains else []
    return [*runs, *(out / f"denoise-{level_dir(lvl)}.png" for lvl in levels), out / "results.json"]


def _bench_runs(
    data: DataConfig,
    levels: Sequence[Sequence[str]],
    out: Path,
    runs: Sequence[str | os.PathLike],
    train_kw: dict[str, Any],
) -> tuple[list[str], float]:
    """The run of each level: the given ones (one per level, or one for all), else one trained
    per level under ``out/runs``; and the seconds spent training."""
    if runs and len(runs) not in (1, len(levels)):
        raise ValueError(
            f"{len(runs)} --run for {len(levels)} noise levels: give one per level or one for all"
        )
    if runs:
        return [str(r) for r in (list(runs) * len(levels) if len(runs) == 1 else runs)], 0.0
    dirs = [out / "runs" / level_dir(lvl) for lvl in levels]
    for d in dirs:  # refused up front rather than after training the first model
        if d.exists():
            raise FileExistsError(
                f"{d} holds a run from an earlier benchmark; pass it with --run or choose "
                "another --out"
            )
    seconds = 0.0
    for lvl, d in zip(levels, dirs, strict=True):
        log.info("training a denoising model (preset denoise) for %s", level_name(lvl))
        train_denoiser(data, lvl, d, **train_kw)
        seconds += read_json(d / "metrics.json")["train_seconds"]
    return [str(d) for d in dirs], seconds


def _bench_models(run_dirs: Sequence[str], dev, test_x: Tensor, spec: str) -> list[AutoEncoder]:
    """Each run's model, checked against the test images (and warned about when it was trained
    without noise)."""
    models = [load(r, dev) for r in run_dirs]
    for m, r in zip(models, run_dirs, strict=True):
        if tuple(test_x.shape[1:]) != tuple(m.input_shape):
            raise ValueError(
                f"{spec} images are {tuple(test_x.shape[1:])} but the model takes "
                f"{tuple(m.input_shape)}; pass --channels/--image-size to convert them"
            )
        if not m.run_config.train.noise:
            log.warning("%s was trained without --noise; it is scored as a denoiser anyway", r)
    return models


def _level_report(r: dict[str, Any], run: str, figure: Path) -> dict[str, Any]:
    """One level of the report: its rows, and convae's gain over the best classical filter."""
    rows = r["methods"]
    best = max(
        (m for m in rows if m["method"] not in ("noisy", "convae")),
        key=lambda m: m["psnr"],
        default=None,
    )
    conv = next(m for m in rows if m["method"] == "convae")
    return {
        "noise": r["noise"],
        "run": run,
        "figure": str(figure),
        "methods": rows,
        "best_filter": best["method"] if best else None,
        "gain_over_best_filter_db": conv["psnr"] - best["psnr"] if best else None,
    }


def bench_denoise(
    data: DataConfig,
    levels: Sequence[Sequence[str]],
    out: str | os.PathLike,
    *,
    runs: Sequence[str | os.PathLike] = (),
    epochs: int | None = None,
    filters: Sequence[str] = tuple(FILTERS),
    tune_images: int = 200,
    images: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress=None,
) -> dict[str, Any]:
    """The denoising benchmark: convae against classical filters at each noise level of ``levels``.

    Each level's model is ``runs[i]`` (or ``runs[0]`` for all), else trained with the denoise
    preset into ``out/runs/<level>`` (``epochs``, ``seed``; ``progress`` gets the trainer's
    events). The filters are tuned on ``tune_images`` validation images; ``images`` test images
    spread over the split are scored (default all) - see :func:`benchmark`. Writes a figure per
    level and ``results.json`` under ``out``; returns the same report.
    """
    t_start = time.perf_counter()
    dev = resolve_device(device)
    out = Path(out)
    run_dirs, train_seconds = _bench_runs(
        data,
        levels,
        out,
        runs,
        {"epochs": epochs, "seed": seed, "device": dev, "progress": progress},
    )
    val_x, _ = load_split(data, "val")
    test_x, _ = load_split(data, "test")
    if images:
        test_x = test_x[spread_indices(len(test_x), images)]
    models = _bench_models(run_dirs, dev, test_x, data.spec)
    results = benchmark(models, levels, val_x, test_x, filters=filters, seed=seed,
                        tune_images=tune_images, progress=log.info)  # fmt: skip
    report: dict[str, Any] = {
        "data": data.spec,
        "out": str(out),
        "images": len(test_x),
        "tune_images": min(tune_images, len(val_x)),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "levels": [],
    }
    for r, lvl, run in zip(results, levels, run_dirs, strict=True):
        fig_path = out / f"denoise-{level_dir(lvl)}.png"
        save_figure(comparison_figure(r["examples"], f"{data.spec} test, {r['noise']}"), fig_path)
        report["levels"].append(_level_report(r, run, fig_path))
    report["seconds"] = time.perf_counter() - t_start
    write_json(out / "results.json", json_safe(report))
    return report


# ---------------------------------------------------------------------------------------------
# Training time against quality: one training run, its weights kept at CPU-time marks


def train_with_snapshots(
    cfg: RunConfig,
    out: str | os.PathLike,
    snapshots: str | os.PathLike,
    cpu_marks: Sequence[float],
    *,
    device: str | torch.device = "auto",
    progress=None,
) -> list[Path]:
    """Train ``cfg`` into the run directory ``out`` exactly as :func:`convae.train` does, and at
    the end of the first epoch whose cumulative training CPU time (this process's, as the run's
    ``history.jsonl`` counts it) reaches each of ``cpu_marks`` seconds, copy that epoch's weights
    into ``snapshots/cpu-<seconds>s`` (config.json + model.safetensors: ``convae.load`` reads it).
    The snapshots are mid-schedule (the learning rate not yet annealed). Returns their folders."""
    from safetensors.torch import save as st_save

    out, root = Path(out), Path(snapshots)
    marks = sorted(cpu_marks)
    made: list[Path] = []
    spent = 0.0

    def on_event(e: dict[str, Any]) -> None:
        nonlocal spent
        if progress is not None:
            progress(e)
        if e.get("event") != "epoch":
            return
        spent += e["cpu_seconds"]
        while marks and spent >= marks[0]:
            d = root / f"cpu-{int(marks.pop(0))}s"
            d.mkdir(parents=True, exist_ok=True)
            atomic_write(d / "model.safetensors", st_save(last_weights(out)))
            write_json(d / "config.json", read_json(out / "config.json"))
            write_json(d / "snapshot.json", {"epoch": e["epoch"], "step": e["step"],
                                             "cpu_seconds": spent, "run": str(out)})  # fmt: skip
            made.append(d)

    train(cfg, out, device=device, progress=on_event)
    return made
