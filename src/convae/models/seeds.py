"""The tutorials' models, faithful to their layer lists, sized to the input."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .core import AutoEncoder, register
from .layers import CodeConv2d, CodeConvTranspose2d, code_map_channels


def _seed_latent_strided(cfg: ModelConfig) -> int:
    return 12


@register(
    "seed-strided",
    _seed_latent_strided,
    "strided convs to a 1x1 code, ConvTranspose decoder (seeds 000/002)",
    mean_image=True,  # reaches the seeds' quality in fewer steps (docs/benchmarks.md)
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
    return code_map_channels(cfg, 4, 4) * (cfg.image_size // 4) ** 2


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
    code = code_map_channels(cfg, 4, 4)
    dec = nn.Sequential(
        nn.ConvTranspose2d(code, 16, 2, stride=2),  # [B, 16, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(16, c, 2, stride=2),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(_pool_encoder(c, code), dec, (code, s // 4, s // 4), cfg, fully_conv=True)


@register(
    "seed-upsample",
    _pool_latent,
    "seed-pool's encoder, nearest/bilinear upsample + conv decoder (no checkerboard)",
)
def seed_upsample(cfg: ModelConfig) -> AutoEncoder:
    c, s = cfg.channels, cfg.image_size
    code = code_map_channels(cfg, 4, 4)
    dec = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),  # [B, code, s/2, s/2]
        nn.Conv2d(code, 16, 3, padding=1),  # [B, 16, s/2, s/2]
        nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=2, mode="nearest"),  # [B, 16, s, s]
        nn.Conv2d(16, c, 3, padding=1),  # [B, C, s, s]
        nn.Sigmoid(),
    )
    return AutoEncoder(_pool_encoder(c, code), dec, (code, s // 4, s // 4), cfg, fully_conv=True)


@register(
    "seed-dense",
    lambda cfg: 200,
    "convs to 64 maps at 1/4 size, dense bottleneck (200), ConvTranspose decoder (seed 003)",
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
