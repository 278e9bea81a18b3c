"""Texture inspection: per-pixel anomaly maps at full resolution, the per-pixel threshold set on
normal images, the map files, the synthetic defects and their metrics, and ``convae anomaly
--map`` end to end on a tiny run trained on crops of images of odd sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import last_json, run_cli
from PIL import Image

from convae import anomaly, anomaly_maps, defects
from convae.images import write_png
from convae.inference import load


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """A grey uint8 RGB texture [3, H, W]: smoothed noise plus stripes, R = G = B."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.normal(0, 1, (h, w))).float()
    smooth = anomaly_maps.gaussian_blur(noise, 1.5).numpy()
    stripes = np.sin(np.arange(w) / 3.0)[None, :]
    # 128 +- about 75: a 40-level defect is never clipped
    g = np.clip(128 + 18 * smooth / smooth.std() + 20 * stripes, 0, 255).astype(np.uint8)
    return np.repeat(g[None], 3, 0)


# ---------------------------------------------------------------------------------------------
# Maps and the per-pixel threshold


@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (5, 3), (37, 61)])
def test_gaussian_blur_keeps_any_size_and_the_mean_of_a_constant(shape):
    x = torch.full((2, *shape), 0.25)
    y = anomaly_maps.gaussian_blur(x, 2.0)
    assert y.shape == x.shape
    assert torch.allclose(y, x)


def test_border_distance_at_odd_sizes():
    d = anomaly_maps.border_distance(5, 30)
    assert d.shape == (5, 30)
    assert d[2, 15] == 2 and d[0, 15] == 0 and d[2, 0] == 0 and d[4, 29] == 0
    assert anomaly_maps.border_distance(100, 100).max() == anomaly_maps.BORDER - 1


def test_per_pixel_threshold_meets_its_rate_on_new_normal_maps():
    rng = np.random.default_rng(0)
    names = ("sq", "dssim")

    def maps(n, h, w):
        # heavy-tailed raw errors, and larger ones at the border, as a padded model makes
        base = torch.from_numpy(rng.lognormal(-6, 1.0, (n, 2, h, w))).float()
        d = anomaly_maps.border_distance(h, w).float()
        return [m * (1 + 3 * (d < 2)) for m in base]

    for fpr in (0.05, 0.01):
        cal = anomaly_maps.fit_map_calibration(maps(12, 45, 67), names, fpr)
        assert cal.pixel_fpr == fpr and cal.n_images == 12 and cal.n_pixels == 12 * 45 * 67
        new = anomaly_maps.anomaly_maps(maps(12, 53, 41), cal)  # another size
        rate = float(np.mean([(m > cal.pixel_threshold).float().mean() for m in new]))
        assert rate == pytest.approx(fpr, rel=0.2)
        # the border normalization: border pixels are flagged about as often as inner ones
        d = anomaly_maps.border_distance(53, 41)
        at_border = float(np.mean([(m[d == 0] > cal.pixel_threshold).float().mean() for m in new]))
        assert at_border < 3 * fpr


def test_map_calibration_refuses_bad_input():
    with pytest.raises(ValueError, match="rate"):
        anomaly_maps.fit_map_calibration([torch.zeros(2, 8, 8)], ("sq", "dssim"), 0.9)
    with pytest.raises(ValueError, match="no normal"):
        anomaly_maps.fit_map_calibration([], ("sq", "dssim"), 0.01)
    with pytest.raises(ValueError, match="NaN"):
        anomaly_maps.fit_map_calibration(
            [torch.full((2, 8, 8), float("nan"))], ("sq", "dssim"), 0.01
        )
    cal = anomaly_maps.fit_map_calibration([torch.rand(2, 8, 8)], ("sq", "dssim"), 0.01)
    d = cal.to_dict()
    assert anomaly_maps.MapCalibration.from_dict(json.loads(json.dumps(d))) == cal
    with pytest.raises(ValueError, match="spreads"):
        anomaly_maps.MapCalibration.from_dict(
            {**d, "spread": {"sq": [0.0] * 12, "dssim": [1.0] * 12}}
        )


def test_component_maps_see_structure_and_colour_not_only_squared_error():
    x = torch.full((1, 3, 24, 24), 0.5)
    x[..., ::2, :] = 0.6  # fine stripes
    flat = x.mean((2, 3), keepdim=True).expand_as(x)  # same mean, no structure
    c = anomaly_maps.component_maps(x, flat, ("sq", "dssim", "chroma"))
    assert c.shape == (1, 3, 24, 24)
    assert c[0, 1].mean() > 0.5  # structure lost: 1 - SSIM high
    assert c[0, 2].abs().max() < 1e-6  # grey residual: no chroma
    tinted = x.clone()
    tinted[:, 0] += 0.1
    tinted[:, 2] -= 0.1
    c = anomaly_maps.component_maps(tinted, x, ("sq", "dssim", "chroma"))
    assert c[0, 2].min() > 0.009  # the colour shift is all chroma
    with pytest.raises(ValueError, match="RGB"):
        anomaly_maps.component_maps(x[:, :1], x[:, :1], ("chroma",))


def test_map_to_u16_puts_the_threshold_at_10000_and_clips():
    m = np.array([[0.0, 1.0, 2.0], [-1.0, 100.0, 0.5]], dtype=np.float32)
    u = anomaly_maps.map_to_u16(m, 2.0)
    assert u.dtype == np.uint16
    assert u.tolist() == [[0, 5000, 10000], [0, 65535, 2500]]


@pytest.mark.parametrize("h,w", [(1, 1), (7, 3), (33, 65)])
def test_write_map_files_sizes_and_dtypes(tmp_path, h, w):
    img = np.random.default_rng(1).integers(0, 256, (3, h, w), dtype=np.uint8)
    m = np.linspace(0, 4, h * w, dtype=np.float32).reshape(h, w)
    files = anomaly_maps.write_map_files(tmp_path, "part", img, m, 2.0)
    assert set(files) == {"heat", "map16", "npy", "mask"}
    heat = np.asarray(Image.open(files["heat"]))
    assert heat.shape == (h, w, 3) and heat.dtype == np.uint8
    with Image.open(files["map16"]) as im:
        assert im.size == (w, h) and im.mode.startswith("I")
        u = np.asarray(im).astype(np.int64)
    assert np.array_equal(u, anomaly_maps.map_to_u16(m, 2.0).astype(np.int64))
    raw = np.load(files["npy"])
    assert raw.dtype == np.float32 and raw.shape == (h, w) and np.array_equal(raw, m)
    mask = np.asarray(Image.open(files["mask"]))
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, m > 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(f).name for f in files.values()
    )


# ---------------------------------------------------------------------------------------------
# Synthetic defects and their metrics


@pytest.mark.parametrize("kind", defects.KINDS)
@pytest.mark.parametrize("contrast", [10, 40])
def test_defects_change_their_mask_by_their_contrast_at_odd_sizes(kind, contrast):
    base = texture(53, 71, 0)
    foreign = texture(64, 64, 9)[0]
    x, mask = defects.add_defect(base, kind, contrast, np.random.default_rng(3), foreign)
    assert x.shape == base.shape and x.dtype == np.uint8 and mask.shape == (53, 71)
    assert mask.any() and mask.mean() < 0.2
    diff = x.astype(np.int64) - base.astype(np.int64)
    assert np.abs(diff[:, ~mask]).max() <= contrast  # outside the mask: at most the soft edge
    changed = np.abs(diff).max(0)
    if kind == "colour":
        luma = np.tensordot(defects.LUMA, diff, axes=1)
        assert np.abs(luma).max() <= 1.0  # invisible in grey (rounding only)
        assert changed[mask].max() >= contrast - 1
    elif kind == "patch":
        rms = np.sqrt((diff[0][mask] ** 2).mean())
        assert rms <= contrast + 1
    else:
        assert contrast - 1 <= changed[mask].max() <= contrast + 1


def test_defect_sets_are_reproducible_and_independent_per_kind():
    bases = np.stack([texture(48, 48, i) for i in range(3)])
    foreign = texture(48, 48, 9)[0]
    a, ma = defects.defect_set(bases, "blob", 20, 0, foreign)
    b, mb = defects.defect_set(bases, "blob", 20, 0, foreign)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    c, _ = defects.defect_set(bases, "blob", 20, 1, foreign)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="48"):
        defects.add_defect(texture(40, 60, 0), "blob", 20, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown"):
        defects.defect_set(bases, "crack", 20, 0)
    with pytest.raises(ValueError, match="foreign"):
        defects.add_defect(bases[0], "patch", 20, np.random.default_rng(0))


def test_pixel_auroc_and_pro_on_known_maps():
    masks = np.zeros((2, 20, 30), dtype=bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 10:18, 20:22] = True
    perfect = masks.astype(np.float64)
    assert defects.pixel_auroc(perfect, masks) == 1.0
    assert defects.pro_score(perfect, masks) == pytest.approx(1.0, abs=0.01)
    assert defects.pro_score(1.0 - perfect, masks) == pytest.approx(0.0, abs=0.01)
    many = np.zeros((20, 64, 64), dtype=bool)
    many[:, 10:20, 30:40] = True
    rnd = np.random.default_rng(0).random(many.shape)
    assert defects.pro_score(rnd, many) == pytest.approx(0.15, abs=0.02)  # max_fpr / 2
    assert len(defects.regions(masks)) == 2
    # every region weighs the same in PRO: finding only the small one gives about half
    small_only = np.zeros_like(perfect)
    small_only[0][masks[0]] = 1
    assert defects.pro_score(small_only, masks) == pytest.approx(0.5, abs=0.1)
    assert defects.image_auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0


# ---------------------------------------------------------------------------------------------
# `convae train --crop` + `convae anomaly --map` end to end


TRAIN = ["--preset", "anomaly", "--crop", "32", "--crops-per-epoch", "64", "--epochs", "2",
         "--width", "8", "--batch-size", "16", "--val-fraction", "0.34", "--seed", "0",
         "--device", "cpu", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory) -> Path:
    """A tiny run trained on crops of normal textures of odd sizes (three files, one held out)."""
    root = tmp_path_factory.mktemp("inspect")
    for i, (h, w) in enumerate([(67, 91), (75, 59), (81, 77)]):
        write_png(torch.from_numpy(texture(h, w, i)), root / "normal" / f"n{i}.png")
    rc, _, err = run_cli("train", "--data", f"folder:{root / 'normal'}", *TRAIN,
                         "--out", root / "run")  # fmt: skip
    assert rc == 0, err
    return root / "run"


def test_crop_preset_is_a_fully_convolutional_rgb_code_map(crop_run):
    cfg = json.loads((crop_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "convae-map" and cfg["data"]["crop"] == 32
    assert cfg["data"]["channels"] == 3 and cfg["model"]["padding"] == "reflect"


def test_cli_map_writes_full_resolution_maps_of_odd_sizes(crop_run, tmp_path):
    normal = texture(45, 63, 5)
    spot = normal.copy()
    spot[0, 20:30, 30:40], spot[1, 20:30, 30:40], spot[2, 20:30, 30:40] = 250, 40, 250
    write_png(torch.from_numpy(normal), tmp_path / "in" / "normal.png")
    write_png(torch.from_numpy(spot), tmp_path / "in" / "spot.png")
    rc, out, err = run_cli("anomaly", crop_run, tmp_path / "in", "--map", tmp_path / "maps",
                           "--json", "--threads", "1")  # fmt: skip
    assert rc == 0, err
    r = last_json(out)
    assert r["score"] == "map" and r["images"] == 2 and 0 < r["pixel_threshold"]
    rows = {Path(row["path"]).stem: row for row in r["results"]}
    assert rows["spot"]["score"] > rows["normal"]["score"]
    assert rows["spot"]["flagged"] and rows["spot"]["size"] == [45, 63]
    for stem in ("normal", "spot"):
        raw = np.load(tmp_path / "maps" / f"{stem}_map.npy")
        assert raw.shape == (45, 63) and raw.dtype == np.float32
        assert Image.open(tmp_path / "maps" / f"{stem}_heat.png").size == (63, 45)
        with Image.open(tmp_path / "maps" / f"{stem}_map.png") as im:
            assert im.size == (63, 45) and im.mode.startswith("I")
    mask = np.asarray(Image.open(tmp_path / "maps" / "spot_mask.png")) > 0
    assert mask[20:30, 30:40].mean() > 0.5 and mask.mean() < 0.2
    det = anomaly.load_detector(crop_run)
    assert det.score == "map" and "45x63" in det.thresholds and det.maps.pixel_fpr == 0.01
    # again: the files exist now, so --map refuses to replace them without --overwrite
    rc, _, err = run_cli("anomaly", crop_run, tmp_path / "in", "--map", tmp_path / "maps")
    assert rc == 1 and err.startswith("convae: error:") and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = run_cli("anomaly", crop_run, tmp_path / "in", "--map", tmp_path / "maps",
                         "--overwrite", "--top", "0")  # fmt: skip
    assert rc == 0, err


def test_per_pixel_threshold_flags_its_rate_of_held_out_normal_pixels(crop_run):
    model = load(crop_run)
    det, _ = anomaly.ensure_detector(model, pixel_fpr=0.05)
    assert det.maps.pixel_fpr == 0.05
    val = anomaly._validation_images(model)
    with pytest.raises(ValueError, match="no image threshold"):
        anomaly.inspect_image(model, det, val.image(0))
    det = anomaly.ensure_image_thresholds(model, det, val.sizes().tolist())
    rates = [
        anomaly.inspect_image(model, det, val.image(i))["mask"].mean() for i in range(len(val))
    ]
    assert float(np.mean(rates)) == pytest.approx(0.05, abs=0.01)  # calibrated on these pixels


def test_cli_map_errors_are_one_line(crop_run, tmp_path):
    write_png(torch.from_numpy(texture(40, 40, 1)), tmp_path / "a.png")
    for argv in (
        ("anomaly", crop_run, "--data", "mnist-sample", "--map", tmp_path / "m"),
        ("anomaly", crop_run, tmp_path / "a.png", "--map", tmp_path / "a.png"),
        ("anomaly", crop_run, tmp_path / "a.png", "--pixel-fpr", "0.7"),
    ):
        rc, _, err = run_cli(*argv)
        assert rc != 0, argv
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("convae: error:")


def test_cli_map_on_tiny_images(crop_run, tmp_path):
    t = texture(48, 48, 2)
    write_png(torch.from_numpy(t[:, :9, :5].copy()), tmp_path / "in" / "tiny.png")
    write_png(torch.from_numpy(t[:, :1, :1].copy()), tmp_path / "in" / "dot.png")
    rc, out, err = run_cli("anomaly", crop_run, tmp_path / "in", "--map", tmp_path / "m",
                           "--json", "--top", "0")  # fmt: skip
    assert rc == 0, err
    assert np.load(tmp_path / "m" / "tiny_map.npy").shape == (9, 5)
    assert np.load(tmp_path / "m" / "dot_map.npy").shape == (1, 1)
    assert Image.open(tmp_path / "m" / "dot_heat.png").size == (1, 1)
    assert all(np.isfinite(r["score"]) for r in last_json(out)["results"])


def test_anomaly_preset_on_a_folder_of_any_size_trains_on_crops(tmp_path):
    from convae.cli import build_parser
    from convae.cli.train import build_run_config
    from convae.config import preset_crop

    def config(folder: Path, *extra: str):
        args = build_parser().parse_args(["train", "--data", f"folder:{folder}", *extra])
        return build_run_config(args)

    for i, (h, w) in enumerate([(67, 91), (75, 59)]):
        write_png(torch.from_numpy(texture(h, w, i)), tmp_path / "mixed" / f"{i}.png")
        write_png(torch.from_numpy(texture(28, 28, i)), tmp_path / "small" / f"{i}.png")
    cfg = config(tmp_path / "mixed", "--preset", "anomaly")
    assert cfg.data.crop == preset_crop("anomaly") == 64 and cfg.model.arch == "convae-map"
    assert cfg.data.channels == 3
    assert config(tmp_path / "mixed", "--preset", "anomaly", "--crop", "32").data.crop == 32
    # one small size: whole images, the fixed-size preset (as for digits)
    small = config(tmp_path / "small", "--preset", "anomaly")
    assert small.data.crop is None and small.model.arch != "convae-map"
    assert config(tmp_path / "mixed").data.crop is None  # no preset: no guess
