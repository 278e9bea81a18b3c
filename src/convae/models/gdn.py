"""Generalized divisive normalization (Ballé et al. 2016) and its inverse, in pure torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GDN", "lower_bound"]


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it pushes x back above the bound."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


def lower_bound(x: Tensor, bound: float) -> Tensor:
    """Clamp from below with a gradient that can leave the clamped region."""
    if not (torch.is_grad_enabled() and x.requires_grad):  # inference: a plain clamp (traceable)
        return x.clamp_min(bound)
    return _LowerBound.apply(x, bound)


_PEDESTAL = 2.0**-36  # (2^-18)^2: keeps the square-root reparametrization away from 0


def _to_stored(x: Tensor) -> Tensor:
    return torch.sqrt(torch.clamp_min(x + _PEDESTAL, _PEDESTAL))


def _to_value(p: Tensor, minimum: float) -> Tensor:
    return lower_bound(p, (minimum + _PEDESTAL) ** 0.5) ** 2 - _PEDESTAL


class GDN(nn.Module):
    """``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``; ``inverse=True`` multiplies (IGDN).

    beta and gamma are stored through a square-root reparametrization so that they stay
    non-negative and their gradients stay well scaled near zero.
    """

    def __init__(
        self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1
    ):
        super().__init__()
        self.inverse = inverse
        self.beta_min = beta_min
        self.beta = nn.Parameter(_to_stored(torch.ones(channels)))
        self.gamma = nn.Parameter(_to_stored(gamma_init * torch.eye(channels)))

    def forward(self, x: Tensor) -> Tensor:
        beta = _to_value(self.beta, self.beta_min)
        gamma = _to_value(self.gamma, 0.0)
        c = gamma.shape[0]
        norm = F.conv2d(x * x, gamma.reshape(c, c, 1, 1), beta)  # [B, C, H, W]
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)
