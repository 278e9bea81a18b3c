"""Our own architectures: a BatchNorm conv pyramid with a dense bottleneck (the default), and the
same pyramid ending in a code map."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .core import AutoEncoder, register
from .layers import code_map_channels, conv_block, up_block


@register(
    "convae",
    lambda cfg: 16,
    "ours: BatchNorm conv pyramid, dense bottleneck, upsample+conv (or transposed) decoder",
)
def convae_arch(cfg: ModelConfig) -> AutoEncoder:
    """Best quality per latent value at CPU speed (see docs/benchmarks.md for the measurements)."""
    c, s, w = cfg.channels, cfg.image_size, cfg.width
    L = cfg.latent_dim or 16
    q = s // 4
    norm = cfg.norm == "batch"
    flat = 2 * w * q * q
    enc = nn.Sequential(
        *conv_block(c, w, 2, norm),  # [B, w, s/2, s/2]
        *conv_block(w, 2 * w, 2, norm),  # [B, 2w, s/4, s/4]
        *conv_block(2 * w, 2 * w, 1, norm),  # [B, 2w, s/4, s/4]
        nn.Flatten(),  # [B, 2w * s/4 * s/4]
        nn.Linear(flat, L),  # [B, L]
    )
    dec = nn.Sequential(
        nn.Linear(L, flat),  # [B, 2w * s/4 * s/4]
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (2 * w, q, q)),  # [B, 2w, s/4, s/4]
        *conv_block(2 * w, 2 * w, 1, norm),  # [B, 2w, s/4, s/4]
        *up_block(2 * w, w, cfg.decoder, norm),  # [B, w, s/2, s/2]
        *up_block(w, w, cfg.decoder, norm),  # [B, w, s, s]
        nn.Conv2d(w, c, 3, padding=1),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(enc, dec, (L,), cfg)


def _map_latent(cfg: ModelConfig) -> int:
    stride = 2 ** (cfg.depth or 2)
    return code_map_channels(cfg, stride, 8) * (cfg.image_size // stride) ** 2


@register(
    "convae-map",
    _map_latent,
    "ours with a convolutional code map [K, s/4, s/4] (or s/2^depth) instead of the dense "
    "bottleneck: fully convolutional (whole images, photos, the digit codec)",
)
def convae_map(cfg: ModelConfig) -> AutoEncoder:
    """The `convae` pyramid ending in a 3x3 conv to ``K`` code channels at ``1 / 2^depth`` of the
    input's resolution (``depth`` 2 by default).

    Every code value sees only its neighbourhood, so the same filters serve every position and
    every image size: with few training images it generalizes better than a dense layer, and
    positions over an empty background give near-constant values that an entropy coder stores in
    very few bits.
    """
    c, s, w = cfg.channels, cfg.image_size, cfg.width
    depth = cfg.depth or 2
    k = code_map_channels(cfg, 2**depth, 8)
    q = s // 2**depth
    norm = cfg.norm == "batch"
    pad = cfg.padding or "zeros"
    extra_down = [m for _ in range(depth - 2) for m in conv_block(2 * w, 2 * w, 2, norm, pad)]
    extra_up = [m for _ in range(depth - 2) for m in up_block(2 * w, 2 * w, cfg.decoder, norm, pad)]
    enc = nn.Sequential(
        *conv_block(c, w, 2, norm, pad),  # [B, w, s/2, s/2]
        *conv_block(w, 2 * w, 2, norm, pad),  # [B, 2w, s/4, s/4]
        *extra_down,  # [B, 2w, s/2^depth, s/2^depth]
        *conv_block(2 * w, 2 * w, 1, norm, pad),
        nn.Conv2d(2 * w, k, 3, padding=1, padding_mode=pad),  # [B, K, q, q]: the code, linear
    )
    dec = nn.Sequential(
        *conv_block(k, 2 * w, 1, norm, pad),  # [B, 2w, q, q]
        *conv_block(2 * w, 2 * w, 1, norm, pad),
        *extra_up,  # [B, 2w, s/4, s/4]
        *up_block(2 * w, w, cfg.decoder, norm, pad),  # [B, w, s/2, s/2]
        *up_block(w, w, cfg.decoder, norm, pad),  # [B, w, s, s]
        nn.Conv2d(w, c, 3, padding=1, padding_mode=pad),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(enc, dec, (k, q, q), cfg, fully_conv=True, stride=2**depth)
