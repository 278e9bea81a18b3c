"""The photos every photo benchmark uses, held out by whole photo and named.

Train: scikit-image's astronaut, rocket, hubble_deep_field, retina and immunohistochemistry, and
scikit-learn's flower. Held out (never trained or tuned on): scikit-image's chelsea (451x300) and
coffee (600x400), scikit-learn's china (640x427). ``write_folders(root)`` writes them as PNG files
(``root/train``, ``root/held-out``) for the command-line workflow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TRAIN = ("astronaut", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "flower")
HELD_OUT = ("chelsea", "coffee", "china")


def photo(name: str) -> np.ndarray:
    """uint8 [3, H, W] of one named photo."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        a = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        a = getattr(skimage.data, name)()
    return np.ascontiguousarray(np.asarray(a, dtype=np.uint8)[..., :3].transpose(2, 0, 1))


def photos(names=TRAIN) -> list[np.ndarray]:
    return [photo(n) for n in names]


def write_folders(root: str | Path) -> Path:
    """``root/train/NAME.png`` and ``root/held-out/NAME.png``; returns ``root``."""
    from PIL import Image

    root = Path(root)
    for part, names in (("train", TRAIN), ("held-out", HELD_OUT)):
        (root / part).mkdir(parents=True, exist_ok=True)
        for n in names:
            p = root / part / f"{n}.png"
            if not p.exists():
                Image.fromarray(photo(n).transpose(1, 2, 0)).save(p)
    return root
