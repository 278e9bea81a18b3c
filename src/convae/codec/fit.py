"""Rate-distortion fine-tuning (quantization-aware): noise for rounding, a learned prior for bits.

The model the codec uses is the run's autoencoder after a short rate-distortion fine-tune
(:func:`fit_codec`): uniform noise stands in for rounding, and a learned per-channel density (a
mixture of logistics) gives a differentiable bit count, so the loss is ``MSE + lambda * bpp``.
The quality levels' probability tables are then histograms of the training split's codes.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RunConfig
from ..inference import apply_batched, to_float
from ..models import AutoEncoder
from ..optim import lr_at
from .core import Codec, inference_copy, latents
from .entropy import Level, rotate

log = logging.getLogger(__name__)


class LogisticMixturePrior(nn.Module):
    """A density per latent channel (a mixture of ``k`` logistics) used as a differentiable rate.

    ``bits(y, step)`` is ``-log2 P(bin of width step around y)`` summed over channels: the code
    length an ideal entropy coder spends on the quantized latent, which the fine-tune minimizes.
    """

    def __init__(self, latent_dim: int, k: int = 4) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(latent_dim, k))
        self.loc = nn.Parameter(torch.linspace(-1.0, 1.0, k).repeat(latent_dim, 1))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim, k))

    @torch.no_grad()
    def init_from(self, y: Tensor) -> None:
        """Spread the components over each channel's quantiles of ``y`` [N, L]."""
        k = self.loc.shape[1]
        qs = torch.linspace(0.5 / k, 1 - 0.5 / k, k, dtype=y.dtype)
        self.loc.copy_(torch.quantile(y, qs, dim=0).T)
        spread = y.std(0, keepdim=True).T.clamp_min(1e-3) / k  # [L, 1]
        self.log_scale.copy_(spread.log().expand_as(self.log_scale))
        self.logits.zero_()

    def bits(self, y: Tensor, step: float = 1.0) -> Tensor:
        """[B, L] -> [B] bits."""
        y = y.unsqueeze(-1)  # [B, L, 1]
        inv = torch.exp(-self.log_scale)  # [L, K]
        upper = torch.sigmoid((y + 0.5 * step - self.loc) * inv)
        lower = torch.sigmoid((y - 0.5 * step - self.loc) * inv)
        p = (F.softmax(self.logits, dim=-1) * (upper - lower)).sum(-1)  # [B, L]
        return -torch.log2(p.clamp_min(1e-9)).sum(-1)


@dataclass(frozen=True)
class CodecFitConfig:
    """Settings of the rate-distortion fine-tune and of the quality levels fitted after it."""

    lmbda: float = 0.3  # rate weight: loss = distortion + lmbda * bits per pixel
    # "mse", or "psnr": log10 of each image's MSE, i.e. -PSNR/10 averaged over images - the
    # benchmark's score, which weighs every image's dB equally rather than every squared error
    distortion: str = "psnr"
    epochs: int = 10  # fine-tuning passes over the training split
    lr: float = 1e-3  # peak learning rate (cosine decay); the prior uses 10x
    batch_size: int = 32  # small batches: more steps - the rate term needs them to take effect
    mixture: int = 4  # logistic components per latent channel in the training prior
    quant: str = "noise"  # "noise" (additive uniform) or "ste" (straight-through rounding)
    # quality levels: quantizer steps, coarse first, sqrt(2) apart (for the codec preset 2.3 to
    # 0.6 dB and 4 to 10 B/image apart, 17-29 dB in all; docs/codec.md)
    steps: tuple[float, ...] = (8.0, 5.66, 4.0, 2.83, 2.0, 1.41, 1.0, 0.71)
    default_level: int = 5  # the level `convae encode` uses without --quality (step 1.41)
    margin: int = 2  # table symbols beyond the training codes' range, per side
    decorrelate: bool = True  # rotate the latent onto its principal axes before quantizing
    seed: int = 0


Progress = Callable[[dict[str, Any]], None]


def fit_codec(
    model: AutoEncoder,
    train_x: Tensor,
    cfg: CodecFitConfig | None = None,
    run_config: RunConfig | None = None,
    progress: Progress | None = None,
) -> Codec:
    """Fine-tune a copy of ``model`` for rate-distortion and fit the quality levels' tables.

    The copy is trained for ``cfg.epochs`` on ``MSE(decode(y + u), x) + lmbda * bits(y + u) / pixels``
    with ``u ~ U(-1/2, 1/2)`` (or straight-through rounding), then each level's probability
    tables are histograms of the training split's quantized codes.
    """
    cfg = cfg or CodecFitConfig()
    _check_fit_config(cfg)
    if len(train_x) == 0:
        raise ValueError("no training images to fit the codec on")
    run_config = run_config or model.run_config or RunConfig(model=model.config)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = copy.deepcopy(model).float()
        prior = LogisticMixturePrior(net.latent_dim, cfg.mixture).to(device)
    net.eval()
    with torch.inference_mode():
        y0 = apply_batched(net.encode, train_x, device)
    _check_finite(y0, "the model's codes of the training images", model)
    prior.init_from(y0.to(device))
    opt = torch.optim.Adam(
        [
            {"params": list(net.parameters()), "lr": cfg.lr},
            {"params": list(prior.parameters()), "lr": 10 * cfg.lr},
        ]
    )
    t0 = time.perf_counter()
    net.train()
    for epoch in range(cfg.epochs):
        d, r = _rd_epoch(net, prior, opt, train_x, cfg, epoch, g)
        row = {"event": "epoch", "epoch": epoch + 1, "epochs": cfg.epochs, "distortion": d,
               "bits": r, "seconds": time.perf_counter() - t0}  # fmt: skip
        if not (math.isfinite(d) and math.isfinite(r)):
            raise ValueError(
                f"the codec's rate-distortion fine-tune diverged (NaN/inf loss in epoch "
                f"{epoch + 1}); lower its lr (now {cfg.lr:g}) or retrain the run's model"
            )
        log.info("codec fine-tune epoch %d/%d: distortion %.5f, %.1f bits/image", epoch + 1,
                 cfg.epochs, d, r)  # fmt: skip
        if progress is not None:
            progress(row)
    net = net.cpu().eval()
    levels = _fit_levels(net, train_x, cfg, model)
    info = {
        "fit": asdict(cfg),
        "train_images": len(train_x),
        "seconds": time.perf_counter() - t0,
        "prior": {k: v.detach().cpu().tolist() for k, v in prior.state_dict().items()},
    }
    return Codec(net, levels, cfg.default_level, run_config, info=info)


def _check_fit_config(cfg: CodecFitConfig) -> None:
    if cfg.quant not in ("noise", "ste"):
        raise ValueError(f"quant must be noise or ste, not {cfg.quant!r}")
    if cfg.distortion not in ("mse", "psnr"):
        raise ValueError(f"distortion must be mse or psnr, not {cfg.distortion!r}")
    if (
        not cfg.steps
        or any(not (s > 0) for s in cfg.steps)
        or not 0 <= cfg.default_level < len(cfg.steps)
        or any(a <= b for a, b in zip(cfg.steps, cfg.steps[1:], strict=False))
    ):
        raise ValueError(
            "steps must be positive and decreasing (level 0 = smallest files), "
            "and default_level one of their indices"
        )
    if len(cfg.steps) > 255:
        raise ValueError("at most 255 quality levels")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.mixture < 1 or cfg.margin < 1:
        raise ValueError("epochs, batch_size, mixture and margin must be at least 1")
    if not (0 < cfg.lr < math.inf and 0 <= cfg.lmbda < math.inf):
        raise ValueError(f"lr must be a positive number and lmbda >= 0, not {cfg.lr}, {cfg.lmbda}")


def _rd_epoch(net: AutoEncoder, prior: LogisticMixturePrior, opt: torch.optim.Optimizer,
              train_x: Tensor, cfg: CodecFitConfig, epoch: int,
              g: torch.Generator) -> tuple[float, float]:  # fmt: skip
    """One rate-distortion epoch -> (mean distortion, mean bits per image)."""
    device = next(net.parameters()).device
    n = len(train_x)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = steps_per_epoch * cfg.epochs
    pixels = math.prod(net.input_shape)
    perm = torch.randperm(n, generator=g)
    d_sum, r_sum = torch.zeros(()), torch.zeros(())
    for i in range(steps_per_epoch):
        x = to_float(train_x[perm[i * batch : (i + 1) * batch]], device)
        mult = lr_at(epoch * steps_per_epoch + i, total, 1.0, "cosine", 0.05)  # of each group's lr
        for grp, base in zip(opt.param_groups, (cfg.lr, 10 * cfg.lr), strict=True):
            grp["lr"] = base * mult
        y = net.encode(x)  # [B, L]
        noisy = y + (torch.rand(y.shape, generator=g) - 0.5).to(device)
        y_dec = noisy if cfg.quant == "noise" else y + (torch.round(y) - y).detach()
        err = (net.decode(y_dec).float() - x).pow(2).flatten(1).mean(1)  # [B] per-image MSE
        # "psnr" weighs each image by 1/MSE: the mean of per-image dB is what the benchmark reports
        d = err.mean() if cfg.distortion == "mse" else torch.log10(err + 1e-6).mean()
        r = prior.bits(noisy).mean()  # bits per image
        loss = d + cfg.lmbda * r / pixels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        d_sum += d.detach().cpu()
        r_sum += r.detach().cpu()
    return float(d_sum) / steps_per_epoch, float(r_sum) / steps_per_epoch


def _fit_levels(net: AutoEncoder, train_x: Tensor, cfg: CodecFitConfig,
                model: AutoEncoder) -> list:  # fmt: skip
    """Each quality level's quantizer and tables, from the fine-tuned model's training codes."""
    y = latents(inference_copy(net), train_x)  # [N, L] float32, exactly as encode() computes it
    _check_finite(y, "the fine-tuned codec's codes of the training images", model)
    mean, basis = principal_axes(y) if cfg.decorrelate else (None, None)
    z = rotate(y, mean, basis)  # [N, L] float64
    offset = z.median(dim=0).values.float().numpy()  # centre of each component's rounding grid
    return [_fit_level(z, offset, s, cfg.margin, mean, basis) for s in cfg.steps]


def _check_finite(y: Tensor, what: str, model: AutoEncoder) -> None:
    """NaN codes would become NaN tables (or an SVD that fails): one line instead."""
    if not bool(y.isfinite().all()):
        where = f" of {model.run_dir}" if model.run_dir is not None else ""
        raise ValueError(
            f"{what} are NaN or infinite (the weights{where} overflow on them); no codec can be "
            "fitted - retrain the model"
        )


def principal_axes(y: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and principal axes (rows, decreasing variance, sign-fixed) of codes ``y`` [N, L].

    Rotating onto them decorrelates the components, so per-component tables code them with
    fewer bits at the same quantization error (an orthonormal rotation keeps latent MSE).
    """
    yd = y.double()
    mean = yd.mean(0)
    _, _, vh = torch.linalg.svd(yd - mean, full_matrices=True)  # [L, L]
    big = vh.abs().argmax(1)
    vh = vh * torch.sign(vh[torch.arange(len(vh)), big]).unsqueeze(1)  # deterministic signs
    return mean.float().numpy(), vh.float().contiguous().numpy()


def _fit_level(z: Tensor, offset: np.ndarray, step: float, margin: int, mean, basis) -> Level:
    step32 = float(np.float32(step))
    offset = offset.astype(np.float32)
    q = torch.round((z - torch.from_numpy(offset).double()) / step32).long().numpy()  # [N, L]
    lo = q.min(0) - margin
    hi = q.max(0) + margin
    size = (hi - lo + 1).astype(np.int32)
    counts = np.zeros((q.shape[1], int(size.max())), dtype=np.int32)
    for j in range(q.shape[1]):
        h = np.bincount(q[:, j] - lo[j], minlength=int(size[j]))
        counts[j, : size[j]] = 2 * h + 1  # add-1/2 smoothing, kept in integers
    return Level(step32, offset, lo.astype(np.int32), size, counts, mean, basis)
