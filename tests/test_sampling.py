"""Training sources: images in memory and random crops of images of any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convae.data import ArrayImages
from convae.sampling import RandomCrops, TensorImages, fixed_crops, train_values


class _Store:
    """Images of different sizes in memory (the ImageStore protocol)."""

    channels = 1

    def __init__(self, sizes):
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (1, h, w), dtype=np.uint8) for h, w in sizes]

    def __len__(self):
        return len(self.images)

    def sizes(self):
        return np.array([a.shape[1:] for a in self.images], dtype=np.int64)

    def crop(self, i, top, left, h, w):
        return self.images[i][:, top : top + h, left : left + w]


def test_crops_are_a_pure_function_of_seed_and_epoch():
    store = _Store([(40, 60), (20, 20), (8, 30)])  # the last is smaller than the crop
    a = RandomCrops(store, 16, 50, torch.device("cpu"))
    b = RandomCrops(store, 16, 50, torch.device("cpu"))
    a.start_epoch(3, 1)
    b.start_epoch(3, 1)
    idx = torch.arange(50)
    x = a.batch(idx)
    assert x.shape == (50, 1, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x, b.batch(idx))
    b.start_epoch(3, 2)
    assert not torch.equal(x, b.batch(idx))  # another epoch, other crops
    assert torch.equal(a.batch(idx[10:20]), x[10:20])  # any slice, the same items


def test_crops_come_from_the_images_and_big_images_are_picked_more():
    store = _Store([(200, 200), (16, 16)])
    s = RandomCrops(store, 16, 2000, torch.device("cpu"), augment="none")
    s.start_epoch(0, 0)
    picked = s.plan[:, 0]
    assert (picked == 0).sum() > 0.9 * len(picked)  # 185^2 positions against 1
    row = s.plan[0].tolist()
    i, top, left = row[0], row[1], row[2]
    assert torch.equal(
        s.batch(torch.tensor([0]))[0],
        torch.from_numpy(store.images[i][:, top : top + 16, left : left + 16].copy()),
    )


def test_fixed_crops_cover_every_image_and_are_stable():
    store = _Store([(40, 60), (20, 20)])
    a, b = fixed_crops(store, 16, 10, seed=1), fixed_crops(store, 16, 10, seed=1)
    assert a.shape == (10, 1, 16, 16) and torch.equal(a, b)
    assert train_values(RandomCrops(store, 16, 8, torch.device("cpu"))) == 40 * 60 + 20 * 20


def test_tensor_images_and_array_store():
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    src = TensorImages(x, torch.device("cpu"))
    assert len(src) == 6 and torch.equal(src.batch(torch.tensor([2, 0])), x[[2, 0]])
    torch.testing.assert_close(src.mean_image(), x.double().mean(0).div(255).float())
    store = ArrayImages(x, np.zeros(6, dtype=np.int64))
    assert store.sizes().tolist() == [[8, 8]] * 6 and torch.equal(store.image(3), x[3])
    crops = RandomCrops(store, 4, 12, torch.device("cpu"))
    crops.start_epoch(0, 0)
    assert crops.batch(torch.arange(12)).shape == (12, 1, 4, 4)


def _transforms(crop: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a [C, s, s] crop."""
    out = []
    for k in range(4):
        r = np.rot90(crop, k, axes=(1, 2))
        out += [r, r[:, :, ::-1]]
    return out


def test_dihedral_augment_draws_all_eight_transforms_and_channel_orders():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    from convae.sampling import ImageList

    store = ImageList([img])
    s = RandomCrops(store, 8, 400, torch.device("cpu"), augment="dihedral")
    s.start_epoch(0, 0)
    assert set(s.plan[:, 3].tolist()) == set(range(8)) and (s.plan[:, 4] == 0).all()
    x = s.batch(torch.arange(400)).numpy()
    variants = _transforms(img)
    assert all(any(np.array_equal(c, v) for v in variants) for c in x)
    c = RandomCrops(store, 8, 400, torch.device("cpu"), augment="dihedral+channels")
    c.start_epoch(0, 0)
    assert set(c.plan[:, 4].tolist()) == set(range(6))
    y = c.batch(torch.arange(400)).numpy()
    # each crop is a transform of the image with its channels in some order
    sums = sorted(int(ch.sum()) for ch in img)
    assert all(sorted(int(ch.sum()) for ch in crop) == sums for crop in y)
    grey = RandomCrops(
        ImageList([img[:1]]), 8, 50, torch.device("cpu"), augment="dihedral+channels"
    )
    grey.start_epoch(0, 0)
    assert (grey.plan[:, 4] == 0).all()  # one channel: nothing to shuffle


def test_flip_augment_draws_what_it_always_drew():
    store = _Store([(40, 60), (20, 20)])
    a = RandomCrops(store, 16, 64, torch.device("cpu"))
    a.start_epoch(5, 2)
    g = torch.Generator().manual_seed((5 * 1_000_003 + 2 * 7_919 + 3) % (2**63))
    torch.multinomial(a.weights, 64, replacement=True, generator=g)
    torch.rand(64, 2, generator=g, dtype=torch.float64)
    flips = torch.rand(64, generator=g) < 0.5
    assert torch.equal(a.plan[:, 3] == 4, flips)

    with pytest.raises(ValueError, match="--augment"):
        RandomCrops(store, 16, 8, torch.device("cpu"), augment="rotate")
