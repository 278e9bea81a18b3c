"""Distributed training: `convae train` under torchrun with 2 CPU processes (gloo).

One torchrun launch (module fixture) runs five jobs through tests/ddp_worker.py, which is the real
CLI with every rank's final state and history dumped to disk:

* ``bn``: the default ``convae`` architecture (BatchNorm), 2 processes x 16 images;
* ``plain``: ``seed-strided`` (no normalization, its default Muon), to compare with one process;
* ``resumed``: ``bn`` again, crashed on purpose after epoch 1, then continued with ``--resume``;
* ``frozen``: a learning rate too small to move a float32 weight, so the validation loss cannot
  improve and ``--patience 1`` must stop every rank after epoch 2 of 3;
* ``crops``: random crops of a folder of photos of several sizes, read from its cache by both
  ranks.

The single-process references (one process x 32 images: the same global batches) run in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import convae
from convae.checkpoint import last_weights
from convae.cli import main
from convae.data import load_split
from convae.inference import evaluate
from convae.models import build_model

WORKER = Path(__file__).with_name("ddp_worker.py")
# 360 training digits (all ones), 11 steps of 2 x 16 images per epoch, a narrow model.
DATA = ["--classes", "1", "--epochs", "2", "--width", "8", "--precision", "fp32", "-q", "--json"]
# seed-strided keeps its default optimizer, Muon: test_matches_one_process_with_the_same_global_batch
# says why its weights are compared through outputs and losses.
PLAIN = ["--arch", "seed-strided"]
FROZEN = [
    "--norm",
    "none",
    "--lr",
    "1e-20",
    "--schedule",
    "constant",
    "--patience",
    "1",
    "--epochs",
    "3",
]
JOBS = ("bn", "plain", "resumed", "frozen", "crops")
CROPS = ["--crop", "16", "--crops-per-epoch", "64", "--width", "4", "--epochs", "2",
         "--batch-size", "8", "--val-fraction", "0.34", "--precision", "fp32", "-q", "--json"]  # fmt: skip


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "torch.distributed.run"]  # what the torchrun script runs


def _photos(root: Path) -> Path:
    """Six smooth colour images of several sizes (a folder of photos, in miniature)."""
    g = torch.Generator().manual_seed(0)
    root.mkdir()
    for i, (h, w) in enumerate([(30, 41), (27, 36), (40, 29), (33, 47), (25, 25), (44, 31)]):
        small = torch.rand(1, 3, h // 4 + 1, w // 4 + 1, generator=g)
        img = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear")[0]
        Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()).save(root / f"p{i}.png")
    return root


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    args = [*DATA, "--batch-size", "16"]
    jobs = [
        {"argv": ["train", "--out", str(root / "bn"), *args], "dump": str(root / "dump-bn")},
        {
            "argv": ["train", "--out", str(root / "plain"), *args, *PLAIN],
            "dump": str(root / "dump-plain"),
        },
        {"argv": ["train", "--out", str(root / "resumed"), *args], "stop_after": 1, "expect": 3},
        {
            "argv": ["train", "--resume", "--out", str(root / "resumed"), "-q", "--json"],
            "dump": str(root / "dump-resumed"),
        },
        {
            "argv": ["train", "--out", str(root / "frozen"), *args, *FROZEN],
            "dump": str(root / "dump-frozen"),
        },
    ]
    photos = _photos(root / "photos")
    jobs.append({"argv": ["train", "--out", str(root / "crops"), "--data", f"folder:{photos}",
                          *CROPS], "dump": str(root / "dump-crops")})  # fmt: skip
    (root / "jobs.json").write_text(json.dumps(jobs))
    # --standalone: a local rendezvous on a free port, so parallel test runs never collide.
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", str(WORKER), str(root / "jobs.json")]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # one thread per process on the 2-core CI machine
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return root


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    try:
        for name, extra in (("bn", []), ("plain", PLAIN)):
            argv = [
                "train",
                "--out",
                str(root / name),
                *DATA,
                "--batch-size",
                "32",
                "--threads",
                "1",
                *extra,
            ]
            assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


@pytest.mark.parametrize("job", JOBS)
def test_every_rank_holds_the_same_weights_and_buffers(ddp, job):
    r0 = load_file(ddp / f"dump-{job}" / "rank0.safetensors")
    r1 = load_file(ddp / f"dump-{job}" / "rank1.safetensors")
    saved = last_weights(ddp / job)  # what rank 0 wrote
    assert r0.keys() == r1.keys() == saved.keys()
    if job in ("bn", "resumed"):  # BatchNorm running statistics are part of what must agree
        assert any(k.endswith("running_var") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{job}: ranks differ in {k}"
        assert torch.equal(r0[k], saved[k]), (
            f"{job}: the last committed epoch differs from the ranks in {k}"
        )


@pytest.mark.parametrize("job", JOBS)
def test_every_rank_saw_the_same_losses(ddp, job):
    # The early-stop and best-checkpoint decisions are taken on these numbers by every rank.
    r0 = json.loads((ddp / f"dump-{job}" / "rank0.history.json").read_text())
    r1 = json.loads((ddp / f"dump-{job}" / "rank1.history.json").read_text())
    assert r0 == r1
    assert [r["val_loss"] for r in r0] == [r["val_loss"] for r in _history(ddp / job)]


def test_early_stop_stops_every_rank_together(ddp):
    run = ddp / "frozen"
    h = _history(run)
    assert len(h) == 2 and h[0]["val_loss"] == h[1]["val_loss"]
    assert json.loads((run / "trainer.json").read_text())["stopped_early"] is True
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_run_directory_is_ordinary_and_checkpoint_loads(ddp):
    run = ddp / "bn"
    for name in (
        "config.json",
        "model.safetensors",
        "metrics.json",
        "loss.png",
        "reconstructions.png",
    ):
        assert (run / name).is_file(), name
    assert json.loads((run / "trainer.json").read_text())["world"] == 2
    model = convae.load(run)
    val_x, _ = load_split(model.run_config.data, "val")
    # The sharded, all-reduced validation loss is the plain loss of the saved best model.
    best = min(r["val_loss"] for r in _history(run))
    assert evaluate(model, val_x, ssim=False)["mse"] == pytest.approx(best, rel=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 100 and metrics["epochs"] == 2
    assert main(["eval", str(run), "--json", "-q"]) == 0  # any other command takes it as it is


def test_loss_falls(ddp):
    run = ddp / "bn"
    h = _history(run)
    assert h[1]["train_loss"] < h[0]["train_loss"]
    assert h[1]["val_loss"] < h[0]["val_loss"]
    cfg = convae.load(run).run_config
    torch.manual_seed(cfg.train.seed)
    untrained = build_model(cfg.model)  # the initial weights every rank started from
    val_x, _ = load_split(cfg.data, "val")
    assert h[-1]["val_loss"] < 0.8 * evaluate(untrained, val_x, ssim=False)["mse"]


def test_matches_one_process_with_the_same_global_batch(ddp, single):
    # Without BatchNorm, 2 processes x 16 images are the same computation as 1 process x 32,
    # up to the order of floating-point sums. Muon orthogonalizes each update, which lifts the
    # gradient's weakest directions - where those rounding differences live - to full size, so
    # after 22 steps single weights differ by up to ~2e-2 in directions the model's output does
    # not depend on: the outputs and losses must agree, the raw weights need not.
    ddp_m, one_m = convae.load(ddp / "plain"), convae.load(single / "plain")
    assert ddp_m.run_config.train.optimizer == "muon"
    val_x, _ = load_split(one_m.run_config.data, "val")
    x = val_x.float() / 255
    with torch.inference_mode():
        diff = (ddp_m(x) - one_m(x)).abs()  # measured: 3e-5 mean, 1.3e-3 at most (pixels in [0, 1])
    assert diff.mean() < 2e-4 and diff.max() < 1e-2
    for a, b in zip(_history(ddp / "plain"), _history(single / "plain"), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # With BatchNorm each rank normalizes its own 16 images: close, not identical.
    a, b = _history(ddp / "bn")[-1], _history(single / "bn")[-1]
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.02)


def test_resume_under_torchrun_replays_the_uninterrupted_run(ddp):
    resumed, whole = ddp / "resumed", ddp / "bn"
    a, b = last_weights(resumed), last_weights(whole)
    assert _max_diff(a, b) < 1e-6
    assert [r["val_loss"] for r in _history(resumed)] == pytest.approx(
        [r["val_loss"] for r in _history(whole)]
    )


def test_resume_with_another_number_of_processes_is_refused(ddp, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ddp / "bn", run)
    state = json.loads((run / "trainer.json").read_text())
    state["epoch"] = 1  # pretend the 2-process run stopped after epoch 1
    (run / "trainer.json").write_text(json.dumps(state))
    assert main(["train", "--resume", "--out", str(run), "-q"]) == 1
    assert "2 process(es)" in capsys.readouterr().err


def test_distributed_on_a_missing_gpu_is_a_clear_error(monkeypatch, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r"), "-q"]) == 1
    assert "no CUDA GPU" in capsys.readouterr().err
