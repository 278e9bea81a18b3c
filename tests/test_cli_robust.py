"""The command line under stress: the shared flags on every command, resuming with the command
that started a run, signals, file-system errors, infinite and NaN results, symbolic links in the
folders a command writes, and the shape of the CLI code itself."""

from __future__ import annotations

import argparse
import ast
import errno
import importlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error as _one_line_error
from cli_helpers import run_cli, snapshot
from PIL import Image
from safetensors.torch import load_file, save_file

import convae
from convae import cli
from convae.cli import train as cli_train
from convae.config import RunConfig
from convae.data import load_dataset
from convae.images import write_png
from convae.runs import resolve_config

train_mod = importlib.import_module("convae.training")
CLI_DIR = Path(cli.__file__).parent


def one_line_error(rc: int, out: str, err: str) -> str:
    return _one_line_error(rc, out, err, code=1)  # every failure here is an error, exit 1


def strict_json(line: str):
    """Parse as strict JSON: NaN / Infinity tokens are refused, as any other JSON reader would."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the session's tiny run (classes 0 and 1, 1 epoch), free to modify."""
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    return d


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Two 28 x 28 digit PNGs."""
    d = tmp_path_factory.mktemp("digits")
    x, _ = load_dataset("mnist-sample", "test", classes=[0, 1])
    for i in range(2):
        write_png(x[i * 150], d / f"d{i}.png")
    return d


# ---------------------------------------------------------------------------------------------
# The code: thin commands, short functions, public shared helpers, --device declared once


def _cli_functions():
    for f in sorted(CLI_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                yield f.name, node.name, node.end_lineno - node.lineno + 1


def test_cli_functions_are_short_and_commands_thin():
    too_long = [f for f in _cli_functions() if f[2] > 60]
    assert not too_long, too_long
    fat_commands = [f for f in _cli_functions() if f[1].startswith("cmd_") and f[2] > 45]
    assert not fat_commands, fat_commands


def test_cli_modules_import_no_private_names():
    for f in sorted(CLI_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
                assert not private, f"{f.name} imports {private} from {node.module}"


def test_device_and_split_flags_are_declared_once():
    text = {f.name: f.read_text() for f in CLI_DIR.glob("*.py")}
    for flag in ('"--device"', '"--split"', '"--threads"', '"--json"'):
        where = [n for n, t in text.items() if flag in t]
        assert where == ["common.py"], (flag, where)


def _leaf_parsers():
    """(command path, parser) of every sub-command that has no sub-commands of its own."""
    out = []

    def walk(p, path):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append((path, p))
        for action in subs:
            assert "add_parser" not in vars(action)  # the real method, not a patched one
            for name, sub in action.choices.items():
                walk(sub, [*path, name])

    walk(cli.build_parser(), [])
    return out


def _options(p) -> dict[str, object]:
    return {o: a for a in p._actions for o in a.option_strings}


MODEL_COMMANDS = {"train", "eval", "reconstruct", "latent", "generate", "interpolate", "sweep",
                  "encode", "decode", "denoise", "anomaly", "bench codec", "bench denoise",
                  "bench anomaly"}  # fmt: skip


def test_every_command_gets_the_common_flags_and_the_same_device_default():
    leaves = _leaf_parsers()
    assert {" ".join(path) for path, _ in leaves} >= MODEL_COMMANDS | {"summary", "info"}
    for path, p in leaves:
        opts = _options(p)
        assert {"--json", "-q", "--quiet", "-v", "--verbose"} <= set(opts), path
        if "--device" in opts:
            assert opts["--device"].default == "auto", path
        if " ".join(path) in MODEL_COMMANDS:
            assert "--threads" in opts, path
        if "--split" in opts:
            assert list(opts["--split"].choices) == ["train", "val", "test", "all"], path


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "R"],
        ["reconstruct", "R", "x.png", "--out", "o"],
        ["denoise", "R", "x.png", "--out", "o"],
        ["anomaly", "R", "x.png"],
        ["encode", "R", "x.png", "--out", "x.cae"],
        ["decode", "x.cae", "--out", "o"],
        ["latent", "R", "--out", "m.png"],
        ["generate", "R", "--z", "0,0", "--out", "g.png"],
        ["interpolate", "R", "a.png", "b.png", "--out", "s.png"],
    ],
)
def test_threads_flag_is_accepted(argv):
    args = cli.build_parser().parse_args([*argv, "--threads", "3", "--json", "-q"])
    assert args.threads == 3 and args.json and args.quiet


@pytest.mark.parametrize(
    "cmd",
    [
        ["eval", "{run}", "--split", "val"],
        ["reconstruct", "{run}", "{digits}", "--out", "{tmp}/o"],
        ["latent", "{run}", "--split", "val", "--out", "{tmp}/m.png"],
        ["generate", "{run}", "--z", ",".join(["0"] * 8), "--out", "{tmp}/g.png"],
        ["interpolate", "{run}", "{digits}/d0.png", "{digits}/d1.png", "--out", "{tmp}/s.png"],
        ["denoise", "{run}", "{digits}", "--out", "{tmp}/d"],
    ],
)
def test_threads_flag_sets_torch_threads(cmd, tiny_run, digits, tmp_path):
    subs = {"{run}": str(tiny_run), "{digits}": str(digits), "{tmp}": str(tmp_path)}
    args = [a for a in cmd]
    for k, v in subs.items():
        args = [a.replace(k, v) for a in args]
    before = torch.get_num_threads()
    try:
        rc, _, err = run_cli(*args, "--threads", "2", "-q")
        assert rc == 0, err
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_split_all_is_every_image(tiny_run):
    counts = {}
    for split in ("train", "val", "test", "all"):
        rc, out, err = run_cli("eval", tiny_run, "--split", split, "--json")
        assert rc == 0, err
        counts[split] = strict_json(out.strip().splitlines()[-1])["images"]
    assert counts["all"] == counts["train"] + counts["val"] + counts["test"] == 1000


# ---------------------------------------------------------------------------------------------
# Data flags for photo training


def test_photo_flags_map_onto_the_data_config():
    args = cli.build_parser().parse_args(
        [
            "train",
            "--data",
            "folder:photos",
            "--crop",
            "64",
            "--crops-per-epoch",
            "512",
            "--split-by",
            "folder",
            "--max-side",
            "1024",
        ]  # fmt: skip
    )
    d = cli_train.build_run_config(args).data
    assert (d.spec, d.crop, d.crops_per_epoch, d.split_by, d.max_side) == (
        "folder:photos", 64, 512, "folder", 1024)  # fmt: skip
    assert cli_train.build_run_config(cli.build_parser().parse_args(["train"])).data.crop is None


def test_train_on_random_crops_of_a_folder(tmp_path, make_images, write_image_folder):
    write_image_folder(tmp_path / "imgs", make_images(12, 1, 24, seed=5))
    rc, out, err = run_cli("train", "--data", f"folder:{tmp_path / 'imgs'}", "--crop", "16",
                           "--crops-per-epoch", "64", "--max-side", "40", "--arch", "convae",
                           "--width", "4", "--latent-dim", "8", "--epochs", "1", "--batch-size",
                           "16", "--out", tmp_path / "r", "--json", "--device", "cpu")  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["data"]["crop"], cfg["data"]["crops_per_epoch"], cfg["data"]["max_side"]) == (
        16, 64, 40)  # fmt: skip
    assert cfg["model"]["image_size"] == 16  # the model takes the crops
    assert strict_json(out.strip().splitlines()[-1])["epochs"] == 1


# ---------------------------------------------------------------------------------------------
# Resume: the command that started the run, with --resume added

SHORT = ["train", "--classes", "1", "--arch", "seed-strided", "--epochs", "2", "--batch-size",
         "64", "--seed", "3", "--device", "cpu", "-q"]  # fmt: skip


def _interrupt_after_epoch_1(self, ev):
    if ev["event"] == "epoch" and ev["epoch"] == 1:
        raise KeyboardInterrupt


def test_the_same_command_with_resume_continues_exactly(tmp_path, monkeypatch):
    rc, _, err = run_cli(*SHORT, "--out", tmp_path / "full")
    assert rc == 0, err
    monkeypatch.chdir(tmp_path)  # no --out: the run goes to runs/<time>-<arch>-<data>
    with monkeypatch.context() as m:
        m.setattr(cli.ProgressBar, "__call__", _interrupt_after_epoch_1)
        rc, out, err = run_cli(*SHORT)
    assert rc == 130
    (line,) = err.strip().splitlines()
    assert line.startswith("convae: interrupted; run directory runs/"), line
    assert "last committed epoch 1 of 2" in line
    command = line.split("continue it with: ")[1]
    (run,) = (tmp_path / "runs").iterdir()
    assert command == shlex.join(["convae", *SHORT, "--out", f"runs/{run.name}", "--resume"])
    assert not (run / "metrics.json").exists()
    rc, out, err = run_cli(*shlex.split(command)[1:], "--json")
    assert rc == 0, err
    cut = strict_json(out.strip().splitlines()[-1])
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert cut["mse"] == full["mse"] and cut["epochs"] == 2


def test_resume_names_every_flag_that_differs(tiny_run):
    before = snapshot(tiny_run)
    line = one_line_error(*run_cli("train", "--classes", "0,1", "--width", "4", "--epochs", "20",
                                   "--lr", "0.001", "--mean-image", "--out", tiny_run,
                                   "--resume"))  # fmt: skip
    assert line == (
        "convae: error: --epochs 20 differs from the run's 1; --lr 0.001 differs from the run's "
        "0.01; --mean-image differs from the run's --no-mean-image (to train differently, start "
        "a new run)"
    )
    assert snapshot(tiny_run) == before


def _resolved(argv: list[str]) -> RunConfig:
    cfg = cli_train.build_run_config(cli.build_parser().parse_args(["train", *argv]))
    return resolve_config(cfg, 1, 28)


def test_a_presets_values_count_as_given_when_resuming():
    stored = _resolved(["--preset", "denoise", "--epochs", "1"])
    parse = cli.build_parser().parse_args
    same = parse(["train", "--preset", "denoise", "--epochs", "1", "--lr", "0.006"])
    assert cli_train.resume_differences(same, stored) == []
    assert cli_train.resume_differences(parse(["train", "--epochs", "1"]), stored) == []
    other = cli_train.resume_differences(parse(["train", "--preset", "anomaly"]), stored)
    assert "--preset anomaly (latent_dim 16) differs from the run's 128" in other
    assert "--preset anomaly (epochs 30) differs from the run's 1" in other
    assert "--preset anomaly (lr 0.003) differs from the run's 0.006" in other
    # a preset field left to the architecture (None) agrees with whatever the run resolved it to
    codec = ["--preset", "codec", "--epochs", "1"]
    assert cli_train.resume_differences(parse(["train", *codec]), _resolved(codec)) == []


def test_resume_of_a_run_killed_before_its_first_epoch_starts_over(tiny_run, tmp_path):
    d = tmp_path / "killed"
    d.mkdir()
    shutil.copy(tiny_run / "config.json", d / "config.json")
    rc, out, err = run_cli("train", "--classes", "0,1", "--out", d, "--resume", "--json")
    assert rc == 0, err
    assert strict_json(out.strip().splitlines()[-1])["epochs"] == 1
    assert (d / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# Signals and interrupts


def test_ctrl_c_while_loading_data_is_one_line(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "training_data", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    rc, out, err = run_cli("train", "--out", tmp_path / "r", "--device", "cpu")
    assert rc == 130 and "Traceback" not in err
    assert err.strip() == (
        f"convae: interrupted; the run directory {tmp_path / 'r'} was not started; nothing to resume"
    )
    assert signal.getsignal(signal.SIGTERM) is before  # main() puts the previous handler back


def test_sigterm_is_a_clean_stop_with_exit_code_143(tmp_path, monkeypatch):
    def terminate(self, ev):
        if ev["event"] == "epoch" and ev["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by main(): raises where training is

    monkeypatch.setattr(cli.ProgressBar, "__call__", terminate)
    rc, _, err = run_cli(*SHORT, "--out", tmp_path / "r")
    assert rc == 143
    (line,) = err.strip().splitlines()
    assert line.startswith(f"convae: interrupted by SIGTERM; run directory {tmp_path / 'r'}:")
    assert not list((tmp_path / "r").glob(".convae-*")) and not (tmp_path / "r" / ".lock").exists()


def _start_training(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "convae", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT; a user's foreground command does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize(
    "sig, code",
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
)
def test_a_signal_mid_training_leaves_a_resumable_run(sig, code, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--classes", "1", "--arch", "seed-strided", "--epochs", "12", "--batch-size",
            "64", "--seed", "3", "--device", "cpu", "--threads", "1", "-q", "--out", str(out)]  # fmt: skip
    proc = _start_training(args, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not (out / "trainer.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "training did not commit an epoch"
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    (line,) = stderr.strip().splitlines()
    assert str(out) in line and "last committed epoch" in line, line
    command = line.split("continue it with: ")[1]
    assert command == shlex.join(["convae", *args, "--resume"])
    assert not list(out.glob(".convae-*.tmp")) and not (out / ".lock").exists()
    assert not (out / "metrics.json").exists()
    rc, _, err = run_cli(*shlex.split(command)[1:])
    assert rc == 0, err
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 12


# ---------------------------------------------------------------------------------------------
# File-system errors: one line naming the path and a remedy, what was there left intact


def test_read_only_output_file_system(tiny_run, digits, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "d0.png").write_bytes(b"the old file")
    real = os.replace

    def read_only(src, dst, *a, **k):
        if Path(dst).parent == out:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), src, None, dst)
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", read_only)
    line = one_line_error(*run_cli("reconstruct", tiny_run, digits, "--out", out, "--overwrite"))
    assert line == (
        f"convae: error: {out / 'd0.png'}: the file system is read-only; choose another --out"
    )
    assert sorted(p.name for p in out.iterdir()) == ["d0.png"]  # no temp file left
    assert (out / "d0.png").read_bytes() == b"the old file"


def test_full_disk(tiny_run, tmp_path, monkeypatch):
    target = tmp_path / "maps" / "m.png"
    target.parent.mkdir()
    target.write_bytes(b"the old map")
    real = os.open

    def full(path, flags, mode=0o777, *a, **k):
        if ".convae-" in os.fspath(path):  # atomic_write's temp file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, flags, mode, *a, **k)

    monkeypatch.setattr(os, "open", full)
    line = one_line_error(*run_cli("latent", tiny_run, "--split", "val", "--out", target))
    assert line == (
        f"convae: error: {target.parent}: no space left on the device; free space or choose "
        "another --out"
    )
    assert target.read_bytes() == b"the old map"
    assert [p.name for p in target.parent.iterdir()] == ["m.png"]


def test_permission_denied_names_the_flag_it_belongs_to(tiny_run, digits, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rc, _, err = run_cli("anomaly", run, "--calibrate", "-q")
    assert rc == 0, err
    real = os.replace

    def denied(src, dst, *a, **k):
        if Path(dst).name == "scores.csv":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src, None, dst)
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", denied)
    csv = tmp_path / "csv" / "scores.csv"
    line = one_line_error(*run_cli("anomaly", run, digits, "--csv", csv, "--top", "0"))
    assert line == (
        f"convae: error: {csv}: permission denied; check its permissions or choose another --csv"
    )
    assert not csv.exists()


def test_train_into_a_folder_it_may_not_create(tmp_path, monkeypatch):
    real = Path.mkdir

    def denied(self, *a, **k):
        if self == tmp_path / "locked" / "run":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", denied)
    out = tmp_path / "locked" / "run"
    line = one_line_error(*run_cli(*SHORT, "--out", out))
    assert f"{out}: permission denied" in line and "--out" in line
    assert not out.exists()


def test_a_name_too_long_for_the_file_system(tiny_run, digits, tmp_path):
    out = tmp_path / ("x" * 300)  # no monkeypatch: Linux refuses a 300-byte name
    line = one_line_error(*run_cli("reconstruct", tiny_run, digits, "--out", out))
    assert "the name is too long for the file system; choose a shorter name" in line


# ---------------------------------------------------------------------------------------------
# Infinite and NaN results


def _perfect_model(run: Path) -> None:
    """Make the decoder's last bias -1e4: the sigmoid output is then exactly 0 for any input."""
    w = load_file(run / "model.safetensors")
    biases = [k for k in w if k.startswith("decoder.") and k.endswith(".bias")]
    key = max(biases, key=lambda k: int(k.split(".")[1]))  # the last layer: conv, then sigmoid
    w[key] = torch.full_like(w[key], -1e4)
    save_file(w, str(run / "model.safetensors"))


def test_a_perfect_reconstruction_has_infinite_psnr_in_text_and_json(run_copy, tmp_path):
    _perfect_model(run_copy)
    black = tmp_path / "black"
    black.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(black / f"b{i}.png")
    args = ["eval", run_copy, "--data", f"folder:{black}", "--split", "all"]
    rc, out, err = run_cli(*args, "--json")
    assert rc == 0, err
    res = strict_json(out.strip().splitlines()[-1])
    assert res["mse"] == 0.0 and res["images"] == 4
    assert res["psnr"] is None and res["psnr_inf"] == "+inf"
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    assert "MSE 0.00000  PSNR inf dB" in out


def test_lossless_rows_of_the_codec_benchmark_are_valid_json(run_copy, tmp_path):
    from convae import codec as C
    from convae.data import load_split

    model = convae.load(run_copy)
    x, _ = load_split(model.run_config.data, "train")
    fit = C.CodecFitConfig(epochs=1, batch_size=64, steps=(1.0,), default_level=0)
    C.save_codec(run_copy, C.fit_codec(model, x[:64], fit))
    out = tmp_path / "bench"
    rc, stdout, err = run_cli("bench", "codec", "--runs", run_copy, "--classes", "0,1", "--limit",
                              "6", "--repeats", "1", "--no-ssim", "--out", out, "--json")  # fmt: skip
    assert rc == 0, err
    res = strict_json(stdout.strip().splitlines()[-1])
    assert res == strict_json((out / "rd.json").read_text())
    png = next(r for r in res["rows"] if r["method"] == "png")
    assert png["psnr"] is None and png["psnr_inf"] == "+inf"  # lossless: MSE 0
    assert "| png | lossless |" in (out / "rd.md").read_text()
    assert " inf |" in (out / "rd.md").read_text()


def test_a_ctrl_c_that_breaks_a_lazy_import_is_an_interrupt(tiny_run, monkeypatch):
    def interrupted_import(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:  # as a C extension's initialization reports it
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(cli_train, "evaluate_store", interrupted_import)
    rc, out, err = run_cli("eval", tiny_run, "--split", "val")
    assert rc == 130 and out == "" and err.strip() == "convae: interrupted"

    def broken_import(*a, **k):
        raise ImportError("a real missing module")

    monkeypatch.setattr(cli_train, "evaluate_store", broken_import)
    with pytest.raises(ImportError, match="a real missing module"):
        run_cli("eval", tiny_run, "--split", "val")


def test_a_nan_result_is_an_error_not_output(tiny_run, monkeypatch):
    def broken(model, store, **k):
        return {"mse": math.nan, "psnr": math.nan, "ssim": math.nan, "images": len(store),
                "latent_dim": 8, "compression_ratio": 98.0}  # fmt: skip

    monkeypatch.setattr(cli_train, "evaluate_store", broken)
    for extra in (["--json"], []):
        rc, out, err = run_cli("eval", tiny_run, "--split", "val", *extra)
        line = one_line_error(rc, out, err)
        assert "result.mse is NaN" in line and out == ""


# ---------------------------------------------------------------------------------------------
# Symbolic links a command did not make


def test_a_link_inside_the_run_directory_is_not_written_through(run_copy, digits, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_copy / "anomaly").symlink_to(elsewhere)
    line = one_line_error(*run_cli("anomaly", run_copy, digits, "--calibrate"))
    assert f"{run_copy / 'anomaly'} is a symbolic link" in line
    assert not any(elsewhere.iterdir())
    assert not (run_copy / "anomaly.json").exists()  # refused before calibrating
    # a link the user names as --out is the user's own choice
    mine = tmp_path / "my-link"
    mine.symlink_to(elsewhere)
    rc, _, err = run_cli("anomaly", run_copy, digits, "--out", mine, "-q")
    assert rc == 0, err
    assert (elsewhere / "heatmaps.png").is_file()


def test_a_link_inside_an_output_folder_is_not_written_through(tiny_run, digits, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "noisy").symlink_to(elsewhere)
    line = one_line_error(
        *run_cli("denoise", tiny_run, digits, "--add-noise", "gaussian:0.4", "--out", out)
    )
    assert "symbolic link" in line and "noisy" in line
    assert not any(elsewhere.iterdir()) and [p.name for p in out.iterdir()] == ["noisy"]


def test_resume_refuses_a_run_file_that_is_a_link(run_copy, tmp_path):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"not a plot")
    (run_copy / "loss.png").unlink()
    (run_copy / "loss.png").symlink_to(victim)
    line = one_line_error(*run_cli("train", "--out", run_copy, "--resume"))
    assert "loss.png is a symbolic link" in line
    assert victim.read_bytes() == b"not a plot"
