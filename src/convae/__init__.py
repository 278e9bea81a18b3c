"""convae: convolutional autoencoders on images - train, evaluate, explore, compress, denoise, detect.

Public API::

    import convae
    run = convae.train(convae.RunConfig())          # -> run directory
    model = convae.load(run)                        # encode / decode / forward
    x, y = convae.load_dataset("mnist-sample", "test")
    convae.evaluate(model, x)
"""

__version__ = "0.1.0"

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .data import load_dataset  # noqa: E402
from .models import AutoEncoder, available, build_model, register, summary  # noqa: E402
from .train import evaluate, fit, load, reconstruct, train  # noqa: E402

__all__ = [
    "__version__",
    "AutoEncoder",
    "DataConfig",
    "ModelConfig",
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
