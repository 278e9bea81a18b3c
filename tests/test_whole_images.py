"""Whole images in the commands: models trained on crops of a folder of mixed-size photos, then
scored and reconstructed at each image's own size (fully convolutional and dense models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from PIL import Image


def _photo(h: int, w: int, seed: int, grey: bool = False) -> np.ndarray:
    """Smooth colour gradients plus a little texture: a stand-in for a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = [np.sin(3 * xx + rng.uniform(0, 6)) + np.cos(4 * yy + rng.uniform(0, 6)) for _ in "rgb"]
    img = np.stack(base, -1) * 50 + 128 + rng.normal(0, 8, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if grey else img


SIZES = {"cats": [(30, 41), (27, 36), (40, 29)], "dogs": [(33, 47), (25, 25), (44, 31)]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    seed = 0
    for cls, sizes in SIZES.items():
        (root / cls).mkdir()
        for h, w in sizes:
            Image.fromarray(_photo(h, w, seed)).save(root / cls / f"p{seed}.png")
            seed += 1
    return root


def _train(photos: Path, out: Path, arch: str) -> Path:
    rc, _, err = run_cli("train", "--data", f"folder:{photos}", "--crop", "16", "--crops-per-epoch",
                         "32", "--arch", arch, "--width", "4", "--epochs", "1", "--batch-size", "16",
                         "--val-fraction", "0", "--out", out, "--device", "cpu", "-q")  # fmt: skip
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def map_run(photos, tmp_path_factory) -> Path:
    return _train(photos, tmp_path_factory.mktemp("runs") / "map", "convae-map")


@pytest.fixture(scope="module")
def dense_run(photos, tmp_path_factory) -> Path:
    return _train(photos, tmp_path_factory.mktemp("runs") / "dense", "seed-dense")


def test_eval_scores_every_image_of_a_mixed_size_folder_per_class(map_run):
    rc, out, err = run_cli("eval", map_run, "--split", "all", "--by-class", "--json")
    assert rc == 0, err
    m = json.loads(out.strip().splitlines()[-1])
    assert m["images"] == 6
    assert sorted(m["classes"]) == ["cats", "dogs"]
    assert [m["classes"][c]["images"] for c in ("cats", "dogs")] == [3, 3]
    # the overall mean is the image-weighted mean of the class rows
    mean = np.mean([m["classes"][c]["mse"] for c in ("cats", "dogs")])
    assert m["mse"] == pytest.approx(mean, rel=1e-9)
    rc, text, err = run_cli("eval", map_run, "--split", "all", "--by-class")
    assert rc == 0, err
    assert [ln.split()[0] for ln in text.strip().splitlines()[1:]] == ["cats", "dogs"]


@pytest.mark.parametrize("which", ["map_run", "dense_run"])
@pytest.mark.parametrize("h,w,grey", [(1, 37, False), (33, 47, False), (29, 18, True)])
def test_reconstruct_returns_each_image_at_its_own_size(request, tmp_path, which, h, w, grey):
    run = request.getfixturevalue(which)
    src = tmp_path / "in.png"
    Image.fromarray(_photo(h, w, 9, grey=grey)).save(src)
    rc, _, err = run_cli("reconstruct", run, src, "--out", tmp_path / "out", "-q")
    assert rc == 0, err
    with Image.open(tmp_path / "out" / "in.png") as im:
        assert (im.height, im.width, im.mode) == (h, w, "RGB")  # grey in, the model's channels out


def test_reconstruct_resize_is_the_explicit_thumbnail(map_run, tmp_path):
    Image.fromarray(_photo(30, 50, 3)).save(tmp_path / "in.png")
    rc, _, err = run_cli("reconstruct", map_run, tmp_path / "in.png", "--resize", "--out",
                         tmp_path / "out", "-q")  # fmt: skip
    assert rc == 0, err
    with Image.open(tmp_path / "out" / "in.png") as im:
        assert im.size == (16, 16)


def test_a_crop_larger_than_every_image_is_one_line_and_writes_nothing(photos, tmp_path):
    rc, _, err = run_cli("train", "--data", f"folder:{photos}", "--crop", "4096", "--out",
                         tmp_path / "r", "--device", "cpu")  # fmt: skip
    assert rc == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("convae: error: --crop 4096 is larger than every training image")
    assert not (tmp_path / "r").exists()


def test_max_pixels_is_a_data_flag_kept_in_the_run(photos, tmp_path):
    rc, _, err = run_cli("train", "--data", f"folder:{photos}", "--max-pixels", "1000", "--strict",
                         "--crop", "16", "--out", tmp_path / "r", "--device", "cpu")  # fmt: skip
    assert rc == 1  # --strict: a photo above 1,000 pixels is an error, not skipped
    assert "above the limit of 1,000 pixels" in err, err
    rc, _, err = run_cli("train", "--data", f"folder:{photos}", "--max-pixels", "2000", "--crop",
                         "16", "--crops-per-epoch", "16", "--epochs", "1", "--width", "4",
                         "--out", tmp_path / "ok", "--device", "cpu", "-q")  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert cfg["data"]["max_pixels"] == 2000


def test_encode_and_decode_give_each_photo_back_at_its_own_size(map_run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w, grey) in enumerate([(1, 37, False), (33, 47, False), (29, 18, True)]):
        Image.fromarray(_photo(h, w, 20 + i, grey=grey)).save(src / f"p{i}.png")
    rc, out, err = run_cli("encode", map_run, src, "--out", tmp_path / "x.cae", "--json")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["images"] == 3
    assert res["bpp"] == pytest.approx(8 * res["bytes"] / (37 + 33 * 47 + 29 * 18))
    rc, out, err = run_cli("info", tmp_path / "x.cae", "--json")
    info = json.loads(out.strip().splitlines()[-1])
    assert info["sizes"] == [[1, 37], [33, 47], [29, 18]] and info["tiles"] == 3 + 9 + 4
    rc, _, err = run_cli("decode", tmp_path / "x.cae", "--out", tmp_path / "dec", "-q")
    assert rc == 0, err
    for i, (h, w) in enumerate([(1, 37), (33, 47), (29, 18)]):
        with Image.open(tmp_path / "dec" / f"p{i}.png") as im:
            assert (im.height, im.width, im.mode) == (h, w, "RGB")


def test_the_report_of_a_crop_run_shows_its_anomaly_detector(photos, tmp_path):
    run = tmp_path / "run"
    rc, _, err = run_cli("train", "--data", f"folder:{photos}", "--crop", "16", "--crops-per-epoch",
                         "32", "--width", "4", "--epochs", "1", "--val-fraction", "0.34", "--out",
                         run, "--device", "cpu", "-q")  # fmt: skip
    assert rc == 0, err
    Image.fromarray(_photo(40, 52, 30)).save(tmp_path / "part.png")
    rc, _, err = run_cli("anomaly", run, tmp_path / "part.png", "--calibrate", "-q")
    assert rc == 0, err
    rc, _, err = run_cli("report", run, "-q")
    assert rc == 0, err
    page = (run / "report.html").read_text()
    anomaly = page[page.index('<section id="anomaly">') :]
    anomaly = anomaly[: anomaly.index("</section>")]
    assert "not shown" not in anomaly and "per-pixel threshold (map units)" in anomaly


def test_images_of_a_size_no_model_takes_say_what_to_pass(tmp_path):
    for i in range(3):
        Image.fromarray(_photo(25, 25, 40 + i)).save(tmp_path / f"f{i}.png")
    rc, _, err = run_cli("train", "--data", f"folder:{tmp_path}", "--out", tmp_path / "r")
    assert rc == 1
    assert err.strip().endswith("the images are 25x25; a model takes sizes that are multiples of "
                                "4 (at least 8): pass --image-size 24 to resize them, or --crop 24 "
                                "to train on crops")  # fmt: skip
    assert not (tmp_path / "r").exists()
