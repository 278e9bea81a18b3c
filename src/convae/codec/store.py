"""Saving a run's codec next to the run, loading it, and fitting it once when it is missing.

The fine-tuned model, the quantizer and the probability tables are saved in
``RUN/codec.safetensors`` (+ a readable ``codec.json``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write, check_run_dir, write_json
from ..config import read_run_config
from ..models import build_model
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
    """The codec of a run directory; fitted once (and saved) when ``codec.safetensors`` is missing."""
    from safetensors import SafetensorError, safe_open

    from ..checkpoint import read_json

    p = check_run_dir(run_dir)
    path = p / CODEC_FILE
    if not path.is_file():
        if not fit_if_missing:
            raise FileNotFoundError(
                f"{p}: no {CODEC_FILE}; run `convae encode {p} ...` once to fit it"
            )
        return _fit_and_save(p, cfg, progress)
    run_config = read_run_config(p / "config.json")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path}: corrupt codec file ({e}); delete it and run `convae encode` to refit"
        ) from e
    if meta.get("format") != "convae-codec":
        raise ValueError(f"{path}: not a convae codec file")
    model = build_model(run_config.model)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: codec weights do not match {p / 'config.json'} ({e})") from e
    steps = json.loads(meta["steps"])
    mean = tensors["transform.mean"].numpy() if "transform.mean" in tensors else None
    basis = tensors["transform.basis"].numpy() if "transform.basis" in tensors else None
    levels = [
        Level(
            step=float(np.float32(s)),
            offset=tensors[f"level.{i}.offset"].numpy(),
            lo=tensors[f"level.{i}.lo"].numpy(),
            size=tensors[f"level.{i}.size"].numpy(),
            counts=tensors[f"level.{i}.counts"].numpy(),
            mean=mean,
            basis=basis,
        )
        for i, s in enumerate(steps)
    ]
    info = read_json(p / CODEC_JSON) if (p / CODEC_JSON).is_file() else {}
    return Codec(model, levels, int(meta.get("default_level", 0)), run_config, run_dir=p, info=info)


def _fit_and_save(p: Path, cfg: CodecFitConfig | None, progress: Progress | None) -> Codec:
    from ..data import load_split
    from ..inference import load

    model = load(p, "cpu")
    train_x, _ = load_split(model.run_config.data, "train")
    log.info(
        "fitting the codec of %s once (rate-distortion fine-tune on %d images)", p, len(train_x)
    )
    codec = fit_codec(model, train_x, cfg, run_config=model.run_config, progress=progress)
    save_codec(p, codec)
    return codec
