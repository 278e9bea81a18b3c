"""Building blocks shared by the architectures: the seeds' 1x1-code layers as the matrix products
they are, and the conv / upsampling blocks of our own models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig

__all__ = [
    "is_channels_last",
    "CodeConv2d",
    "CodeConvTranspose2d",
    "conv_block",
    "up_block",
    "code_map_channels",
]


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


def conv_block(
    cin: int, cout: int, stride: int, norm: bool, padding: str = "zeros"
) -> list[nn.Module]:
    """3x3 conv (strided or not, borders padded by ``padding``), BatchNorm when ``norm``, ReLU."""
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not norm, padding_mode=padding),
        *([nn.BatchNorm2d(cout)] if norm else []),
        nn.ReLU(inplace=True),
    ]


def up_block(cin: int, cout: int, kind: str, norm: bool, padding: str = "zeros") -> list[nn.Module]:
    """Double the resolution: a transposed conv, or nearest upsampling + 3x3 conv ("upsample")."""
    if kind == "transpose":
        conv: list[nn.Module] = [
            nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=not norm)
        ]
    else:  # nearest-neighbour upsampling then a 3x3 conv: no checkerboard artifacts
        conv = [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, padding=1, bias=not norm, padding_mode=padding),
        ]
    return [*conv, *([nn.BatchNorm2d(cout)] if norm else []), nn.ReLU(inplace=True)]


def code_map_channels(cfg: ModelConfig, stride: int, default: int) -> int:
    """Channels K of a ``[K, s/stride, s/stride]`` code map: ``code_channels`` (which serves every
    image size), else ``latent_dim`` / cells, else ``default``."""
    if cfg.image_size % stride:
        raise ValueError(
            f"{cfg.arch} divides the image by {stride}: the image size (or --crop) must be a "
            f"multiple of {stride}, not {cfg.image_size}"
        )
    q = cfg.image_size // stride
    cells = q * q
    k, L = cfg.code_channels, cfg.latent_dim
    if k is not None and L is not None and L != k * cells:
        raise ValueError(
            f"{cfg.arch}: latent dim {L} disagrees with {k} code channels x {q}x{q} cells; give one"
        )
    if k is not None:
        return k
    if L is None:
        return default
    if L % cells:
        raise ValueError(
            f"{cfg.arch} keeps a {q}x{q} code map, so its latent dim must be a multiple of {cells} "
            f"(e.g. {default * cells}), not {L}; or give --code-channels K, which fits any size"
        )
    return L // cells
