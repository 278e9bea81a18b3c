"""Restoration architectures: a residual U-Net that predicts the noise of an image and subtracts it.

Layout for ``depth = 3`` (``w`` = width; unshuffle = space-to-depth by 2)::

    x [B, C, H, W] -> unshuffle [B, 4C, H/2, W/2] (+ noise level plane) -> head -> level 0 (w) ----+
                      down (2x2, stride 2) -> level 1 (2w, H/4)                                 --+ |
                      down -> level 2 (4w, H/8)                                                -+ | |
                      down -> bottom (8w, H/16)                                                 | | |
                      up (2x2 transposed) + skip -> level 2 -> up + skip -> ... -> level 0   <--+-+-+
    tail -> shuffle [B, C, H, W] = the predicted noise;  output = x - noise

Starting at half resolution makes the full-resolution cost vanish, and every level then costs
about the same per input pixel (the channels double as the pixels quarter). There is no
normalization layer, so the output depends neither on the batch nor on the image size, and a
zero prediction returns the input unchanged (colour included).

The network is told how noisy its input is by its own estimate (:func:`estimate_noise`: the
median absolute finest diagonal Haar coefficient over 0.6745) as one constant input plane: it
stays blind for the user, and one model serves every noise level.

The skip connections carry the image at every scale, so there is no code from which the image
could be decoded: ``encode``/``decode`` raise, ``forward`` is the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .core import AutoEncoder, register

__all__ = ["estimate_noise", "ResidualUNet"]

# Noise std (on the [0, 1] scale) x this = the noise plane's value: sigma 0-0.2 becomes 0-1,
# the range of the pixels.
_NOISE_SCALE = 5.0


def estimate_noise(x: Tensor) -> Tensor:
    """Robust noise std of each image of ``x`` [B, C, H, W] (H, W even) -> float32 [B].

    Donoho's MAD estimator on the finest diagonal Haar band: image content barely reaches it, so
    it is mostly noise (texture biases it up a little, clipping at 0 and 1 down).
    """
    x = x.float()
    d = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    a = d.flatten(1).abs()
    # the lower median, as torch.median gives it, by a sort: ONNX has no median operator
    return a.sort(dim=1).values[:, (a.shape[1] - 1) // 2] / 0.6745


class NoiseLevel(nn.Module):
    """[B, C, H, W] images -> [B, 1, H/2, W/2]: their estimated noise std (x 5), as a plane."""

    def forward(self, x: Tensor) -> Tensor:
        s = _NOISE_SCALE * estimate_noise(x)
        return s.view(-1, 1, 1, 1).expand(-1, 1, x.shape[-2] // 2, x.shape[-1] // 2)


class Level(nn.Sequential):
    """``blocks`` 3x3 conv + ReLU layers of ``c`` channels, wrapped in an identity skip."""

    def __init__(self, c: int, blocks: int) -> None:
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)]
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


class Down(nn.Sequential):
    """2x2 stride-2 conv doubling the channels, + ReLU: [B, c, h, w] -> [B, 2c, h/2, w/2]."""

    def __init__(self, c: int) -> None:
        super().__init__(nn.Conv2d(c, 2 * c, 2, stride=2), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Padded images -> the features of every level, the bottom's last. Its children run in the
    order they are listed (the summary's rows)."""

    def __init__(self, channels: int, width: int, depth: int, blocks: int) -> None:
        super().__init__()
        self.depth = depth
        self.noise = NoiseLevel()
        self.head = nn.Sequential(nn.Conv2d(4 * channels + 1, width, 3, padding=1), nn.ReLU(True))
        for i in range(depth):
            c = width * 2**i
            self.add_module(f"level{i}", Level(c, blocks))
            self.add_module(f"down{i}", Down(c))
        self.bottom = Level(width * 2**depth, blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        u = F.pixel_unshuffle(x, 2)  # [B, 4C, H/2, W/2]
        h = self.head(torch.cat([u, self.noise(x).to(u.dtype)], 1))  # [B, w, H/2, W/2]
        feats = []
        for i in range(self.depth):
            h = getattr(self, f"level{i}")(h)  # [B, w 2^i, H/2^(i+1), W/2^(i+1)]
            feats.append(h)
            h = getattr(self, f"down{i}")(h)
        feats.append(self.bottom(h))  # [B, w 2^depth, H/2^(depth+1), W/2^(depth+1)]
        return feats


class Decoder(nn.Module):
    """The features of every level -> the predicted noise [B, C, H, W] of the padded images."""

    def __init__(self, channels: int, width: int, depth: int, blocks: int) -> None:
        super().__init__()
        self.depth = depth
        for i in reversed(range(depth)):
            c = width * 2**i
            self.add_module(f"up{i}", nn.ConvTranspose2d(2 * c, c, 2, stride=2))
            self.add_module(f"level{i}", Level(c, blocks))
        self.tail = nn.Conv2d(width, 4 * channels, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)  # depth to space: [B, 4C, H/2, W/2] -> [B, C, H, W]

    def forward(self, feats: list[Tensor]) -> Tensor:
        h = feats[-1]
        for i in reversed(range(self.depth)):
            h = getattr(self, f"level{i}")(F.relu(getattr(self, f"up{i}")(h) + feats[i]))
        return self.shuffle(self.tail(h))  # [B, C, H, W]


class ResidualUNet(AutoEncoder):
    """A blind denoiser: ``forward(x) = x - noise(x)`` for images of any size (padded inside to a
    multiple of ``stride`` by reflection, cropped back). It has no code: ``encode``/``decode``
    raise ``ValueError``."""

    has_code = False

    def __init__(self, cfg: ModelConfig, width: int, depth: int, blocks: int) -> None:
        c = cfg.channels
        super().__init__(
            Encoder(c, width, depth, blocks),
            Decoder(c, width, depth, blocks),
            # no code: the skips carry the image itself, so its "latent" is the image (1:1)
            (c, cfg.image_size, cfg.image_size),
            cfg,
            sigmoid_output=False,
            fully_conv=True,
            stride=2 ** (depth + 1),
        )

    def encode(self, x: Tensor) -> Tensor:
        raise ValueError(self._no_code())

    def decode(self, z: Tensor) -> Tensor:
        raise ValueError(self._no_code())

    def _no_code(self) -> str:
        return (
            f"{self.config.arch} has skip connections and no code to encode to or decode from; "
            "it only maps images to images (forward, denoise, reconstruct, eval)"
        )

    def forward(self, x: Tensor) -> Tensor:
        """Noisy images [B, C, H, W] in [0, 1], any H x W -> denoised, same shape (not clipped)."""
        h, w = x.shape[-2:]
        m = self.stride
        ph, pw = -h % m, -w % m
        if ph or pw:  # reflect needs padding < size; tiny images repeat their edge instead
            mode = "reflect" if ph < h and pw < w else "replicate"
            xp = F.pad(x, (0, pw, 0, ph), mode=mode)
        else:
            xp = x
        out = xp - self.decoder(self.encoder(xp)).to(xp.dtype)
        return out[..., :h, :w]


def _unet_latent(cfg: ModelConfig) -> int:
    return cfg.channels * cfg.image_size**2


@register(
    "convae-unet",
    _unet_latent,
    "restoration: residual U-Net (skip connections, no code) predicting the noise; "
    "fully convolutional, blind (estimates the noise level itself): the photo denoiser",
)
def convae_unet(cfg: ModelConfig) -> AutoEncoder:
    """``width`` channels at the top level (default 32 via --width), doubling at each of
    ``depth`` (default 3) stride-2 stages below the half-resolution input, two 3x3 convolutions
    per level and side. ``latent_dim``, ``norm``, ``decoder`` and ``padding`` do not apply."""
    if cfg.latent_dim not in (None, _unet_latent(cfg)):
        raise ValueError(f"{cfg.arch} has no code: drop --latent-dim")
    if cfg.mean_image:
        raise ValueError(f"{cfg.arch} predicts the noise, not the image: drop --mean-image")
    return ResidualUNet(cfg, cfg.width, cfg.depth or 3, blocks=2)
