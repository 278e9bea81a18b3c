"""Export: every architecture to ONNX and TorchScript with parity against convae, the sidecar,
the numpy anomaly score, failures that leave nothing behind, the CLI, and the docs' example run
with torch and convae blocked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

import convae
from convae import anomaly, export
from convae.checkpoint import save_weights, write_json
from convae.config import DataConfig, ModelConfig, RunConfig
from convae.data import load_split
from convae.inference import reconstruct
from convae.metrics import ssim_per_image
from convae.models import available, build_model, resolve_model_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "export.md"
FULLY_CONV = {"seed-pool", "seed-upsample", "convae-map", "hyperprior"}
NO_CODE = {"convae-unet"}  # fully convolutional too, without a code


def make_run(root: Path, arch: str, seed: int = 0, **model_kw) -> Path:
    """A run directory without training: a seeded tiny model of ``arch``, BatchNorm statistics and
    the mean image (where the architecture has one) set to non-trivial values, so every layer
    of the exported graph matters."""
    mc = resolve_model_config(ModelConfig(arch=arch, width=4, **model_kw))
    torch.manual_seed(seed)
    model = build_model(mc).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        if model.output_offset is not None:
            model.set_mean_image(torch.rand(model.input_shape))
    run = root / arch
    run.mkdir(parents=True)
    cfg = RunConfig(model=mc, data=DataConfig(spec="mnist-sample", classes=(0, 1)))
    write_json(run / "config.json", cfg.to_dict())
    save_weights(model, run / "model.safetensors")
    return run


# ---------------------------------------------------------------------------------------------
# Every architecture, both formats, all parts


@pytest.mark.parametrize("fmt", list(export.FORMATS))
@pytest.mark.parametrize("arch", list(available()))
def test_every_architecture_exports_with_parity(tmp_path, arch, fmt):
    run = make_run(tmp_path, arch)
    parts = export.PARTS
    if arch in NO_CODE:  # a restoration network exports whole; its parts are a one-line error
        parts = ("autoencoder",)
        for part in ("encoder", "decoder"):
            with pytest.raises(ValueError, match="no code"):
                export.export_run(run, format=fmt, part=part, out=tmp_path / "out")
    for part in parts:
        res = export.export_run(run, format=fmt, part=part, out=tmp_path / "out")
        par = res["parity"]
        print(f"{arch:14} {fmt:11} {part:11} max |diff| {par['max_abs_diff']:.2g}")
        assert par["max_abs_diff"] <= export.TOLERANCE
        cases = {(tuple(c["size"]), c["batch"]) for c in par["cases"]}
        # stride 16: the 28 px digits are cropped to 16 px
        sizes = ([(16, 16), (16, 32)] if arch in NO_CODE | {"hyperprior"} else
                 [(28, 28), (28, 56)] if arch in FULLY_CONV else [(28, 28)])  # fmt: skip
        assert cases == {(s, b) for s in sizes for b in (1, 8)}
        model_file, side_file = map(Path, res["files"])
        assert model_file.is_file() and side_file.is_file()
        side = json.loads(side_file.read_text())
        assert side["part"] == part and side["size"]["fully_conv"] == (arch in FULLY_CONV | NO_CODE)
        assert side["parity"]["max_abs_diff"] == par["max_abs_diff"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{p}{export.FORMATS[fmt]}{j}" for p in parts for j in ("", ".json")
    )


def test_onnx_contract_uint8_in_dynamic_sizes_out(tmp_path):
    """The exported file as a runtime sees it: uint8 input, any batch, any multiple of the stride
    (here 8: depth 3), outputs in [0, 1] of the input's size; padding gives other sizes."""
    import onnxruntime as ort

    run = make_run(tmp_path, "convae-map", depth=3, image_size=32, padding="reflect")
    res = export.export_run(run, out=tmp_path / "out")
    assert res["parity"]["sizes"] == [[24, 24], [24, 48]]  # 28 px digits cropped to 8's multiple
    assert res["inputs"][0] == {"name": "image", "shape": ["N", 1, "H", "W"], "dtype": "uint8",
                                "range": [0, 255], "layout": "NCHW"}  # fmt: skip
    sess = ort.InferenceSession(res["files"][0], providers=["CPUExecutionProvider"])
    model = convae.load(run)
    for shape in [(3, 1, 16, 40), (1, 1, 64, 16)]:  # multiples of 8, at least 2 x 8
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        y = sess.run(None, {"image": x.numpy()})[0]
        assert y.dtype == np.float32 and y.shape == shape and 0 <= y.min() and y.max() <= 1
        assert np.abs(y - reconstruct(model, x).numpy()).max() <= export.TOLERANCE
    x = torch.randint(0, 256, (2, 1, 21, 30), dtype=torch.uint8)  # not a multiple of 8
    xp = export.pad_to_stride(x.numpy(), 8)
    y = sess.run(None, {"image": xp})[0][..., :21, :30]
    assert np.abs(y - reconstruct(model, x).numpy()).max() <= export.TOLERANCE


# ---------------------------------------------------------------------------------------------
# Anomaly scores with numpy alone


@pytest.mark.parametrize("size", [16, 9])  # the Gaussian window, and the box window below 11 px
def test_numpy_ssim_is_scikit_image(size):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, size, size + 3, generator=g)
    y = (x + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    win = export._ssim_window(size, size + 3)
    ours = export._ssim(x.double().numpy(), y.double().numpy(), win)
    assert np.allclose(ours, ssim_per_image(x, y), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def anomaly_run(tiny_run, tmp_path_factory) -> Path:
    """A private copy of the tiny run (digits 0 and 1 are "normal") with a calibrated detector."""
    run = tmp_path_factory.mktemp("export-anomaly") / "run"
    shutil.copytree(tiny_run, run)
    anomaly.ensure_detector(convae.load(run), score="mse+ssim")
    return run


def test_numpy_scores_are_convae_scores(anomaly_run):
    model = convae.load(anomaly_run)
    x, _ = load_split(replace(model.run_config.data, classes=None), "test")
    x = x[::10]
    recon = reconstruct(model, x)
    for score in export.EXPORT_SCORES:
        det = anomaly.calibrate(model, x[:40], score=score)
        ours = export.numpy_scores(x.numpy(), recon.numpy(), export.anomaly_spec(det))
        ref = anomaly.score_images(model, x, det, recon=recon)
        assert np.allclose(ours, ref, rtol=1e-6, atol=0), score


def test_export_carries_the_threshold_and_checks_flags(anomaly_run, tmp_path):
    res = export.export_run(anomaly_run, out=tmp_path)
    det = anomaly.load_detector(anomaly_run)
    an, par = res["anomaly"], res["parity"]["anomaly"]
    assert an["threshold"] == det.threshold and an["scales"] == det.scales
    assert an["score"] == "mse+ssim" and an["flag"] == "score > threshold"
    assert par["checked"] and par["flags_equal"] and par["images"] == 1000
    assert par["max_score_diff_over_threshold"] <= export.TOLERANCE
    enc = export.export_run(anomaly_run, part="encoder", out=tmp_path)
    assert "anomaly" not in enc  # only the autoencoder's output defines the score


# ---------------------------------------------------------------------------------------------
# Failures: one line, nothing written


def test_parity_failure_leaves_no_file(tmp_path, monkeypatch, tiny_run):
    real = export._reference

    def off(model, part, x):
        inp, ref = real(model, part, x)
        return inp, ref + 1e-3  # as if the exported graph computed something else

    monkeypatch.setattr(export, "_reference", off)
    out = tmp_path / "a" / "b"
    rc, stdout, err = run_cli("export", tiny_run, "--out", out)
    assert rc == 1 and stdout == ""
    assert err.startswith("convae: error: the exported autoencoder differs from convae by up to")
    assert len(err.strip().splitlines()) == 1 and "nothing written" in err
    assert list(tmp_path.iterdir()) == []  # not even the folder, nor a temporary one


def test_broken_runs_are_one_line_errors(tmp_path, tiny_run):
    cases = {}
    cases["missing"] = tmp_path / "nowhere"
    (tmp_path / "empty").mkdir()
    cases["empty"] = tmp_path / "empty"
    for name, damage in [("truncated", lambda p: p.write_bytes(p.read_bytes()[:200])),
                         ("no-config", lambda p: (p.parent / "config.json").unlink()),
                         ("bad-config", lambda p: (p.parent / "config.json").write_text("{"))]:  # fmt: skip
        run = tmp_path / name
        shutil.copytree(tiny_run, run)
        damage(run / "model.safetensors")
        cases[name] = run
    for name, run in cases.items():
        for cmd in ("export", "report"):
            args = [cmd, run] + (["--out", tmp_path / f"out-{name}"] if cmd == "export" else [])
            rc, stdout, err = run_cli(*args)
            assert rc == 1, (name, cmd)
            assert err.startswith("convae: error: ") and len(err.strip().splitlines()) == 1, err
    assert not any(p.name.startswith("out-") for p in tmp_path.iterdir())


def test_existing_export_needs_overwrite(tmp_path, tiny_run):
    assert run_cli("export", tiny_run, "--out", tmp_path, "--part", "encoder")[0] == 0
    rc, _, err = run_cli("export", tiny_run, "--out", tmp_path, "--part", "encoder")
    assert rc == 1 and "--overwrite" in err
    rc, _, _ = run_cli("export", tiny_run, "--out", tmp_path, "--part", "encoder", "--overwrite")
    assert rc == 0
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli("export", tiny_run, "--out", tmp_path / "file")
    assert rc == 1 and "is a file" in err


def test_cli_prints_parity_and_json(tmp_path, tiny_run):
    rc, out, _ = run_cli("export", tiny_run, "--format", "torchscript", "--out", tmp_path)
    assert rc == 0
    assert re.search(r"parity with convae .*max \|diff\| \S+ \(tolerance 0.0001\) on 16 "
                     r"mnist-sample test images, batches of 1 and 8", out), out  # fmt: skip
    rc, out, _ = run_cli("export", tiny_run, "--part", "decoder", "--out", tmp_path, "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and res["inputs"][0]["name"] == "code" and res["inputs"][0]["shape"] == ["N", 8]
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript (and still loads it)
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(tmp_path / "autoencoder.pt"))
    x = load_split(convae.load(tiny_run).run_config.data, "test")[0][:3]
    assert torch.allclose(loaded(x), reconstruct(convae.load(tiny_run), x), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The docs' example, as written, without torch or convae

_BLOCKER = """
import sys, importlib.abc
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "convae"):
            raise ImportError(f"{name} is blocked: the example must run without it")
sys.meta_path.insert(0, _Blocked())
exec(compile(open("example.py").read(), "example.py", "exec"))
assert not any(m.split(".")[0] in ("torch", "convae") for m in sys.modules)
"""


def doc_example() -> str:
    text = DOC.read_text()
    marker = text.index("<!-- example: tests/test_export.py runs this block -->")
    m = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert m is not None
    return m.group(1)


def test_docs_example_runs_with_onnxruntime_and_numpy_only(anomaly_run, tmp_path):
    model = convae.load(anomaly_run)
    det = anomaly.load_detector(anomaly_run)
    x, y = load_split(replace(model.run_config.data, classes=None), "test")
    x = x[::50]  # 20 digits, two of each
    export.export_run(anomaly_run, out=tmp_path / "exported")
    np.save(tmp_path / "digits.npy", x.numpy())
    (tmp_path / "example.py").write_text(doc_example())
    proc = subprocess.run([sys.executable, "-c", _BLOCKER], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.strip().splitlines()]
    scores = np.array([float(r[1]) for r in rows])
    ref = anomaly.score_images(model, x, det)
    assert np.allclose(scores, ref, rtol=1e-6, atol=0)
    assert [r[2] == "anomaly" for r in rows] == det.flag(ref).tolist()
    recon = np.load(tmp_path / "reconstructions.npy")
    assert recon.dtype == np.uint8 and recon.shape == tuple(x.shape)
