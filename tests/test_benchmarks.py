"""The benchmark scripts that no other test runs, on tiny settings, so they keep working."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_benchmark_runs_on_cpu(capsys):
    gpu = _script("gpu")
    assert (
        gpu.main(["--device", "cpu", "--images", "100", "--epochs", "1", "--batch-size", "32"]) == 0
    )
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        res["images"] == 100 and res["epochs"] == 1 and res["device"] == "cpu"
    )  # sample repeated/cut
    assert res["seconds"] > 0 and 0 < res["test_mse"] < 1 and res["peak_gpu_mb"] is None


def test_optimizer_step_benchmark(capsys):
    bench = _script("optim_step")
    args = ["seed-pool", "--threads", "1", "--steps", "2", "--rounds", "1", "--json"]
    assert bench.main(args) == 0
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["arch"] == "seed-pool" and row["params"] == 1077
    assert set(row["ms_per_step"]) == {"torch AdamW (foreach)", "convae adamw", "convae muon"}
    assert all(v > 0 for v in row["ms_per_step"].values())


def test_latent_separation_benchmark_passes_recipe_flags(tmp_path, capsys):
    bench = _script("latent_separation")
    flags = "--epochs 1 --seeds 0 --warmup 0.3 --noise gaussian:0.2 --no-baseline --json --out"
    args = [*flags.split(), str(tmp_path)]
    assert bench.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    (row,) = json.loads(out[-1])
    assert row["variant"] == "--epochs 1 --warmup 0.3 --noise gaussian:0.2"
    assert -1 <= row["silhouette"] <= 1 and set(row["pair_silhouette"]) == {"1-5", "1-6", "5-6"}
    assert row["steps"] == 33 and Path(row["map"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((Path(row["map"]).parent / "config.json").read_text())
    assert cfg["train"]["noise"] == ["gaussian:0.2"] and cfg["train"]["warmup"] == 0.3
    assert cfg["model"]["arch"] == "seed-keras2d" and cfg["data"]["classes"] == [1, 5, 6]
    table_row = "| --epochs 1 --warmup 0.3 --noise gaussian:0.2 | 0 | 33 |"
    assert any(line.startswith(table_row) for line in out)


def test_conv_layers_benchmark_matches_the_modules(capsys):
    bench = _script("conv_layers")
    args = "--batch 2 --threads 1 --iters 1 --rounds 1 --json".split()
    assert bench.main(args) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # all six seed-strided layers have a product form, and it computes the same thing
    assert [r["layer"] for r in rows] == [f"encoder.{i}" for i in (0, 2, 4)] + [
        f"decoder.{i}" for i in (0, 2, 4)
    ]
    assert all(r["gemm_max_rel_err"] < 1e-4 for r in rows)
    assert all(set(r["us_fwd_bwd"]) == {"torch fp32", "torch bf16", "GEMM fp32"} for r in rows)


def test_speed_reference_runs_the_seeds_torch_modules():
    """speed.py's reference loop trains the seeds' model as the seeds write it: torch's conv
    modules, not convae's matrix-product code layers - the same function and parameters."""
    import torch

    from convae.config import ModelConfig
    from convae.models import CodeConv2d, CodeConvTranspose2d, build_model

    speed = _script("speed")
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="seed-strided", latent_dim=12, mean_image=False))
    assert any(isinstance(m, (CodeConv2d, CodeConvTranspose2d)) for m in model.modules())
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        speed._torch_modules(model)
        after = model(x)
    assert not any(isinstance(m, (CodeConv2d, CodeConvTranspose2d)) for m in model.modules())
    assert type(model.encoder[4]) is torch.nn.Conv2d
    assert type(model.decoder[0]) is torch.nn.ConvTranspose2d
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_inspect_demo_writes_normal_tiles_and_parts(tmp_path):
    from PIL import Image

    assert _script("inspect_demo").main([str(tmp_path)]) == 0
    assert len(list((tmp_path / "normal").glob("*.png"))) == 8
    with Image.open(tmp_path / "parts" / "brick_defects.png") as im:
        assert im.size == (512, 512) and im.mode == "RGB"
    with Image.open(tmp_path / "parts" / "chelsea.png") as im:
        assert im.size == (451, 300)


@pytest.mark.slow
def test_texture_benchmark_smoke(tmp_path, capsys, monkeypatch):
    from convae import texture_bench

    monkeypatch.setattr(texture_bench, "SPLITS", 5)
    bench = _script("inspect_textures")
    args = ["--textures", "brick", "--kinds", "blob,colour", "--contrasts", "20", "--epochs", "1",
            "--out", str(tmp_path), "--figure", str(tmp_path / "fig.png"), "--json"]  # fmt: skip
    assert bench.main(args) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sets = res["brick"]["convae"]["sets"]
    assert set(sets) == {"blob/20", "colour/20"}
    assert sets["colour/20"]["pixel_auroc"] > 0.9  # the chroma of the residual
    for m in ("convae", "pca"):
        assert 0 <= res["mean"][m]["subtle_pro"] <= 1
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "results.json").is_file()
