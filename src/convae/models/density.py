"""Differentiable entropy models: a factorized density for a hyper-latent, a conditional Gaussian.

Both return likelihoods of integer-rounded values (the mass of the unit bin around each value), so
``-log2`` of them is the rate in bits. In training the values carry uniform noise instead of
rounding (Ballé et al. 2017), which makes the same expressions a differentiable rate proxy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gdn import lower_bound

__all__ = ["FactorizedDensity", "gaussian_likelihood", "bits", "LIKELIHOOD_MIN", "SCALE_MIN"]

LIKELIHOOD_MIN = 1e-9  # floor on a bin's probability so log2 stays finite
SCALE_MIN = 0.11  # smallest Gaussian scale the model may predict (and the first table scale)


class FactorizedDensity(nn.Module):
    """One learned univariate density per channel (Ballé et al. 2018, appendix 6.1).

    The cumulative is a small monotone network ``x -> logit(CDF(x))`` per channel: layers
    ``softplus(H) x + b`` with ``x + tanh(a) tanh(x)`` between them.
    """

    def __init__(
        self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0
    ):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1.0 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    @property
    def channels(self) -> int:
        return self.matrices[0].shape[0]

    def logits_cumulative(self, x: Tensor) -> Tensor:
        """x [C, 1, n] -> logit of each channel's CDF at x, [C, 1, n] (in x's dtype)."""
        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(matrix.to(x.dtype)), x) + self.biases[i].to(x.dtype)
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i].to(x.dtype)) * torch.tanh(x)
        return x

    def _bin_mass(self, v: Tensor) -> Tensor:
        lower = self.logits_cumulative(v - 0.5)
        upper = self.logits_cumulative(v + 0.5)
        # sigmoid differences on the side where they do not cancel catastrophically
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def likelihood(self, z: Tensor) -> Tensor:
        """Probability of the unit bin around each element of z [B, C, H, W]."""
        b, c, h, w = z.shape
        p = self._bin_mass(z.permute(1, 0, 2, 3).reshape(c, 1, -1))
        p = lower_bound(p, LIKELIHOOD_MIN)
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def quantiles(self, tail: float) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, the values where the CDF is tail/2 and 1 - tail/2 (bisection, float64)."""
        target = math.log(2.0 / tail - 1.0)
        out = []
        for goal in (-target, target):
            lo = torch.full((self.channels, 1, 1), -1e4, dtype=torch.float64)
            hi = torch.full((self.channels, 1, 1), 1e4, dtype=torch.float64)
            for _ in range(80):
                mid = (lo + hi) / 2
                above = self.logits_cumulative(mid) > goal
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            out.append(((lo + hi) / 2).flatten().numpy())
        return out[0], out[1]

    @torch.no_grad()
    def pmf(self, channel: int, lo: int, hi: int) -> np.ndarray:
        """float64 masses of the integers lo..hi for one channel."""
        v = torch.arange(lo, hi + 1, dtype=torch.float64).reshape(1, 1, -1)
        return self._bin_mass(v.expand(self.channels, 1, -1))[channel, 0].numpy()


def gaussian_likelihood(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Mass of the unit bin around y under N(mean, scale^2), scale floored at SCALE_MIN."""
    scale = lower_bound(scale, SCALE_MIN)
    v = torch.abs(y - mean)
    # both tails computed on the negative side: erfc stays accurate there
    upper = 0.5 * torch.erfc((v - 0.5) / (scale * math.sqrt(2.0)))
    lower = 0.5 * torch.erfc((v + 0.5) / (scale * math.sqrt(2.0)))
    return lower_bound(upper - lower, LIKELIHOOD_MIN)


def bits(likelihood: Tensor) -> Tensor:
    """Total information content, in bits, summed over all but the batch dimension -> [B]."""
    return -torch.log2(likelihood).flatten(1).sum(1)
