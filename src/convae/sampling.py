"""What the trainer draws its batches from: images held in memory as one tensor, or random crops
(plus flips) of images of any size, read on demand from wherever they live (a folder's cache).

Both are indexed the same way: an epoch has ``len(source)`` items, the trainer permutes them
with a generator seeded by (seed, epoch) and asks for batches of item indices. A crop source
draws the epoch's crops (image, position, flip) from the same seed, so every item of every epoch
is a pure function of (seed, epoch, index): a resumed run and W processes x B images take exactly
the batches of an uninterrupted single process x W*B.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ImageStore",
    "TensorImages",
    "RandomCrops",
    "AUGMENTS",
    "fixed_crops",
    "epoch_generator",
    "train_values",
    "ImageList",
]


class ImageStore(Protocol):
    """Images of any size, readable one at a time (see :mod:`convae.data`)."""

    channels: int

    def __len__(self) -> int: ...

    def sizes(self) -> np.ndarray:  # int64 [N, 2]: (height, width) of each image
        ...

    def crop(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:  # uint8 [C, h, w]
        ...

    # Optional: prefetch(spans) with (image, top, rows) spans about to be cropped (a store on
    # disk starts reading them at once; see convae.cache.CachedImages.prefetch).


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """The generator of one (seed, epoch, stream): shuffles, crops and noise never share one."""
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63))
    return g


class TensorImages:
    """uint8 ``[N, C, H, W]`` images resident on the training device; an epoch is all of them."""

    def __init__(self, x: Tensor, device: torch.device) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"training images must be uint8 [N, C, H, W], not {x.dtype} {x.shape}")
        self.x = x.to(device)  # 4,000 digits are 3 MB

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Nothing to draw: an epoch is the images themselves."""

    def batch(self, idx: Tensor) -> Tensor:
        """uint8 [B, C, H, W] on the training device."""
        return self.x[idx.to(self.x.device)]

    def mean_image(self) -> Tensor:
        """[C, H, W] float mean in [0, 1] (float64 sums: exact for any count)."""
        return (self.x.sum(0, dtype=torch.float64) / (255.0 * len(self.x))).float()


AUGMENTS = ("none", "flip", "dihedral", "dihedral+channels")
# The 6 orders of 3 colour channels ("dihedral+channels").
_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class RandomCrops:
    """``per_epoch`` random ``size x size`` crops of ``store``'s images per epoch, images picked in
    proportion to the crops they hold; an image smaller than the crop is padded by repeating its
    edge. ``augment`` (see :data:`AUGMENTS`): "flip" mirrors half of the crops left-right,
    "dihedral" applies one of the 8 flips/90-degree rotations, "dihedral+channels" also shuffles
    the colour channels, "none" none."""

    def __init__(
        self,
        store: ImageStore,
        size: int,
        per_epoch: int,
        device: torch.device,
        augment: str = "flip",
    ) -> None:
        if len(store) == 0:
            raise ValueError("no training images to crop from")
        if augment not in AUGMENTS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENTS)}, not {augment!r}")
        self.store, self.size, self.n, self.augment = store, size, per_epoch, augment
        self.device = device
        self.hw = np.asarray(store.sizes(), dtype=np.int64)  # [N, 2]
        room = np.maximum(self.hw - size + 1, 1)
        self.weights = torch.from_numpy((room[:, 0] * room[:, 1]).astype(np.float64))
        self.plan = torch.zeros(0, 5, dtype=torch.long)

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.store.channels, self.size, self.size)

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Draw the epoch's crops: [per_epoch, 5] rows of (image, top, left, transform, channel
        order); transform t rotates by 90 degrees t % 4 times, then mirrors when t >= 4."""
        g = epoch_generator(seed, epoch, 3, torch.device("cpu"))
        img = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        room = torch.from_numpy(np.maximum(self.hw - self.size + 1, 1))[img]  # [n, 2]
        pos = (torch.rand(self.n, 2, generator=g, dtype=torch.float64) * room).long()
        if self.augment.startswith("dihedral"):
            t = torch.randint(0, 8, (self.n,), generator=g)
        else:  # "flip" draws exactly what it always drew
            t = 4 * (torch.rand(self.n, generator=g) < (0.5 if self.augment == "flip" else 0.0))
        shuffle = self.augment.endswith("+channels") and self.store.channels == 3
        order = torch.randint(0, 6, (self.n,), generator=g) if shuffle else torch.zeros_like(t)
        self.plan = torch.cat([img[:, None], pos, t[:, None].long(), order[:, None]], 1)

    def _one(self, i: int, top: int, left: int, t: int, order: int) -> np.ndarray:
        h, w = self.hw[i]
        s = self.size
        a = self.store.crop(i, top, left, min(s, int(h)), min(s, int(w)))
        if a.shape[1] < s or a.shape[2] < s:
            a = np.pad(a, ((0, 0), (0, s - a.shape[1]), (0, s - a.shape[2])), mode="edge")
        if t % 4:
            a = np.rot90(a, t % 4, axes=(1, 2))
        if t >= 4:
            a = a[:, :, ::-1]
        return a[list(_ORDERS[order])] if order else a

    def batch(self, idx: Tensor) -> Tensor:
        """uint8 [B, C, size, size] on the training device."""
        rows = self.plan[idx.cpu()].tolist()
        prefetch = getattr(self.store, "prefetch", None)
        if prefetch is not None:  # a store on disk: the batch's reads overlap
            prefetch([(r[0], r[1], min(self.size, int(self.hw[r[0], 0]))) for r in rows])
        arr = np.stack([self._one(*r) for r in rows])
        return torch.from_numpy(arr).to(self.device, non_blocking=True)

    def mean_image(self) -> Tensor:
        """The mean crop of this epoch-0 draw, [C, size, size] in [0, 1]."""
        self.start_epoch(0, 0)
        idx = torch.arange(min(self.n, 4096))
        return self.batch(idx).double().mean(0).div(255.0).float().cpu()


def fixed_crops(store: ImageStore, size: int, count: int, seed: int = 0) -> Tensor:
    """``count`` crops of ``store``'s images at seeded positions, spread evenly over the images:
    a fixed validation set for a run trained on crops. uint8 [count, C, size, size]."""
    if len(store) == 0:
        return torch.zeros(0, store.channels, size, size, dtype=torch.uint8)
    sampler = RandomCrops(store, size, count, torch.device("cpu"), augment="none")
    sampler.start_epoch(seed, -7)
    sampler.plan[:, 0] = torch.arange(count) % len(store)  # every image, in turn
    hw = torch.from_numpy(sampler.hw)[sampler.plan[:, 0]]
    room = (hw - size + 1).clamp_min(1)
    sampler.plan[:, 1:3] = sampler.plan[:, 1:3] % room
    return sampler.batch(torch.arange(count))


def train_values(source: TensorImages | RandomCrops) -> int:
    """Pixel values the training data holds (channels x pixels over its distinct images)."""
    if isinstance(source, TensorImages):
        return source.x.numel()
    return int(source.store.channels * (source.hw[:, 0] * source.hw[:, 1]).sum())


class ImageList:
    """Images of any sizes held in memory: uint8 ``[C, H, W]`` arrays or tensors, one channel
    count (the :class:`ImageStore` for a user's own list of images)."""

    def __init__(self, images) -> None:
        self.images = [np.asarray(a, dtype=np.uint8) for a in images]
        channels = {a.shape[0] for a in self.images if a.ndim == 3}
        if len(channels) != 1 or any(a.ndim != 3 for a in self.images):
            raise ValueError("images must be uint8 [C, H, W] arrays with one channel count")
        self.channels = channels.pop()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.image(i)

    def sizes(self) -> np.ndarray:
        return np.array([a.shape[1:] for a in self.images], dtype=np.int64).reshape(-1, 2)

    def image(self, i: int) -> Tensor:
        return torch.from_numpy(self.images[i].copy())

    def crop(self, i: int, top: int, left: int, h: int, w: int) -> np.ndarray:
        return self.images[i][:, top : top + h, left : left + w]
