"""convae.denoise_photos (the photo benchmark's scoring) on tiny generated photos."""

from __future__ import annotations

import pytest
import torch

from convae import denoise_photos as dp
from convae.config import ModelConfig
from convae.inference import to_float
from convae.models import build_model


def _photo(seed: int, h: int = 24, w: int = 32) -> torch.Tensor:
    """A smooth uint8 [3, h, w] colour image."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 4, w // 4, generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear")[0]
    return (img * 255).round().byte()


PHOTOS = {"a": _photo(0), "b": _photo(1, 20, 28)}


def test_add_noise_is_seeded_and_gives_the_std_a_non_blind_method_gets():
    x = torch.full((1, 3, 64, 64), 0.5)
    lv = dp.LEVELS["gaussian-25"]
    y, s = dp.add_noise(x, lv, seed=3)
    assert s == 25 / 255 and torch.equal(y, dp.add_noise(x, lv, seed=3)[0])
    assert (y - x).std().item() == pytest.approx(25 / 255, rel=0.05)
    y, s = dp.add_noise(x, dp.LEVELS["poisson-gaussian-0.02-0.02"], seed=0)
    assert s == pytest.approx((0.02 * 0.5 + 0.02**2) ** 0.5, rel=1e-6)
    assert (y - x).std().item() == pytest.approx(s, rel=0.05)


def test_score_photos_rows_and_the_identity_scores_the_noisy_input():
    lv = dp.LEVELS["gaussian-50"]
    rows = dp.score_photos(lambda y, s: y, PHOTOS, lv)
    assert [r["photo"] for r in rows] == ["a", "b"]
    assert all(13 < r["psnr"] < 17 and 0 < r["ssim"] < 1 and r["s_per_mp"] >= 0 for r in rows)
    # the same seeds: the same noise again; a black output shifts the mean colour
    assert [r["psnr"] for r in dp.score_photos(lambda y, s: y, PHOTOS, lv)] == [
        r["psnr"] for r in rows
    ]
    black = dp.score_photos(lambda y, s: torch.zeros_like(y), PHOTOS, lv)
    assert min(r["colour_shift_255"] for r in black) > 50 > max(r["colour_shift_255"] for r in rows)


def test_tune_picks_a_grid_point_and_a_filter_beats_the_noise():
    crops = [_photo(5, 32, 32), _photo(6, 32, 32)]
    lv = dp.LEVELS["gaussian-50"]
    params, p = dp.tune("tv", lv, crops)
    assert params in dp.METHODS["tv"].grid(lv.name)
    noisy = dp.score_photos(lambda y, s: y, dict(enumerate(crops)), lv)
    assert p > max(r["psnr"] for r in noisy) + 3  # smooth images: TV removes most of the noise


def test_reports_tables_and_the_model_runs_whole_photos():
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch="convae-unet", channels=3, image_size=16, width=4, depth=1)
    )
    model.eval()
    levels = [dp.LEVELS["gaussian-15"], dp.LEVELS["gaussian-50"]]
    m = dp.model_report({"convae": model}, PHOTOS, levels)
    c = dp.classical_report(PHOTOS, [_photo(7, 32, 32)], levels, ["wavelet"])
    res = dp.merge([c, m])
    assert list(res["gaussian-15"]) == ["noisy", "wavelet", "convae"]
    assert res["gaussian-50"]["wavelet"]["params"] in dp.METHODS["wavelet"].grid("gaussian-50")
    table = dp.summary(res).splitlines()
    assert table[0].startswith("| method | gaussian-15 | gaussian-50 | CPU s/MP")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| noisy", "| convae", "| wavelet"]
    rows = dp.markdown(res).splitlines()
    assert len(rows) == 2 + 2 * 3 and "**" in rows[3]  # convae's mean in bold


def test_bm3d_is_the_non_blind_anchor():
    pytest.importorskip("bm3d")
    x = to_float(_photo(2, 32, 32))
    y, s = dp.add_noise(x[None], dp.LEVELS["gaussian-25"], seed=0)
    out = dp.run_method("bm3d", y[0], s, {})
    assert out.shape == x.shape
    assert dp.score(x, out)[0] > dp.score(x, y[0])[0] + 5
