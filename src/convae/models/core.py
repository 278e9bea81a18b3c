"""The model contract, the registry that names architectures, and a layer-by-layer summary.

Model contract (every registered architecture): ``encode(x) -> z`` with ``x`` a float batch
``[B, C, H, W]`` in [0, 1] and ``z`` a flat code ``[B, L]``; ``decode(z) -> x_hat``;
``forward(x) = decode(encode(x))``. A restoration network (``has_code`` False) has only
``forward``: its skip connections bypass any code, so ``encode``/``decode`` raise ValueError. A fully convolutional model (``fully_conv``) also runs
``forward`` on any ``H x W`` that is a multiple of its ``stride``. Models know nothing of files,
optimizers, devices or datasets.

Adding an architecture is one function decorated with ``@register("name")`` that takes a
:class:`~convae.config.ModelConfig` and returns an :class:`AutoEncoder`.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import ModelConfig, RunConfig
from ..limits import MemoryLimitError, check_fits
from .layers import CodeConv2d, CodeConvTranspose2d

__all__ = [
    "AutoEncoder",
    "register",
    "available",
    "build_model",
    "default_latent_dim",
    "resolve_model_config",
    "summary",
    "LayerRow",
    "state_bytes",
    "memory_estimate",
    "check_memory",
]

Builder = Callable[[ModelConfig], "AutoEncoder"]


@dataclass(frozen=True)
class _Entry:
    build: Builder
    default_latent: Callable[[ModelConfig], int]
    description: str
    mean_image: bool


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    default_latent: Callable[[ModelConfig], int],
    description: str = "",
    mean_image: bool = False,
):
    """Decorator adding an architecture builder under ``name`` (duplicate names raise).

    ``default_latent(cfg)`` is the latent size when ``ModelConfig.latent_dim`` is None;
    ``mean_image`` what ``ModelConfig.mean_image=None`` becomes (on where it measured better). The
    training recipe is not the model's business: see :func:`convae.config.register_recipe`.
    """

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        doc_lines = (fn.__doc__ or "").strip().splitlines()  # a builder may have no docstring
        desc = description or (doc_lines[0] if doc_lines else name)
        _REGISTRY[name] = _Entry(fn, default_latent, desc, mean_image)
        return fn

    return deco


def available() -> dict[str, str]:
    """Registered architecture names -> one-line descriptions."""
    return {k: e.description for k, e in _REGISTRY.items()}


DEFAULT_ARCH = "convae"


def default_latent_dim(cfg: ModelConfig) -> int:
    return _entry(cfg.arch or DEFAULT_ARCH).default_latent(cfg)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build_model(cfg: ModelConfig) -> AutoEncoder:
    """The only constructor: validate the config and build the registered architecture."""
    cfg = resolve_model_config(cfg)
    entry = _entry(cfg.arch)
    if cfg.channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {cfg.channels}")
    if cfg.image_size < 8 or cfg.image_size % 4:
        raise ValueError(f"image size must be a multiple of 4 and at least 8, not {cfg.image_size}")
    if cfg.latent_dim is not None and cfg.latent_dim < 1:
        raise ValueError(f"latent dim must be positive, not {cfg.latent_dim}")
    if cfg.decoder not in ("upsample", "transpose"):
        raise ValueError(f"decoder must be 'upsample' or 'transpose', not {cfg.decoder!r}")
    if cfg.norm not in ("batch", "none"):
        raise ValueError(f"norm must be 'batch' or 'none', not {cfg.norm!r}")
    if cfg.padding not in (None, "zeros", "reflect"):
        raise ValueError(f"padding must be 'zeros' or 'reflect', not {cfg.padding!r}")
    if cfg.width < 1:
        raise ValueError(f"width must be positive, not {cfg.width}")
    for name in ("depth", "code_channels"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name.replace('_', ' ')} must be positive, not {getattr(cfg, name)}")
    _check_build_fits(cfg, entry)
    return entry.build(cfg)


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with what the architecture decides filled in: the name (None: the default
    architecture), the latent size and the mean image."""
    if cfg.arch is None:
        cfg = replace(cfg, arch=DEFAULT_ARCH)
    entry = _entry(cfg.arch)
    if cfg.latent_dim is None:
        cfg = replace(cfg, latent_dim=entry.default_latent(cfg))
    if cfg.mean_image is None:
        cfg = replace(cfg, mean_image=entry.mean_image)
    return cfg


class AutoEncoder(nn.Module):
    """An encoder/decoder pair with a flat latent code of ``latent_dim`` values.

    ``fully_conv``: every layer is a convolution, pooling or upsampling, so ``forward`` takes any
    ``H x W`` that is a multiple of ``stride`` (whole images, see :mod:`convae.inference`);
    otherwise only the training size. ``run_config`` and ``run_dir`` are set by
    :func:`convae.load` (None for a model built in code). ``has_code`` is False for a model
    whose skip connections bypass any code (a restoration network): ``encode``/``decode`` raise.
    """

    has_code = True

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_shape: tuple[int, ...],
        config: ModelConfig,
        sigmoid_output: bool = True,
        fully_conv: bool = False,
        stride: int = 4,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_shape = tuple(latent_shape)  # native shape of z inside the network
        self.latent_dim = math.prod(latent_shape)
        self.config = config
        self.sigmoid_output = sigmoid_output  # False: linear output, clamp to [0, 1] when displayed
        # A mean image has the training size: a model carrying one is tied to that size.
        self.fully_conv = fully_conv and not config.mean_image
        self.stride = stride
        self.run_config: RunConfig | None = None
        self.run_dir: Path | None = None
        self.output_offset: Tensor | None
        if config.mean_image:
            if sigmoid_output and not (
                isinstance(decoder, nn.Sequential) and isinstance(decoder[-1], nn.Sigmoid)
            ):
                raise ValueError("a sigmoid-output decoder must be a Sequential ending in Sigmoid")
            # Added to the decoder's output (its logits, for a sigmoid output). Zero until
            # set_mean_image; saved with the weights.
            self.register_buffer("output_offset", torch.zeros(self.input_shape))
        else:
            self.output_offset = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.image_size, self.config.image_size)

    def encode(self, x: Tensor) -> Tensor:
        """[B, C, H, W] in [0, 1] -> [B, L]."""
        return self.encoder(x).reshape(x.shape[0], -1)

    def decode(self, z: Tensor) -> Tensor:
        """[B, L] -> [B, C, H, W]."""
        return self._decode_native(z.reshape(z.shape[0], *self.latent_shape))

    def _decode_native(self, h: Tensor) -> Tensor:
        """The decoder on a code in its native shape (a code map of any size when fully_conv)."""
        if self.output_offset is None:
            return self.decoder(h)
        if not self.sigmoid_output:
            return self.decoder(h) + self.output_offset
        *body, sigmoid = self.decoder  # the logits, then the offset, then the final sigmoid
        for layer in body:
            h = layer(h)
        return sigmoid(h + self.output_offset)

    @torch.no_grad()
    def set_mean_image(self, mean: Tensor) -> None:
        """Make ``mean`` ([C, H, W] in [0, 1]) the output for a zero decoder contribution.

        A sigmoid output gets its logit, clamped to [1e-3, 1 - 1e-3] (background pixels that are
        always 0 would otherwise be -inf). Needs ``config.mean_image``.
        """
        if self.output_offset is None:
            raise ValueError("this model was built without a mean image (mean_image=False)")
        if tuple(mean.shape) != self.input_shape:
            raise ValueError(f"mean image must be {list(self.input_shape)}, not {list(mean.shape)}")
        m = mean.to(self.output_offset)
        self.output_offset.copy_(torch.logit(m.clamp(1e-3, 1 - 1e-3)) if self.sigmoid_output else m)

    def forward(self, x: Tensor) -> Tensor:
        return self._decode_native(self.encoder(x))


# ---------------------------------------------------------------------------------------------
# Memory: sizes checked against what the machine has before anything is allocated


def _describe(cfg: ModelConfig) -> str:
    """'a convae model (latent dim 16, width 16, image size 28, 1 channel)'."""
    width = f", width {cfg.width}" if cfg.arch in ("convae", "convae-map") else ""
    return (
        f"a {cfg.arch} model (latent dim {cfg.latent_dim}{width}, image size {cfg.image_size}, "
        f"{cfg.channels} channel{'s' if cfg.channels != 1 else ''})"
    )


def state_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _check_build_fits(cfg: ModelConfig, entry: _Entry) -> None:
    """Build ``cfg`` on the meta device (shapes, no memory; milliseconds) and check that its
    parameters and buffers fit before the real build allocates them."""
    try:
        # fork_rng: the meta build must not move the seeded CPU generator the real build uses
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            meta = entry.build(cfg)
    except (RuntimeError, TypeError, OverflowError) as e:
        if "overflow" not in str(e).lower():
            return  # a builder that cannot run on the meta device: the real build decides
        raise MemoryLimitError(
            f"{_describe(cfg)} is too large to build: its tensor sizes overflow 64-bit integers"
        ) from None
    n = sum(p.numel() for p in meta.parameters())
    check_fits(state_bytes(meta), f"{_describe(cfg)} with {n:,} parameters")


# Per model: (input pixels, summed layer outputs, largest layer input + output) in bytes of one
# probe image; measured once, with the model's own weights, dtype and device.
_PROBES: weakref.WeakKeyDictionary[nn.Module, tuple[int, int, int]] = weakref.WeakKeyDictionary()


def _probe(model: AutoEncoder) -> tuple[int, int, int]:
    """Activation bytes of one image through ``model``, from forward hooks on every leaf layer.

    A fully convolutional model runs a small image (4 strides a side; its activations scale with
    the pixels), any other model its own input size (which its parameters already bound)."""
    if model in _PROBES:
        return _PROBES[model]
    c, s, _ = model.input_shape
    side = 4 * model.stride if model.fully_conv else s
    total, peak = 0, 0

    def hook(m, inp, out) -> None:
        nonlocal total, peak
        if not isinstance(out, Tensor) or not inp or not isinstance(inp[0], Tensor):
            return
        x = inp[0]
        made = 0 if out is x else out.numel() * out.element_size()  # in place: nothing new
        total += made
        peak = max(peak, x.numel() * x.element_size() + made)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        p = next((t for t in model.parameters() if t.is_floating_point()), None)
        dev, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), None)
        x = torch.zeros(1, c, side, side, device=dev, dtype=dtype)
        model.eval()
        with torch.inference_mode():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    _PROBES[model] = (side * side, total + x.numel() * x.element_size(), peak)
    return _PROBES[model]


def memory_estimate(
    model: AutoEncoder,
    batch: int,
    height: int | None = None,
    width: int | None = None,
    training: bool = False,
) -> int:
    """Bytes still to allocate to run ``model`` (already built) on ``batch`` images of
    ``height x width`` (default: its input size).

    Inference holds one layer's input and output at a time; training keeps every layer's output
    for the backward pass, plus gradients and two optimizer moments per weight. The activations
    come from one small forward pass measured with hooks (:func:`_probe`), scaled to the batch."""
    _, s, _ = model.input_shape
    pixels, total, peak = _probe(model)
    scale = batch * (height or s) * (width or s) / pixels
    if training:
        return int(3 * state_bytes(model) + scale * (total + peak))
    return int(scale * peak)


def check_memory(
    model: AutoEncoder,
    batch: int,
    height: int | None = None,
    width: int | None = None,
    training: bool = False,
) -> None:
    """Raise :class:`~convae.limits.MemoryLimitError` (one line: the sizes, the estimate and the
    limit) when :func:`memory_estimate` exceeds the memory available."""
    h, w = height or model.input_shape[1], width or model.input_shape[2]
    need = memory_estimate(model, batch, h, w, training)
    verb = "training" if training else "running"
    check_fits(need, f"{verb} {_describe(model.config)} on {batch} image(s) of {h}x{w}")


# ---------------------------------------------------------------------------------------------
# Summary


@dataclass(frozen=True)
class LayerRow:
    part: str  # "encoder" or "decoder"
    name: str  # index inside the part
    kind: str  # module class name
    shape: tuple[int, ...]  # output shape for one batch [B, ...]
    params: int


def _kind(m: nn.Module) -> str:
    """The layer's class name; the code layers show as the convolutions they are."""
    if isinstance(m, (CodeConv2d, CodeConvTranspose2d)):
        return type(m).__mro__[1].__name__
    return type(m).__name__


def summary(model: AutoEncoder, batch: int = 1) -> dict:
    """Per-layer output shapes and parameter counts, latent size and compression ratio."""
    check_memory(model, batch)  # before the hooks: the estimate runs a forward of its own
    rows: list[LayerRow] = []
    hooks = []
    for part_name, part in (("encoder", model.encoder), ("decoder", model.decoder)):
        for name, mod in part.named_children():

            def hook(m, inp, out, part_name=part_name, name=name):
                rows.append(
                    LayerRow(
                        part_name,
                        name,
                        _kind(m),
                        tuple(out.shape),
                        sum(p.numel() for p in m.parameters()),
                    )
                )

            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(batch, *model.input_shape, device=dev))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    n_in = math.prod(model.input_shape)
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {
        "arch": model.config.arch,
        "input_shape": list(model.input_shape),
        "latent_shape": list(model.latent_shape),
        "latent_dim": model.latent_dim,
        "compression_ratio": n_in / model.latent_dim,
        "has_code": model.has_code,
        "params": total,
        "encoder_params": enc,
        "decoder_params": dec,
        # a codec's hyperprior, densities and gains: parameters outside encoder and decoder
        "entropy_model_params": total - enc - dec,
        "layers": [r.__dict__ for r in rows],
    }
