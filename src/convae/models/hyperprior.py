"""The learned photo codec's network: a variable-rate mean-scale hyperprior (Ballé et al. 2018).

Analysis (the ``encoder``) maps an image to a code map ``y`` at 1/16 resolution: a 16x16 stride-16
linear block transform (initialized to the principal axes of training patches) refined by a
residual conv-GDN-conv. The hyper-analysis maps ``y`` to a hyper-latent ``z`` at 1/64, coded with a
learned factorized density; the hyper-synthesis predicts a mean and a scale for every element of
``y``, coded with a Gaussian. Synthesis (the ``decoder``) is a residual conv-IGDN-conv, the
transposed block transform and a residual post-filter run at half resolution (space-to-depth).

One model serves every quality level through gain units (Cui et al. 2021): level ``l`` scales ``y``
channel-wise by ``gain[l]`` before rounding and by ``inverse_gain[l]`` after; fractional levels
interpolate the log-gains. Training minimizes ``lambda_l * 255^2 * MSE + bits per pixel`` with a
level drawn per image (:meth:`HyperpriorCodec.training_loss`, which the trainer calls).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .core import AutoEncoder, register
from .density import FactorizedDensity, bits, gaussian_likelihood
from .gdn import GDN

__all__ = ["HyperpriorCodec", "LAMBDAS", "DEFAULT_LEVEL", "Y_STRIDE", "Z_STRIDE", "GAIN_SCALE"]

Y_STRIDE = 16  # input pixels per code-map element, each way
Z_STRIDE = 4  # code-map elements per hyper-latent element, each way
PAD = Y_STRIDE * Z_STRIDE  # images are padded to multiples of this for the hyper-latent
# Per quality level, the loss is lambda * 255^2 * MSE + bpp (CompressAI's MSE scale).
LAMBDAS = (0.0018, 0.0045, 0.012, 0.032, 0.085, 0.23)
DEFAULT_LEVEL = 3  # what forward() (whole-image reconstruction, metrics) runs at
GAIN_INIT = 4.0  # middle level's gain: y leaves the block transform at std ~0.5, rounding needs ~2+
# Log-gains are stored divided by this: Adam moves a parameter ~lr per step, and the gains must
# move 10x faster than the weights to reach their levels in a few thousand steps.
GAIN_SCALE = 10.0
DEFAULT_LATENT = 192  # M when ModelConfig.code_channels is None


def _residual(channels: int, hidden: int, act: nn.Module) -> nn.Sequential:
    """conv3x3 -> act -> conv3x3 whose last layer starts at zero (the block starts as identity)."""
    seq = nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1), act, nn.Conv2d(hidden, channels, 3, padding=1)
    )
    nn.init.zeros_(seq[2].weight)
    nn.init.zeros_(seq[2].bias)
    return seq


class BlockAnalysis(nn.Module):
    """[B, C, H, W] -> y [B, M, H/16, W/16]: block transform, then a residual GDN refinement."""

    def __init__(self, channels: int, latent: int, hidden: int):
        super().__init__()
        self.block = nn.Conv2d(channels, latent, Y_STRIDE, stride=Y_STRIDE)
        self.refine = _residual(latent, hidden, GDN(hidden))

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + self.refine(y)


class BlockSynthesis(nn.Module):
    """y [B, M, h, w] -> [B, C, 16h, 16w]: IGDN refinement, transposed block, post-filter."""

    def __init__(self, channels: int, latent: int, hidden: int, post: int):
        super().__init__()
        self.refine = _residual(latent, hidden, GDN(hidden, inverse=True))
        self.unblock = nn.ConvTranspose2d(latent, channels, Y_STRIDE, stride=Y_STRIDE)
        c = 4 * channels
        # space-to-depth by 2: 4x fewer positions, wider layers (3x faster on CPU than full
        # resolution at equal MACs) and twice the reach across the 16-px block edges
        self.post = nn.Sequential(
            nn.PixelUnshuffle(2), nn.Conv2d(c, post, 3, padding=1), nn.LeakyReLU(),
            nn.Conv2d(post, post, 3, padding=1), nn.LeakyReLU(), nn.Conv2d(post, c, 3, padding=1),
            nn.PixelShuffle(2),
        )  # fmt: skip
        nn.init.zeros_(self.post[5].weight)
        nn.init.zeros_(self.post[5].bias)

    def forward(self, y: Tensor) -> Tensor:
        x = self.unblock(y + self.refine(y))
        return x + self.post(x)


def _down(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


def hyper_analysis(latent: int, hidden: int, hyper_latent: int) -> nn.Sequential:
    """y [B, M, h, w] -> z [B, Nz, ceil(h/4), ceil(w/4)]."""
    return nn.Sequential(
        nn.Conv2d(latent, hidden, 3, padding=1), nn.LeakyReLU(), _down(hidden, hidden),
        nn.LeakyReLU(), _down(hidden, hyper_latent),
    )  # fmt: skip


def hyper_synthesis(latent: int, hidden: int, hyper_latent: int) -> nn.Sequential:
    """z [B, Nz, a, b] -> [B, 2M, 4a, 4b]: means then scales of y (cropped to y's size)."""
    wide = hidden * 3 // 2
    return nn.Sequential(
        _up(hyper_latent, hidden), nn.LeakyReLU(), _up(hidden, wide), nn.LeakyReLU(),
        nn.Conv2d(wide, 2 * latent, 3, padding=1),
    )  # fmt: skip


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _uniform(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform noise on [-1/2, 1/2) shaped like ``t``, from ``generator`` when given (drawn on
    its device, then moved)."""
    if generator is None:
        return torch.rand_like(t) - 0.5
    u = torch.rand(t.shape, generator=generator, device=generator.device, dtype=t.dtype)
    return u.to(t.device) - 0.5


def pad_to(x: Tensor, multiple: int = PAD) -> Tensor:
    """Replicate-pad [B, C, H, W] on the bottom/right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    if h % multiple == 0 and w % multiple == 0:
        return x
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


def code_channels(cfg: ModelConfig) -> int:
    """M: ``code_channels``, else ``latent_dim`` / code-map cells of a training-size image, else
    192."""
    if cfg.code_channels is not None or cfg.latent_dim is None:
        return cfg.code_channels or DEFAULT_LATENT
    cells = _grid(cfg.image_size) ** 2
    if cfg.latent_dim % cells:
        raise ValueError(
            f"hyperprior: latent dim {cfg.latent_dim} is not a multiple of the {cells} code-map "
            f"cells of a {cfg.image_size}-px image; give --code-channels instead"
        )
    return cfg.latent_dim // cells


def _grid(side: int) -> int:
    """Code-map elements along a side of ``side`` pixels, padded to a multiple of 64."""
    return -(-side // PAD) * Z_STRIDE


@register(
    "hyperprior",
    lambda cfg: code_channels(cfg) * _grid(cfg.image_size) ** 2,
    "learned photo codec: block transform + GDN, mean-scale hyperprior, gain units (.cae v2)",
)
def hyperprior_arch(cfg: ModelConfig) -> AutoEncoder:
    """width = hidden channels (96 for photos), code_channels = M (192)."""
    if cfg.mean_image:
        raise ValueError("the hyperprior model codes whole photos of any size: no --mean-image")
    return HyperpriorCodec(cfg)


class HyperpriorCodec(AutoEncoder):
    """Mean-scale hyperprior with gain units. ``forward`` reconstructs at :data:`DEFAULT_LEVEL`
    with rounded latents; :meth:`rate_distortion` is the training pass (noise and STE)."""

    def __init__(self, cfg: ModelConfig):
        c, m, n = cfg.channels, code_channels(cfg), cfg.width
        small = max(2, m // 3)  # hyper-latent channels and post-filter width
        q = _grid(cfg.image_size)  # the (padded) code map of one training-size image
        super().__init__(
            BlockAnalysis(c, m, n), BlockSynthesis(c, m, n, small), (m, q, q), cfg,
            sigmoid_output=False, fully_conv=True, stride=Y_STRIDE,
        )  # fmt: skip
        self.hyper_encoder = hyper_analysis(m, n, small)
        self.hyper_decoder = hyper_synthesis(m, n, small)
        lam = torch.tensor(LAMBDAS, dtype=torch.float64)
        # MSE-optimal step ~ lambda^-1/2: each level's gain starts there, around the middle level
        init = (0.5 * torch.log(lam / lam[len(lam) // 2]) + math.log(GAIN_INIT)).float()
        self.log_gain = nn.Parameter(init[:, None].repeat(1, m) / GAIN_SCALE)
        self.log_inverse_gain = nn.Parameter(-init[:, None].repeat(1, m) / GAIN_SCALE)
        self.log_z_gain = nn.Parameter(torch.zeros(len(lam), small))
        self.log_z_inverse_gain = nn.Parameter(torch.zeros(len(lam), small))
        self.z_density = nn.ModuleList(FactorizedDensity(small) for _ in LAMBDAS)

    @property
    def levels(self) -> int:
        return len(LAMBDAS)

    @property
    def latent_channels(self) -> int:
        return self.log_gain.shape[1]

    @property
    def hyper_channels(self) -> int:
        return self.log_z_gain.shape[1]

    def y_gains(self, level: Tensor) -> tuple[Tensor, Tensor]:
        """Gain and inverse gain [B, M, 1, 1] at (possibly fractional) levels [B]."""
        level = level.to(self.log_gain.dtype)
        lo = level.floor().long().clamp(0, self.levels - 2)
        t = (level - lo)[:, None]
        g = torch.lerp(self.log_gain[lo], self.log_gain[lo + 1], t) * GAIN_SCALE
        ig = torch.lerp(self.log_inverse_gain[lo], self.log_inverse_gain[lo + 1], t) * GAIN_SCALE
        return g.exp()[:, :, None, None], ig.exp()[:, :, None, None]

    def z_bits(self, z_noisy: Tensor, z_level: Tensor) -> Tensor:
        """Bits [B] of the hyper-latent under each sample's level density."""
        out = torch.zeros(z_noisy.shape[0], dtype=z_noisy.dtype, device=z_noisy.device)
        for lv in z_level.unique().tolist():
            sel = z_level == lv
            out[sel] = bits(self.z_density[lv].likelihood(z_noisy[sel]))
        return out

    def entropy_parameters(
        self, z_hat: Tensor, z_level: Tensor, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Ungained mean and scale of y [B, M, h, w] from the rounded, gained hyper-latent."""
        izg = self.log_z_inverse_gain[z_level].to(z_hat.dtype).exp()[:, :, None, None]
        params = self.hyper_decoder(z_hat * izg)[:, :, : size[0], : size[1]]
        mean, scale = params.chunk(2, dim=1)
        return mean, scale

    def rate_distortion(
        self, x: Tensor, level: Tensor, noise: bool = True, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """x in [0, 1] [B, C, H, W] (any H, W), level [B] -> x_hat [B, C, H, W] and bits [B].

        ``noise=True`` (training) measures rates on noisy values (drawn from ``generator``);
        ``noise=False`` on the rounded values a bitstream carries, so the bits estimate the file
        size.
        """
        h, w = x.shape[-2:]
        y = self.encoder(pad_to(x))
        z_level = level.floor().long().clamp(0, self.levels - 1)
        z = self.hyper_encoder(y) * self.log_z_gain[z_level].exp()[:, :, None, None]
        z_rate = z + _uniform(z, generator) if noise else torch.round(z)
        z_bits = self.z_bits(z_rate, z_level)
        mean, scale = self.entropy_parameters(ste_round(z), z_level, y.shape[2:])
        g, ig = self.y_gains(level)
        yg, mg = y * g, mean * g
        yg_hat = ste_round(yg - mg) + mg
        y_rate = yg + _uniform(yg, generator) if noise else yg_hat
        y_bits = bits(gaussian_likelihood(y_rate, mg, scale * g))
        y_hat = yg_hat * ig
        x_hat = self.decoder(y_hat)[:, :, :h, :w]
        return {"x_hat": x_hat, "y_hat": y_hat, "y_bits": y_bits, "z_bits": z_bits}

    def _default_level(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), float(DEFAULT_LEVEL), device=x.device)

    def encode(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> the quantized code map at :data:`DEFAULT_LEVEL` (the image padded to
        multiples of 64), flat: [B, M * h * w]."""
        return self.rate_distortion(x, self._default_level(x), noise=False)["y_hat"].flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        """A flat code of a training-size image -> [B, C, image_size, image_size]."""
        s = self.config.image_size
        return self.decoder(z.reshape(z.shape[0], *self.latent_shape))[:, :, :s, :s]

    def forward(self, x: Tensor) -> Tensor:
        return self.rate_distortion(x, self._default_level(x), noise=False)["x_hat"]

    def training_loss(
        self, x: Tensor, target: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """The trainer's objective: mean of ``lambda * 255^2 * MSE + bpp`` over the batch.

        Training draws each image's level uniformly on [0, levels - 1] (half of them snapped to
        integers, the levels files use most) and the rate noise from ``generator`` (the trainer
        passes one seeded by (seed, epoch)); evaluation cycles through the integer levels."""
        b = x.shape[0]
        if self.training:
            u = _uniform(x.new_empty(2, b, dtype=torch.float32), generator) + 0.5  # [2, B]
            top = u[0] * (self.levels - 1)
            level = torch.where(u[1] < 0.5, top.round(), top)
        else:
            level = (torch.arange(b, device=x.device) % self.levels).float()
        out = self.rate_distortion(x, level, noise=self.training, generator=generator)
        return rd_loss(out, target, level)[0]

    @torch.no_grad()
    def init_from_data(self, images: Tensor) -> None:
        """PCA initialization from float images [N, C, H, W] (H, W multiples of 16): the block
        transform becomes the top-M principal axes of their 16x16 patches (a KLT block codec)."""
        n, c = images.shape[:2]
        patches = F.unfold(images.float().cpu(), Y_STRIDE, stride=Y_STRIDE)  # [N, C*256, P]
        flat = patches.transpose(1, 2).reshape(-1, c * Y_STRIDE * Y_STRIDE).double()
        mean = flat.reshape(flat.shape[0], c, -1).mean((0, 2))  # [C]: a flat image codes as 0
        mean_img = mean[:, None].expand(c, Y_STRIDE * Y_STRIDE).reshape(-1)
        _, _, vh = torch.linalg.svd(flat - mean_img, full_matrices=False)
        m = self.latent_channels
        if vh.shape[0] < m:
            raise ValueError(f"{flat.shape[0]} patches cannot initialize {m} code channels")
        basis = vh[:m]  # [M, C*256], orthonormal rows by decreasing variance
        weight = basis.reshape(m, c, Y_STRIDE, Y_STRIDE).to(self.encoder.block.weight)
        self.encoder.block.weight.copy_(weight)
        self.encoder.block.bias.copy_(-(basis @ mean_img).to(weight))
        self.decoder.unblock.weight.copy_(weight)
        self.decoder.unblock.bias.copy_(mean.to(weight))


def rd_loss(out: dict[str, Tensor], x: Tensor, level: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over the batch of ``lambda * 255^2 * MSE + bpp``, and the per-image MSE and bpp."""
    lam = torch.tensor(LAMBDAS, dtype=x.dtype, device=x.device)
    lo = level.floor().long().clamp(0, len(LAMBDAS) - 2)
    t = (level - lo).to(x.dtype)
    lam_b = torch.exp(torch.lerp(lam[lo].log(), lam[lo + 1].log(), t))
    mse = F.mse_loss(out["x_hat"].float(), x, reduction="none").flatten(1).mean(1)
    bpp = (out["y_bits"] + out["z_bits"]).float() / (x.shape[2] * x.shape[3])
    return (lam_b * 255.0**2 * mse + bpp).mean(), mse.detach(), bpp.detach()
