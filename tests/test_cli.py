"""The command line end to end through ``main([...])`` on tiny runs in temporary folders: train, eval,
reconstruct, summary, --help, resume, NaN, and user mistakes (one line on stderr, no traceback)."""

from __future__ import annotations

import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import last_json, one_line_error, run_cli
from PIL import Image
from safetensors.torch import load_file

import convae
from convae import cli

train_mod = importlib.import_module("convae.training")

# A tiny but real run: two digits, the default architecture at width 4, one epoch.
TINY = ["--classes", "1,7", "--arch", "convae", "--width", "4", "--latent-dim", "8", "--epochs", "1",
        "--batch-size", "32", "--seed", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """`convae train ... --json` once for the module: (run directory, its JSON line)."""
    d = tmp_path_factory.mktemp("cli") / "run"
    rc, out, err = run_cli(
        "train", *TINY, "--preset", "default", "--out", d, "--json", "--device", "cpu"
    )
    assert rc == 0, err
    return d, last_json(out)


def _png_ok(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


# ---------------------------------------------------------------------------------------------
# train and the run directory


def test_train_json_line(run):
    d, res = run
    assert Path(res["run"]) == d
    for k in (
        "mse",
        "psnr",
        "ssim",
        "compression_ratio",
        "latent_dim",
        "images",
        "train_seconds",
        "epochs",
    ):
        assert k in res, k
    assert res["latent_dim"] == 8 and res["compression_ratio"] == pytest.approx(784 / 8)
    assert res["images"] == 200 and res["epochs"] == 1  # test split: 100 per digit
    assert 0 < res["mse"] < 0.3


def test_run_directory_contents(run):
    d, res = run
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "state-0001.safetensors", "history.jsonl",
            "metrics.json", "loss.png", "reconstructions.png", "trainer.json",
            "report.html"} == names  # fmt: skip
    assert not [n for n in names if n.startswith(".")]  # no temp files left by atomic writes

    cfg = json.loads((d / "config.json").read_text())
    assert cfg["version"] == convae.__version__
    assert cfg["preset"] == "default"
    assert cfg["model"] == {**cfg["model"], "arch": "convae", "width": 4, "latent_dim": 8, "channels": 1,
                            "image_size": 28}  # fmt: skip
    assert cfg["data"]["spec"] == "mnist-sample" and cfg["data"]["classes"] == [1, 7]
    assert (
        cfg["train"]["seed"] == 0
        and cfg["train"]["epochs"] == 1
        and cfg["train"]["batch_size"] == 32
    )
    assert convae.RunConfig.from_dict(cfg).model.arch == "convae"

    hist = [json.loads(s) for s in (d / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 1
    assert {"epoch", "train_loss", "val_loss", "seconds", "lr", "step"} <= set(hist[0])
    assert hist[0]["val_loss"] is not None

    metrics = json.loads((d / "metrics.json").read_text())
    assert {k: metrics[k] for k in ("mse", "psnr", "ssim")} == {
        k: res[k] for k in ("mse", "psnr", "ssim")
    }

    _png_ok(d / "loss.png")
    w, h = _png_ok(d / "reconstructions.png")
    assert w > 2 * h  # a row of 10 inputs above a row of 10 reconstructions

    best = load_file(d / "model.safetensors")
    last = {k[len("model.") :]: v for k, v in load_file(d / "state-0001.safetensors").items()
            if k.startswith("model.")}  # fmt: skip
    model = convae.load(d)
    assert best.keys() == last.keys() == model.state_dict().keys()


def test_train_into_an_existing_run_needs_resume(run):
    d, _ = run
    before = (d / "model.safetensors").read_bytes()
    line = one_line_error(*run_cli("train", *TINY, "--out", d))
    assert "--resume" in line
    assert (d / "model.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# eval


def test_eval_json(run):
    d, res = run
    rc, out, err = run_cli("eval", d, "--json")
    assert rc == 0, err
    m = last_json(out)
    for k in ("mse", "psnr", "ssim", "compression_ratio", "latent_dim", "images"):
        assert k in m, k
    assert m["images"] == 200 and m["latent_dim"] == 8 and m["split"] == "test"
    assert m["mse"] == pytest.approx(res["mse"], rel=1e-9)  # the best model on the same test split


def test_eval_split_and_classes(run):
    d, _ = run
    rc, out, err = run_cli("eval", d, "--split", "val", "--classes", "7", "--json")
    assert rc == 0, err
    assert last_json(out)["images"] == 40
    rc, out, _ = run_cli("eval", d)  # human output
    assert rc == 0 and "MSE" in out and "PSNR" in out


def test_eval_on_images_the_model_cannot_take(run, tmp_path, make_images, write_image_folder):
    d, _ = run
    write_image_folder(tmp_path / "rgb", make_images(12, 3, 32), [0] * 12)
    line = one_line_error(*run_cli("eval", d, "--data", f"folder:{tmp_path / 'rgb'}"))
    assert "3-channel images and the model takes 1: add --channels 1" in line
    rc, out, err = run_cli("eval", d, "--data", f"folder:{tmp_path / 'rgb'}", "--channels", "1",
                           "--split", "train", "--json")  # fmt: skip
    assert rc == 0, err
    assert last_json(out)["images"] > 0


# ---------------------------------------------------------------------------------------------
# reconstruct


def _digits(tmp_path: Path, size: int = 28) -> Path:
    x, _ = convae.load_dataset("mnist-sample", "test", classes=[1, 7])
    d = tmp_path / f"in{size}"
    for i, name in enumerate(["one.png", "sub/two.png", "sub/deeper/three.bmp"]):
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i * 60, 0].numpy()).resize((size, size)).save(p)
    return d


def test_reconstruct_names_and_sizes(run, tmp_path):
    d, _ = run
    src = _digits(tmp_path)
    rc, out, err = run_cli(
        "reconstruct", d, src, src / "one.png", "--out", tmp_path / "out", "--json"
    )
    assert rc == 0, err
    assert last_json(out)["images"] == 4
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "one-2.png",
        "one.png",
        "three.png",
        "two.png",
    ]  # names kept, duplicates numbered
    for n in names:
        assert _png_ok(tmp_path / "out" / n) == (28, 28)
    a = np.asarray(Image.open(tmp_path / "out" / "one.png"))
    b = np.asarray(Image.open(tmp_path / "out" / "one-2.png"))
    assert np.array_equal(a, b)  # the same input twice


def test_reconstruct_keeps_each_size_unless_resized(run, tmp_path):
    d, _ = run
    src = _digits(tmp_path, size=32)
    rc, out, err = run_cli("reconstruct", d, src, "--out", tmp_path / "own")
    assert rc == 0, err
    assert _png_ok(tmp_path / "own" / "two.png") == (32, 32)  # each image at its own size
    rc, out, err = run_cli("reconstruct", d, src, "--out", tmp_path / "out", "--resize")
    assert rc == 0, err
    assert "3" in out
    assert _png_ok(tmp_path / "out" / "two.png") == (28, 28)


# ---------------------------------------------------------------------------------------------
# summary


def test_summary_arch():
    rc, out, err = run_cli("summary", "seed-strided", "--json")
    assert rc == 0, err
    s = last_json(out)
    convs = [
        r["shape"][1:] for r in s["layers"] if r["part"] == "encoder" and r["kind"] == "Conv2d"
    ]
    assert convs == [[16, 14, 14], [32, 7, 7], [12, 1, 1]]
    assert s["latent_dim"] == 12 and s["compression_ratio"] == pytest.approx(784 / 12)
    rc, out, _ = run_cli("summary", "seed-strided")
    assert rc == 0
    assert "[B, 16, 14, 14]" in out and "[B, 32, 7, 7]" in out and "[B, 12, 1, 1]" in out
    assert "65.3:1" in out
    rc, out, _ = run_cli("summary", "seed-dense", "--channels", "3", "--image-size", "32", "--latent-dim", "100",
                         "--json")  # fmt: skip
    assert rc == 0 and last_json(out)["latent_dim"] == 100
    assert last_json(out)["input_shape"] == [3, 32, 32]


def test_summary_run_and_list(run):
    d, _ = run
    rc, out, err = run_cli("summary", d, "--json")
    assert rc == 0, err
    s = last_json(out)
    assert s["arch"] == "convae" and s["latent_dim"] == 8
    assert s["params"] == sum(v.numel() for v in convae.load(d).parameters())
    rc, out, _ = run_cli("summary", "--list", "--json")
    assert rc == 0 and set(last_json(out)) == set(convae.available())


# ---------------------------------------------------------------------------------------------
# help


def _command_paths() -> list[list[str]]:
    parser = cli.build_parser()
    paths = []

    def walk(p, prefix):
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(parser, [])
    return paths


def test_every_help_has_an_example():
    paths = _command_paths()
    names = {p[0] for p in paths}
    assert {"train", "eval", "reconstruct", "summary"} <= names
    for path in [[], *paths]:
        rc, out, err = run_cli(*path, "--help")
        assert rc == 0, (path, err)
        assert "example" in out.lower(), f"`convae {' '.join(path)} --help` shows no example"
    rc, out, _ = run_cli("--version")
    assert rc == 0 and convae.__version__ in out


def test_python_m_convae_help():
    r = subprocess.run(
        [sys.executable, "-m", "convae", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "example" in r.stdout
    for cmd in ("train", "eval", "reconstruct", "summary"):
        assert cmd in r.stdout


# ---------------------------------------------------------------------------------------------
# user mistakes: one line on stderr, non-zero exit, no traceback


@pytest.mark.parametrize(
    "args, says",
    [
        (["eval", "{tmp}/no-such-run"], "no such run directory"),
        (["eval", "{tmp}"], "config.json"),
        (["summary", "{tmp}/no/such/run"], "no such run directory"),
        (["summary", "no-such-arch"], "unknown architecture"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--epochs", "many"], "--epochs"),
        (["train", "--classes", "1,x"], "--classes"),
        (["train", "--channels", "2"], "--channels"),
        (["train", "--decoder", "pixels"], "--decoder"),
        (["train", "--arch", "no-such-arch", "--out", "{tmp}/r"], "unknown architecture"),
        (["train", "--data", "imagenet", "--out", "{tmp}/r"], "unknown dataset"),
        (["train", "--data", "folder:{tmp}/missing", "--out", "{tmp}/r"], "does not exist"),
        (["train", "--classes", "42", "--out", "{tmp}/r"], "--classes"),
        (["train", "--data", "mnist", "--data-dir", "{tmp}", "--out", "{tmp}/r"], "not found"),
        (
            ["train", "--lr", "-1", "--epochs", "1", "--classes", "1", "--out", "{tmp}/r"],
            "learning rate",
        ),
        (
            [
                "train",
                "--precision",
                "fp16",
                "--device",
                "cpu",
                "--classes",
                "1",
                "--out",
                "{tmp}/r",
            ],
            "fp16",
        ),
        (
            [
                "train",
                "--loss",
                "bce",
                "--arch",
                "seed-keras2d",
                "--classes",
                "1",
                "--out",
                "{tmp}/r",
            ],
            "sigmoid",
        ),
        (["train", "--noise", "blur:3", "--classes", "1", "--out", "{tmp}/r"], "noise"),
        (["train", "--resume"], "--out"),
        (["train", "--resume", "--out", "{tmp}"], "nothing to resume"),
        (["train", "--device", "tpu", "--out", "{tmp}/r"], "device"),
        (
            ["reconstruct", "{tmp}/no-such-run", "x.png", "--out", "{tmp}/o"],
            "no such run directory",
        ),
        (["eval"], "run"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_user_mistakes(tmp_path, args, says):
    rc, out, err = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    line = one_line_error(rc, out, err)
    assert says in line
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # no half-made run


def test_reconstruct_mistakes(run, tmp_path):
    d, _ = run
    line = one_line_error(
        *run_cli("reconstruct", d, tmp_path / "missing.png", "--out", tmp_path / "o")
    )
    assert "missing.png" in line
    (tmp_path / "broken.png").write_bytes(b"not a png")
    line = one_line_error(
        *run_cli("reconstruct", d, tmp_path / "broken.png", "--out", tmp_path / "o")
    )
    assert "broken.png" in line


# ---------------------------------------------------------------------------------------------
# resume and NaN through the CLI


RESUMABLE = [
    "--classes",
    "1",
    "--arch",
    "seed-strided",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--seed",
    "3",
]


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    rc, _, err = run_cli(
        "train", *RESUMABLE, "--out", tmp_path / "full", "--json", "--device", "cpu"
    )
    assert rc == 0, err

    def interrupt_after_epoch_1(self, ev):
        if ev["event"] == "epoch" and ev["epoch"] == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cli.ProgressBar, "__call__", interrupt_after_epoch_1)
        rc, out, err = run_cli("train", *RESUMABLE, "--out", tmp_path / "cut", "--device", "cpu")
    assert rc == 130 and "interrupted" in err
    assert not (tmp_path / "cut" / "metrics.json").exists()
    # A null in config.json means the architecture's default (64 for seed-strided, as given above)
    cfg_file = tmp_path / "cut" / "config.json"
    saved = json.loads(cfg_file.read_text())
    saved["train"]["batch_size"] = None
    cfg_file.write_text(json.dumps(saved))
    rc, out, err = run_cli("train", "--resume", "--out", tmp_path / "cut", "--device", "cpu")
    assert rc == 0, err
    assert "run directory" in out
    for name in ("model.safetensors", "state-0002.safetensors"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), (
            name
        )
    strip = lambda p: [{k: v for k, v in json.loads(s).items() if k not in ("seconds", "cpu_seconds")}  # noqa: E731
                       for s in p.read_text().splitlines()]  # fmt: skip
    assert strip(tmp_path / "full" / "history.jsonl") == strip(tmp_path / "cut" / "history.jsonl")
    m_full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    m_cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m_full["mse"] == m_cut["mse"] and m_cut["epochs"] == 2


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    saved = {}
    real_commit = train_mod.commit_epoch
    real_loss_fn = train_mod._loss_fn

    def save_then_remember(run_dir, model, opt, state):  # after epoch 1 is safely on disk ...
        real_commit(run_dir, model, opt, state)
        saved["model"] = (Path(run_dir) / "model.safetensors").read_bytes()

    def loss_fn(name, sigmoid_output):  # ... every later loss is NaN
        f = real_loss_fn(name, sigmoid_output)
        return lambda y, x: f(y, x) * (float("nan") if saved else 1.0)

    monkeypatch.setattr(train_mod, "commit_epoch", save_then_remember)
    monkeypatch.setattr(train_mod, "_loss_fn", loss_fn)
    out_dir = tmp_path / "run"
    line = one_line_error(*run_cli("train", *RESUMABLE, "--out", out_dir, "--device", "cpu", "-q"))
    assert "NaN" in line and "epoch 2" in line
    assert (out_dir / "model.safetensors").read_bytes() == saved["model"]
    assert not (out_dir / "metrics.json").exists()
    assert torch.isfinite(convae.load(out_dir).encoder[0].weight).all()


# ---------------------------------------------------------------------------------------------
# other data sources end to end


def _write_fake_mnist(d: Path) -> None:
    """The four MNIST gzip IDX files (magic 0x0803 images / 0x0801 labels, big-endian dims)."""
    import gzip
    import struct

    from convae.data import REMOTES

    rng = np.random.default_rng(0)
    arrays = {
        "train-images": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train-labels": (np.arange(40) % 4).astype(np.uint8),
        "test-images": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "test-labels": (np.arange(12) % 4).astype(np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for key, r in REMOTES["mnist"].items():
        a = arrays[key]
        head = bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
        (d / r.name).write_bytes(gzip.compress(head + a.tobytes()))


def test_train_and_eval_from_data_dir(tmp_path):
    _write_fake_mnist(tmp_path / "dl")
    args = [
        "--data",
        "mnist",
        "--data-dir",
        tmp_path / "dl",
        "--arch",
        "seed-strided",
        "--epochs",
        "1",
    ]
    rc, out, err = run_cli(
        "train", *args, "--batch-size", "8", "--out", tmp_path / "r", "--json", "--device", "cpu"
    )
    assert rc == 0, err
    assert last_json(out)["images"] == 12
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["data"]["spec"] == "mnist" and cfg["data"]["data_dir"] == str(tmp_path / "dl")
    rc, out, err = run_cli(
        "eval", tmp_path / "r", "--classes", "0,1", "--json"
    )  # the run's own data dir
    assert rc == 0, err
    assert last_json(out)["images"] == 6


def test_offline_download_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("CONVAE_CACHE", str(tmp_path / "cache"))
    rc, out, err = run_cli("train", "--data", "fashion-mnist", "--out", tmp_path / "r")
    # being offline is not the user's mistake: the attempted download is logged, then one error
    *before, line = err.strip().splitlines()
    assert rc == 1 and "Traceback" not in err
    assert all(b.startswith("downloading ") for b in before) and len(before) <= 1, err
    assert line.startswith("convae: error:")
    assert "train-images-idx3-ubyte.gz" in line and "t10k-labels-idx1-ubyte.gz" in line
    assert str(tmp_path / "cache" / "fashion-mnist") in line and "--data-dir" in line
    assert "Traceback" not in one_line_error(
        *run_cli("train", "--data", "fashion-mnist", "--out", tmp_path / "r", "-q")
    )  # -q: only the error
    assert not (tmp_path / "r").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_train_on_an_rgb_folder(tmp_path, make_images, write_image_folder):
    write_image_folder(
        tmp_path / "imgs", make_images(24, 3, 20, seed=4), [i % 2 for i in range(24)], "jpg"
    )
    rc, out, err = run_cli("train", "--data", f"folder:{tmp_path / 'imgs'}", "--image-size", "16",
                           "--arch", "seed-strided", "--epochs", "1", "--batch-size", "8",
                           "--out", tmp_path / "r", "--json", "--device", "cpu")  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["model"]["channels"], cfg["model"]["image_size"]) == (3, 16)  # decided by the data
    assert last_json(out)["compression_ratio"] == pytest.approx(3 * 16 * 16 / 12)
    model = convae.load(tmp_path / "r")
    assert model.input_shape == (3, 16, 16)
    w, h = _png_ok(tmp_path / "r" / "reconstructions.png")
    assert w > h


def test_tiny_folder_without_test_or_val_split(tmp_path, make_images, write_image_folder):
    """Under 10 images there is no test split; with --val-fraction 0 no val split either. The run
    must still finish (metrics on the training images) instead of failing after training."""
    write_image_folder(tmp_path / "imgs", make_images(6, 1, 16, seed=8))
    rc, out, err = run_cli("train", "--data", f"folder:{tmp_path / 'imgs'}", "--val-fraction", "0",
                           "--arch", "seed-strided", "--epochs", "1", "--out", tmp_path / "r", "--json",
                           "--device", "cpu")  # fmt: skip
    assert rc == 0, err
    assert last_json(out)["images"] == 6
    assert "no test images" in err
    for name in ("metrics.json", "loss.png", "reconstructions.png"):
        assert (tmp_path / "r" / name).is_file()
    # with the progress bar on, the warning gets its own line, not the end of the bar's
    rc, out, err = run_cli("train", "--data", f"folder:{tmp_path / 'imgs'}", "--val-fraction", "0",
                           "--arch", "seed-strided", "--epochs", "1", "--out", tmp_path / "r2",
                           "--device", "cpu")  # fmt: skip
    assert rc == 0, err
    line = next(ln for ln in err.split("\n") if "no test images" in ln)  # "\r" redraws the bar
    assert "step" not in line and "epoch" not in line, line


def test_unreadable_images_skipped_and_counted_or_strict(
    run, tmp_path, make_images, write_image_folder
):
    d, _ = run
    write_image_folder(tmp_path / "imgs", make_images(12, 1, 28, seed=9), [0] * 6 + [1] * 6)
    (tmp_path / "imgs" / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    data = ["--data", f"folder:{tmp_path / 'imgs'}", "--split", "train"]
    rc, out, err = run_cli("eval", d, *data)
    assert rc == 0, err
    assert "skipped 1 unreadable file" in err
    line = one_line_error(*run_cli("eval", d, *data, "--strict"))
    assert "broken.jpg" in line


def test_flags_that_would_be_ignored_or_mangled_are_errors(run, make_images):
    run_dir, _ = run
    # a run's model is what it was trained as: architecture flags are refused, not ignored
    msg = one_line_error(*run_cli("summary", str(run_dir), "--latent-dim", "5"))
    assert "--latent-dim describe an architecture, not a run" in msg
    # an empty item in a label list is a typo, not a shorter list
    msg = one_line_error(*run_cli("eval", str(run_dir), "--classes", "1,,7"))
    assert "empty item" in msg
    from convae.denoise import denoise_tensor

    model = convae.load(run_dir)
    with pytest.raises(ValueError, match=r"images must be \[N, 1, 28, 28\] for this model"):
        denoise_tensor(model, torch.rand(2, 1, 56, 56))


def test_a_folder_too_small_for_a_test_split_says_which_split_it_reports(
    tmp_path, make_images, write_image_folder
):
    write_image_folder(tmp_path / "one", make_images(1, 1, 16))
    rc, out, err = run_cli("train", "--data", f"folder:{tmp_path / 'one'}", "--arch", "seed-keras2d",
                           "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "r"))  # fmt: skip
    assert rc == 0, err
    assert "training MSE" in out and "test MSE" not in out
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["split"] == "training"


def test_latent_and_generate_refuse_an_output_format_they_cannot_write(run, tmp_path):
    run_dir, _ = run
    msg = one_line_error(*run_cli("latent", str(run_dir), "--out", str(tmp_path / "m.txt"),
                                         "--csv", str(tmp_path / "c.csv")))  # fmt: skip
    assert "a figure is written as .png, .pdf, .svg, not .txt" in msg
    assert not (tmp_path / "m.txt").exists() and not (tmp_path / "c.csv").exists()
    z = ",".join(["0"] * 8)
    msg = one_line_error(
        *run_cli("generate", str(run_dir), "--z", z, "--out", str(tmp_path / "g.pdf"))
    )
    assert "the decoded image is written as .png" in msg
    rc, _, err = run_cli("latent", str(run_dir), "--out", str(tmp_path / "m.pdf"))
    assert rc == 0, err
    assert (tmp_path / "m.pdf").read_bytes().startswith(b"%PDF")


def test_a_closed_stdout_pipe_is_not_an_error():
    import subprocess
    import sys

    cmd = (
        f"{shlex.quote(sys.executable)} -m convae summary seed-strided | true"  # reader gone first
    )
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert r.stderr == ""
