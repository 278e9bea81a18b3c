"""Latent space: the pure helpers (grid, interpolation, projection, silhouette, checkerboard energy,
codes CSV) and the `latent`, `generate`, `interpolate` and `sweep` commands on tiny runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from convae import latent
from convae.cli import main
from convae.data import load_dataset
from convae.images import write_png
from convae.inference import load, reconstruct, to_float

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path) -> np.ndarray:
    """Assert ``path`` is a real, non-blank PNG and return its pixels."""
    p = Path(path)
    assert p.read_bytes()[:8] == PNG_MAGIC
    with Image.open(p) as im:
        im.verify()
    with Image.open(p) as im:
        a = np.asarray(im)
    assert a.size > 0 and a.std() > 0  # something was drawn
    return a


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> Path:
    """A tiny `convae` model with a 2-D code, 1 epoch on digits 1, 5, 6 of mnist-sample (~1 s)."""
    from convae import train
    from convae.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    cfg = RunConfig(
        model=ModelConfig(arch="convae", width=4, latent_dim=2),
        data=DataConfig(spec="mnist-sample", classes=(1, 5, 6)),
        train=TrainConfig(epochs=1, batch_size=64, seed=0),
    )
    return train(cfg, tmp_path_factory.mktemp("latent") / "run2d", device="cpu")


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("mnist-sample", "test", classes=(1, 5, 6))


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_latent_grid_spans_the_range_in_picture_order():
    g = latent.latent_grid([-2.0, -1.0], [4.0, 3.0], 4)
    assert g.shape == (16, 2)
    assert g[0].tolist() == [-2.0, 3.0]  # top-left: smallest z0, largest z1
    assert g[3].tolist() == [4.0, 3.0]  # top-right
    assert g[-1].tolist() == [4.0, -1.0]  # bottom-right
    assert torch.allclose(g[1], torch.tensor([0.0, 3.0]))  # row-major: z0 grows along a row
    assert torch.allclose(g[4], torch.tensor([-2.0, 3.0 - 4.0 / 3]))
    with pytest.raises(ValueError):
        latent.latent_grid([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], 3)
    with pytest.raises(ValueError):
        latent.latent_grid([0.0, 0.0], [1.0, 1.0], 1)


def test_code_range_widens_a_flat_dimension():
    z = torch.tensor([[0.0, 5.0], [2.0, 5.0], [1.0, 5.0]])
    lo, hi = latent.code_range(z)
    assert lo.tolist() == [0.0, 4.5] and hi.tolist() == [2.0, 5.5]


def test_interpolate_codes_is_the_segment():
    a, b = torch.tensor([0.0, 10.0, -1.0]), torch.tensor([4.0, 2.0, 1.0])
    z = latent.interpolate_codes(a, b, 5)
    assert z.shape == (5, 3)
    assert torch.equal(z[0], a) and torch.equal(z[-1], b)
    assert torch.allclose(z[2], (a + b) / 2)
    assert torch.allclose(z[1:] - z[:-1], ((b - a) / 4).expand(4, 3))  # evenly spaced
    with pytest.raises(ValueError):
        latent.interpolate_codes(a, b, 1)
    with pytest.raises(ValueError):
        latent.interpolate_codes(a, b[:2], 4)


def test_project_identity_pca_tsne_and_1d():
    g = torch.Generator().manual_seed(0)
    z2 = torch.randn(40, 2, generator=g)
    p = latent.project(z2)
    assert p.method == "identity" and np.array_equal(p.points, z2.double().numpy())
    # PCA: the first axis carries the dominant direction of the codes
    z5 = torch.randn(60, 5, generator=g) * torch.tensor([5.0, 0.1, 1.0, 0.1, 0.1])
    p = latent.project(z5)
    assert p.method == "pca" and p.points.shape == (60, 2)
    assert p.explained[0] > 0.8 and p.explained[0] >= p.explained[1]
    assert np.allclose(p.transform(z5), p.points)  # new points land where the fitted ones did
    with threadpool_limits(1):  # t-SNE's OpenMP threads only spin on a tiny, shared CPU
        t = latent.project(z5[:30], "tsne", seed=0)
    assert t.method == "tsne" and t.points.shape == (30, 2) and np.isfinite(t.points).all()
    with pytest.raises(ValueError):
        t.transform(z5[:1])
    one = latent.project(torch.arange(5.0)[:, None])
    assert one.method == "1-d" and one.points[:, 1].tolist() == [0.0] * 5
    with pytest.raises(ValueError):
        latent.project(z5, "umap")


def test_silhouette_separated_vs_mixed():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(20)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    tight = centres[y] + 0.1 * torch.randn(60, 2, generator=g)
    assert latent.silhouette(tight, y) > 0.9
    mixed = torch.randn(60, 2, generator=g)
    assert abs(latent.silhouette(mixed, y)) < 0.2
    assert latent.silhouette(tight, torch.zeros(60)) is None  # one label: no score


def test_checkerboard_energy():
    h = w = 28
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = ((i + j) % 2).float()[None, None]  # the stride-2 pattern itself
    flat = torch.full((1, 1, h, w), 0.3)
    yy, xx = i.float() - 13.5, j.float() - 13.5
    blob = torch.exp(-(yy**2 + xx**2) / (2 * 5.0**2))[None, None]
    e = latent.checkerboard_energy(torch.cat([board, flat, blob]))
    assert e.shape == (3,)
    assert e[0] == pytest.approx(1.0)  # all structure is on the period-2 grid
    assert e[1] == 0.0  # nothing but DC
    assert e[2] < 1e-3  # a smooth image has almost none
    # adding a faint checkerboard to the smooth image raises it; RGB works channel-summed
    assert latent.checkerboard_energy(blob + 0.05 * board)[0] > 10 * e[2]
    rgb = torch.cat([board, board, board], 1)
    assert latent.checkerboard_energy(rgb)[0] == pytest.approx(1.0)
    # a period-4 stripe is invisible at period 2 but fully counted at period 4
    stripes = ((j // 2) % 2).float()[None, None]
    assert latent.checkerboard_energy(stripes, period=2)[0] < 1e-9
    assert latent.checkerboard_energy(stripes, period=4)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        latent.checkerboard_energy(blob, period=3)  # 3 does not divide 28


def test_codes_csv_round_trip(tmp_path):
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(1)) * 1e3
    y = torch.tensor([1, 5, 6, 1, 5, 6, 1])
    latent.write_codes_csv(tmp_path / "c.csv", z, y)
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "label,z0,z1,z2"
    z2, y2 = latent.read_codes_csv(tmp_path / "c.csv")
    assert torch.equal(z2, z) and torch.equal(y2, y)  # float32 exact through the text


def test_decoding_a_code_gives_the_reconstruction(run2d, test_split):
    model = load(run2d)
    x = test_split[0][:50]
    z = latent.encode_images(model, x)
    assert z.shape == (50, 2) and z.dtype == torch.float32
    with torch.inference_mode():
        assert torch.equal(z, model.encode(to_float(x)))
    assert torch.allclose(latent.decode_codes(model, z), reconstruct(model, x), atol=1e-6)
    with pytest.raises(ValueError):
        latent.decode_codes(model, torch.zeros(1, 3))


# ---------------------------------------------------------------------------------------------
# Commands


def test_latent_command_map_and_csv(run2d, test_split, tmp_path, capsys):
    out, csv = tmp_path / "map.png", tmp_path / "codes.csv"
    assert main(["latent", str(run2d), "--out", str(out), "--csv", str(csv), "--json"]) == 0
    res = _last_json(capsys)
    x, y = test_split
    assert res["images"] == len(x) == 300 and res["latent_dim"] == 2 and res["method"] == "identity"
    assert -1 <= res["silhouette"] <= 1
    _png(out)
    # the CSV holds the raw codes of exactly these images, in order, with their labels
    lines = csv.read_text().splitlines()
    assert lines[0] == "label,z0,z1" and len(lines) == 1 + len(x)
    codes, labels = latent.read_codes_csv(csv)
    model = load(run2d)
    with torch.inference_mode():
        expect = model.encode(to_float(x))
    assert torch.equal(labels, y)
    assert torch.equal(codes, expect)


def test_latent_command_projects_larger_codes(tiny_run, tmp_path, capsys):
    # tiny_run (conftest) has an 8-D code on digits 0 and 1: PCA by default, t-SNE on request
    assert main(["latent", str(tiny_run), "--out", str(tmp_path / "pca.png"), "--json"]) == 0
    res = _last_json(capsys)
    assert res["method"] == "pca" and len(res["explained_variance"]) == 2
    _png(tmp_path / "pca.png")
    with threadpool_limits(1):
        assert (
            main(
                [
                    "latent",
                    str(tiny_run),
                    "--method",
                    "tsne",
                    "--max-points",
                    "40",
                    "--classes",
                    "0,1",
                    "--out",
                    str(tmp_path / "tsne.png"),
                    "--csv",
                    str(tmp_path / "c.csv"),
                    "--json",
                ]
            )
            == 0
        )
    res = _last_json(capsys)
    assert res["method"] == "tsne" and res["images"] == 40
    _png(tmp_path / "tsne.png")
    codes, labels = latent.read_codes_csv(tmp_path / "c.csv")
    assert codes.shape == (40, 8) and set(labels.tolist()) <= {0, 1}


def test_latent_command_errors(run2d, tmp_path, capsys):
    assert main(["latent", str(tmp_path / "nope"), "--out", str(tmp_path / "m.png")]) == 1
    assert main(["latent", str(run2d), "--classes", "42", "--out", str(tmp_path / "m.png")]) == 1
    assert "convae: error:" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_generate_point_equals_reconstruction(run2d, test_split, tmp_path, capsys):
    # the code of a test image, as the CSV writes it, decodes to that image's reconstruction
    csv = tmp_path / "codes.csv"
    assert main(["latent", str(run2d), "--out", str(tmp_path / "map.png"), "--csv", str(csv)]) == 0
    codes, _ = latent.read_codes_csv(csv)
    k = 123
    z_text = ",".join(f"{v:.9g}" for v in codes[k].tolist())
    fake = tmp_path / "fake.png"
    assert main(["generate", str(run2d), "--z", z_text, "--out", str(fake)]) == 0
    model = load(run2d)
    x = test_split[0][k : k + 1]
    recon = reconstruct(model, x)[0]
    write_png(recon, tmp_path / "recon.png")
    got, want = _png(fake), _png(tmp_path / "recon.png")
    assert got.shape == (28, 28)
    assert (
        np.abs(got.astype(int) - want.astype(int)).max() <= 1
    )  # equal up to float rounding at 8 bits
    assert torch.allclose(latent.decode_codes(model, codes[k : k + 1])[0], recon, atol=1e-6)
    capsys.readouterr()


def test_generate_negative_point_grid_and_maps(run2d, tmp_path, capsys):
    # "-8,0" as a separate argument, as the seed writes it
    assert (
        main(["generate", str(run2d), "--z", "-8,0", "--out", str(tmp_path / "fake.png"), "--json"])
        == 0
    )
    assert _last_json(capsys)["z"] == [-8.0, 0.0]
    model = load(run2d)
    expect = latent.decode_codes(model, torch.tensor([[-8.0, 0.0]]))[0, 0]
    got = _png(tmp_path / "fake.png").astype(np.float64) / 255
    assert np.abs(got - expect.numpy()).max() <= 0.5 / 255 + 1e-6
    assert (
        main(
            [
                "generate",
                str(run2d),
                "--z",
                "-8,0",
                "--with-map",
                "--out",
                str(tmp_path / "two.png"),
            ]
        )
        == 0
    )
    two = _png(tmp_path / "two.png")
    assert two.shape[1] > 2 * two.shape[0] * 0.8  # two panels side by side
    assert (
        main(["generate", str(run2d), "--grid", "5", "--out", str(tmp_path / "grid.png"), "--json"])
        == 0
    )
    res = _last_json(capsys)
    assert res["grid"] == 5 and all(lo < hi for lo, hi in zip(res["lo"], res["hi"], strict=True))
    _png(tmp_path / "grid.png")
    assert (
        main(
            ["generate", str(run2d), "--grid", "4", "--with-map", "--out", str(tmp_path / "gm.png")]
        )
        == 0
    )
    _png(tmp_path / "gm.png")


def test_generate_errors(run2d, tiny_run, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    assert main(["generate", str(run2d), "--z", "1,2,3", "--out", out]) == 1  # 3 values, 2-D code
    assert (
        main(["generate", str(tiny_run), "--grid", "4", "--out", out]) == 1
    )  # grid needs 2-D codes
    assert main(["generate", str(run2d), "--out", out]) == 2  # neither --z nor --grid
    assert main(["generate", str(run2d), "--z", "1,x", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "3 value" in err and "2-D" in err
    assert not Path(out).exists()
    # a larger code: any point decodes, and --with-map marks it in the PCA view
    z = ",".join(["0.5"] * 8)
    assert main(["generate", str(tiny_run), "--z", z, "--with-map", "--out", out]) == 0
    _png(out)


def test_interpolate_strip_and_frames(run2d, test_split, tmp_path, capsys):
    x, y = test_split
    a, b = x[int((y == 1).nonzero()[0])], x[int((y == 6).nonzero()[0])]
    write_png(a, tmp_path / "a.png")
    write_png(b, tmp_path / "b.png")
    frames = tmp_path / "frames"
    argv = [
        "interpolate",
        str(run2d),
        str(tmp_path / "a.png"),
        str(tmp_path / "b.png"),
        "--steps",
        "6",
        "--out",
        str(tmp_path / "strip.png"),
        "--frames",
        str(frames),
        "--json",
    ]
    assert main(argv) == 0
    res = _last_json(capsys)
    strip = _png(tmp_path / "strip.png")
    assert strip.shape[1] > 4 * strip.shape[0]  # one row of 8 images
    files = sorted(frames.glob("*.png"))
    assert len(files) == 6 and res["steps"] == 6
    model = load(run2d)
    ends = reconstruct(model, torch.stack([a, b]))  # the ends are the two reconstructions
    for f, want in ((files[0], ends[0]), (files[-1], ends[1])):
        got = _png(f).astype(np.float64) / 255
        assert np.abs(got - want[0].numpy()).max() <= 0.5 / 255 + 1e-6
    z = latent.encode_images(model, torch.stack([a, b]))
    assert res["z_a"] == pytest.approx(z[0].tolist()) and res["z_b"] == pytest.approx(z[1].tolist())
    assert (
        main(
            [
                "interpolate",
                str(run2d),
                str(tmp_path / "a.png"),
                str(tmp_path / "missing.png"),
                "--out",
                str(tmp_path / "s2.png"),
            ]
        )
        == 1
    )
    assert (
        main(
            [
                "interpolate",
                str(run2d),
                str(tmp_path / "a.png"),
                str(tmp_path / "b.png"),
                "--steps",
                "1",
                "--out",
                str(tmp_path / "s2.png"),
            ]
        )
        == 1
    )


def test_sweep_command(tmp_path, capsys):
    out = tmp_path / "sweep"

    def argv(epochs: str) -> list[str]:
        return [
            "sweep",
            "--data",
            "mnist-sample",
            "--classes",
            "1",
            "--arch",
            "seed-strided",
            "--latent-dims",
            "2,4",
            "--epochs",
            epochs,
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
        ]

    assert main(argv("1")) == 0
    rows = _last_json(capsys)
    assert [r["latent_dim"] for r in rows] == [2, 4]
    for r in rows:
        assert r["compression_ratio"] == pytest.approx(784 / r["latent_dim"])
        assert 0 < r["mse"] < 1 and math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1
        assert r["train_seconds"] > 0 and r["epochs"] == 1
        metrics = json.loads((Path(r["run"]) / "metrics.json").read_text())
        assert metrics["mse"] == r["mse"] and metrics["latent_dim"] == r["latent_dim"]
        assert json.loads((Path(r["run"]) / "config.json").read_text())["train"]["epochs"] == 1
    table = json.loads((out / "sweep.json").read_text())
    assert table["rows"] == rows and table["arch"] == "seed-strided"
    csv = (out / "sweep.csv").read_text().splitlines()
    assert (
        csv[0].startswith("latent_dim,compression_ratio,mse,psnr,ssim,train_seconds")
        and len(csv) == 3
    )
    assert float(csv[1].split(",")[2]) == rows[0]["mse"]
    md = (out / "sweep.md").read_text()
    assert "| 2 | 392.0:1 |" in md and "| 4 | 196.0:1 |" in md
    for name in (
        "quality.png",
        "reconstructions.png",
        "reconstructions-latent-2.png",
        "reconstructions-latent-4.png",
    ):
        _png(out / name)
    # a second call with the same recipe reuses the finished runs and reports the same table
    assert main(argv("1")) == 0
    assert _last_json(capsys) == rows
    # another recipe in the same folder is refused rather than mixed in
    assert main(argv("2")) == 1
    assert "another recipe" in capsys.readouterr().err


def test_sweep_refuses_a_size_the_architecture_cannot_take(tmp_path, capsys):
    # seed-pool keeps a 7x7 map: 10 is no multiple of 49; nothing is trained before the error
    argv = [
        "sweep",
        "--arch",
        "seed-pool",
        "--latent-dims",
        "49,10",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "s"),
    ]
    assert main(argv) == 1
    assert "multiple of 49" in capsys.readouterr().err
    assert not (tmp_path / "s" / "latent-49").exists()
    assert (
        main(
            [
                "sweep",
                "--arch",
                "seed-strided",
                "--latent-dims",
                "4,4",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 1
    )


def test_figures_follow_the_suffix_and_unknown_ones_are_refused(tmp_path):
    from matplotlib.figure import Figure

    from convae.plots import figure_format, save_figure

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    for name, magic in (
        ("a.png", b"\x89PNG"),
        ("a.pdf", b"%PDF"),
        ("a.svg", b"<?xml"),
        ("a", b"\x89PNG"),
    ):
        save_figure(fig, tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(magic), name
    with pytest.raises(ValueError, match=r"a figure is written as .png, .pdf, .svg, not .txt"):
        figure_format(tmp_path / "m.txt")
    assert not (tmp_path / "m.txt").exists()
