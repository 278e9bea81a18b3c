"""Architectures, the registry that names them, and a layer-by-layer summary.

Model contract (every registered architecture): ``encode(x) -> z`` with ``x`` a float batch
``[B, C, H, W]`` in [0, 1] and ``z`` a flat code ``[B, L]``; ``decode(z) -> x_hat``;
``forward(x) = decode(encode(x))``. Models know nothing of files, optimizers, devices or datasets.

Adding an architecture is one function decorated with ``@register("name")`` that takes a
:class:`~convae.config.ModelConfig` and returns an :class:`AutoEncoder`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .config import OPTIMIZERS, ModelConfig

__all__ = [
    "AutoEncoder",
    "register",
    "available",
    "build_model",
    "default_latent_dim",
    "default_recipe",
    "cpu_bf16",
    "resolve_mean_image",
    "summary",
    "LayerRow",
]

# ---------------------------------------------------------------------------------------------
# The 1x1-code layers of the seed models, as the matrix products they are.


def is_channels_last(t: Tensor) -> bool:
    """A 4-D tensor laid out channels-last (and not also contiguous, as 1-channel ones are)."""
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


class CodeConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, k)`` (stride 1, no padding) whose kernel covers its whole k x k input,
    giving a 1x1 code: a matrix product ``[B, in*k*k] @ [in*k*k, out]``, computed as one.

    The same parameters and state-dict keys as ``nn.Conv2d``; any other input size takes
    ``nn.Conv2d``'s path. On this CPU the product runs the layer's forward + backward in ~60 % of
    oneDNN's convolution time (docs/benchmarks.md, conv_layers.py). Channels-last inputs and
    kernels are read in their memory order, so no copy is made.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.kernel_size:
            return super().forward(x)
        w = self.weight
        if is_channels_last(x) or is_channels_last(w):  # [B, k, k, in] order, a view of both
            xm, wm = x.permute(0, 2, 3, 1), w.permute(0, 2, 3, 1)
        else:
            xm, wm = x, w
        y = nn.functional.linear(xm.reshape(len(x), -1), wm.reshape(len(w), -1), self.bias)
        return y[:, :, None, None]  # [B, out, 1, 1]


class CodeConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(in, out, k)`` (stride 1, no padding) from a 1x1 code to a k x k map: a
    matrix product ``[B, in] @ [in, out*k*k]``, computed as one (see :class:`CodeConv2d`).

    With a channels-last kernel the product is laid out ``[B, k, k, out]``, so the output is
    channels-last, as the next layer wants it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, bias=bias)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (1, 1) or output_size is not None:
            return super().forward(x, output_size)
        w = self.weight  # [in, out, k, k]
        i, o, kh, kw = w.shape
        z = x.reshape(len(x), i)
        if is_channels_last(w):
            wm, b = w.permute(0, 2, 3, 1).reshape(i, -1), self.bias  # columns (h, w, out)
            b = b.repeat(kh * kw) if b is not None else None
        else:
            wm, b = w.reshape(i, -1), self.bias  # columns (out, h, w)
            b = b.repeat_interleave(kh * kw) if b is not None else None
        y = torch.addmm(b, z, wm) if b is not None else z @ wm
        # A view of the product would make the in-place ReLU that follows cost two copies and a
        # mismatched-layout backward; an own tensor is one small copy.
        if is_channels_last(w):
            return (
                y.view(len(x), kh, kw, o)
                .permute(0, 3, 1, 2)
                .clone(memory_format=torch.channels_last)
            )
        return y.view(len(x), o, kh, kw).clone()


Builder = Callable[[ModelConfig], "AutoEncoder"]
_REGISTRY: dict[str, Builder] = {}
_DEFAULT_LATENT: dict[str, Callable[[ModelConfig], int]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_DEFAULT_RECIPE: dict[str, dict[str, Any]] = {}
_DEFAULT_MEAN_IMAGE: dict[str, bool] = {}
_CPU_BF16: dict[str, bool] = {}


def register(
    name: str,
    default_latent: Callable[[ModelConfig], int],
    description: str = "",
    epochs: int = 10,
    optimizer: str = "adamw",
    mean_image: bool = False,
    lr: float = 1e-2,
    warmup: float = 0.15,
    batch_size: int = 32,
    cpu_bf16: bool = True,
):
    """Decorator adding an architecture builder under ``name`` (duplicate names raise).

    ``epochs``, ``optimizer``, ``lr`` (peak), ``warmup`` and ``batch_size`` are the architecture's
    default recipe: what ``TrainConfig`` fields left ``None`` become (``--epochs``,
    ``--optimizer``, ``--lr``, ``--batch-size`` win).
    ``mean_image`` is what ``ModelConfig.mean_image=None`` becomes. ``cpu_bf16``: whether
    ``--precision auto`` trains it under bf16 autocast on a CPU with fast bf16 (False: fp32, for a
    model whose step measured faster without autocast). All are measured choices, see
    docs/benchmarks.md.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}")

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        doc_lines = (fn.__doc__ or "").strip().splitlines()  # a builder may have no docstring
        _REGISTRY[name] = fn
        _DEFAULT_LATENT[name] = default_latent
        _DESCRIPTIONS[name] = description or (doc_lines[0] if doc_lines else name)
        _DEFAULT_RECIPE[name] = {
            "epochs": epochs,
            "optimizer": optimizer,
            "lr": lr,
            "warmup": warmup,
            "batch_size": batch_size,
        }
        _DEFAULT_MEAN_IMAGE[name] = mean_image
        _CPU_BF16[name] = cpu_bf16
        return fn

    return deco


def available() -> dict[str, str]:
    """Registered architecture names -> one-line descriptions."""
    return dict(_DESCRIPTIONS)


def default_latent_dim(cfg: ModelConfig) -> int:
    _check_arch(cfg.arch)
    return _DEFAULT_LATENT[cfg.arch](cfg)


def default_recipe(arch: str) -> dict[str, Any]:
    """The default recipe's ``epochs``, ``optimizer``, ``lr``, ``warmup`` and ``batch_size`` for
    ``arch``."""
    _check_arch(arch)
    return dict(_DEFAULT_RECIPE[arch])


def cpu_bf16(arch: str) -> bool:
    """Whether ``--precision auto`` uses bf16 autocast for ``arch`` on a CPU with fast bf16."""
    _check_arch(arch)
    return _CPU_BF16[arch]


def _check_arch(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}")


def build_model(cfg: ModelConfig) -> AutoEncoder:
    """The only constructor: validate the config and build the registered architecture."""
    _check_arch(cfg.arch)
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
    if cfg.width < 1:
        raise ValueError(f"width must be positive, not {cfg.width}")
    return _REGISTRY[cfg.arch](resolve_mean_image(cfg))


def resolve_mean_image(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``mean_image`` decided: the architecture's default where it is None."""
    _check_arch(cfg.arch)
    if cfg.mean_image is not None:
        return cfg
    return replace(cfg, mean_image=_DEFAULT_MEAN_IMAGE[cfg.arch])


class AutoEncoder(nn.Module):
    """An encoder/decoder pair with a flat latent code of ``latent_dim`` values."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_shape: tuple[int, ...],
        config: ModelConfig,
        sigmoid_output: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_shape = tuple(latent_shape)  # native shape of z inside the network
        self.latent_dim = math.prod(latent_shape)
        self.config = config
        self.sigmoid_output = sigmoid_output  # False: linear output, clamp to [0, 1] when displayed
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
        h = z.reshape(z.shape[0], *self.latent_shape)
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
        return self.decode(self.encode(x))


# ---------------------------------------------------------------------------------------------
# Seed architectures: the tutorials' models, faithful to their layer lists, sized to the input.


def _seed_latent_strided(cfg: ModelConfig) -> int:
    return 12


# Muon: without normalization and with a 7x7 conv into a 1x1 code this model needs optimizer
# steps, not images, and AdamW needs ~2,000 of them to reach the seeds' own 30-epoch loop; Muon's
# orthogonalized updates get there in about half of them (docs/benchmarks.md).
@register(
    "seed-strided",
    _seed_latent_strided,
    "strided convs to a 1x1 code, ConvTranspose decoder (seeds 000/002)",
    # With its mean image, a short, hot schedule reaches the seeds' quality soonest (docs/
    # benchmarks.md, "The mean image"). Batch 64, not 32: its step is per-operation overhead, so
    # an epoch of 64s takes ~0.7x the time of an epoch of 32s, and 9 epochs of them pass the
    # seeds' quality ~30 % sooner than 7 epochs of 32s did (docs/benchmarks.md, "seed-strided:
    # batches of 64").
    epochs=9,
    batch_size=64,
    optimizer="muon",
    mean_image=True,
    lr=1.5e-2,
    warmup=0.02,
    # Its convolutions have 1-32 channels: autocast's casts cost more than bf16 saves here.
    cpu_bf16=False,
)
def seed_strided(cfg: ModelConfig) -> AutoEncoder:
    c, s = cfg.channels, cfg.image_size
    L = cfg.latent_dim or 12
    k = s // 4  # remaining spatial size after two stride-2 convs: 7 at 28 px
    enc = nn.Sequential(
        nn.Conv2d(c, 16, 3, stride=2, padding=1),  # [B, 16, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),  # [B, 32, s/4, s/4]
        nn.ReLU(inplace=True),
        CodeConv2d(32, L, k),  # [B, L, 1, 1]
    )
    dec = nn.Sequential(
        CodeConvTranspose2d(L, 32, k),  # [B, 32, s/4, s/4]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1),  # [B, 16, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(16, c, 3, stride=2, padding=1, output_padding=1),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(enc, dec, (L, 1, 1), cfg)


def _pool_latent(cfg: ModelConfig) -> int:
    return 4 * (cfg.image_size // 4) ** 2


def _pool_code_channels(cfg: ModelConfig) -> int:
    cells = (cfg.image_size // 4) ** 2
    L = cfg.latent_dim or 4 * cells
    if L % cells:
        raise ValueError(
            f"{cfg.arch} keeps a {cfg.image_size // 4}x{cfg.image_size // 4} code map, so its latent dim "
            f"must be a multiple of {cells} (e.g. {4 * cells}), not {L}"
        )
    return L // cells


def _pool_encoder(c: int, code: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1),  # [B, 16, s, s]
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),  # [B, 16, s/2, s/2]
        nn.Conv2d(16, code, 3, padding=1),  # [B, code, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),  # [B, code, s/4, s/4]
    )


@register(
    "seed-pool",
    _pool_latent,
    "conv + max-pool encoder to a 4x7x7 map, ConvTranspose(k2,s2) decoder (seed 001)",
)
def seed_pool(cfg: ModelConfig) -> AutoEncoder:
    c, s = cfg.channels, cfg.image_size
    code = _pool_code_channels(cfg)
    dec = nn.Sequential(
        nn.ConvTranspose2d(code, 16, 2, stride=2),  # [B, 16, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(16, c, 2, stride=2),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(_pool_encoder(c, code), dec, (code, s // 4, s // 4), cfg)


@register(
    "seed-upsample",
    _pool_latent,
    "seed-pool's encoder, nearest/bilinear upsample + conv decoder (no checkerboard)",
    optimizer="muon",
)
def seed_upsample(cfg: ModelConfig) -> AutoEncoder:
    c, s = cfg.channels, cfg.image_size
    code = _pool_code_channels(cfg)
    dec = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),  # [B, code, s/2, s/2]
        nn.Conv2d(code, 16, 3, padding=1),  # [B, 16, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=2, mode="nearest"),  # [B, 16, s, s]
        nn.Conv2d(16, c, 3, padding=1),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(_pool_encoder(c, code), dec, (code, s // 4, s // 4), cfg)


@register(
    "seed-dense",
    lambda cfg: 200,
    "convs to 64 maps at 1/4 size, dense bottleneck (200), ConvTranspose decoder (seed 003)",
    optimizer="muon",
)
def seed_dense(cfg: ModelConfig) -> AutoEncoder:
    c, s = cfg.channels, cfg.image_size
    L = cfg.latent_dim or 200
    q = s // 4
    flat = 64 * q * q  # 4,096 at 32 px
    enc = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),  # [B, 32, s, s]
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),  # [B, 64, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),  # [B, 64, s/4, s/4]
        nn.ReLU(inplace=True),
        nn.Flatten(),  # [B, 64 * s/4 * s/4]
        nn.Linear(flat, L),  # [B, L]
    )
    dec = nn.Sequential(
        nn.Linear(L, flat),  # [B, 64 * s/4 * s/4]
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (64, q, q)),  # [B, 64, s/4, s/4]
        nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1),  # [B, 64, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1),  # [B, 32, s, s]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(32, c, 3, padding=1),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(enc, dec, (L,), cfg)


@register(
    "seed-keras2d",
    lambda cfg: 2,
    "Keras 2-D latent model: strided convs to a 1x1 code, linear output (seed 004)",
    mean_image=True,  # it separates the digits in the 2-D code (docs/latent.md)
)
def seed_keras2d(cfg: ModelConfig) -> AutoEncoder:
    c, s = cfg.channels, cfg.image_size
    L = cfg.latent_dim or 2
    k = s // 4
    enc = nn.Sequential(
        nn.Conv2d(c, 32, 3, stride=2, padding=1),  # "same": [B, 32, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),  # "same": [B, 64, s/4, s/4]
        nn.ReLU(inplace=True),
        # torch's conv modules here, not CodeConv2d/CodeConvTranspose2d: the latent-space numbers
        # of docs/latent.md were measured with these kernels, and rounding-level changes move a
        # 2-D code's silhouette by a few hundredths per seed; no speed gain was measured here.
        nn.Conv2d(64, L, k),  # "valid": [B, L, 1, 1]
    )
    dec = nn.Sequential(
        nn.ConvTranspose2d(L, 64, k),  # "valid": [B, 64, s/4, s/4]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(
            64, 32, 3, stride=2, padding=1, output_padding=1
        ),  # "same": [B, 32, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(32, c, 7, stride=2, padding=3, output_padding=1),  # "same": [B, C, s, s]
    )
    return AutoEncoder(enc, dec, (L, 1, 1), cfg, sigmoid_output=False)


# ---------------------------------------------------------------------------------------------
# Our default: a small conv pyramid with BatchNorm, a dense bottleneck and an upsample+conv decoder.


def _block(cin: int, cout: int, stride: int, norm: bool) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not norm),
        *([nn.BatchNorm2d(cout)] if norm else []),
        nn.ReLU(inplace=True),
    ]


def _up(cin: int, cout: int, kind: str, norm: bool) -> list[nn.Module]:
    if kind == "transpose":
        conv: list[nn.Module] = [
            nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=not norm)
        ]
    else:  # nearest-neighbour upsampling then a 3x3 conv: no checkerboard artifacts
        conv = [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, padding=1, bias=not norm),
        ]
    return [*conv, *([nn.BatchNorm2d(cout)] if norm else []), nn.ReLU(inplace=True)]


@register(
    "convae",
    lambda cfg: 16,
    "ours: BatchNorm conv pyramid, dense bottleneck, upsample+conv (or transposed) decoder",
    optimizer="muon",
)
def convae_arch(cfg: ModelConfig) -> AutoEncoder:
    """Best quality per latent value at CPU speed (see docs/benchmarks.md for the measurements)."""
    c, s, w = cfg.channels, cfg.image_size, cfg.width
    L = cfg.latent_dim or 16
    q = s // 4
    norm = cfg.norm == "batch"
    flat = 2 * w * q * q
    enc = nn.Sequential(
        *_block(c, w, 2, norm),  # [B, w, s/2, s/2]
        *_block(w, 2 * w, 2, norm),  # [B, 2w, s/4, s/4]
        *_block(2 * w, 2 * w, 1, norm),  # [B, 2w, s/4, s/4]
        nn.Flatten(),  # [B, 2w * s/4 * s/4]
        nn.Linear(flat, L),  # [B, L]
    )
    dec = nn.Sequential(
        nn.Linear(L, flat),  # [B, 2w * s/4 * s/4]
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (2 * w, q, q)),  # [B, 2w, s/4, s/4]
        *_block(2 * w, 2 * w, 1, norm),  # [B, 2w, s/4, s/4]
        *_up(2 * w, w, cfg.decoder, norm),  # [B, w, s/2, s/2]
        *_up(w, w, cfg.decoder, norm),  # [B, w, s, s]
        nn.Conv2d(w, c, 3, padding=1),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(enc, dec, (L,), cfg)


def _map_latent(cfg: ModelConfig) -> int:
    return 8 * (cfg.image_size // 4) ** 2


@register(
    "convae-map",
    _map_latent,
    "ours with a convolutional [K, s/4, s/4] code map instead of the dense bottleneck (codec)",
    optimizer="muon",
)
def convae_map(cfg: ModelConfig) -> AutoEncoder:
    """The `convae` pyramid ending in a 3x3 conv to ``K = latent_dim / (s/4)^2`` code channels.

    Every code value sees only its neighbourhood, so the same filters serve every position: with
    few training images it generalizes better than a dense layer, and positions over the empty
    background give near-constant values that an entropy coder stores in very few bits.
    """
    c, s, w = cfg.channels, cfg.image_size, cfg.width
    k = _pool_code_channels(cfg) if cfg.latent_dim else 8
    q = s // 4
    norm = cfg.norm == "batch"
    enc = nn.Sequential(
        *_block(c, w, 2, norm),  # [B, w, s/2, s/2]
        *_block(w, 2 * w, 2, norm),  # [B, 2w, s/4, s/4]
        *_block(2 * w, 2 * w, 1, norm),  # [B, 2w, s/4, s/4]
        nn.Conv2d(2 * w, k, 3, padding=1),  # [B, K, s/4, s/4]: the code, linear
    )
    dec = nn.Sequential(
        *_block(k, 2 * w, 1, norm),  # [B, 2w, s/4, s/4]
        *_block(2 * w, 2 * w, 1, norm),  # [B, 2w, s/4, s/4]
        *_up(2 * w, w, cfg.decoder, norm),  # [B, w, s/2, s/2]
        *_up(w, w, cfg.decoder, norm),  # [B, w, s, s]
        nn.Conv2d(w, c, 3, padding=1),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(enc, dec, (k, q, q), cfg)


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
    return {
        "arch": model.config.arch,
        "input_shape": list(model.input_shape),
        "latent_shape": list(model.latent_shape),
        "latent_dim": model.latent_dim,
        "compression_ratio": n_in / model.latent_dim,
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
        "layers": [r.__dict__ for r in rows],
    }
