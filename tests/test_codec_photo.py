"""The learned photo codec: its network, its training through the one trainer, its integer
tables and range coder, the version-2 .cae container, and the CLI on whole images of any size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convae
from convae.cli import main
from convae.codec.photo_store import is_photo_run, load_photo_codec
from convae.config import ModelConfig
from convae.models import HyperpriorCodec, build_model

TINY = ModelConfig(arch="hyperprior", channels=3, image_size=32, width=4, code_channels=8)


def _photo(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 [3, h, w]: smooth colour gradients plus a little noise (photo-like, compressible)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in (0.0, 1.0, 2.0)])
    img = 127 + 100 * base + g.normal(0, 6, (3, h, w))
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> Path:
    """A tiny photo codec trained for one short epoch through `convae train --preset codec`."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photo")
    for i, (h, w) in enumerate([(48, 64), (64, 40), (40, 56), (56, 56)]):
        Image.fromarray(_photo(h, w, i).numpy().transpose(1, 2, 0)).save(root / f"p{i}.png")
    run = root / "run"
    argv = ["train", "--preset", "codec", "--data", f"folder:{root}", "--width", "4",
            "--code-channels", "8", "--crop", "32", "--crops-per-epoch", "16", "--batch-size",
            "4", "--epochs", "1", "--out", str(run), "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return run


@pytest.fixture(scope="module")
def codec(photo_run):
    return load_photo_codec(photo_run)


# ---------------------------------------------------------------------------------------------
# The network and its training


def test_forward_backward_at_odd_sizes():
    torch.manual_seed(0)
    model = build_model(TINY)
    x = torch.rand(2, 3, 37, 53)
    model.train()
    loss = model.training_loss(x, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.block.weight.grad is not None and model.log_gain.grad is not None
    model.eval()
    assert model(x).shape == x.shape


def test_pca_init_makes_a_block_codec():
    """After PCA initialization the untrained model reconstructs smooth images well."""
    torch.manual_seed(0)
    model = build_model(replace_cfg(code_channels=64))
    imgs = torch.stack([_photo(64, 64, s) for s in range(8)]).float() / 255
    model.init_from_data(imgs)
    with torch.no_grad():
        y = model.encoder(imgs)
        err = (model.decoder(y) - imgs).pow(2).mean()
    assert float(err) < 1e-3  # 64 of 768 axes keep smooth images nearly whole


def replace_cfg(**kw) -> ModelConfig:
    from dataclasses import replace

    return replace(TINY, **kw)


def test_preset_codec_means_the_photo_codec_on_folders_only(photo_run):
    cfg = json.loads((photo_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "hyperprior" and cfg["preset"] == "codec-photo"
    from convae.config import preset_for_data

    assert preset_for_data("codec", "mnist-sample") == "codec"
    assert preset_for_data("codec", "folder:x") == "codec-photo"


def test_trained_run_loads_and_its_loss_is_recorded(photo_run):
    model = convae.load(photo_run)
    assert isinstance(model, HyperpriorCodec) and is_photo_run(photo_run)
    rows = [json.loads(r) for r in (photo_run / "history.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["train_loss"]) for r in rows)
    x = _photo(37, 53)[None].float() / 255
    assert model(x).shape == x.shape


def test_rate_distortion_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model(TINY)
    x = torch.stack([_photo(32, 32, s) for s in range(4)]).float() / 255
    model.init_from_data(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    before = float(model.training_loss(x, x))
    model.train()
    for _ in range(30):
        opt.zero_grad()
        model.training_loss(x, x).backward()
        opt.step()
    model.eval()
    assert float(model.training_loss(x, x)) < before
