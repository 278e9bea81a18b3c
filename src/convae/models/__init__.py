"""Architectures: the model contract and registry (:mod:`.core`), shared blocks (:mod:`.layers`),
the tutorials' models (:mod:`.seeds`), our own (:mod:`.ours`), the learned photo codec
(:mod:`.hyperprior`) and the restoration networks (:mod:`.restore`). Importing this package
registers every built-in architecture."""

from . import hyperprior, ours, restore, seeds  # noqa: F401 - registers the built-in architectures
from .core import (
    AutoEncoder,
    LayerRow,
    available,
    build_model,
    check_memory,
    default_latent_dim,
    memory_estimate,
    register,
    resolve_model_config,
    summary,
)
from .hyperprior import HyperpriorCodec
from .layers import CodeConv2d, CodeConvTranspose2d, conv_block, is_channels_last, up_block

__all__ = [
    "AutoEncoder",
    "HyperpriorCodec",
    "LayerRow",
    "available",
    "build_model",
    "check_memory",
    "default_latent_dim",
    "memory_estimate",
    "register",
    "resolve_model_config",
    "summary",
    "CodeConv2d",
    "CodeConvTranspose2d",
    "conv_block",
    "up_block",
    "is_channels_last",
]
