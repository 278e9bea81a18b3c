"""Saving a run's codec next to the run, loading it, and fitting it once when it is missing.

The fine-tuned model, the quantizer and the probability tables are saved in
``RUN/codec.safetensors`` (+ a readable ``codec.json``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import (
    atomic_write,
    check_run_dir,
    load_matching,
    read_json,
    read_safetensors,
    write_json,
)
from ..config import read_run_config
from ..data import load_images, load_split
from ..inference import load
from ..limits import MemoryLimitError
from ..models import build_model
from ..sampling import fixed_crops
from .core import Codec
from .entropy import Level
from .fit import CodecFitConfig, Progress, fit_codec

log = logging.getLogger(__name__)

CODEC_FILE = "codec.safetensors"
CODEC_JSON = "codec.json"


def save_codec(run_dir: str | os.PathLike, codec: Codec) -> Path:
    """Write ``codec.safetensors`` (weights, quantizers, tables) and ``codec.json`` atomically."""
    from safetensors.torch import save as st_save

    p = Path(run_dir)
    tensors = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in codec.model.state_dict().items()
    }
    first = codec.levels[0]
    if first.basis is not None and first.mean is not None:  # one transform shared by every level
        tensors["transform.mean"] = torch.from_numpy(first.mean.copy())
        tensors["transform.basis"] = torch.from_numpy(first.basis.copy())
    for i, lv in enumerate(codec.levels):
        assert lv.basis is first.basis
        tensors[f"level.{i}.offset"] = torch.from_numpy(lv.offset.copy())
        tensors[f"level.{i}.lo"] = torch.from_numpy(lv.lo.copy())
        tensors[f"level.{i}.size"] = torch.from_numpy(lv.size.copy())
        tensors[f"level.{i}.counts"] = torch.from_numpy(lv.counts.copy())
    meta = {
        "format": "convae-codec",
        "version": "1",
        "steps": json.dumps([lv.step for lv in codec.levels]),
        "default_level": str(codec.default_level),
        "fingerprint": codec.fingerprint.hex(),
    }
    atomic_write(p / CODEC_FILE, st_save(tensors, metadata=meta))
    summary = {
        "fingerprint": codec.fingerprint.hex(),
        "default_level": codec.default_level,
        "levels": [
            {
                "level": i,
                "step": lv.step,
                "tables_hash": lv.hash().hex(),
                "symbols_per_channel": lv.size.tolist(),
            }
            for i, lv in enumerate(codec.levels)
        ],
        **{k: v for k, v in codec.info.items() if k != "prior"},
    }
    write_json(p / CODEC_JSON, summary)
    codec.run_dir = p
    return p / CODEC_FILE


def load_codec(
    run_dir: str | os.PathLike,
    fit_if_missing: bool = True,
    cfg: CodecFitConfig | None = None,
    progress: Progress | None = None,
) -> Codec:
    """The codec of a run directory; fitted once (and saved) when ``codec.safetensors`` is missing.

    A codec file that does not fit the run's config.json, or whose tables are malformed, is a
    one-line error naming what is wrong."""
    p = check_run_dir(run_dir)
    path = p / CODEC_FILE
    if not path.is_file():
        if not fit_if_missing:
            raise FileNotFoundError(
                f"{p}: no {CODEC_FILE}; run `convae encode {p} ...` once to fit it"
            )
        return _fit_and_save(p, cfg, progress)
    run_config = read_run_config(p / "config.json")
    model = build_model(run_config.model)  # its size checked against memory first
    try:
        tensors, meta = read_safetensors(path)
    except MemoryLimitError:
        raise
    except ValueError as e:
        raise ValueError(f"{e}; delete it and run `convae encode` to refit") from None
    if meta.get("format") != "convae-codec":
        raise ValueError(f"{path}: not a convae codec file")
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    load_matching(model, state, path)
    try:
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise _Corrupt(f"{bad[0]} holds NaN or infinite values")
        levels, default = _levels(tensors, meta, model.latent_dim)
    except _Corrupt as e:
        raise ValueError(
            f"{path}: corrupt codec file ({e}); delete it and run `convae encode` to refit"
        ) from None
    info = read_json(p / CODEC_JSON) if (p / CODEC_JSON).is_file() else {}
    info = info if isinstance(info, dict) else {}
    return Codec(model, levels, default, run_config, run_dir=p, info=info)


class _Corrupt(Exception):
    """What is wrong inside a codec file (the caller names the file)."""


def _array(tensors: dict[str, torch.Tensor], key: str, dtype: torch.dtype, shape) -> np.ndarray:
    t = tensors.get(key)
    if t is None:
        raise _Corrupt(f"{key} is missing")
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise _Corrupt(f"{key} is {t.dtype} {list(t.shape)}, not {dtype} {list(shape)}")
    if t.is_floating_point() and not t.isfinite().all():
        raise _Corrupt(f"{key} holds NaN or infinite values")
    return t.numpy()


def _levels(tensors: dict[str, torch.Tensor], meta: dict[str, str], L: int) -> tuple[list, int]:
    """The quality levels and the default level of a codec file, every table checked."""
    try:
        steps = json.loads(meta.get("steps", ""))
        default = int(meta.get("default_level", "0"))
    except ValueError:
        raise _Corrupt("its steps or default level are not numbers") from None
    if (
        not isinstance(steps, list)
        or not 1 <= len(steps) <= 255
        or not all(isinstance(x, int | float) and 0 < x < math.inf for x in steps)
    ):
        raise _Corrupt("its steps are not 1 to 255 positive numbers")
    if not 0 <= default < len(steps):
        raise _Corrupt(f"default level {default} is not one of its {len(steps)} levels")
    mean = basis = None
    if "transform.mean" in tensors or "transform.basis" in tensors:
        mean = _array(tensors, "transform.mean", torch.float32, (L,))
        basis = _array(tensors, "transform.basis", torch.float32, (L, L))
    levels = []
    for i, step in enumerate(steps):
        size = _array(tensors, f"level.{i}.size", torch.int32, (L,))
        if (size < 1).any():
            raise _Corrupt(f"level.{i}.size has a table of no symbols")
        padded = tensors.get(f"level.{i}.counts")  # [L, the largest size]
        width = padded.shape[-1] if padded is not None and padded.ndim == 2 else 0
        counts = _array(tensors, f"level.{i}.counts", torch.int32, (L, max(width, size.max())))
        if any((counts[j, : size[j]] < 1).any() for j in range(L)):
            raise _Corrupt(f"level.{i}.counts does not give every symbol a positive count")
        lo = _array(tensors, f"level.{i}.lo", torch.int32, (L,))
        if (lo.astype(np.int64) + size > 2**31 - 1).any():
            raise _Corrupt(f"level.{i}.lo + size overflows 32 bits")
        offset = _array(tensors, f"level.{i}.offset", torch.float32, (L,))
        lv = Level(float(np.float32(step)), offset, lo, size, counts, mean=mean, basis=basis)
        levels.append(lv)
    return levels, default


FIT_CROPS = 2048  # crops of a run trained on crops that the codec is fitted on


def _fit_and_save(p: Path, cfg: CodecFitConfig | None, progress: Progress | None) -> Codec:
    model = load(p, "cpu")
    data = model.run_config.data
    if data.crop is not None:  # images of any size: crops of the model's size, drawn once
        train_x = fixed_crops(load_images(data, "train"), data.crop, FIT_CROPS, data.split_seed)
    else:
        train_x, _ = load_split(data, "train")
    log.info(
        "fitting the codec of %s once (rate-distortion fine-tune on %d images)", p, len(train_x)
    )
    codec = fit_codec(model, train_x, cfg, run_config=model.run_config, progress=progress)
    save_codec(p, codec)
    return codec
