"""convae: convolutional autoencoders on images - train, evaluate, explore, compress, denoise, detect.

Public API::

    import convae
    run = convae.train(convae.RunConfig())          # -> run directory
    model = convae.load(run)                        # encode / decode / forward
    x, y = convae.load_dataset("mnist-sample", "test")
    convae.evaluate(model, x)

The names below are imported on first use, so that ``import convae`` (and the command line's
start-up, which must answer Ctrl-C at once) does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_API = {
    "DataConfig": "config",
    "ModelConfig": "config",
    "Recipe": "config",
    "RunConfig": "config",
    "TrainConfig": "config",
    "load_dataset": "data",
    "evaluate": "inference",
    "load": "inference",
    "reconstruct": "inference",
    "AutoEncoder": "models",
    "available": "models",
    "build_model": "models",
    "register": "models",
    "summary": "models",
    "fit": "training",
    "train": "training",
}

__all__ = [
    "__version__",
    "AutoEncoder",
    "DataConfig",
    "ModelConfig",
    "Recipe",
    "RunConfig",
    "TrainConfig",
    "available",
    "build_model",
    "evaluate",
    "fit",
    "load",
    "load_dataset",
    "reconstruct",
    "register",
    "summary",
    "train",
]

if TYPE_CHECKING:
    from .config import DataConfig, ModelConfig, Recipe, RunConfig, TrainConfig
    from .data import load_dataset
    from .inference import evaluate, load, reconstruct
    from .models import AutoEncoder, available, build_model, register, summary
    from .training import fit, train


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'convae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
