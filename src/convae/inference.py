"""Using a trained model: load a run, apply the model in batches, whole images of any size,
reconstruct and evaluate. Every task (latent tools, codec, denoising, anomaly maps, export) goes
through these functions.

Whole images: a fully convolutional model runs on the image padded to its stride (and, above a
pixel budget, on large overlapping tiles); a model tied to its training size runs on
half-overlapping tiles of that size. Tiles are blended with a smooth window, so there are no
seams, and the output is cropped back to the input's size. Nothing is ever resized unless the
caller asks for it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import check_run_dir, last_weights, load_matching, load_weights, read_state
from .config import read_run_config
from .metrics import mse_per_image, psnr_per_image, ssim_per_image
from .models import AutoEncoder, build_model, check_memory
from .noise import corrupt
from .runtime import resolve_device

__all__ = [
    "load",
    "to_float",
    "apply_batched",
    "map_image",
    "map_images",
    "reconstruct",
    "evaluate",
    "evaluate_store",
    "split_images",
    "spread_indices",
]

Images = Tensor | Sequence[Tensor]  # uint8 [N, C, H, W], or uint8 [C, H, W] each of its own size
BATCH = 256  # images (or tiles) per forward pass at inference
WHOLE_PIXELS = 1 << 21  # a fully convolutional model takes up to 2 MP in one pass; more: tiles
_TILE = 512  # tile side above that budget (a multiple of every model's stride)


def load(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", which: str = "best"
) -> AutoEncoder:
    """Load a trained model from a run directory (``which``: "best" or "last").

    The model is in eval mode; ``model.run_config`` is the run's :class:`~convae.config.RunConfig`
    and ``model.run_dir`` its directory. Weights that do not fit config.json, or that are not
    finite, are one-line errors.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    p = check_run_dir(run_dir)
    cfg = read_run_config(p / "config.json")
    model = build_model(cfg.model)  # its size checked against memory first
    path = p / "model.safetensors"
    if which == "last":
        found = read_state(p)
        path = p / found[1]["state_file"] if found is not None else path
    weights = load_weights(path) if which == "best" else last_weights(p)
    load_matching(model, weights, path)
    bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ValueError(
            f"{path}: {bad[0]} holds NaN or infinite values (the run diverged or the file is "
            "damaged); retrain, or resume from an earlier run directory"
        )
    model.run_config = cfg
    model.run_dir = p
    return model.to(resolve_device(device)).eval()


def to_float(x: Tensor, device: torch.device | None = None) -> Tensor:
    """uint8 images -> float32 in [0, 1] on ``device`` (the one normalization convae uses).

    Anything but uint8 is refused: dividing float images that are already in [0, 1] by 255 again
    would silently give wrong reconstructions, scores and metrics.
    """
    if x.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images (0-255, as load_dataset and read_images return), not {x.dtype}"
        )
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x.float().div_(255.0)


def _as_float(x: Tensor, device: torch.device) -> Tensor:
    """uint8 -> [0, 1] floats, float32 as they are, on ``device``."""
    return to_float(x, device) if x.dtype == torch.uint8 else x.to(device, torch.float32)


@torch.inference_mode()
def apply_batched(
    fn: Callable[[Tensor], Tensor], x: Tensor, device: torch.device, batch_size: int = BATCH
) -> Tensor:
    """``fn`` on ``x`` (uint8 or float ``[N, ...]``) in batches on ``device`` -> float32 on CPU."""
    if len(x) == 0:  # the output's shape still comes from fn
        return fn(_as_float(x, device)).float().cpu()
    outs = [
        fn(_as_float(x[i : i + batch_size], device)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs)


def _device(model: AutoEncoder) -> torch.device:
    return next(model.parameters()).device


def _runs_whole(model: AutoEncoder, h: int, w: int) -> bool:
    """Whether the model takes an ``h x w`` batch as it is (no padding, no tiles)."""
    if model.fully_conv:
        return h % model.stride == 0 and w % model.stride == 0 and h * w <= WHOLE_PIXELS
    return (h, w) == tuple(model.input_shape[1:])


def _starts(n: int, tile: int, step: int) -> list[int]:
    """Tile offsets along an axis of length ``n >= tile``: every ``step``, the last one flush."""
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def _window(th: int, tw: int) -> Tensor:
    """[th, tw] blending weights: sin^2 in each axis (sums to ~1 at half overlap), never 0."""

    def axis(n: int) -> Tensor:
        i = torch.arange(n, dtype=torch.float32) + 0.5
        return torch.sin(math.pi * i / n).pow(2) + 1e-3

    return axis(th)[:, None] * axis(tw)[None, :]


def _pad_to(x: Tensor, h: int, w: int) -> Tensor:
    """Pad [1, C, H, W] at the bottom/right to h x w: reflected where the image is big enough."""
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _tile_geometry(model: AutoEncoder, h: int, w: int) -> tuple[int, int, int, int]:
    """(padded height, padded width, tile side, tile step) for an ``h x w`` image."""
    if model.fully_conv:
        s = model.stride  # padded to its multiple, and to two code cells (reflect padding)
        hp, wp = max(2 * s, math.ceil(h / s) * s), max(2 * s, math.ceil(w / s) * s)
        if hp * wp <= WHOLE_PIXELS:
            return hp, wp, 0, 0  # one pass, no tiles
        tile = min(_TILE, hp, wp) // s * s
        return max(hp, tile), max(wp, tile), tile, tile * 3 // 4 // s * s or s
    tile = model.input_shape[-1]
    return max(h, tile), max(w, tile), tile, max(1, tile // 2)


@torch.inference_mode()
def map_image(
    model: AutoEncoder,
    image: Tensor,
    fn: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = BATCH,
) -> Tensor:
    """``fn`` (default: the model) on one whole image of any size -> float32 ``[K, H, W]`` on CPU.

    ``image`` is uint8 ``[C, H, W]`` or floats in [0, 1]; ``fn`` maps a float batch
    ``[B, C, h, w]`` to a spatially aligned ``[B, K, h, w]``.
    """
    if image.ndim != 3 or image.shape[0] != model.input_shape[0]:
        raise ValueError(
            f"an image must be [C, H, W] with C = {model.input_shape[0]} (the model's), "
            f"not {list(image.shape)}"
        )
    fn = fn or model
    model.eval()
    dev = _device(model)
    h, w = image.shape[-2:]
    hp, wp, tile, step = _tile_geometry(model, h, w)
    if tile == 0:
        check_memory(model, 1, hp, wp)
        x = _pad_to(_as_float(image, dev)[None], hp, wp)
        return fn(x).float()[0, :, :h, :w].cpu()
    corners = [(y, q) for y in _starts(hp, tile, step) for q in _starts(wp, tile, step)]
    check_memory(model, min(batch_size, len(corners)), tile, tile)
    x = _pad_to(_as_float(image, dev)[None], hp, wp)
    win = _window(tile, tile)
    acc: Tensor | None = None
    norm = torch.zeros(1, hp, wp)
    for i in range(0, len(corners), batch_size):
        part = corners[i : i + batch_size]
        out = fn(torch.cat([x[..., y : y + tile, q : q + tile] for y, q in part])).float().cpu()
        if acc is None:
            acc = torch.zeros(out.shape[1], hp, wp)
        for (y, q), o in zip(part, out, strict=True):
            acc[:, y : y + tile, q : q + tile] += o * win
            norm[:, y : y + tile, q : q + tile] += win
    assert acc is not None
    return (acc / norm)[:, :h, :w]


def map_images(
    model: AutoEncoder,
    images: Images,
    fn: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = BATCH,
) -> Tensor | list[Tensor]:
    """``fn`` (default: the model) on every image, each at its own size.

    A uint8 batch ``[N, C, H, W]`` that the model takes as it is runs in batches and comes back
    as one tensor; otherwise each image goes through :func:`map_image` (a list in, a list out).
    """
    fn = fn or model
    if isinstance(images, Tensor) and images.ndim == 4:
        h, w = images.shape[-2:]
        if _runs_whole(model, h, w):
            check_memory(model, min(batch_size, len(images)), h, w)
            model.eval()
            return apply_batched(fn, images, _device(model), batch_size)
        return torch.stack([map_image(model, img, fn, batch_size) for img in images])
    return [map_image(model, img, fn, batch_size) for img in images]


def reconstruct(
    model: AutoEncoder,
    images: Images,
    batch_size: int = BATCH,
    noise: tuple[str, ...] = (),
    generator: torch.Generator | None = None,
) -> Tensor | list[Tensor]:
    """Reconstructions (float32 in [0, 1], on CPU, each the size of its input) of uint8 images.

    With ``noise``, each input is corrupted first (``generator`` seeds it), as a denoising run
    was trained: the output is then the denoised image.
    """

    for img in images if not isinstance(images, Tensor) else [images]:
        if img.dtype != torch.uint8:
            to_float(img)  # the one error message for float input
    if noise:
        images = _corrupted(images, noise, generator)
    return map_images(model, images, _clamped(model), batch_size)


def _corrupted(
    images: Images, noise: tuple[str, ...], generator: torch.Generator | None
) -> Tensor | list[Tensor]:
    if isinstance(images, Tensor) and images.ndim == 4:
        return corrupt(to_float(images), noise, generator)
    return [corrupt(to_float(img)[None], noise, generator)[0] for img in images]


def evaluate(
    model: AutoEncoder, images: Images, ssim: bool = True, per_image: bool = False
) -> dict:
    """Test metrics of a model on uint8 images of any size: mean MSE, PSNR and SSIM over images,
    latent size, compression ratio, image count (``per_image``: also the per-image lists).

    A batch ``[N, C, H, W]`` is reconstructed in batches; a sequence of images of their own sizes
    is reconstructed and scored one image at a time, so it may be read lazily."""
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    if isinstance(images, Tensor) and images.ndim == 4:
        x, y = to_float(images), reconstruct(model, images)
        rows = _scores(x, y, ssim)  # type: ignore[arg-type]
    else:
        parts = [_scores(to_float(a)[None], map_image(model, a, _clamped(model))[None], ssim)
                 for a in images]  # fmt: skip
        rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    out: dict = {k: float(v.mean()) for k, v in rows.items()}
    n_in = math.prod(model.input_shape)
    out.update(latent_dim=model.latent_dim, compression_ratio=n_in / model.latent_dim)
    out["images"] = len(images)
    if per_image:
        out["per_image"] = {k: v.tolist() for k, v in rows.items()}
    return out


def split_images(store) -> Images:
    """A store's images for :func:`evaluate`: one stacked batch when they share one size (scored
    in batches), else the store itself, read and scored one image at a time.

    ``store`` is an image store as :func:`convae.data.load_images` returns it (``len``,
    ``sizes()``, ``image(i)``, ``stacked()``)."""
    sizes = store.sizes()
    if len(sizes) and bool((sizes == sizes[0]).all()):
        return store.stacked()
    return [store.image(i) for i in range(len(store))] if len(store) < 2 else _Lazy(store)


class _Lazy(Sequence):
    """A store seen as a sequence of uint8 ``[C, H, W]`` images, decoded when indexed."""

    def __init__(self, store) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i):  # type: ignore[override]
        if not 0 <= i < len(self.store):
            raise IndexError(i)
        return self.store.image(i)


def evaluate_store(model: AutoEncoder, store, by_class: bool = False, ssim: bool = True) -> dict:
    """:func:`evaluate` over an image store (one split of a dataset, any image sizes); with
    ``by_class`` also ``classes``: the same metrics per label (a folder's first-level
    sub-folders), keyed by class name, for the classes that have images."""
    out = evaluate(model, split_images(store), ssim=ssim, per_image=by_class)
    if not by_class:
        return out
    per = out.pop("per_image")
    labels = torch.as_tensor(store.labels)
    names = list(store.classes)
    out["classes"] = {}
    for k in sorted(set(labels.tolist())):
        mask = labels == k
        row = {m: float(torch.tensor(v, dtype=torch.float64)[mask].mean()) for m, v in per.items()}
        name = names[k] if 0 <= k < len(names) else str(k)  # classes[label] names the label
        out["classes"][name] = {"images": int(mask.sum()), **row}
    return out


def _clamped(model: AutoEncoder) -> Callable[[Tensor], Tensor]:
    """The model's output clamped to [0, 1]; a NaN or infinite output is an error (clamping
    would hide it, and it would become garbage pixels, scores or metrics)."""

    def run(x: Tensor) -> Tensor:
        return finite_pixels(model(x), model)

    return run


def finite_pixels(y: Tensor, model: AutoEncoder) -> Tensor:
    """A model's output as float32 pixels clamped to [0, 1]; NaN or infinity is an error."""
    y = y.float()
    if not bool(y.isfinite().all()):  # one host sync per batch
        raise ValueError(nonfinite_output(model))
    return y.clamp_(0, 1)


def nonfinite_output(model: AutoEncoder) -> str:
    """The error for a model whose output is NaN or infinite although its weights are finite."""
    where = f"the run {model.run_dir}" if model.run_dir is not None else "the model"
    return (
        f"{where} produces NaN or infinite values on these images (its weights overflow in "
        "float32); retrain it, e.g. with a lower --lr, or resume from an earlier run directory"
    )


def _scores(x: Tensor, y: Tensor, ssim: bool) -> dict[str, Tensor]:
    """Per-image MSE, PSNR (and SSIM) of reconstructions ``y`` of ``x``, float64 [N] each."""
    out = {"mse": mse_per_image(x, y), "psnr": psnr_per_image(x, y)}
    if ssim:
        out["ssim"] = torch.from_numpy(ssim_per_image(x, y))
    return out


def spread_indices(n: int, k: int) -> Tensor:
    """``min(k, n)`` indices spread evenly over [0, n): every class when a split is sorted by
    label."""
    k = min(k, n)
    return torch.linspace(0, n - 1, k).round().long() if k else torch.zeros(0, dtype=torch.long)


def run_path(model: AutoEncoder) -> Path:
    """The run directory a loaded model came from (an error for a model built in code)."""
    if model.run_dir is None:
        raise ValueError("this model was not loaded from a run directory (use convae.load(run))")
    return model.run_dir
