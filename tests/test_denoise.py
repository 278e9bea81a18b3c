"""convae.denoise and the `denoise` / `bench denoise` commands, on tiny runs in temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import last_json, run_cli
from PIL import Image
from torch import nn

from convae import cli
from convae.config import PRESETS, DataConfig, ModelConfig, RunConfig, TrainConfig
from convae.denoise import (
    FILTERS,
    apply_filter,
    benchmark,
    denoise_images,
    denoise_tensor,
    level_name,
    parse_levels,
    tune_filter,
)
from convae.inference import load, to_float
from convae.metrics import psnr_per_image
from convae.models import AutoEncoder
from convae.noise import corrupt


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory) -> Path:
    """A tiny denoising run: width 8, latent 32, 3 epochs on digits 0 and 1 with gaussian:0.4."""
    from convae import train

    cfg = RunConfig(
        model=ModelConfig(arch="convae", width=8, latent_dim=32),
        data=DataConfig(spec="mnist-sample", classes=(0, 1)),
        # pinned recipe (the arch's default optimizer may change): the assertions' numbers are its
        train=TrainConfig(
            epochs=3,
            batch_size=32,
            lr=5e-3,
            optimizer="adamw",
            seed=0,
            noise=("gaussian:0.4",),
        ),
    )
    return train(cfg, tmp_path_factory.mktemp("denoise") / "run", device="cpu")


def identity_model(channels: int = 1, size: int = 16) -> AutoEncoder:
    """An 'autoencoder' that returns its input exactly: tests the tiling/resizing plumbing alone."""
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    cfg = ModelConfig(
        arch="convae",
        channels=channels,
        image_size=size,
        latent_dim=channels * size * size,
        mean_image=False,  # an identity adds nothing
    )
    return AutoEncoder(nn.Identity(), conv, (channels, size, size), cfg).eval()


# ---------------------------------------------------------------------------------------------
# Library


def test_parse_levels():
    assert parse_levels("gaussian:0.2,0.4,0.6") == [
        ("gaussian:0.2",),
        ("gaussian:0.4",),
        ("gaussian:0.6",),
    ]
    assert parse_levels("gaussian:0.2, salt-pepper:0.1,0.2") == [
        ("gaussian:0.2",),
        ("salt-pepper:0.1",),
        ("salt-pepper:0.2",),
    ]
    assert parse_levels(["gaussian:0.3+mask:0.25", "mask:0.5"]) == [
        ("gaussian:0.3", "mask:0.25"),
        ("mask:0.5",),
    ]
    assert level_name(("gaussian:0.3", "mask:0.25")) == "gaussian:0.3+mask:0.25"
    for bad in ("", "0.4", "blur:1", "gaussian:x"):
        with pytest.raises(ValueError):
            parse_levels(bad)


@pytest.mark.parametrize("hw", [(16, 16), (16, 40), (37, 23), (9, 12), (5, 30)])
def test_tile_mode_covers_any_size_exactly(hw):
    model = identity_model(1, 16)
    img = torch.rand(1, *hw, generator=torch.Generator().manual_seed(0))
    (out,) = denoise_images(model, [img], "tile")
    assert out.shape == img.shape
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)  # the blend weights sum back to one


def test_resize_mode_keeps_sizes_and_exact_mode_refuses_others():
    model = identity_model(3, 16)
    imgs = [torch.rand(3, 16, 16), torch.rand(3, 32, 20)]
    outs = denoise_images(model, imgs, "resize")
    assert [o.shape for o in outs] == [i.shape for i in imgs]
    torch.testing.assert_close(outs[0], imgs[0])  # the model's own size is not resampled
    with pytest.raises(ValueError, match="32"):
        denoise_images(model, imgs, "exact")
    with pytest.raises(ValueError, match=r"C = 3"):
        denoise_images(model, [torch.rand(1, 16, 16)], "exact")
    with pytest.raises(ValueError, match="mode"):
        denoise_images(model, imgs, "crop")
    assert denoise_images(model, [], "exact") == []


def test_filters_shapes_range_and_median_on_salt_and_pepper(make_images):
    x = to_float(make_images(6, 3, 16))
    noisy = corrupt(x, ["salt-pepper:0.05"], torch.Generator().manual_seed(0))
    for name, f in FILTERS.items():
        y = apply_filter(name, noisy, f.grid[0])
        assert y.shape == x.shape and y.dtype == torch.float32
        assert 0.0 <= y.min().item() and y.max().item() <= 1.0
    med = apply_filter("median", noisy, {"size": 3})
    assert psnr_per_image(x, med).mean() > psnr_per_image(x, noisy).mean() + 5
    with pytest.raises(ValueError, match="unknown filter"):
        apply_filter("bilateral", noisy, {})


def test_tuning_picks_the_best_grid_point(make_images):
    x = to_float(make_images(12, 1, 16))
    noisy = corrupt(x, ["gaussian:0.2"], torch.Generator().manual_seed(0))
    params, db = tune_filter("gaussian", x, noisy)
    scores = [
        psnr_per_image(x, apply_filter("gaussian", noisy, p)).mean().item()
        for p in FILTERS["gaussian"].grid
    ]
    assert params in FILTERS["gaussian"].grid
    assert db == pytest.approx(max(scores))
    assert db > psnr_per_image(x, noisy).mean().item()


def test_a_denoising_model_beats_the_noisy_input(denoise_run):
    model = load(denoise_run)
    assert model.run_config.train.noise == ("gaussian:0.4",)
    from convae.data import load_dataset

    x, _ = load_dataset("mnist-sample", "test", classes=(0, 1))
    clean = to_float(x)
    noisy = corrupt(clean, ["gaussian:0.4"], torch.Generator().manual_seed(123))
    before = psnr_per_image(clean, noisy).mean().item()
    after = psnr_per_image(clean, denoise_tensor(model, noisy)).mean().item()
    assert before == pytest.approx(11.0, abs=0.5)
    assert after > before + 2, (before, after)  # measured: 11.0 -> 14.2 dB


def test_benchmark_rows_and_examples(denoise_run):
    from convae.data import load_dataset

    model = load(denoise_run)
    val, _ = load_dataset("mnist-sample", "val", classes=(0, 1))
    test, _ = load_dataset("mnist-sample", "test", classes=(0, 1))
    res = benchmark(
        [model, model],
        parse_levels("gaussian:0.4,0.2"),
        val,
        test[::5],
        filters=("median", "gaussian"),
        tune_images=16,
        show=4,
    )
    lv, lv2 = res
    assert [r["noise"] for r in res] == ["gaussian:0.4", "gaussian:0.2"]
    assert lv["images"] == len(test[::5])
    assert lv2["methods"][0]["psnr"] > lv["methods"][0]["psnr"] + 4  # less noise: ~17 vs ~11 dB
    by = {m["method"]: m for m in lv["methods"]}
    assert list(by) == ["noisy", "convae", "median", "gaussian"]
    assert by["convae"]["psnr"] > by["noisy"]["psnr"]
    assert by["median"]["params"] in FILTERS["median"].grid
    assert all(0 < m["ssim"] <= 1 for m in lv["methods"])
    assert list(lv["examples"]) == ["clean", "noisy", "convae", "median", "gaussian"]
    assert all(v.shape == (4, 1, 28, 28) for v in lv["examples"].values())
    # the same seed gives the same numbers: the noise is fixed, not drawn anew
    again = benchmark(
        [model],
        parse_levels("gaussian:0.4"),
        val,
        test[::5],
        filters=("median", "gaussian"),
        tune_images=16,
        show=4,
    )
    assert [m["psnr"] for m in again[0]["methods"]] == [m["psnr"] for m in lv["methods"]]
    with pytest.raises(ValueError, match="model"):
        benchmark([model, model], parse_levels("gaussian:0.4"), val, test)


def test_denoise_preset_exists_and_is_a_plain_override():
    p = PRESETS["denoise"]
    assert set(p) <= {"model", "train", "crop"}
    # images of one size (digits): the noise comes from --noise
    assert "noise" not in p.get("train", {})
    # crops of photos: the blind U-Net
    assert p["crop"]["model"]["arch"] == "convae-unet"
    assert p["crop"]["train"]["noise"] == ("blind",) and p["crop"]["train"]["loss"] == "mse"


def _train_config(*argv):
    from convae.cli.train import build_run_config

    return build_run_config(cli.build_parser().parse_args(["train", *argv]))


def test_denoise_preset_picks_the_photo_denoiser_for_crops_and_flags_still_win(tmp_path):
    digits = _train_config("--preset", "denoise", "--noise", "gaussian:0.4")
    assert digits.model.arch == "convae" and digits.model.latent_dim == 128
    assert digits.train.noise == ("gaussian:0.4",) and digits.train.loss == "mse"
    assert digits.data.augment == "flip"
    photos = _train_config("--preset", "denoise", "--data", "folder:/x", "--crop", "64")
    assert photos.model.arch == "convae-unet" and photos.model.width == 40
    assert photos.model.latent_dim is None and photos.model.norm == "none"
    assert photos.train.noise == ("blind",) and photos.train.loss == "mse"
    assert photos.train.optimizer == "adam" and photos.train.batch_size == 16
    assert photos.data.augment == "dihedral+channels" and photos.data.crop == 64
    # a folder of photos of several sizes (or all large) without --image-size: crops of 64
    _write_photos(tmp_path / "mixed", [(70, 90), (80, 66)])
    folder = _train_config("--preset", "denoise", "--data", f"folder:{tmp_path / 'mixed'}")
    assert folder.model.arch == "convae-unet" and folder.data.crop == 64
    _write_photos(tmp_path / "digits", [(28, 28), (28, 28)])  # one small size: whole images
    whole = _train_config("--preset", "denoise", "--data", f"folder:{tmp_path / 'digits'}")
    assert whole.model.arch == "convae" and whole.data.crop is None
    small = _train_config("--preset", "denoise", "--data", "folder:/x", "--image-size", "28")
    assert small.model.arch == "convae" and small.data.crop is None
    mine = _train_config("--preset", "denoise", "--data", "folder:/x", "--crop", "32",
                         "--noise", "gaussian:0-0.1", "--augment", "flip", "--loss", "l1",
                         "--crops-per-epoch", "64")  # fmt: skip
    assert mine.train.noise == ("gaussian:0-0.1",) and mine.data.augment == "flip"
    assert mine.train.loss == "l1" and mine.data.crops_per_epoch == 64
    assert mine.model.arch == "convae-unet"


def _write_photos(root: Path, sizes) -> None:
    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        base = torch.rand(3, h // 4 + 1, w // 4 + 1, generator=g)
        img = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0]
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(root / f"p{i}.png")


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> Path:
    """A tiny blind photo denoiser trained with the preset on crops of photos of mixed sizes."""
    root = tmp_path_factory.mktemp("photos")
    _write_photos(root / "train", [(40, 56), (48, 33), (64, 64)])
    out = root / "run"
    rc, stdout, err = run_cli("train", "--preset", "denoise", "--data", f"folder:{root / 'train'}",
                              "--crop", "16", "--val-fraction", "0", "--width", "4", "--depth",
                              "1", "--epochs", "2", "--crops-per-epoch", "32", "--device", "cpu",
                              "--out", out, "--json")  # fmt: skip
    assert rc == 0, err
    return out


def test_photo_preset_trains_a_blind_unet_and_records_cpu_time(photo_run):
    cfg = json.loads((photo_run / "config.json").read_text())
    assert cfg["model"]["arch"] == "convae-unet" and cfg["train"]["noise"] == ["blind"]
    hist = [json.loads(line) for line in (photo_run / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and all(r["cpu_seconds"] > 0 for r in hist)
    metrics = json.loads((photo_run / "metrics.json").read_text())
    assert metrics["train_cpu_seconds"] == pytest.approx(sum(r["cpu_seconds"] for r in hist))


def test_denoise_cli_takes_any_size_whole_with_a_fully_convolutional_run(photo_run, tmp_path):
    src = tmp_path / "in"
    _write_photos(src, [(30, 45), (7, 50)])
    for flags in ([], ["--tile"]):  # --tile is accepted: it is what happens anyway
        out = tmp_path / f"out{len(flags)}"
        rc, stdout, err = run_cli("denoise", photo_run, src, "--out", out, *flags, "--json")
        assert rc == 0, err
        res = last_json(stdout)
        assert res["mode"] == "whole" and res["megapixels"] == (30 * 45 + 7 * 50) / 1e6
        assert res["seconds_per_mp"] == pytest.approx(res["seconds"] / res["megapixels"])
        for name, size in (("p0.png", (45, 30)), ("p1.png", (50, 7))):
            with Image.open(out / name) as im:
                assert im.size == size and im.mode == "RGB"
    rc, stdout, err = run_cli("denoise", photo_run, src, "--out", tmp_path / "r", "--resize",
                              "--json")  # fmt: skip
    assert rc == 0 and last_json(stdout)["mode"] == "resize", err
    model = load(photo_run)
    with Image.open(src / "p0.png") as im:
        x = to_float(torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous())
    whole = denoise_images(model, [x])[0]
    with torch.no_grad():
        direct = model(x[None]).clamp(0, 1)[0]
    torch.testing.assert_close(whole, direct, atol=1e-6, rtol=0)  # one pass, no seams


# ---------------------------------------------------------------------------------------------
# Command line


def _write_digits(root: Path, size: int | tuple[int, int] = 28, n: int = 4) -> list[Path]:
    from convae.data import load_dataset

    x, _ = load_dataset("mnist-sample", "test", classes=(0, 1))
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = x[i * 30, 0].numpy()
        im = Image.fromarray(a)
        if size != 28:
            im = im.resize(
                size if isinstance(size, tuple) else (size, size), Image.Resampling.BILINEAR
            )
        p = root / f"digit_{i}.png"
        im.save(p)
        paths.append(p)
    return paths


def test_train_with_noise_and_preset_records_them(tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = run_cli(
        "train",
        "--preset",
        "denoise",
        "--noise",
        "gaussian:0.3,mask:0.1",
        "--noise",
        "speckle:0.2",
        "--width",
        "4",
        "--latent-dim",
        "8",
        "--epochs",
        "1",
        "--classes",
        "0",
        "--device",
        "cpu",
        "--out",
        out,
        "--json",
    )
    assert rc == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "denoise"
    assert cfg["train"]["noise"] == ["gaussian:0.3", "mask:0.1", "speckle:0.2"]
    assert cfg["model"]["width"] == 4 and cfg["model"]["latent_dim"] == 8  # explicit flags win
    assert cfg["train"]["batch_size"] == PRESETS["denoise"]["train"]["batch_size"]
    assert (out / "reconstructions.png").is_file()


def test_denoise_cli_round_trip_same_names_and_sizes(denoise_run, tmp_path):
    src = tmp_path / "in"
    paths = _write_digits(src)
    _write_digits(src / "sub", n=1)  # digit_0.png again, in a sub-folder: names made unique
    out = tmp_path / "out"
    rc, stdout, err = run_cli("denoise", denoise_run, src, "--out", out, "--json")
    assert rc == 0, err
    res = last_json(stdout)
    assert res["images"] == 5 and res["mode"] == "exact"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([p.name for p in paths] + ["digit_0-2.png"])
    for n in names:
        with Image.open(out / n) as im:
            assert im.size == (28, 28) and im.mode == "L"


def test_denoise_cli_add_noise_reports_a_gain(denoise_run, tmp_path):
    src = tmp_path / "in"
    _write_digits(src, n=6)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        "denoise",
        denoise_run,
        src,
        "--out",
        out,
        "--add-noise",
        "gaussian:0.4",
        "--seed",
        "1",
        "--json",
    )
    assert rc == 0, err
    res = last_json(stdout)
    assert res["add_noise"] == ["gaussian:0.4"]
    assert res["psnr_denoised"] > res["psnr_noisy"] + 1.5
    assert sorted(p.name for p in (out / "noisy").iterdir()) == sorted(
        p.name for p in src.iterdir()
    )
    rc2, stdout2, _ = run_cli(
        "denoise",
        denoise_run,
        src,
        "--out",
        tmp_path / "again",
        "--add-noise",
        "gaussian:0.4",
        "--seed",
        "1",
        "--json",
    )
    assert last_json(stdout2)["psnr_denoised"] == res["psnr_denoised"]  # seeded


def test_denoise_cli_other_sizes(denoise_run, tmp_path):
    src = tmp_path / "in"
    _write_digits(src, size=(45, 33), n=2)
    out = tmp_path / "out"
    rc, stdout, err = run_cli("denoise", denoise_run, src, "--out", out)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "--tile" in err and "--resize" in err
    assert not out.exists()  # everything is checked before anything is written
    for flag in ("--tile", "--resize"):
        rc, stdout, err = run_cli("denoise", denoise_run, src, "--out", out / flag[2:], flag)
        assert rc == 0, err
        for p in (out / flag[2:]).iterdir():
            with Image.open(p) as im:
                assert im.size == (45, 33)


def test_denoise_cli_mistakes(denoise_run, tmp_path):
    rc, _, err = run_cli("denoise", denoise_run, tmp_path / "nope.png", "--out", tmp_path / "o")
    assert rc == 1 and "no such file" in err
    src = tmp_path / "in"
    _write_digits(src, n=1)
    rc, _, err = run_cli(
        "denoise", denoise_run, src, "--out", tmp_path / "o", "--add-noise", "blur:2"
    )
    assert rc == 1 and "KIND:AMOUNT" in err
    rc, _, err = run_cli("denoise", denoise_run, src, "--out", tmp_path / "o", "--tile", "--resize")
    assert rc == 2


def test_bench_denoise_with_a_given_run(denoise_run, tmp_path):
    out = tmp_path / "bench"
    rc, stdout, err = run_cli(
        "bench",
        "denoise",
        "--classes",
        "0,1",
        "--noise",
        "gaussian:0.3",
        "--run",
        denoise_run,
        "--filters",
        "median,tv",
        "--images",
        "30",
        "--tune-images",
        "12",
        "--out",
        out,
        "--device",
        "cpu",
        "--json",
    )
    assert rc == 0, err
    rep = last_json(stdout)
    assert rep == json.loads((out / "results.json").read_text())
    assert [lv["noise"] for lv in rep["levels"]] == ["gaussian:0.3"]
    assert rep["images"] == 30 and rep["train_seconds"] == 0
    for lv in rep["levels"]:
        assert [m["method"] for m in lv["methods"]] == ["noisy", "convae", "median", "tv"]
        best = max(m["psnr"] for m in lv["methods"][2:])
        assert lv["gain_over_best_filter_db"] == pytest.approx(lv["methods"][1]["psnr"] - best)
        with Image.open(lv["figure"]) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    rc, stdout, err = run_cli(
        "bench",
        "denoise",
        "--classes",
        "0,1",
        "--noise",
        "gaussian:0.4,0.2,0.1",
        "--run",
        denoise_run,
        "--run",
        denoise_run,
        "--out",
        tmp_path / "b2",
    )
    assert rc == 1 and "one per level" in err


@pytest.mark.slow
def test_bench_denoise_trains_its_models(tmp_path):
    out = tmp_path / "bench"
    rc, stdout, err = run_cli(
        "bench",
        "denoise",
        "--classes",
        "1",
        "--noise",
        "gaussian:0.4",
        "--epochs",
        "1",
        "--filters",
        "median",
        "--images",
        "20",
        "--tune-images",
        "10",
        "--out",
        out,
        "--device",
        "cpu",
        "--json",
    )
    assert rc == 0, err
    rep = last_json(stdout)
    (lv,) = rep["levels"]
    cfg = json.loads((Path(lv["run"]) / "config.json").read_text())
    assert cfg["preset"] == "denoise" and cfg["train"]["noise"] == ["gaussian:0.4"]
    assert rep["train_seconds"] > 0
    rc, _, err = run_cli(
        "bench", "denoise", "--classes", "1", "--noise", "gaussian:0.4", "--out", out
    )
    assert rc == 1 and "--run" in err  # an earlier bench's run is not overwritten


@pytest.mark.parametrize("argv", [["denoise", "--help"], ["bench", "denoise", "--help"]])
def test_help_has_an_example(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "convae " + argv[0] in text
