"""convae.noise: the corruptions' statistics, clipping, shapes/dtypes and seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from convae.noise import NOISE_KINDS, Noise, corrupt, parse_noise


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "spec, want",
    [
        ("gaussian:0.4", Noise("gaussian", ((0.4, 0.4),))),
        (" Gaussian : 0.25 ", Noise("gaussian", ((0.25, 0.25),))),
        ("salt-pepper:0.1", Noise("salt-pepper", ((0.1, 0.1),))),
        ("speckle:2", Noise("speckle", ((2.0, 2.0),))),
        ("mask:1", Noise("mask", ((1.0, 1.0),))),
        ("mask:0", Noise("mask", ((0.0, 0.0),))),
        ("gaussian:0-0.2", Noise("gaussian", ((0.0, 0.2),))),
        ("gaussian:1e-3-.2", Noise("gaussian", ((0.001, 0.2),))),
        ("poisson-gaussian:0.02/0.01", Noise("poisson-gaussian", ((0.02, 0.02), (0.01, 0.01)))),
        ("poisson-gaussian:0-0.04/0-0.1", Noise("poisson-gaussian", ((0, 0.04), (0, 0.1)))),
        ("jpeg:30", Noise("jpeg", ((30.0, 30.0),))),
        ("jpeg:10-90", Noise("jpeg", ((10.0, 90.0),))),
        ("blind", Noise("blind", ())),
    ],
)
def test_parse_noise_accepts(spec, want):
    assert parse_noise(spec) == want
    assert parse_noise(str(want)) == want  # the canonical spec reads back


@pytest.mark.parametrize(
    "spec, words",
    [
        ("gauss:0.4", "KIND:AMOUNT"),
        ("gaussian", "KIND:AMOUNT"),
        ("blind:0.2", "KIND:AMOUNT"),
        ("gaussian:abc", "not a number"),
        ("gaussian:-0.1", ">= 0"),
        ("gaussian:inf", "finite"),
        ("gaussian:nan", "finite"),
        ("gaussian:0.3-0.1", "low to high"),
        ("salt-pepper:1.5", "<= 1"),
        ("mask:2", "<= 1"),
        ("poisson-gaussian:0.02", "2 amount"),
        ("jpeg:0", "1 to 100"),
        ("jpeg:101", "<= 100"),
    ],
)
def test_parse_noise_rejects_with_a_useful_message(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_noise(spec)


def test_gaussian_statistics():
    x = torch.full((64, 1, 32, 32), 0.5)
    y = corrupt(x, ["gaussian:0.1"], gen())
    d = y - x  # 5 sigma from the walls: clipping is negligible
    assert abs(d.mean().item()) < 0.002
    assert abs(d.std().item() - 0.1) < 0.002
    # independent per pixel: neighbours are uncorrelated
    a, b = d[..., :-1].flatten(), d[..., 1:].flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.02


def test_gaussian_is_clipped_to_the_unit_range():
    x = torch.rand(16, 3, 16, 16, generator=gen(1))
    y = corrupt(x, ["gaussian:2.0"], gen())
    assert y.min().item() == 0.0 and y.max().item() == 1.0
    assert ((y == 0) | (y == 1)).float().mean() > 0.5  # most pixels hit a wall at sigma 2
    # the Keras example's level on black digits' background: clipping biases it up by sigma/sqrt(2 pi)
    z = corrupt(torch.zeros(64, 1, 28, 28), ["gaussian:0.4"], gen())
    assert abs(z.mean().item() - 0.4 / (2 * torch.pi) ** 0.5) < 0.005
    assert (z == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_speckle_scales_with_the_pixel_value():
    x = torch.zeros(32, 1, 32, 32)
    x[:, :, :, :10] = 0.0
    x[:, :, :, 10:20] = 0.2
    x[:, :, :, 20:] = 0.4
    y = corrupt(x, ["speckle:0.5"], gen())
    assert torch.equal(y[..., :10], x[..., :10])  # black stays black
    s1 = (y - x)[..., 10:20].std().item()
    s2 = (y - x)[..., 20:].std().item()
    assert s1 == pytest.approx(0.2 * 0.5, rel=0.05)
    assert s2 == pytest.approx(0.4 * 0.5, rel=0.05)
    assert corrupt(torch.ones(2, 1, 8, 8), ["speckle:5"], gen()).max() <= 1.0


def test_salt_and_pepper_fraction_and_channels():
    x = torch.full((32, 3, 32, 32), 0.5)
    y = corrupt(x, ["salt-pepper:0.2"], gen())
    hit = y != 0.5
    assert hit.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (y == 1).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (y == 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(hit[:, 0], hit[:, 1]) and torch.equal(
        hit[:, 0], hit[:, 2]
    )  # a pixel, not a channel
    assert set(torch.unique(y).tolist()) == {0.0, 0.5, 1.0}


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.9])
def test_mask_erases_one_rectangle_of_the_asked_area(p):
    n, h, w = 200, 28, 24
    y = corrupt(torch.ones(n, 2, h, w), [f"mask:{p}"], gen())
    assert torch.equal(y[:, 0], y[:, 1])
    zero = y[:, 0] == 0
    areas = zero.flatten(1).sum(1).float()
    for i in range(n):
        rows = zero[i].any(1).nonzero().flatten()
        cols = zero[i].any(0).nonzero().flatten()
        box = zero[i, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all(), "the erased pixels form one solid rectangle"
    assert areas.mean().item() / (h * w) == pytest.approx(p, rel=0.05, abs=0.01)
    assert (areas / (h * w) - p).abs().max().item() < 0.1  # every image close, not just on average


def test_mask_everything_and_nothing():
    x = torch.rand(4, 1, 16, 16, generator=gen(2))
    assert corrupt(x, ["mask:1"], gen()).eq(0).all()
    assert torch.equal(corrupt(x, ["mask:0", "gaussian:0"], gen()), x)


EXAMPLES = {
    "gaussian": "gaussian:0.3",
    "poisson-gaussian": "poisson-gaussian:0.02/0.05",
    "salt-pepper": "salt-pepper:0.3",
    "speckle": "speckle:0.3",
    "mask": "mask:0.3",
    "jpeg": "jpeg:10-90",
    "blind": "blind",
}


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_reproducible_with_a_seed_and_input_untouched(kind):
    x = torch.rand(8, 1, 16, 16, generator=gen(3))
    before = x.clone()
    spec = [EXAMPLES[kind]]
    a = corrupt(x, spec, gen(7))
    b = corrupt(x, spec, gen(7))
    c = corrupt(x, spec, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, before)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert 0.0 <= a.min().item() and a.max().item() <= 1.0


def test_combined_corruptions_apply_in_order_and_stay_valid():
    x = torch.rand(8, 3, 16, 16, generator=gen(4))
    y = corrupt(x, ["gaussian:0.5", "speckle:1", "salt-pepper:0.1", "mask:0.2"], gen())
    assert 0.0 <= y.min().item() and y.max().item() <= 1.0
    # the mask comes last, so its rectangle is exactly zero whatever the noise did before
    assert ((y == 0).all(1).flatten(1).sum(1) >= int(0.2 * 256 * 0.9)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes(dtype):
    x = torch.rand(4, 1, 12, 12, generator=gen(5)).to(dtype)
    y = corrupt(x, ["gaussian:0.3", "mask:0.3", "salt-pepper:0.1"], gen())
    assert y.dtype == dtype
    assert 0.0 <= y.min().item() and y.max().item() <= 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="float"):
        corrupt(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), ["gaussian:0.1"])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        corrupt(torch.zeros(1, 8, 8), ["gaussian:0.1"])
    with pytest.raises(ValueError, match="KIND:AMOUNT"):
        corrupt(torch.zeros(2, 1, 8, 8), ["blur:1"])
    assert corrupt(torch.zeros(0, 1, 8, 8), ["mask:0.5", "salt-pepper:0.5"], gen()).shape == (
        0,
        1,
        8,
        8,
    )
    assert corrupt(torch.zeros(2, 1, 8, 8), ["gaussian:0.1"]).shape == (
        2,
        1,
        8,
        8,
    )  # no generator: global RNG


def test_fixed_amounts_draw_what_they_always_drew():
    """Existing specs keep their exact draws (documented numbers stay reproducible)."""
    x = torch.rand(4, 3, 16, 16, generator=gen(1))
    want = (x + 0.3 * torch.randn(x.shape, generator=gen(5))).clamp(0, 1)
    torch.testing.assert_close(corrupt(x, ["gaussian:0.3"], gen(5)), want, atol=0, rtol=0)


def test_a_range_draws_one_amount_per_image():
    x = torch.full((64, 1, 32, 32), 0.5)
    d = corrupt(x, ["gaussian:0-0.2"], gen()) - x
    per_image = d.flatten(1).std(1)
    assert per_image.min() < 0.03 and per_image.max() > 0.17  # the whole range is used
    assert per_image.max() < 0.21
    q = corrupt(torch.rand(16, 3, 32, 32, generator=gen(2)), ["jpeg:5-95"], gen())
    assert q.shape == (16, 3, 32, 32)


def test_poisson_gaussian_variance_is_a_x_plus_b_squared():
    a, b = 0.005, 0.02  # at most ~0.07 std: 3 std from the walls at every level
    for level in (0.2, 0.5, 0.8):
        x = torch.full((16, 3, 64, 64), level)
        d = corrupt(x, [f"poisson-gaussian:{a}/{b}"], gen()) - x
        assert abs(d.mean().item()) < 0.003  # zero-mean away from the walls: no colour shift
        assert d.var().item() == pytest.approx(a * level + b * b, rel=0.05)
    dark = corrupt(torch.zeros(4, 1, 32, 32), ["poisson-gaussian:0.02/0"], gen())
    assert torch.equal(dark, torch.zeros_like(dark))  # no photons, no read noise: black stays black


def test_jpeg_is_a_deterministic_round_trip_whose_error_grows_as_quality_drops():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 66, 66, generator=g), 3, 1)  # smooth-ish
    lo, hi = corrupt(x, ["jpeg:10"], gen(1)), corrupt(x, ["jpeg:90"], gen(2))
    assert torch.equal(corrupt(x, ["jpeg:10"], gen(3)), lo)  # no randomness at a fixed quality
    assert (lo - x).abs().mean() > 1.5 * (hi - x).abs().mean() > 0
    grey = corrupt(x[:, :1], ["jpeg:50"], gen())
    assert grey.shape == (4, 1, 64, 64)


def test_blind_mixes_kinds_and_levels_and_keeps_the_colour():
    x = torch.rand(1, 3, 1, 1, generator=gen(3)) * 0.5 + 0.25  # a mid-tone colour, away from walls
    x = x.expand(400, 3, 32, 32).contiguous()
    y = corrupt(x, ["blind"], gen())
    d = y - x
    std = d.flatten(1).std(1)
    assert std.min() < 0.02 and std.max() > 0.15  # from almost clean to ~50/255
    # the mean colour is kept to half an 8-bit step per channel (what is left is clipping)
    assert d.mean((0, 2, 3)).abs().max() * 255 < 0.5
