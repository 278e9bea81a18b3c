"""The texture-inspection benchmark (``benchmarks/inspect_textures.py``, docs/anomaly.md): subtle
synthetic defects on held-out parts of three textures, found by a convae model and by a PCA patch
baseline whose maps are smoothed, normalized and thresholded the same way.

Protocol, per texture (scikit-image ``brick``, ``grass``, ``gravel``: 512 x 512 grey, replicated
to RGB so that a colour defect can exist and the model sees what a user's colour parts give):

- **train**: rows 0-255, random 64 x 64 crops (and flips) - the run's training images;
- **held out**: rows 256-511, cut into 32 disjoint 64 x 64 cells (4 rows x 8 columns), the parts.
  Calibration takes the cells of one colour of a checkerboard and test the other: 16 parts each,
  interleaved over the whole held-out band in both directions, so the thresholds are set on the
  same conditions they are measured on, and no calibration pixel is a test pixel. (512 x 512
  pixels hold 64 disjoint 64 x 64 parts in all; the held-out half, 32.)
- **defects** (:mod:`convae.defects`): ``DRAWS`` per test part for each (kind, contrast), 48
  images per set, image ``i`` on test part ``i % 16`` drawn from
  ``default_rng([seed, kind, contrast, i])``; the patch defect is cut from another texture
  (:data:`FOREIGN`);
- **metrics** per (kind, contrast): image AUROC (the 16 normal test parts against the 48 with a
  defect), pixel AUROC and PRO over the pixels of both, and the recall of the image threshold;
- **false-positive rates**: the per-pixel thresholds (targets 5 % and 1 %) and the image threshold
  (target 5 %) set on the calibration parts, measured on the normal test parts - for the
  checkerboard split and as the mean over ``SPLITS`` random 16/16 splits of the cells: with
  16 calibration parts one split's image rate scatters by several points (a Beta(1, 16)
  variable counted on 16 parts); the mean shows whether the rule is biased.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .anomaly_maps import (
    anomaly_maps,
    chroma,
    components_for,
    fit_map_calibration,
    image_scores,
    raw_maps,
    threshold_at_fpr,
)
from .checkpoint import write_json
from .config import DataConfig, RunConfig, apply_preset
from .defects import CONTRASTS, KINDS, defect_set, pixel_auroc, pro_score
from .defects import image_auroc as _image_auroc
from .inference import load
from .runs import resolve_config, same_recipe
from .sampling import ImageList, RandomCrops
from .training import fit_config

log = logging.getLogger(__name__)

__all__ = [
    "TEXTURES",
    "FOREIGN",
    "TextureParts",
    "texture_parts",
    "texture_recipe",
    "texture_model",
    "PatchPCA",
    "fit_patch_pca",
    "pca_raw_maps",
    "evaluate_maps",
    "texture_benchmark",
]

TEXTURES = ("brick", "grass", "gravel")
FOREIGN = {"brick": "gravel", "grass": "brick", "gravel": "grass"}  # source of the patch defect
PART = 64  # side of a part (and of a training crop)
ROWS, COLS = 4, 8  # held-out cells
CALIBRATION = tuple(i for i in range(ROWS * COLS) if (i // COLS + i % COLS) % 2 == 0)
DRAWS = 3  # defect images per test part and set
SPLITS = 400  # random calibration/test splits of the cells for the mean false-positive rates
PIXEL_FPRS = (0.05, 0.01)  # per-pixel targets measured
IMAGE_FPR = 0.05
SUBTLE = 30  # contrasts up to this count as subtle


def load_texture(name: str) -> np.ndarray:
    """The scikit-image texture ``name`` as uint8 [512, 512]."""
    import skimage.data

    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; choose one of {', '.join(TEXTURES)}")
    return np.ascontiguousarray(getattr(skimage.data, name)(), dtype=np.uint8)


@dataclass(frozen=True)
class TextureParts:
    """One texture's benchmark images: the training region and the held-out cells."""

    name: str
    train: np.ndarray  # uint8 RGB [3, 256, 512]
    cells: np.ndarray  # uint8 RGB [32, 3, 64, 64], row by row

    @property
    def test(self) -> list[int]:
        return [i for i in range(len(self.cells)) if i not in CALIBRATION]


def texture_parts(name: str) -> TextureParts:
    """The regions and parts of texture ``name`` (see the module docstring)."""
    img = np.repeat(load_texture(name)[None], 3, axis=0)  # grey -> R = G = B
    held = img[:, 256:]
    cells = [held[:, r * PART : (r + 1) * PART, c * PART : (c + 1) * PART]
             for r in range(ROWS) for c in range(COLS)]  # fmt: skip
    return TextureParts(name, np.ascontiguousarray(img[:, :256]), np.stack(cells))


# ---------------------------------------------------------------------------------------------
# The convae model of a texture


def texture_recipe(preset: str = "anomaly", **train_overrides: Any) -> RunConfig:
    """The run config of a texture model: ``preset`` as ``convae train --preset P --crop 64``
    on RGB images gives it, training fields overridden by ``train_overrides``."""
    cfg = apply_preset(RunConfig(data=DataConfig(crop=PART, channels=3)), preset)
    if train_overrides:
        cfg = replace(cfg, train=replace(cfg.train, **train_overrides))
    return cfg


def texture_model(parts: TextureParts, recipe: RunConfig, run_dir: str | Path, device="cpu"):
    """The model of ``recipe`` trained on random crops of the training region, in ``run_dir``:
    reused when it already holds a finished training of the same recipe."""
    run = Path(run_dir)
    data = replace(recipe.data, spec=f"texture:{parts.name}:rows0-255", crop=PART, channels=3)
    store = ImageList([parts.train])
    per_epoch = data.crops_per_epoch or max(2048, 64 * len(store))
    cfg = resolve_config(replace(recipe, data=data), 3, PART, per_epoch)
    if (run / "metrics.json").is_file():
        stored = RunConfig.from_json((run / "config.json").read_text())
        if same_recipe(stored, cfg):
            return load(run, device)
        raise FileExistsError(f"{run} holds a texture model of another recipe; use another dir")
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "config.json", cfg.to_dict())
    source = RandomCrops(store, PART, per_epoch, torch.device(device))
    t0 = time.perf_counter()
    _, history = fit_config(cfg, source, None, device=device, run_dir=run)
    write_json(run / "metrics.json", {"train_seconds": time.perf_counter() - t0,
                                      "train_loss": history[-1]["train_loss"]})  # fmt: skip
    return load(run, device)


# ---------------------------------------------------------------------------------------------
# The PCA patch baseline


@dataclass(frozen=True)
class PatchPCA:
    """Mean [p*p] and components [k, p*p] of grey p x p patches of normal images (float32)."""

    patch: int
    mean: Tensor
    components: Tensor


def fit_patch_pca(
    region: np.ndarray, patch: int, components: int, samples: int = 20000, seed: int = 0
) -> PatchPCA:
    """PCA of ``samples`` random grey ``patch`` x ``patch`` patches of a uint8 [C, H, W] region."""
    from sklearn.decomposition import PCA

    grey = region.astype(np.float64).mean(0) / 255.0
    rng = np.random.default_rng([seed, patch])
    r = rng.integers(0, grey.shape[0] - patch + 1, samples)
    c = rng.integers(0, grey.shape[1] - patch + 1, samples)
    idx = np.arange(patch)
    x = grey[r[:, None, None] + idx[None, :, None], c[:, None, None] + idx[None, None, :]]
    pca = PCA(n_components=components, random_state=0).fit(x.reshape(samples, -1))
    return PatchPCA(patch, torch.as_tensor(pca.mean_, dtype=torch.float32),
                    torch.as_tensor(pca.components_, dtype=torch.float32))  # fmt: skip


def pca_raw_maps(pca: PatchPCA, x_u8: Tensor, batch: int = 64) -> Tensor:
    """Per-pixel error ``[N, 1, H, W]`` of uint8 RGB parts: every ``p x p`` patch (stride 1, the
    part reflect-padded by ``p``) projected on the components; a pixel's luma error is its squared
    residual averaged over the patches covering it, times 3 (the channels), plus its squared
    chroma, which grey components never reconstruct: the RGB residual of a PCA of grey patches."""
    p, w = pca.patch, pca.components
    out = []
    for i in range(0, len(x_u8), batch):
        x = x_u8[i : i + batch].float() / 255.0
        xp = F.pad(x, (p, p, p, p), mode="reflect")
        grey = xp.mean(1, keepdim=True)
        size = grey.shape[-2:]
        q = F.unfold(grey, p) - pca.mean[None, :, None]  # [B, p*p, L]
        res = q - w.T @ (w @ q)
        err = F.fold(res.pow(2), size, p) / F.fold(torch.ones_like(res[:1]), size, p)
        total = 3.0 * err + chroma(xp).pow(2).sum(1, keepdim=True)
        out.append(total[..., p:-p, p:-p])
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Evaluation of one method's raw maps


def _fprs(raw_cal: Tensor, raw_test: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Thresholds set on calibration parts, their false-positive rates on normal test parts."""
    cal = fit_map_calibration(raw_cal, names, PIXEL_FPRS[0])
    cal_maps, test_maps = anomaly_maps(raw_cal, cal), anomaly_maps(raw_test, cal)
    out = {}
    values = cal_maps.flatten().double().numpy()
    for f in PIXEL_FPRS:
        thr = float(np.quantile(values, 1 - f))
        out[f"pixel_fpr@{f:g}"] = float((test_maps > thr).double().mean())
    thr = threshold_at_fpr(image_scores(cal_maps), IMAGE_FPR, quiet=True)
    out[f"image_fpr@{IMAGE_FPR:g}"] = float((image_scores(test_maps) > thr).mean())
    return out


def _split_fprs(raw_cells: Tensor, names: Sequence[str], seed: int) -> dict[str, Any]:
    """The false-positive rates of ``SPLITS`` random 16/16 splits of the cells: mean, sd, range."""
    rng = np.random.default_rng([seed, 77])
    rows = []
    for _ in range(SPLITS):
        perm = torch.from_numpy(rng.permutation(len(raw_cells)))
        half = len(perm) // 2
        rows.append(_fprs(raw_cells[perm[:half]], raw_cells[perm[half:]], names))
    return {k: {"mean": float(np.mean([r[k] for r in rows])),
                "sd": float(np.std([r[k] for r in rows])),
                "min": float(np.min([r[k] for r in rows])),
                "max": float(np.max([r[k] for r in rows]))} for k in rows[0]}  # fmt: skip


def evaluate_maps(
    raw_cells: Tensor,
    raw_defects: dict[str, Tensor],
    masks: dict[str, np.ndarray],
    names: Sequence[str],
    seed: int = 0,
) -> dict[str, Any]:
    """Calibrate on the calibration cells, then measure every defect set and the FPRs.

    ``raw_cells``: raw maps ``[32, K, H, W]`` of the normal held-out cells; ``raw_defects``
    and ``masks``: per set "kind/contrast", the raw maps of the test parts with that defect
    and their ground truth."""
    test_idx = [i for i in range(len(raw_cells)) if i not in CALIBRATION]
    raw_cal, raw_test = raw_cells[list(CALIBRATION)], raw_cells[test_idx]
    cal = fit_map_calibration(raw_cal, names, PIXEL_FPRS[0])
    image_thr = threshold_at_fpr(image_scores(anomaly_maps(raw_cal, cal)), IMAGE_FPR, quiet=True)
    normal = anomaly_maps(raw_test, cal).numpy()
    s_norm = normal.reshape(len(normal), -1).max(1)
    sets = {}
    for key, raw in raw_defects.items():
        dmap = anomaly_maps(raw, cal).numpy()
        s_def = dmap.reshape(len(dmap), -1).max(1)
        maps = np.concatenate([normal, dmap])
        gt = np.concatenate([np.zeros(normal.shape, bool), masks[key]])
        sets[key] = {"image_auroc": _image_auroc(s_norm, s_def), "pixel_auroc": pixel_auroc(maps, gt),
                     "pro": pro_score(maps, gt),
                     "image_recall": float((s_def > image_thr).mean())}  # fmt: skip
    return {"sets": sets, "fpr": _fprs(raw_cal, raw_test, names),
            "fpr_splits": _split_fprs(raw_cells, names, seed)}  # fmt: skip


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """Means over the subtle sets (contrast <= 30) and over all sets of one evaluation."""
    sets = result["sets"]
    keys = ("image_auroc", "pixel_auroc", "pro")
    sub = [v for k, v in sets.items() if int(k.split("/")[1]) <= SUBTLE]
    out = {f"subtle_{m}": float(np.mean([v[m] for v in sub])) for m in keys}
    out.update({f"all_{m}": float(np.mean([v[m] for v in sets.values()])) for m in keys})
    return out


# ---------------------------------------------------------------------------------------------
# The benchmark


def _defects(parts: TextureParts, kinds, contrasts, seed: int):
    """Per set "kind/contrast": (uint8 parts with one defect each, masks), ``DRAWS`` on each
    test part."""
    bases = parts.cells[[parts.test[i % len(parts.test)] for i in range(DRAWS * len(parts.test))]]
    foreign = load_texture(FOREIGN[parts.name])
    return {f"{k}/{c}": defect_set(bases, k, c, seed, foreign) for k in kinds for c in contrasts}


def _method(raw_fn: Callable[[Tensor], Tensor], parts: TextureParts, defects, names, seed: int):
    t0 = time.perf_counter()
    cells = raw_fn(torch.from_numpy(parts.cells))
    raw_def = {k: raw_fn(torch.from_numpy(x)) for k, (x, _) in defects.items()}
    res = evaluate_maps(cells, raw_def, {k: m for k, (_, m) in defects.items()}, names, seed)
    res["summary"] = summarize(res)
    res["seconds"] = time.perf_counter() - t0
    return res


def texture_benchmark(
    recipe: RunConfig,
    runs_dir: str | Path,
    *,
    textures: Sequence[str] = TEXTURES,
    kinds: Sequence[str] = KINDS,
    contrasts: Sequence[int] = CONTRASTS,
    pca: tuple[int, int] = (8, 32),
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[str, str, dict], None] | None = None,
) -> dict[str, Any]:
    """Run the protocol on each texture: train (or reuse) the convae model of ``recipe`` in
    ``runs_dir/<texture>``, fit the PCA baseline (``pca``: patch side, components) on the same
    training region, and evaluate both. ``progress(texture, method, result)`` gets each result.
    Returns ``{texture: {"convae": ..., "pca": ...}, "mean": ..., "config": ...}``."""
    out: dict[str, Any] = {}
    for name in textures:
        parts = texture_parts(name)
        defects = _defects(parts, kinds, contrasts, seed)
        t0 = time.perf_counter()
        model = texture_model(parts, recipe, Path(runs_dir) / name, device)
        comps = components_for(3)
        res = {
            "convae": _method(partial(raw_maps, model, names=comps), parts, defects, comps, seed)
        }
        res["convae"]["model_seconds"] = time.perf_counter() - t0
        basis = fit_patch_pca(parts.train, pca[0], pca[1], seed=seed)
        res["pca"] = _method(partial(pca_raw_maps, basis), parts, defects, ("pca",), seed)
        for method, r in res.items():
            if progress is not None:
                progress(name, method, r)
        out[name] = res
    out["mean"] = {
        m: {k: float(np.mean([out[t][m]["summary"][k] for t in textures]))
            for k in out[textures[0]][m]["summary"]} for m in ("convae", "pca")
    }  # fmt: skip
    out["config"] = {"recipe": recipe.to_dict(), "pca": {"patch": pca[0], "components": pca[1]},
                     "seed": seed, "kinds": list(kinds), "contrasts": list(contrasts),
                     "part": PART, "cells": [ROWS, COLS], "calibration_cells": list(CALIBRATION),
                     "draws": DRAWS, "splits": SPLITS,
                     "pixel_fprs": list(PIXEL_FPRS), "image_fpr": IMAGE_FPR}  # fmt: skip
    return out
