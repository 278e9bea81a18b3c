"""convae: convolutional autoencoders on images - train, evaluate, explore, compress, denoise, detect.

Public API::

    import convae
    run = convae.train(convae.RunConfig())          # -> run directory
    model = convae.load(run)                        # encode / decode / forward
    x, y = convae.load_dataset("mnist-sample", "test")
    convae.evaluate(model, x)
"""

from .config import DataConfig, ModelConfig, Recipe, RunConfig, TrainConfig
from .data import load_dataset
from .inference import evaluate, load, reconstruct
from .models import AutoEncoder, available, build_model, register, summary
from .train import fit, train
from .version import __version__

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
