"""Training: the loop (:func:`fit`) and the one-call :func:`train` that makes a run directory.

The loop reads top to bottom. Batches come from a source (:mod:`convae.sampling`): uint8 images
resident on the device, or random crops of images of any size; each batch is converted and
normalized on the fly. The epoch's order is a permutation seeded by (seed, epoch), so resuming at
epoch k replays exactly what an uninterrupted run would do. Losses are accumulated on the device
and read back only at log points.

Under torchrun (``WORLD_SIZE`` > 1) the same loop runs with DistributedDataParallel: every rank
takes a disjoint shard of the same epoch permutation and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from .checkpoint import (
    TrainState,
    commit_epoch,
    read_state,
    reconcile,
    restore_state,
    run_lock,
    write_json,
)
from .config import OPTIMIZERS, DataConfig, RunConfig, TrainConfig, read_run_config, recipe_for
from .data import load_images, load_split
from .inference import evaluate, load, reconstruct, split_images, spread_indices, to_float
from .limits import check_fits
from .metrics import psnr_per_image
from .models import AutoEncoder, build_model, check_memory
from .noise import corrupt, parse_noise
from .optim import SCHEDULES, build_optimizer, lr_at
from .plots import loss_figure, reconstruction_figure, save_figure
from .runs import default_run_dir, resolve_config, same_recipe
from .runtime import autocast, channels_last_default, resolve_device, resolve_precision
from .sampling import RandomCrops, TensorImages, epoch_generator, fixed_crops, train_values

log = logging.getLogger(__name__)

__all__ = ["fit", "train", "fit_config", "train_or_reuse", "TrainingDiverged"]

Progress = Callable[[dict[str, Any]], None]
Source = TensorImages | RandomCrops


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the committed checkpoints on disk are left untouched."""


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Loop:
    """What stays fixed for a whole fit."""

    model: AutoEncoder
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    cfg: TrainConfig
    source: Source
    val_x: Tensor | None  # uint8, on the device
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    rank: int
    world: int
    batch: int  # per process
    steps_per_epoch: int


def fit(
    model: AutoEncoder,
    train: Tensor | Source,
    val: Tensor | None,
    cfg: TrainConfig,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    log_every: int = 10,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on uint8 images (or a crop source); return the per-epoch history.

    With ``run_dir``, rank 0 commits every epoch (see :mod:`convae.checkpoint`): the state for an
    exact ``resume``, ``model.safetensors`` (best validation loss) and ``history.jsonl``.
    ``progress`` receives ``{"event": "step", ...}`` every ``log_every`` steps and
    ``{"event": "epoch", ...}`` per epoch.
    """
    cfg = _checked(recipe_for(model.config.arch).fill(cfg), model)
    out = Path(run_dir) if run_dir is not None else None
    if resume and out is None:
        raise ValueError("resume needs a run directory")
    loop = _prepare(model, train, val, cfg)
    state = _initial_state(loop, out, resume)
    writer = out is not None and loop.rank == 0
    model.train()
    epochs = range(state.epoch, 0 if state.stopped_early else cfg.epochs)
    try:
        for epoch in epochs:
            t0, c0 = time.perf_counter(), time.process_time()
            train_loss = _train_epoch(loop, state, epoch, progress, log_every)
            val_loss = _validate(loop, epoch, state)
            row = {
                "epoch": epoch + 1,
                "step": state.step,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": loop.opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                # this process's CPU time: on a shared machine the better measure of the work
                "cpu_seconds": time.process_time() - c0,
            }
            score = val_loss if loop.val_x is not None else train_loss
            state.record(row, score, cfg.patience)
            if writer:
                assert out is not None
                commit_epoch(out, model, loop.opt, state)
            if progress is not None:
                progress({"event": "epoch", **row, "epochs": cfg.epochs, "best": state.best})
            if state.stopped_early:
                log.info("early stop after epoch %d: no improvement for %d epochs",
                         epoch + 1, state.bad_epochs)  # fmt: skip
                break
    finally:
        if loop.channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.eval()
    return state.history


def _checked(cfg: TrainConfig, model: AutoEncoder) -> TrainConfig:
    """``cfg`` after every field a user can get wrong is checked; each error names its flag."""
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, not {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {cfg.batch_size}")
    if not (0 < cfg.lr < math.inf):
        raise ValueError(f"--lr (learning rate) must be a positive number, not {cfg.lr}")
    if not (0 <= cfg.weight_decay < math.inf):
        raise ValueError(f"--weight-decay must be a number >= 0, not {cfg.weight_decay}")
    if not (0 <= cfg.warmup <= 1):
        raise ValueError(f"warmup must be a fraction in [0, 1], not {cfg.warmup}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {cfg.optimizer!r}"
        )
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, not {cfg.schedule!r}")
    if cfg.patience < 0:
        raise ValueError(f"--patience must be >= 0, not {cfg.patience}")
    if cfg.eval_every < 1:
        raise ValueError(f"eval_every must be at least 1, not {cfg.eval_every}")
    if cfg.clip is not None and not (0 < cfg.clip < math.inf):
        raise ValueError(f"clip must be a positive number, not {cfg.clip}")
    for spec in cfg.noise:
        parse_noise(spec)
    _loss_fn(cfg.loss, model.sigmoid_output)
    return cfg


def _loss_fn(name: str, sigmoid_output: bool) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    if name == "bce":
        if not sigmoid_output:
            raise ValueError(
                "--loss bce needs an architecture with a sigmoid output (not seed-keras2d)"
            )
        return lambda y, x: F.binary_cross_entropy(y.float().clamp(1e-6, 1 - 1e-6), x)
    raise ValueError(f"--loss must be mse, l1 or bce, not {name!r}")


def _prepare(model: AutoEncoder, train: Tensor | Source, val: Tensor | None, cfg: TrainConfig):
    """The loop's fixed parts: device, precision, layout, data on the device, optimizer, DDP."""
    rank, world = distributed.world()
    device = next(model.parameters()).device
    amp = resolve_precision(cfg.precision, device, recipe_for(model.config.arch).cpu_bf16)
    channels_last = (
        cfg.channels_last if cfg.channels_last is not None else channels_last_default(device)
    )
    source = TensorImages(train, device) if isinstance(train, Tensor) else train
    if len(source) == 0:
        raise ValueError("the training split is empty (check --classes and the data)")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batch = min(cfg.batch_size, max(1, len(source) // world))
    check_memory(model, batch, training=True)
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    net: torch.nn.Module = model
    if world > 1 and hasattr(model, "training_loss"):
        raise ValueError(f"{model.config.arch} models train in one process (no torchrun)")
    if world > 1:
        # BatchNorm stays per rank (statistics of each rank's own B images; SyncBatchNorm has no CPU
        # kernel). forward_sync_buffers=False: running stats are averaged over ranks once per epoch
        # instead of rank 0's overwriting everyone's before every forward.
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,
        )
    return _Loop(
        model=model,
        net=net,
        opt=opt,
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        loss_fn=_loss_fn(cfg.loss, model.sigmoid_output),
        cfg=cfg,
        source=source,
        val_x=val.to(device) if val is not None and len(val) else None,
        device=device,
        amp=amp,
        channels_last=channels_last,
        rank=rank,
        world=world,
        batch=batch,
        steps_per_epoch=max(1, len(source) // (batch * world)),
    )


def _initial_state(loop: _Loop, out: Path | None, resume: bool) -> TrainState:
    """A fresh state (the decoder starting from the mean training image, where the model has one),
    or the last committed epoch of ``out`` restored into the model and the optimizer."""
    found = read_state(out) if resume and out is not None else None
    if found is None:
        if loop.model.output_offset is not None:
            # Every DDP rank sees the same data, so every rank sets the same image.
            loop.model.set_mean_image(loop.source.mean_image())
        if hasattr(loop.model, "init_from_data"):
            _init_from_data(loop.model, loop.source)
        return TrainState(world=loop.world)
    state, manifest = found
    assert out is not None
    if state.world != loop.world:  # the shards and the step count depend on it
        raise ValueError(
            f"{out} was trained with {state.world} process(es); resume it with the same number "
            f"(torchrun --nnodes x --nproc_per_node), not {loop.world}"
        )
    restore_state(out, manifest, loop.model, loop.opt)
    if loop.rank == 0:
        reconcile(out, manifest)
    if state.epoch < loop.cfg.epochs and not state.stopped_early:
        log.info("resuming %s at epoch %d", out, state.epoch + 1)
    return state


def epoch_indices(n: int, epoch: int, seed: int, batch: int, steps: int, world: int, rank: int):
    """This rank's item indices for the epoch, ``[steps * batch]``.

    The same permutation on every rank: step i's global batch is ``perm[i*W*B : (i+1)*W*B]`` and
    rank r takes its r-th slice, so W processes x B images see exactly the batches of one process
    x W*B.
    """
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch, 0, torch.device("cpu")))
    return perm[: steps * world * batch].view(steps, world, batch)[:, rank].reshape(-1)


def _train_epoch(
    loop: _Loop, state: TrainState, epoch: int, progress: Progress | None, log_every: int
) -> float:
    """One pass of optimizer steps; returns the epoch's mean training loss (over all ranks)."""
    cfg, n_steps = loop.cfg, loop.steps_per_epoch
    loop.source.start_epoch(cfg.seed, epoch)
    idx = epoch_indices(
        len(loop.source), epoch, cfg.seed, loop.batch, n_steps, loop.world, loop.rank
    )
    noise_g = (
        epoch_generator(cfg.seed, epoch, 1 + loop.rank * 10, loop.device) if cfg.noise else None
    )
    # the draws of a model with its own objective (a codec's quality levels and rounding noise)
    draws = epoch_generator(cfg.seed, epoch, 4 + loop.rank * 10, loop.device)
    total = n_steps * cfg.epochs
    loss_sum = torch.zeros((), device=loop.device)  # accumulated on the device: no per-step sync
    window = torch.zeros((), device=loop.device)
    for i in range(n_steps):
        x = to_float(loop.source.batch(idx[i * loop.batch : (i + 1) * loop.batch]))
        if loop.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        inp = corrupt(x, cfg.noise, noise_g) if noise_g is not None else x
        for g in loop.opt.param_groups:
            g["lr"] = lr_at(state.step, total, cfg.lr, cfg.schedule, cfg.warmup)
        loss = _batch_loss(loop, inp, x, draws)
        loop.opt.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if cfg.clip is not None:
            loop.scaler.unscale_(loop.opt)  # the norm of the true gradients
            torch.nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.clip)
        loop.scaler.step(loop.opt)
        loop.scaler.update()
        state.step += 1
        loss_sum += loss.detach()
        window += loss.detach()
        if progress is not None and ((i + 1) % log_every == 0 or i + 1 == n_steps):
            live = float(window) / ((i % log_every) + 1)  # host sync, once per log_every steps
            window.zero_()
            if loop.world == 1 and not math.isfinite(live):  # under DDP the epoch check decides
                raise TrainingDiverged(_diverged(state, epoch, cfg))
            progress({"event": "step", "epoch": epoch + 1, "epochs": cfg.epochs,
                      "step": i + 1, "steps": n_steps, "loss": live})  # fmt: skip
    distributed.all_sum(loss_sum)
    distributed.average_buffers(loop.model)  # identical BatchNorm stats before validating/saving
    train_loss = float(loss_sum) / (n_steps * loop.world)  # host sync: once per epoch
    # Finite losses do not prove finite weights: the epoch's last step may have broken them, and
    # without a validation split nothing else would notice before they are saved.
    params = [p for p in loop.model.parameters()]
    finite = bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
    if not math.isfinite(train_loss) or not finite:
        raise TrainingDiverged(_diverged(state, epoch, cfg))
    return train_loss


def _validate(loop: _Loop, epoch: int, state: TrainState) -> float | None:
    """Mean validation loss (None when this epoch does not validate); each DDP rank takes a slice
    and the sum is the same on every rank."""
    cfg, val = loop.cfg, loop.val_x
    if val is None or not (epoch + 1 == cfg.epochs or (epoch + 1) % cfg.eval_every == 0):
        return None
    part = val[loop.rank * len(val) // loop.world : (loop.rank + 1) * len(val) // loop.world]
    total = torch.tensor(_loss_sum(loop, part), dtype=torch.float64, device=loop.device)
    val_loss = float(distributed.all_sum(total)) / len(val)
    if not math.isfinite(val_loss):
        raise TrainingDiverged(_diverged(state, epoch, cfg))
    return val_loss


@torch.inference_mode()
def _loss_sum(loop: _Loop, x_u8: Tensor, batch: int = 1024) -> float:
    """Summed per-image loss in eval mode, on clean or - when training with noise - corrupted
    inputs drawn with a fixed seed, so that epochs compare."""
    loop.model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x_u8.device)
    g = epoch_generator(loop.cfg.seed, -1, 2, x_u8.device)
    for i in range(0, len(x_u8), batch):
        x = to_float(x_u8[i : i + batch])
        inp = corrupt(x, loop.cfg.noise, g) if loop.cfg.noise else x
        total += _batch_loss(loop, inp, x).double() * len(x)
    loop.model.train()
    return float(total)  # host sync: once per validation


def _batch_loss(
    loop: _Loop, inp: Tensor, x: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """The batch's loss: the model's own objective where it has one (``training_loss(inp, x,
    generator)``: a rate-distortion codec adds its bits to the error), else ``loss_fn`` of its
    output."""
    own = getattr(loop.model, "training_loss", None)
    with autocast(loop.device, loop.amp):
        if own is not None:
            return own(inp, x, generator=generator).float()
        y = loop.net(inp) if loop.model.training else loop.model(inp)
    return loop.loss_fn(y.float(), x)


def _init_from_data(model: AutoEncoder, source: Source) -> None:
    """Data-dependent initialization for a model that has one (``init_from_data``: e.g. a block
    transform set to the principal axes of training patches), from up to 256 of epoch 0's items."""
    source.start_epoch(0, 0)
    model.init_from_data(to_float(source.batch(torch.arange(min(len(source), 256)))))


def _diverged(state: TrainState, epoch: int, cfg: TrainConfig) -> str:
    """What went wrong, what to change, and what the run directory still holds."""
    kept = (
        f"the run keeps its committed epochs: the best is epoch {state.best_epoch}, the last "
        f"epoch {state.epoch}"
        if state.epoch
        else "no epoch was committed, so nothing was saved"
    )
    return (
        f"loss became NaN/inf at epoch {epoch + 1} (step {state.step}); lower --lr (now "
        f"{cfg.lr:g}) or use --precision fp32; {kept}"
    )


# ---------------------------------------------------------------------------------------------
# From a config: build, fit, and the run directory around it


def build_seeded(cfg: RunConfig) -> AutoEncoder:
    """``cfg.model`` built with ``cfg.train.seed``: the same init on every rank and every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg.model)


def fit_config(
    cfg: RunConfig,
    train_data: Tensor | Source,
    val: Tensor | None,
    *,
    device: str | torch.device = "auto",
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> tuple[AutoEncoder, list[dict[str, Any]]]:
    """Build the model of a resolved ``cfg`` and fit it: the one way convae trains a model (a run
    directory, a one-class benchmark, a sweep). Returns the model (eval mode, ``run_config``
    set) and the history."""
    model = build_seeded(cfg).to(resolve_device(device))
    history = fit(model, train_data, val, cfg.train, run_dir=run_dir, resume=resume,
                  progress=progress)  # fmt: skip
    model.run_config = cfg
    model.run_dir = Path(run_dir) if run_dir is not None else None
    return model, history


def _check_crop(crop: int, store) -> None:
    """A crop must fit in at least one training image (smaller images are padded to it)."""
    sizes = store.sizes()
    if len(sizes) == 0:
        raise ValueError("no training images")
    h, w = (int(v) for v in sizes.max(axis=0))
    if crop > max(h, w):
        raise ValueError(
            f"--crop {crop} is larger than every training image (the largest are {h} pixels "
            f"high and {w} wide); choose a crop of at most {max(h, w)}"
        )


def training_data(data: DataConfig, device: torch.device) -> tuple[Source, Tensor, tuple]:
    """(training source, validation images, (channels, size)) of a data config: all images in
    memory, or random crops (``data.crop``) of the training files with fixed validation crops of
    the held-out ones."""
    if data.crop is None:
        train_x, _ = load_split(data, "train")
        val_x, _ = load_split(data, "val")
        if data.augment != "flip":
            raise ValueError("--augment applies to training on crops (--crop N)")
        if len(train_x) and train_x.shape[-2] != train_x.shape[-1]:
            raise ValueError(
                f"images are {train_x.shape[-1]}x{train_x.shape[-2]}; pass --crop N to train on "
                "square crops, or --image-size N to resize them"
            )
        return TensorImages(train_x, device), val_x, (train_x.shape[1], train_x.shape[-1])
    store, val_store = load_images(data, "train"), load_images(data, "val")
    _check_crop(data.crop, store)
    per_epoch = data.crops_per_epoch or max(2048, 64 * len(store))
    n_val = min(512, 16 * len(val_store))
    check_fits(n_val * store.channels * data.crop**2, f"{n_val} validation crops of {data.crop}")
    val_x = fixed_crops(val_store, data.crop, n_val, data.split_seed)
    crops = RandomCrops(store, data.crop, per_epoch, device, augment=data.augment)
    return crops, val_x, (store.channels, data.crop)


def _check_data_size(data: DataConfig, size: int) -> None:
    """Images of a size no model takes (a multiple of 4, at least 8): one line saying what to pass."""
    if data.crop is not None or data.image_size is not None or (size >= 8 and size % 4 == 0):
        return
    near = max(8, size // 4 * 4)
    raise ValueError(
        f"{data.spec}: the images are {size}x{size}; a model takes sizes that are multiples of 4 "
        f"(at least 8): pass --image-size {near} to resize them, or --crop {near} to train on "
        "crops"
    )


def train(
    cfg: RunConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
) -> Path:
    """Train a model as ``convae train`` does and return its run directory.

    Loads ``cfg.data``, builds ``cfg.model``, fits, then (rank 0) writes the test metrics,
    ``loss.png`` and ``reconstructions.png``. With ``resume``, ``out`` is an existing run and its
    own ``config.json`` decides everything; a run with no committed epoch starts over. Only one
    process at a time may write a run directory. ``progress`` receives :func:`fit`'s events, then
    ``{"event": "done"}`` once fitting is over.
    """
    rank, _ = distributed.world()
    dev = resolve_device(device)
    out, cfg = _run_and_config(cfg, out, resume)
    out = Path(distributed.broadcast_object(str(out)))
    train_src, val_x, (channels, size) = training_data(cfg.data, dev)
    if not resume:
        _check_data_size(cfg.data, size)
        cfg = resolve_config(cfg, channels, size, len(train_src))
    # Every mistake in the config surfaces before anything is written; sizes against memory too.
    model = build_model(cfg.model)
    _checked(cfg.train, model)
    check_memory(model, min(cfg.train.batch_size, max(1, len(train_src))), training=True)
    resolve_precision(cfg.train.precision, dev, recipe_for(cfg.model.arch).cpu_bf16)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    with run_lock(out) if rank == 0 else contextlib.nullcontext():
        if rank == 0 and not resume:
            _run_and_config(cfg, out, resume)  # again, now that no one else can start it
            write_json(out / "config.json", cfg.to_dict())
        log.info("training %s (latent %s, %d epochs, %s) on %d %s, validating on %d, device %s",
                 cfg.model.arch, cfg.model.latent_dim, cfg.train.epochs, cfg.train.optimizer,
                 len(train_src), "crops/epoch" if cfg.data.crop else "images", len(val_x),
                 dev)  # fmt: skip
        model, history = fit_config(cfg, train_src, val_x, device=dev, run_dir=out,
                                    resume=resume, progress=progress)  # fmt: skip
        if progress is not None:  # a progress bar closes before what follows logs
            progress({"event": "done"})
        if rank == 0:
            _finish_run(out, cfg, history, train_src, dev)
            # The run report (report.html) sums up the files just written.
            from .report import report_after_training

            report_after_training(out, dev)
    distributed.barrier()  # every rank returns once rank 0 has finished the run directory
    return out


def _run_and_config(
    cfg: RunConfig | None, out: str | os.PathLike | None, resume: bool
) -> tuple[Path, RunConfig]:
    """The run directory and the config to train: a stored one to resume, else a new one (a run
    already there is never overwritten)."""
    if resume:
        if out is None:
            raise ValueError("--resume needs the run directory (--out RUN)")
        out = Path(out)
        if not (out / "config.json").is_file():
            raise FileNotFoundError(
                f"{out}: not a run directory (no config.json); nothing to resume"
            )
        stored = read_run_config(out / "config.json")
        # a hand-edited config.json may hold nulls, which mean the architecture's recipe
        return out, replace(stored, train=recipe_for(stored.model.arch).fill(stored.train))
    cfg = cfg or RunConfig()
    out = Path(out) if out is not None else default_run_dir(cfg)
    if (out / "model.safetensors").exists() or (out / "trainer.json").exists():
        raise FileExistsError(
            f"{out} already holds a run; add --resume to continue it or choose another --out"
        )
    return out, cfg


def _finish_run(
    out: Path, cfg: RunConfig, history: list[dict[str, Any]], train_src: Source, dev
) -> None:
    """metrics.json (the test split, whole images), loss.png and reconstructions.png, and a
    warning when the model does no better than the training split's mean image."""
    best = load(out, dev)
    test, split = _test_split(cfg.data)
    images = split_images(test)
    metrics = {**evaluate(best, images), "split": split}
    metrics["mean_image_psnr"] = _mean_image_psnr(train_src, images)
    metrics["train_seconds"] = sum(r["seconds"] for r in history)
    metrics["train_cpu_seconds"] = sum(r.get("cpu_seconds", 0.0) for r in history)
    metrics["epochs"] = len(history)
    write_json(out / "metrics.json", metrics)
    save_figure(loss_figure(history), out / "loss.png")
    shown = [test.image(i) for i in spread_indices(len(test), 10).tolist()]
    recon = reconstruct(
        best, shown, noise=cfg.train.noise, generator=torch.Generator().manual_seed(0)
    )
    inputs = [to_float(x) for x in shown]
    g = torch.Generator().manual_seed(0)  # the same draws as reconstruct's
    noisy = [corrupt(x[None], cfg.train.noise, g)[0] for x in inputs] if cfg.train.noise else None
    save_figure(reconstruction_figure(inputs, recon, noisy=noisy), out / "reconstructions.png")
    _warn_about_result(metrics, history, best, train_src)


def _test_split(data: DataConfig):
    """The test split's images, or - for a folder too small to have one - validation or train."""
    for split, name in (("test", "test"), ("val", "validation"), ("train", "training")):
        images = load_images(data, split)
        if len(images):
            if split != "test":
                log.warning("no test images: metrics.json reports on the %s split", name)
            return images, name
    raise ValueError("the data holds no images")


def _mean_image_psnr(train_src: Source, images) -> float:
    """Mean PSNR of predicting every image by the training split's mean image (its mean colour,
    for crops): the score a model that learned nothing beyond the average would get."""
    mean = train_src.mean_image()  # [C, h, w]
    psnr = []
    for img in images:
        ref = mean if tuple(mean.shape) == tuple(img.shape) else mean.mean((1, 2), keepdim=True)
        psnr.append(float(psnr_per_image(to_float(img)[None], ref.expand(img.shape)[None])[0]))
    return sum(psnr) / len(psnr)


def _warn_about_result(metrics: dict, history: list[dict[str, Any]], model, train_src) -> None:
    """Warnings a user should see: a model no better than the mean image, a validation loss that
    never improved, a model with more parameters than its training data has values."""
    if metrics["psnr"] <= metrics["mean_image_psnr"] + 0.5:
        log.warning(
            "the model reconstructs the %s split at %.2f dB, no better than the training mean "
            "image (%.2f dB): it learned little; train longer (--epochs), on more images, or with "
            "a smaller code", metrics["split"], metrics["psnr"], metrics["mean_image_psnr"],
        )  # fmt: skip
    val = [r["val_loss"] for r in history if r.get("val_loss") is not None]
    if len(val) >= 3 and min(val) >= val[0]:
        log.warning("the validation loss never improved on its first value (%.5g)", val[0])
    params = sum(p.numel() for p in model.parameters())
    values = train_values(train_src)
    if params > values:
        log.warning(
            "the model has %s parameters for %s training pixel values: it may learn the training "
            "images by heart; use more images or a smaller model (--width, --latent-dim)",
            f"{params:,}", f"{values:,}",
        )  # fmt: skip


def train_or_reuse(
    cfg: RunConfig,
    run: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
) -> str:
    """Make sure ``run`` holds a finished training of ``cfg``; return "reused", "resumed" or
    "trained". A finished run of the same recipe is reused and a stopped one resumed; a run of
    another recipe raises ``FileExistsError`` (nothing is overwritten)."""
    run = Path(run)
    if (run / "config.json").is_file():
        stored = read_run_config(run / "config.json")
        if not same_recipe(stored, _resolved_like(cfg, stored)):
            raise FileExistsError(f"{run} holds a run with another recipe; choose another --out")
        if (run / "metrics.json").is_file():
            log.info("reusing the finished run in %s", run)
            return "reused"
        log.info("resuming the stopped run in %s", run)
        train(None, run, resume=True, device=device, progress=progress)
        return "resumed"
    train(cfg, run, device=device, progress=progress)
    return "trained"


def _resolved_like(cfg: RunConfig, stored: RunConfig) -> RunConfig:
    """``cfg`` resolved for the data ``stored`` was resolved for (its shape, and the epochs a
    recipe gives for its size when ``cfg`` leaves them to the recipe)."""
    if cfg.train.epochs is None and cfg.data == stored.data:
        cfg = replace(cfg, train=replace(cfg.train, epochs=stored.train.epochs))
    return resolve_config(cfg, stored.model.channels, stored.model.image_size)
