"""Image files (convae.images): finding them, decoding one within the pixel and memory limits,
JPEG draft decoding, resizes of any aspect ratio, grey and colour, odd sizes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convae import images
from convae.images import (
    ImageTooLarge,
    decode_image,
    default_max_pixels,
    list_image_files,
    read_image_files,
    read_images,
)
from convae.limits import MemoryLimitError


def png_bytes(width: int, height: int, rows: bytes | None = None, grey: bool = True) -> bytes:
    """A PNG written by hand: any declared size, with ``rows`` (filter byte + pixels per row)
    as its image data (None: a truncated, empty data stream)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0 if grey else 2, 0, 0, 0)
    idat = zlib.compress(rows, 6) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def save(path: Path, a: np.ndarray, **kw) -> Path:
    """uint8 [H, W] or [H, W, 3] to an image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


# ---------------------------------------------------------------------------------------------
# Limits


def test_a_decompression_bomb_is_one_line_with_its_size_memory_and_the_override(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bytes(30000, 30000))  # a header only: nothing this big is ever allocated
    for read in (
        lambda: decode_image(p),
        lambda: read_image_files([p], 1, 64, resize=True),
        lambda: read_images([p], 3),
    ):
        with pytest.raises(ImageTooLarge) as e:
            read()
        msg = str(e.value)
        assert "\n" not in msg and str(p) in msg
        assert "30000x30000" in msg and "900,000,000 pixels" in msg
        assert f"{default_max_pixels():,}" in msg and "--max-pixels" in msg
        assert "GiB" in msg  # the memory it would take
        assert e.value.pixels == 900_000_000


def test_max_pixels_lowers_and_raises_the_limit(tmp_path, monkeypatch):
    p = save(tmp_path / "a.png", np.zeros((40, 50), np.uint8))
    with pytest.raises(
        ImageTooLarge, match=r"50x40 is 2,000 pixels .*, above the limit of 1,999 pixels"
    ):
        decode_image(p, max_pixels=1999)
    assert decode_image(p, max_pixels=2000).shape == (1, 40, 50)
    # Above Pillow's own limit: allowed by max_pixels, then checked against memory before any
    # pixel is allocated (here a 10 MB budget)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(30000, 30000))
    monkeypatch.setenv("CONVAE_MEMORY_LIMIT", str(10 << 20))
    with pytest.raises(MemoryLimitError, match="bomb.png: decoding 30000x30000 pixels"):
        decode_image(bomb, max_pixels=10**9)
    from PIL import Image as PILImage

    assert PILImage.MAX_IMAGE_PIXELS == default_max_pixels() // 2  # Pillow's setting restored


def test_a_1_by_20_million_image_resizes_without_a_huge_intermediate(tmp_path):
    # Resizing the shorter side (1 px) to 16 would make a 16 x 320,000,000 image first.
    rows = b"\x00\x4d" * 20_000_000  # filter byte 0, then one pixel of value 77 per row
    p = tmp_path / "tall.png"
    p.write_bytes(png_bytes(1, 20_000_000, rows))
    x, _ = read_image_files([p], 1, 16, resize=True)
    assert x.shape == (1, 1, 16, 16) and (x == 77).all()
    wide = tmp_path / "wide.png"
    wide.write_bytes(png_bytes(20_000_000, 1, b"\x00" + b"\x10" * 20_000_000))
    x, _ = read_image_files([wide], 3, 16, resize=True)
    assert x.shape == (1, 3, 16, 16) and (x == 16).all()
    assert decode_image(wide, max_side=1000).shape == (1, 1, 1000)


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("hw", [(1, 37), (37, 1), (33, 47), (1, 1)])
@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff"])
def test_odd_sizes_grey_and_colour_round_trip(tmp_path, hw, fmt):
    rng = np.random.default_rng(sum(hw))
    grey = rng.integers(0, 256, hw, dtype=np.uint8)
    rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    g = decode_image(save(tmp_path / f"g.{fmt}", grey))
    c = decode_image(save(tmp_path / f"c.{fmt}", rgb))
    np.testing.assert_array_equal(g, grey[None])
    np.testing.assert_array_equal(c, rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(
        decode_image(tmp_path / f"g.{fmt}", 3), np.repeat(grey[None], 3, 0)
    )
    assert decode_image(tmp_path / f"c.{fmt}", 1).shape == (1, *hw)
    assert decode_image(tmp_path / f"c.{fmt}", size=8).shape == (3, 8, 8)
    assert decode_image(tmp_path / f"c.{fmt}", max_side=20).shape[1:] == tuple(
        max(1, round(s * min(1, 20 / max(hw)))) for s in hw
    )


def test_size_and_max_side_geometry(tmp_path):
    p = save(tmp_path / "wide.png", np.zeros((30, 120, 3), np.uint8))
    assert decode_image(p, size=16).shape == (3, 16, 16)
    assert decode_image(p, max_side=60).shape == (3, 15, 60)
    assert decode_image(p, max_side=500).shape == (3, 30, 120)  # never enlarged
    assert decode_image(p, size=64).shape == (3, 64, 64)  # a square may enlarge


def smooth_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def test_jpeg_shrinks_through_draft_decoding(tmp_path, monkeypatch):
    p = save(tmp_path / "photo.jpg", smooth_photo(768, 1024), quality=90)
    from PIL import JpegImagePlugin

    calls = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append(size)
        return real(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    small = decode_image(p, size=64)
    assert calls == [(85, 64)] and small.shape == (3, 64, 64)
    assert decode_image(p, max_side=200).shape == (3, 150, 200)
    # close to shrinking the full decode (the DCT did part of it)
    with Image.open(p) as im:
        full = np.asarray(im.convert("RGB").resize((85, 64), Image.Resampling.BILINEAR))
    ref = full[:, 10:74].transpose(2, 0, 1).astype(int)
    assert np.abs(small.astype(int) - ref).mean() < 3
    calls.clear()
    decode_image(p)  # no resize: no draft
    assert calls == []


def test_exif_rotation_applies_to_drafted_jpegs(tmp_path):
    a = smooth_photo(100, 200)  # 200 wide, 100 high as stored
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90: shown 100 wide, 200 high
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif.tobytes(), quality=95)
    assert decode_image(p).shape == (3, 200, 100)
    assert decode_image(p, max_side=50).shape == (3, 50, 25)
    assert decode_image(p, size=20).shape == (3, 20, 20)


def test_grey_helpers():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 5, 5), dtype=np.uint8)
    assert not images.is_grey(rgb)
    near = np.repeat(rgb[:, :1], 3, axis=1)
    near[:, 1] = np.clip(near[:, 1].astype(int) + 2, 0, 255)
    assert images.is_grey(near) and not images.is_grey(near, tolerance=1)
    hwc = rgb[0].transpose(1, 2, 0)
    np.testing.assert_array_equal(images.luma(hwc, axis=2)[:, :, 0], images.luma(rgb)[0, 0])


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    good = save(tmp_path / "ok.jpg", smooth_photo(64, 64), quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:300])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for bad in ("cut.jpg", "junk.png"):
        with pytest.raises(ValueError, match=f"{bad}: cannot read image"):
            read_images([tmp_path / bad], 3)


def test_listing_order_is_pathlibs(tmp_path):
    names = ["a/b.png", "a-c.png", "a/z/1.jpg", "B.PNG", "a/b/c.tif", "x.txt", "ok.webp"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path)  # never followed
    want = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".txt")
    assert list_image_files([tmp_path]) == want
    rows = images.walk_images(tmp_path)
    assert [r[0] for r in rows] == [p.relative_to(tmp_path).as_posix() for p in want]
    assert all(r[1] == 0 and r[2] > 0 for r in rows)


def test_read_images_keeps_each_size(tmp_path):
    save(tmp_path / "a.png", np.zeros((10, 20), np.uint8))
    save(tmp_path / "b.png", np.zeros((33, 47, 3), np.uint8))
    imgs, paths = read_images([tmp_path], 3)
    assert [tuple(i.shape) for i in imgs] == [(3, 10, 20), (3, 33, 47)]
    assert all(i.dtype == torch.uint8 for i in imgs) and [p.name for p in paths] == [
        "a.png",
        "b.png",
    ]
    imgs, _ = read_images([tmp_path], 1, max_side=16)
    assert [tuple(i.shape) for i in imgs] == [(1, 8, 16), (1, 11, 16)]


def test_an_enlarging_resize_is_checked_before_it_allocates(tmp_path, monkeypatch):
    p = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(p)
    with pytest.raises(ImageTooLarge, match="resizing to 100000x100000 makes 10,000,000,000"):
        images.decode_image(p, 3, 100000)
    monkeypatch.setenv("CONVAE_MEMORY_LIMIT", "1G")
    with pytest.raises(MemoryLimitError, match="resizing to 20000x20000"):
        images.decode_image(p, 3, 20000, max_pixels=10**9)
    assert images.decode_image(p, 3, 64).shape == (3, 64, 64)  # a sane enlargement still works
