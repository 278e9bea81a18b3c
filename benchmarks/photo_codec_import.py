"""Make a convae run directory from the photo codec prototype's trained weights.

The bench numbers in docs/codec.md come from weights trained with the prototype trainer (the same
network, 2,500 steps from PCA initialization: ~60 min of one busy CPU core); this script renames
its tensors to convae's layout and writes ``OUT/config.json`` + ``OUT/model.safetensors``, which
``convae encode`` / ``decode`` / ``bench codec`` then use like any run. Training from scratch with
convae instead: ``convae train --preset codec --data folder:PHOTOS/train --out OUT``.

    python benchmarks/photo_codec_import.py PROTO_CKPT_DIR OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from convae.checkpoint import save_weights, write_json
from convae.config import DataConfig, RunConfig, apply_preset
from convae.models import build_model
from convae.models.hyperprior import GAIN_SCALE
from convae.runs import resolve_config

_RENAME = {"g_a.": "encoder.", "g_s.": "decoder.", "h_a.": "hyper_encoder.",
           "h_s.": "hyper_decoder."}  # fmt: skip
_GAINS = ("log_gain", "log_inverse_gain")


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Prototype tensor names and gain scaling -> convae's (its entropy tables are dropped:
    convae rebuilds them from the weights)."""
    out = {}
    for k, v in state.items():
        if k.startswith("tables."):
            continue
        for a, b in _RENAME.items():
            if k.startswith(a):
                k = b + k[len(a) :]
        out[k] = v / GAIN_SCALE if k in _GAINS else v
    return out


def import_run(proto: Path, out: Path, data: str) -> Path:
    arch = json.loads((proto / "config.json").read_text())
    if arch.get("transform") != "block":
        raise ValueError("only the prototype's 'block' transform is a convae architecture")
    cfg = apply_preset(RunConfig(data=DataConfig(spec=data)), "codec-photo")
    cfg = resolve_config(cfg, 3, 128)
    model = build_model(cfg.model)
    state = convert(load_file(proto / "model.safetensors"))
    model.load_state_dict(state)  # strict: every tensor accounted for
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    save_weights(model, out / "model.safetensors")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("proto", type=Path, help="prototype checkpoint folder (config.json + weights)")
    p.add_argument("out", type=Path, help="run directory to write")
    p.add_argument("--data", default="folder:photos/train", help="recorded as the run's data")
    args = p.parse_args()
    print(import_run(args.proto, args.out, args.data))


if __name__ == "__main__":
    main()
