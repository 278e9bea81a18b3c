"""Run configurations as a whole: resolving one for the data it trains on, naming a new run
directory, and telling whether two runs share a recipe."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from .config import DataConfig, RunConfig, recipe_for
from .models import build_model, resolve_model_config
from .version import __version__

__all__ = ["resolve_config", "default_arch", "default_run_dir", "same_recipe"]


def resolve_config(
    cfg: RunConfig,
    channels: int | None = None,
    image_size: int | None = None,
    items: int | None = None,
) -> RunConfig:
    """``cfg`` with everything decided: channels and size from the data unless the data config
    forces them (a crop size is the model's size), the architecture's latent size and mean image,
    its training recipe for every field left ``None`` (epochs raised for a small dataset of
    ``items`` training images or crops per epoch), and this convae's version."""
    m = cfg.model
    d = cfg.data
    channels = d.channels or channels or m.channels
    size = d.crop or d.image_size or image_size or m.image_size
    arch = m.arch or default_arch(d)
    padding = m.padding or ("reflect" if d.crop else "zeros")
    m = replace(m, arch=arch, channels=channels, image_size=size, padding=padding)
    m = resolve_model_config(m)
    train = recipe_for(m.arch).fill(cfg.train, items)
    return replace(cfg, model=m, train=train, version=__version__)


def default_arch(data: DataConfig) -> str:
    """The architecture a run gets when none is named: our dense default for images of one size,
    its fully convolutional code-map sibling for crops of images of any size (it then runs on
    whole images)."""
    return "convae-map" if data.crop else "convae"


def default_run_dir(cfg: RunConfig, root: str | os.PathLike = "runs") -> Path:
    """``runs/<time>-<arch>-<data>``, made unique with a counter."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = cfg.data.spec.replace("folder:", "").replace(os.sep, "_").strip("_.")[-24:] or "data"
    base = Path(root) / f"{stamp}-{cfg.model.arch or default_arch(cfg.data)}-{data}"
    p, k = base, 1
    while p.exists():
        k += 1
        p = Path(f"{base}-{k}")
    return p


def same_recipe(a: RunConfig, b: RunConfig) -> bool:
    """Do two resolved configs train the same network on the same data with the same recipe?

    Models are compared by what they build (the module tree), so a field an architecture ignores
    (``width`` for the seed models) does not make two runs differ.
    """
    if (a.data, a.train) != (b.data, b.train):
        return False
    ma, mb = a.model, b.model
    if (ma.arch, ma.latent_dim, ma.channels, ma.image_size) != (
        mb.arch,
        mb.latent_dim,
        mb.channels,
        mb.image_size,
    ):
        return False
    return repr(build_model(ma)) == repr(build_model(mb))
