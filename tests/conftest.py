"""Shared test fixtures: tiny generated images and one tiny trained run.

Keep this small and generic; task-specific fixtures live in their own test files.

* ``make_images(n, channels, size, seed)`` -> uint8 ``[N, C, H, W]`` images of smooth random blobs
  (structured enough that an autoencoder can learn them, random enough to differ per image).
* ``write_image_folder(root, images, labels=None, fmt="png")`` -> writes them as image files, one
  sub-folder per label.
* ``tiny_run`` (session scope) -> the run directory of a ~1 s training of a tiny ``convae`` model
  (width 4, latent 8) on two digits of ``mnist-sample``; load it with ``convae.load(tiny_run)``.
  Treat it as read-only: it is shared by every test in the session.

Session-wide: torch uses one intra-op thread (``CONVAE_TEST_THREADS`` overrides), ``$CONVAE_CACHE``
points to a temp folder, and the root logger is cleaned after each test (``main()`` reconfigures it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch


def pytest_configure(config):
    # One intra-op thread: the tests use tiny tensors, where a second OpenMP thread buys nothing, and
    # on a busy 2-core machine spinning OpenMP threads made a tiny training ~6x slower (measured:
    # 27 s vs 4.7 s of CPU). CONVAE_TEST_THREADS=N overrides.
    torch.set_num_threads(int(os.environ.get("CONVAE_TEST_THREADS", "1")))


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """$CONVAE_CACHE points to a session temp folder: tests never read or write the user's cache
    (a test that needs another cache folder monkeypatches the variable itself)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVAE_CACHE", str(tmp_path_factory.mktemp("convae-cache")))
        yield


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """``convae.cli.main`` reconfigures the root logger onto the (captured) stderr of its test; put it
    back afterwards so later tests never log into a closed capture stream."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for h in root.handlers[:]:
        if h not in before and type(h) is logging.StreamHandler:  # what logging.basicConfig adds
            root.removeHandler(h)
    root.setLevel(level)


def _blobs(n: int, channels: int, size: int, seed: int) -> np.ndarray:
    """n images of 1-3 soft Gaussian blobs each, uint8 [n, C, size, size]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((n, channels, size, size), dtype=np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
            r = rng.uniform(0.08 * size, 0.25 * size)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            colour = rng.uniform(0.4, 1.0, channels).astype(np.float32)
            out[i] = np.maximum(out[i], colour[:, None, None] * blob)
    return (out * 255 + 0.5).astype(np.uint8)


@pytest.fixture
def make_images():
    """Factory: ``make_images(n=8, channels=1, size=16, seed=0)`` -> uint8 tensor [N, C, H, W]."""

    def make(n: int = 8, channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
        return torch.from_numpy(_blobs(n, channels, size, seed))

    return make


@pytest.fixture
def write_image_folder():
    """Factory: write uint8 [N, C, H, W] images under ``root`` (``root/<label>/img_XXX.<fmt>``).

    Returns the list of written paths. Without labels the files go directly into ``root``.
    """
    from PIL import Image

    def write(root, images, labels=None, fmt: str = "png") -> list[Path]:
        root = Path(root)
        paths = []
        arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        for i, a in enumerate(arr):
            d = root / str(int(labels[i])) if labels is not None else root
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
            p = d / f"img_{i:03d}.{fmt}"
            img.save(p)
            paths.append(p)
        return paths

    return write


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run directory: tiny `convae` model, 1 epoch on digits 0 and 1 of mnist-sample, CPU."""
    from convae import train
    from convae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    cfg = RunConfig(
        model=ModelConfig(arch="convae", width=4, latent_dim=8),
        data=DataConfig(spec="mnist-sample", classes=(0, 1)),
        train=TrainConfig(epochs=1, batch_size=32, seed=0),
    )
    return train(cfg, tmp_path_factory.mktemp("tiny_run") / "run", device="cpu")
