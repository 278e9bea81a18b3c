"""A photo run's integer tables in ``RUN/codec.safetensors``: built once from the weights, then
only read, so every file encoded with the run decodes with the very same integers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import atomic_write, check_run_dir, fingerprint, read_safetensors
from ..config import read_run_config
from ..inference import load
from ..models.hyperprior import HyperpriorCodec
from .photo import PhotoCodec
from .tables import factorized_tables, gaussian_tables, scale_table

log = logging.getLogger(__name__)

__all__ = ["build_tables", "load_photo_codec", "is_photo_run", "PHOTO_ARCH", "TABLES_FORMAT"]

PHOTO_ARCH = "hyperprior"
TABLES_FORMAT = "convae-photo-tables"
CODEC_FILE = "codec.safetensors"


def is_photo_run(run_dir: str | os.PathLike) -> bool:
    """Does the run directory hold a learned photo codec (a version-2 .cae coder)?"""
    p = Path(run_dir) / "config.json"
    return p.is_file() and read_run_config(p).model.arch == PHOTO_ARCH


@torch.no_grad()
def build_tables(model: HyperpriorCodec) -> dict[str, Tensor]:
    """The integer tables of a trained model: the Gaussian scale table and one table per level
    and hyper-latent channel, from float64 copies of its densities."""
    scales = scale_table()
    out = {"scales": torch.from_numpy(scales)}
    out.update(gaussian_tables(scales).to_tensors("gaussian."))
    for lv, density in enumerate(model.z_density):
        d64 = type(density)(density.channels)
        d64.load_state_dict(density.state_dict())
        out.update(factorized_tables(d64.double()).to_tensors(f"z{lv}."))
    return out


def load_photo_codec(run_dir: str | os.PathLike, create_if_missing: bool = True) -> PhotoCodec:
    """The photo codec of a run: its model and ``codec.safetensors`` (built and saved once when
    missing and ``create_if_missing``). A tables file of another model is a one-line error."""

    p = check_run_dir(run_dir)
    model = load(p, "cpu")
    if not isinstance(model, HyperpriorCodec):
        raise ValueError(f"{p}: a {model.config.arch} run, not a photo codec ({PHOTO_ARCH})")
    fp = fingerprint(model.state_dict(), model.config)
    path = p / CODEC_FILE
    if not path.is_file():
        if not create_if_missing:
            raise FileNotFoundError(f"{p}: no {CODEC_FILE}; run `convae encode {p} ...` once")
        log.info("building the integer probability tables of %s once", p)
        _save(path, build_tables(model), fp)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != TABLES_FORMAT:
        raise ValueError(f"{path}: not a photo codec tables file; delete it to rebuild")
    if meta.get("fingerprint") != fp.hex():
        raise ValueError(
            f"{path}: tables of model {meta.get('fingerprint', '?')[:16]}, not of this run's "
            f"model {fp.hex()[:16]} (weights changed?); delete it to rebuild"
        )
    try:
        return PhotoCodec(model, tensors, fp, run_dir=p)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: corrupt tables ({e}); delete it to rebuild") from None


def _save(path: Path, tables: dict[str, Tensor], fp: bytes) -> None:
    from safetensors.torch import save as st_save

    meta = {"format": TABLES_FORMAT, "version": "2", "fingerprint": fp.hex()}
    tensors = {k: v.contiguous() for k, v in tables.items()}
    atomic_write(path, st_save(tensors, metadata=meta))
