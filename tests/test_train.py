"""The training loop: it learns, it is deterministic, resume is exact, NaN stops it without touching
the good checkpoint, and the trainer's small pure helpers behave."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convae import runtime
from convae.checkpoint import read_state
from convae.config import ModelConfig, Recipe, RunConfig, TrainConfig, recipe_for
from convae.inference import evaluate, load, reconstruct, to_float
from convae.models import build_model
from convae.optim import lr_at
from convae.runs import resolve_config
from convae.runtime import resolve_device, resolve_precision
from convae.training import TrainingDiverged, fit

train_mod = importlib.import_module("convae.training")


def _model(arch: str = "convae", size: int = 16, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, image_size=size, width=4, **kw))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "seed": 0, **kw})


class Interrupt(Exception):
    """Stands in for Ctrl-C / a killed job after some epoch finished."""


def _stop_after(epoch: int):
    def progress(ev):
        if ev["event"] == "epoch" and ev["epoch"] == epoch:
            raise Interrupt

    return progress


def _strip(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in history]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_to_float_is_the_unit_normalization():
    x = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8)
    y = to_float(x)
    assert y.dtype == torch.float32
    assert y.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert x.dtype == torch.uint8  # the input is untouched


def test_lr_schedule_is_a_pure_function_of_the_step():
    lrs = [lr_at(s, 100, 1e-2, "onecycle", 0.2) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-2 / 25)  # one-cycle starts at lr/25
    assert max(lrs) == pytest.approx(1e-2) and lrs.index(max(lrs)) == 20
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:21], strict=True))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))  # then anneals
    assert lrs[-1] < 1e-2 / 50
    assert lrs == [lr_at(s, 100, 1e-2, "onecycle", 0.2) for s in range(100)]
    assert lr_at(0, 100, 1e-2, "cosine", 0.1) == 0.0
    assert lr_at(100, 100, 1e-2, "cosine", 0.1) == pytest.approx(0.0, abs=1e-12)
    assert {lr_at(s, 100, 3e-3, "constant") for s in range(100)} == {3e-3}


def test_resolve_device_and_precision():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cpu) in (None, torch.bfloat16)
    assert resolve_precision("auto", cpu, cpu_bf16=False) is None  # an fp32 architecture
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"weight_decay": float("nan")}, "--weight-decay"),
        ({"lr": 0.0}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"loss": "huber"}, "loss"),
        ({"patience": -1}, "patience"),
        ({"noise": ("blur:2",)}, "noise"),
        ({"precision": "fp64"}, "precision"),
    ],
)
def test_fit_rejects_bad_config(make_images, over, match):
    with pytest.raises(ValueError, match=match):
        fit(_model(), make_images(8), None, _cfg(**over))


def test_bce_needs_a_sigmoid_output(make_images):
    with pytest.raises(ValueError, match="sigmoid"):
        fit(_model("seed-keras2d"), make_images(8), None, _cfg(loss="bce"))


def test_empty_training_split(make_images):
    with pytest.raises(ValueError, match="empty"):
        fit(_model(), make_images(8)[:0], None, _cfg())


# ---------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize(
    "arch, loss, optimizer",
    [("convae", "mse", "adamw"), ("seed-strided", "bce", "adam"), ("seed-strided", "mse", "muon")],
)
def test_overfitting_one_batch_lowers_the_loss(make_images, arch, loss, optimizer):
    x = make_images(8, 1, 16, seed=3)
    model = _model(arch)
    cfg = _cfg(epochs=60, batch_size=8, lr=1e-2, loss=loss, optimizer=optimizer, precision="fp32")
    hist = fit(model, x, None, cfg)  # one step per epoch on the same 8 images
    losses = [r["train_loss"] for r in hist]
    assert len(losses) == 60 and all(math.isfinite(v) for v in losses)
    # BCE has a floor (the targets' own entropy), so the halving is checked on the MSE below
    assert losses[-1] < losses[0] and min(losses[-10:]) < min(losses[:10]), losses[::10]
    assert not model.training  # fit leaves the model in eval mode
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(model(to_float(x)), to_float(x)).item()
    # where fit started: the untrained weights, decoding around the images' mean
    before_model = _model(arch).eval()
    if before_model.output_offset is not None:
        before_model.set_mean_image(to_float(x).mean(0))
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(before_model(to_float(x)), to_float(x)).item()
    assert after < 0.75 * before, (before, after)  # of what the mean image leaves unexplained


def test_fit_is_deterministic(make_images):
    x, v = make_images(48, 1, 16, seed=1), make_images(16, 1, 16, seed=2)
    m1, m2 = _model(), _model()
    h1 = fit(m1, x, v, _cfg(noise=("gaussian:0.2",)))
    h2 = fit(m2, x, v, _cfg(noise=("gaussian:0.2",)))
    assert _strip(h1) == _strip(h2)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_history_rows_and_eval_every(make_images):
    x, v = make_images(32, 1, 16, seed=1), make_images(8, 1, 16, seed=2)
    hist = fit(_model(), x, v, _cfg(epochs=3, eval_every=2))
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert [r["step"] for r in hist] == [2, 4, 6]  # 32 images / batch 16
    assert hist[0]["val_loss"] is None and hist[1]["val_loss"] is not None
    assert hist[2]["val_loss"] is not None  # always validated on the last epoch
    for r in hist:
        assert set(r) >= {"epoch", "step", "train_loss", "val_loss", "lr", "seconds"}
        assert r["seconds"] >= 0


def test_batch_larger_than_the_data(make_images):
    hist = fit(_model(), make_images(5), None, _cfg(epochs=1, batch_size=64))
    assert hist[0]["step"] == 1


# ---------------------------------------------------------------------------------------------
# Run directory, resume, early stop


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir()}


@pytest.mark.parametrize(
    "arch, noise, optimizer",
    [
        ("convae", (), "adamw"),
        ("convae", ("gaussian:0.3", "mask:0.2"), "adamw"),
        ("seed-strided", (), "adamw"),
        ("convae", (), "muon"),  # momentum buffers + the AdamW half's moments and step counts
    ],
)
def test_resume_equals_an_uninterrupted_run(tmp_path, make_images, arch, noise, optimizer):
    x, v = make_images(48, 1, 16, seed=1), make_images(16, 1, 16, seed=2)
    cfg = _cfg(
        epochs=3, noise=noise, optimizer=optimizer
    )  # 3 steps per epoch, onecycle schedule over all 9 steps
    full = fit(_model(arch), x, v, cfg, run_dir=tmp_path / "full")

    with pytest.raises(Interrupt):
        fit(_model(arch), x, v, cfg, run_dir=tmp_path / "cut", progress=_stop_after(1))
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 1
    resumed_model = _model(arch, seed=123)  # the init does not matter: the weights come from disk
    resumed = fit(resumed_model, x, v, cfg, run_dir=tmp_path / "cut", resume=True)

    assert _strip(resumed) == _strip(full)  # bitwise-equal losses and learning rates
    a, b = _files(tmp_path / "full"), _files(tmp_path / "cut")
    assert a["model.safetensors"] == b["model.safetensors"]
    ta, tb = (
        load_file(tmp_path / "full" / "state-0003.safetensors"),
        load_file(tmp_path / "cut" / "state-0003.safetensors"),
    )  # the last epoch's weights and optimizer state
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    hist_lines = [json.loads(s) for s in b["history.jsonl"].decode().splitlines()]
    assert _strip(hist_lines) == _strip(full)


def test_resume_a_finished_run_is_a_no_op(tmp_path, make_images):
    x = make_images(16)
    hist = fit(_model(), x, None, _cfg(epochs=1), run_dir=tmp_path)
    before = _files(tmp_path)
    again = fit(_model(), x, None, _cfg(epochs=1), run_dir=tmp_path, resume=True)
    assert _strip(again) == _strip(hist)
    assert _files(tmp_path) == before


def test_resume_without_a_committed_epoch_starts_over(tmp_path, make_images):
    x = make_images(8)
    fresh = fit(_model(), x, None, _cfg(), run_dir=tmp_path / "a")
    again = fit(_model(), x, None, _cfg(), run_dir=tmp_path / "b", resume=True)
    assert _strip(again) == _strip(fresh)
    with pytest.raises(ValueError, match="run directory"):
        fit(_model(), x, None, _cfg(), resume=True)


def test_early_stopping(tmp_path, make_images, monkeypatch):
    val_losses = iter([1.0, 0.5, 0.7, 0.9, 1.1, 1.3])
    monkeypatch.setattr(train_mod, "_loss_sum", lambda loop, x: next(val_losses) * len(x))
    x, v = make_images(16), make_images(4, seed=5)
    hist = fit(_model(), x, v, _cfg(epochs=6, patience=2), run_dir=tmp_path)
    assert [r["val_loss"] for r in hist] == [1.0, 0.5, 0.7, 0.9]  # 2 epochs without improvement
    state, _ = read_state(tmp_path)
    assert state.stopped_early and state.best == 0.5 and state.best_epoch == 2
    # the best checkpoint is epoch 2's, not the last one
    best = load_file(tmp_path / "model.safetensors")
    last = load_file(tmp_path / "state-0004.safetensors")
    assert not torch.equal(best["encoder.0.weight"], last["model.encoder.0.weight"])
    assert len(fit(_model(), x, v, _cfg(epochs=6, patience=2), run_dir=tmp_path, resume=True)) == 4


def _poison_after(model, epoch: int):
    """A progress callback that turns the weights to NaN after ``epoch`` finished (and was saved)."""

    def progress(ev):
        if ev["event"] == "epoch" and ev["epoch"] == epoch:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    return progress


@pytest.mark.parametrize("with_val", [True, False])
def test_nan_stops_training_and_keeps_the_good_checkpoint(tmp_path, make_images, with_val):
    x, v = make_images(32), make_images(8, seed=4) if with_val else None
    model = _model()
    good: dict[str, bytes] = {}

    def progress(ev):
        if ev["event"] == "epoch" and ev["epoch"] == 1:
            good.update(_files(tmp_path))
        _poison_after(model, 1)(ev)

    with pytest.raises(TrainingDiverged, match="NaN") as e:
        fit(model, x, v, _cfg(epochs=3), run_dir=tmp_path, progress=progress)
    assert "epoch 2" in str(e.value) and "--lr" in str(e.value)
    after = _files(tmp_path)
    assert after == good, "a file was written after the loss became NaN"
    w = load_file(tmp_path / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in w.values() if t.is_floating_point())


def test_nan_is_caught_at_the_live_loss(make_images):
    model = _model()
    seen = []

    def progress(ev):
        seen.append(ev["event"])
        if len(seen) == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("inf"))

    with pytest.raises(TrainingDiverged):
        fit(model, make_images(64), None, _cfg(epochs=1), progress=progress, log_every=1)
    assert seen == ["step", "step"]  # stopped at the next step, not at the end of the epoch


# ---------------------------------------------------------------------------------------------
# Evaluation helpers


def test_reconstruct_and_evaluate(make_images):
    model = _model().eval()
    x = make_images(5, 1, 16)
    y = reconstruct(model, x, batch_size=2)
    assert y.shape == (5, 1, 16, 16) and y.dtype == torch.float32 and y.device.type == "cpu"
    assert y.min() >= 0 and y.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(y, model(to_float(x)).clamp(0, 1))
    noisy = reconstruct(
        model, x, noise=("gaussian:0.5",), generator=torch.Generator().manual_seed(0)
    )
    assert not torch.equal(noisy, y)
    assert reconstruct(model, x[:0]).shape == (0, 1, 16, 16)
    m = evaluate(model, x)
    assert set(m) >= {"mse", "psnr", "ssim", "latent_dim", "compression_ratio", "images"}
    assert m["images"] == 5 and m["latent_dim"] == 16 and m["compression_ratio"] == 256 / 16
    assert m["mse"] == pytest.approx(((y - to_float(x)) ** 2).mean().item(), rel=1e-5)
    assert m["psnr"] > 0 and -1 <= m["ssim"] <= 1
    with pytest.raises(ValueError, match="no images"):
        evaluate(model, x[:0])


# ---------------------------------------------------------------------------------------------
# train(): the one-call API


def test_train_refuses_to_overwrite_a_run(tiny_run):
    with pytest.raises(FileExistsError, match="--resume"):
        train_mod.train(RunConfig(), tiny_run, device="cpu")


def test_train_resume_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        train_mod.train(None, tmp_path, resume=True, device="cpu")
    with pytest.raises(ValueError, match="--out"):
        train_mod.train(None, None, resume=True, device="cpu")


def test_weights_broken_by_the_last_step_of_an_epoch_are_not_saved(tmp_path, make_images):
    """The epoch's losses were all finite, but its last optimizer step left NaN weights: without a
    validation split nothing else would notice, and the NaN model must not replace the good one."""
    model = _model()
    good: dict[str, bytes] = {}

    def progress(ev):
        if ev["event"] == "epoch" and ev["epoch"] == 1:
            good.update(_files(tmp_path))
        if ev["event"] == "step" and ev["epoch"] == 2 and ev["step"] == ev["steps"]:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="epoch 2"):
        fit(
            model,
            make_images(32),
            None,
            _cfg(epochs=3),
            run_dir=tmp_path,
            progress=progress,
            log_every=1,
        )
    after = _files(tmp_path)
    assert after == good, "a file was written with NaN weights"


def test_auto_threads_leaves_busy_cores_alone(monkeypatch):
    import os

    from convae.runtime import auto_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert auto_threads(4, busy=0) == 4  # idle machine: torch's default
    assert auto_threads(4, busy=1) == 3
    assert auto_threads(4, busy=9) == 1  # never below one
    assert auto_threads(2, busy=0) == 2  # never above torch's default
    assert (
        1 <= auto_threads() <= max(1, runtime._TORCH_THREADS)
    )  # the real /proc reading works here
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(
            1
        )  # an earlier call lowered it: the next one starts from torch's own count
        assert auto_threads(busy=0) == min(runtime._TORCH_THREADS, 4)
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(runtime, "_other_runnable_tasks", lambda: None)
    assert auto_threads(4) == 4  # no /proc/loadavg: torch's default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert auto_threads(3, busy=2) == 3  # an explicit OMP_NUM_THREADS wins


def test_default_recipe_comes_from_the_architecture(make_images):
    t = TrainConfig()
    assert t.epochs is None and t.optimizer is None and t.lr is None and t.warmup is None
    assert t.batch_size is None
    assert recipe_for("seed-pool") == Recipe(epochs=10, batch_size=32, optimizer="adamw")
    assert recipe_for("convae").optimizer == "muon"
    strided = resolve_config(RunConfig(model=ModelConfig(arch="seed-strided"))).train
    # measured for it (docs/benchmarks.md)
    assert (strided.epochs, strided.lr, strided.warmup, strided.batch_size) == (9, 1.5e-2, 0.02, 64)
    assert strided.optimizer == "muon" and not recipe_for("seed-strided").cpu_bf16
    assert resolve_config(RunConfig()).train.epochs == 10
    assert resolve_config(RunConfig()).train.batch_size == 32
    explicit = resolve_config(
        RunConfig(train=TrainConfig(epochs=3, optimizer="adam", lr=3e-3, batch_size=16))
    ).train
    assert (explicit.epochs, explicit.optimizer, explicit.lr) == (3, "adam", 3e-3)  # flags win
    assert explicit.batch_size == 16
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Recipe(optimizer="sgd")
    model = build_model(ModelConfig(arch="convae", width=4, latent_dim=4, image_size=16))
    hist = fit(model, make_images(8, 1, 16), None, TrainConfig(batch_size=8))  # fit fills it too
    assert len(hist) == 10
    strided_model = build_model(ModelConfig(arch="seed-strided", image_size=16))
    hist = fit(strided_model, make_images(130, 1, 16), None, TrainConfig(epochs=1))
    assert hist[0]["step"] == 2  # 130 images in batches of 64 (seed-strided's own batch size)


# ---------------------------------------------------------------------------------------------
# The mean image


@pytest.mark.parametrize("arch", ["seed-strided", "seed-keras2d"])  # sigmoid and linear output
def test_fit_starts_the_decoder_from_the_training_mean_image(make_images, arch):
    x = make_images(24, 1, 16, seed=4)
    model = _model(arch)
    fit(model, x, None, _cfg(epochs=1))
    mean = to_float(x).mean(0)
    want = torch.logit(mean.clamp(1e-3, 1 - 1e-3)) if model.sigmoid_output else mean
    torch.testing.assert_close(model.output_offset, want)
    plain = _model(arch, mean_image=False)
    fit(plain, x, None, _cfg(epochs=1))  # and without one, nothing is added
    assert plain.output_offset is None and "output_offset" not in plain.state_dict()


def test_a_run_keeps_its_mean_image_and_old_runs_load_without_one(tmp_path):
    from convae.config import DataConfig

    cfg = RunConfig(
        model=ModelConfig(arch="seed-strided", latent_dim=4),  # its mean image is on by default
        data=DataConfig(spec="mnist-sample", classes=(0, 1)),
        train=TrainConfig(epochs=1, batch_size=64, seed=0),
    )
    tiny_run = train_mod.train(cfg, tmp_path / "run", device="cpu")
    model = load(tiny_run)
    assert model.run_config.model.mean_image and model.output_offset.abs().sum() > 0
    saved = load_file(tiny_run / "model.safetensors")["output_offset"]
    torch.testing.assert_close(model.output_offset, saved)
    # A run directory written before the mean image existed: no key in config.json, none in the
    # weights. It loads as it was trained.
    old = tmp_path / "old"
    old.mkdir()
    cfg = json.loads((tiny_run / "config.json").read_text())
    del cfg["model"]["mean_image"]
    (old / "config.json").write_text(json.dumps(cfg))
    weights = load_file(tiny_run / "model.safetensors")
    del weights["output_offset"]
    from safetensors.torch import save_file

    save_file(weights, old / "model.safetensors")
    legacy = load(old)
    assert legacy.run_config.model.mean_image is False and legacy.output_offset is None
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():  # the same network, minus the offset
        body = model.decoder[:-1](model.encoder(x))
        torch.testing.assert_close(legacy(x), torch.sigmoid(body))


def test_weights_that_do_not_match_config_json_give_one_line(tiny_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_run, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["latent_dim"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="weights do not match the architecture") as e:
        load(bad)
    assert "\n" not in str(e.value) and "in the file" in str(e.value)
    cfg["model"]["latent_dim"] = "three"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: model.latent_dim must be an integer"):
        load(bad)


def test_float_images_are_refused_not_divided_by_255_again(make_images):
    from convae.anomaly import score_images

    x = make_images(4)
    model = _model().eval()
    with pytest.raises(ValueError, match="expected uint8 images"):
        to_float(x.float() / 255)
    with pytest.raises(ValueError, match="expected uint8 images"):
        reconstruct(model, x.float() / 255)
    with pytest.raises(ValueError, match="expected uint8 images"):
        score_images(model, x.float() / 255)
    assert score_images(model, x).shape == (4,)


@pytest.mark.parametrize("lr", [0.0, -1.0, math.inf, math.nan])
def test_learning_rate_must_be_a_positive_number(make_images, lr):
    with pytest.raises(ValueError, match=r"--lr \(learning rate\) must be a positive number"):
        fit(_model(), make_images(8), None, _cfg(lr=lr))


# ---------------------------------------------------------------------------------------------
# Small data, crops, and the warnings a user needs


def test_small_data_gets_enough_steps_unless_epochs_are_given():
    r = recipe_for("convae")
    assert r.fill(TrainConfig(), items=3600).epochs == 10  # 112 steps an epoch: the recipe's 10
    assert r.fill(TrainConfig(), items=100).epochs == 100  # 3 steps an epoch: 300 steps
    assert r.fill(TrainConfig(epochs=4), items=100).epochs == 4  # the user's choice wins
    assert r.fill(TrainConfig(batch_size=10), items=100).epochs == 30


def test_training_on_crops_scores_whole_images(tmp_path, make_images, write_image_folder, caplog):
    from convae.config import DataConfig

    write_image_folder(tmp_path / "imgs", make_images(24, 3, 32, seed=2))
    cfg = RunConfig(
        model=ModelConfig(width=4),
        data=DataConfig(spec=f"folder:{tmp_path / 'imgs'}", crop=16, crops_per_epoch=64),
        train=TrainConfig(epochs=2, batch_size=16),
    )
    run = train_mod.train(cfg, tmp_path / "run", device="cpu")
    stored = json.loads((run / "config.json").read_text())
    assert stored["model"]["arch"] == "convae-map" and stored["model"]["image_size"] == 16
    lines = (run / "history.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in lines] == [4, 8]  # 64 crops in batches of 16
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["split"] == "test"  # whole 32x32 test files
    assert "mean_image_psnr" in metrics
    model = load(run)
    assert model.fully_conv and model(torch.rand(1, 3, 32, 48)).shape == (1, 3, 32, 48)


def test_a_model_that_learned_nothing_is_reported(
    tmp_path, make_images, write_image_folder, caplog
):
    from convae.config import DataConfig

    write_image_folder(tmp_path / "imgs", make_images(12, 1, 16, seed=3))
    cfg = RunConfig(
        model=ModelConfig(arch="convae", width=4),
        data=DataConfig(spec=f"folder:{tmp_path / 'imgs'}"),
        train=TrainConfig(epochs=1, batch_size=4, lr=1e-6),
    )
    with caplog.at_level("WARNING"):
        train_mod.train(cfg, tmp_path / "run", device="cpu")
    text = caplog.text
    assert "no better than the training mean image" in text
    assert "training pixel values" in text  # 28k parameters for 2.3k values


def test_codec_preset_works_at_any_crop_size():
    from convae.config import PRESETS, DataConfig, apply_preset

    for size in (28, 32, 64):
        cfg = apply_preset(RunConfig(data=DataConfig(crop=size)), "codec")
        m = resolve_config(cfg, 3, size).model
        assert m.latent_dim == 4 * (size // 4) ** 2
        assert build_model(m).latent_shape == (4, size // 4, size // 4)
    assert PRESETS["codec"]["model"]["code_channels"] == 4


def test_gradient_clipping_bounds_the_step(make_images):
    """``clip`` rescales each step's gradient to that norm: clipped to ~0, Adam hardly moves the
    weights; a non-positive clip is a one-line error."""
    x, v = make_images(16, 1, 16, seed=3), make_images(4, 1, 16, seed=4)

    def moved(**kw) -> float:
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        fit(model, x, v, _cfg(epochs=1, optimizer="adam", lr=1e-2, **kw))
        return sum(
            float((p.detach() - b).abs().sum())
            for p, b in zip(model.parameters(), before, strict=True)
        )

    assert moved(clip=1e-12) < 0.01 * moved()
    with pytest.raises(ValueError, match="clip"):
        fit(_model(), x, v, _cfg(epochs=1, clip=0.0))
