"""Training: the loop (`fit`), evaluation, and the one-call `train()` that makes a run directory.

The loop is written to be read top to bottom. The data stays as uint8 in memory (on the device) and
each batch is sliced, converted and normalized on the fly; the shuffle is a permutation seeded by
(seed, epoch), so resuming at epoch k replays exactly what an uninterrupted run would do. Losses
are accumulated on the device and only read back at log points, not every step.

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from . import __version__
from .checkpoint import (
    check_run_dir,
    load_trainer_state,
    load_weights,
    save_trainer_state,
    save_weights,
    write_json,
)
from .config import OPTIMIZERS, RunConfig, TrainConfig, read_run_config
from .data import load_split
from .metrics import summarize
from .models import (
    AutoEncoder,
    build_model,
    cpu_bf16,
    default_latent_dim,
    default_recipe,
    resolve_mean_image,
)
from .noise import corrupt, parse_noise
from .optim import bf16_is_fast, build_optimizer

log = logging.getLogger(__name__)

__all__ = [
    "fit",
    "train",
    "load",
    "evaluate",
    "reconstruct",
    "resolve_device",
    "auto_threads",
    "TrainingDiverged",
    "to_float",
]

Progress = Callable[[dict[str, Any]], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the best checkpoint on disk is left untouched."""


# ---------------------------------------------------------------------------------------------
# Devices and precision


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or mps, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda requested but no CUDA GPU is available; use --device auto or cpu"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(
            "--device mps requested but MPS is not available; use --device auto or cpu"
        )
    return torch.device(name)


def resolve_precision(
    precision: str, device: torch.device, arch: str | None = None
) -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto`` picks bf16 where measured faster: CUDA, and a CPU
    with fast bf16 unless ``arch`` measured faster in fp32 there (``models.cpu_bf16``;
    docs/benchmarks.md)."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
        return torch.float16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and bf16_is_fast(device) and (arch is None or cpu_bf16(arch)):
        return torch.bfloat16
    return None


def _other_runnable_tasks(samples: int = 5, gap: float = 0.01) -> int | None:
    """Runnable tasks on the machine besides this process (Linux ``/proc/loadavg``), median of a few
    snapshots; None where that file does not exist."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(running - 1)  # the reading process is itself runnable
        if i + 1 < samples:
            time.sleep(gap)
    return sorted(counts)[len(counts) // 2]


# torch's own choice, read before anything here lowers it: a second auto_threads() in the same
# process (a notebook, the CLI's main() called twice) starts again from the machine's cores.
_TORCH_THREADS = torch.get_num_threads()


def auto_threads(default: int | None = None, busy: int | None = None) -> int:
    """CPU threads for torch that do not oversubscribe a busy machine.

    torch's default is one OpenMP thread per core, and its threads wait for each other in every
    operation: when another process holds one of the cores, the descheduled thread stalls the rest.
    On the 2-core CPU beside one other training process an epoch took 2.8x longer with 2 threads
    than with 1 (``benchmarks/threads.py``, docs/benchmarks.md). So: ``default`` (torch's) minus
    ``busy``, the other runnable tasks (read from ``/proc/loadavg`` when not given), at least 1.
    An explicit ``OMP_NUM_THREADS`` (torchrun sets it to 1 per process) is respected.
    """
    n = default if default is not None else _TORCH_THREADS
    if os.environ.get("OMP_NUM_THREADS"):
        return n
    if busy is None:
        busy = _other_runnable_tasks()
    if busy is None:  # not Linux: nothing to go by
        return n
    return max(1, min(n, (os.cpu_count() or n) - busy))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_float(x: Tensor, device: torch.device | None = None) -> Tensor:
    """uint8 [B, C, H, W] -> float32 in [0, 1] on ``device`` (the one normalization convae uses).

    Anything but uint8 is refused: dividing float images that are already in [0, 1] by 255 again
    would silently give wrong reconstructions, scores and metrics.
    """
    if x.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 images (0-255, as load_dataset and read_images return), not {x.dtype}"
        )
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x.float().div_(255.0)


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule: a pure function of the step, so resuming needs no scheduler state.


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.schedule == "constant" or total <= 1:
        return cfg.lr
    warm = max(1, int(cfg.warmup * total))
    if step < warm:  # linear warm-up from lr/25 (one-cycle) or 0 (cosine)
        start = cfg.lr / 25 if cfg.schedule == "onecycle" else 0.0
        return start + (cfg.lr - start) * step / warm
    t = (step - warm) / max(1, total - warm)
    floor = cfg.lr / 1e4 if cfg.schedule == "onecycle" else 0.0
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _loss_fn(name: str, sigmoid_output: bool) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "mse":
        return F.mse_loss
    if name == "bce":
        if not sigmoid_output:
            raise ValueError(
                "--loss bce needs an architecture with a sigmoid output (not seed-keras2d)"
            )
        return lambda y, x: F.binary_cross_entropy(y.float().clamp(1e-6, 1 - 1e-6), x)
    raise ValueError(f"loss must be mse or bce, not {name!r}")


def _validate_train_cfg(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {cfg.batch_size}")
    if not (0 < cfg.lr < math.inf):
        raise ValueError(f"learning rate must be a positive number, not {cfg.lr}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {cfg.optimizer!r}")
    if cfg.schedule not in ("onecycle", "cosine", "constant"):
        raise ValueError(f"schedule must be onecycle, cosine or constant, not {cfg.schedule!r}")
    if cfg.patience < 0:
        raise ValueError(f"patience must be >= 0, not {cfg.patience}")
    for spec in cfg.noise:
        parse_noise(spec)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63))
    return g


# ---------------------------------------------------------------------------------------------
# The loop


@torch.inference_mode()
def _mean_loss(model, x_u8: Tensor, cfg: TrainConfig, loss_fn, amp, batch: int = 1024) -> float:
    """Validation loss (eval mode, no grad) on clean or - when training with noise - corrupted inputs."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x_u8.device)
    g = _epoch_generator(cfg.seed, -1, 2, x_u8.device)  # fixed noise: comparable across epochs
    for i in range(0, len(x_u8), batch):
        x = to_float(x_u8[i : i + batch])
        inp = corrupt(x, cfg.noise, g) if cfg.noise else x
        with amp():
            y = model(inp)
        total += loss_fn(y.float(), x).double() * len(x)
    model.train()
    return float(total) / max(1, len(x_u8))  # host sync: once per validation


def fit(
    model: AutoEncoder,
    train_x: Tensor,
    val_x: Tensor | None,
    cfg: TrainConfig,
    *,
    run_dir: str | os.PathLike | None = None,
    run_config: RunConfig | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    log_every: int = 10,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on uint8 images; return the per-epoch history.

    With ``run_dir``, rank 0 writes ``model.safetensors`` (best validation loss), ``last.safetensors``
    + trainer state (every epoch, for ``resume``) and ``history.jsonl``. ``progress`` receives
    ``{"event": "step", ...}`` every ``log_every`` steps and ``{"event": "epoch", ...}`` per epoch.
    """
    cfg = resolve_recipe(cfg, model.config.arch)
    _validate_train_cfg(cfg)
    rank, world = _world()
    device = next(model.parameters()).device
    amp_dtype = resolve_precision(cfg.precision, device, model.config.arch)
    # channels_last measured faster for every registered arch on CPU (oneDNN) and CUDA; MPS is untested.
    channels_last = (
        cfg.channels_last if cfg.channels_last is not None else device.type in ("cpu", "cuda")
    )
    out = Path(run_dir) if run_dir is not None else None
    writer = out is not None and rank == 0

    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_x = train_x.to(device)  # uint8, resident: 4,000 digits are 3 MB
    val_x = val_x.to(device) if val_x is not None and len(val_x) else None
    n = len(train_x)
    if n == 0:
        raise ValueError("the training split is empty (check --classes and the data)")
    if model.output_offset is not None and not resume:
        # The decoder starts from the mean training image (a resumed run has it in its weights).
        # Every DDP rank holds the whole training split, so every rank sets the same image.
        model.set_mean_image((train_x.sum(0, dtype=torch.float64) / (255.0 * n)).float())
    batch = min(cfg.batch_size, max(1, n // world))
    steps_per_epoch = max(1, n // (batch * world))
    total_steps = steps_per_epoch * cfg.epochs

    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg)
    net: torch.nn.Module = model
    if world > 1:
        # BatchNorm stays per rank (statistics of each rank's own B images; SyncBatchNorm has no CPU
        # kernel). forward_sync_buffers=False: running stats are averaged over ranks once per epoch
        # (_average_buffers) instead of rank 0's overwriting everyone's before every forward.
        net = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,
        )
    loss_fn = _loss_fn(cfg.loss, model.sigmoid_output)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def amp():
        return _autocast(device, amp_dtype)

    history: list[dict[str, Any]] = []
    start_epoch, step, best, bad_epochs = 0, 0, math.inf, 0
    if resume:
        if out is None:
            raise ValueError("resume needs a run directory")
        if not (out / "trainer.json").is_file() or not (out / "last.safetensors").is_file():
            raise FileNotFoundError(
                f"{out}: no trainer state to resume from (trainer.json, last.safetensors)"
            )
        model.load_state_dict(load_weights(out / "last.safetensors"))
        info = load_trainer_state(out, opt)
        start_epoch, step, best = info["epoch"], info["step"], info["best"]
        bad_epochs, history = info.get("bad_epochs", 0), info.get("history", [])
        if info.get("stopped_early") or start_epoch >= cfg.epochs:
            log.info("run in %s already finished (%d epochs)", out, start_epoch)
            return history
        if info.get("world", 1) != world:  # the shards and the step count depend on it
            raise ValueError(
                f"{out} was trained with {info.get('world', 1)} process(es); resume it with "
                f"the same number (torchrun --nnodes x --nproc_per_node), not {world}"
            )
        log.info("resuming %s at epoch %d", out, start_epoch + 1)

    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        # Same permutation on every rank. Step i's global batch is perm[i*W*B : (i+1)*W*B] and rank r
        # takes its r-th slice, so W processes x B images see exactly the batches of one process x W*B.
        perm = torch.randperm(
            n, generator=_epoch_generator(cfg.seed, epoch, 0, torch.device("cpu"))
        )
        perm = perm[: steps_per_epoch * world * batch].view(steps_per_epoch, world, batch)[:, rank]
        perm = perm.reshape(-1).to(device)
        noise_g = _epoch_generator(cfg.seed, epoch, 1 + rank * 10, device) if cfg.noise else None
        loss_sum = torch.zeros((), device=device)  # accumulated on device: no per-step sync
        window = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            x = to_float(train_x[idx])  # [B, C, H, W] float in [0, 1]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            inp = corrupt(x, cfg.noise, noise_g) if noise_g is not None else x
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total_steps, cfg)
            with amp():
                y = net(inp)
            loss = loss_fn(y.float(), x)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            d = loss.detach()
            loss_sum += d
            window += d
            if progress is not None and ((i + 1) % log_every == 0 or i + 1 == steps_per_epoch):
                live = float(window) / ((i % log_every) + 1)  # host sync, once per log_every steps
                window.zero_()
                # under DDP the epoch check decides, so that all ranks agree
                if world == 1 and not math.isfinite(live):
                    raise TrainingDiverged(_diverged_msg(epoch, step, cfg))
                progress(
                    {
                        "event": "step",
                        "epoch": epoch + 1,
                        "epochs": cfg.epochs,
                        "step": i + 1,
                        "steps": steps_per_epoch,
                        "loss": live,
                    }
                )
        if world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world
            _average_buffers(model, world)  # identical BatchNorm stats before validating and saving
        train_loss = float(loss_sum) / steps_per_epoch  # host sync: once per epoch
        # Finite losses do not prove finite weights: the epoch's last step may have broken them, and
        # without a validation split nothing else would notice before they are saved.
        finite_weights = bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
        if not math.isfinite(train_loss) or not finite_weights:
            raise TrainingDiverged(_diverged_msg(epoch, step, cfg))
        last = epoch + 1 == cfg.epochs
        val_loss = None
        if val_x is not None and (last or (epoch + 1) % cfg.eval_every == 0):
            if world > 1:  # each rank validates its own slice; the sum is the same on every rank
                part = val_x[rank * len(val_x) // world : (rank + 1) * len(val_x) // world]
                total = torch.tensor(
                    _mean_loss(model, part, cfg, loss_fn, amp) * len(part),
                    dtype=torch.float64,
                    device=device,
                )
                dist.all_reduce(total)
                val_loss = float(total) / len(val_x)
            else:
                val_loss = _mean_loss(model, val_x, cfg, loss_fn, amp)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(_diverged_msg(epoch, step, cfg))
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": opt.param_groups[0]["lr"],
            "seconds": seconds,
        }
        history.append(row)
        score = val_loss if val_loss is not None else (train_loss if val_x is None else None)
        improved = score is not None and score < best
        if improved:
            best, bad_epochs = score, 0
        elif score is not None:
            bad_epochs += 1
        stop = cfg.patience > 0 and bad_epochs >= cfg.patience
        if writer:
            assert out is not None
            if improved:
                save_weights(model, out / "model.safetensors")
            save_weights(model, out / "last.safetensors")
            save_trainer_state(
                out,
                opt,
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "best": best,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "stopped_early": stop,
                    "world": world,
                },
            )
            _write_history(out / "history.jsonl", history)
        if progress is not None:
            progress({"event": "epoch", **row, "epochs": cfg.epochs, "best": best})
        if stop:
            log.info(
                "early stop after epoch %d: no improvement for %d epochs", epoch + 1, bad_epochs
            )
            break
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _average_buffers(model: torch.nn.Module, world: int) -> None:
    """Average floating buffers (BatchNorm running mean/var) over ranks, in place; a sync point."""
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world)
        else:  # num_batches_tracked: already equal, every rank took the same number of steps
            dist.broadcast(b, src=0)


def _diverged_msg(epoch: int, step: int, cfg: TrainConfig) -> str:
    return (
        f"loss became NaN/inf at epoch {epoch + 1} (step {step}); lower --lr (now {cfg.lr}) or use "
        "--precision fp32. The best checkpoint so far was kept."
    )


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    import json

    from .checkpoint import atomic_write

    atomic_write(path, "".join(json.dumps(r) + "\n" for r in history))


# ---------------------------------------------------------------------------------------------
# Evaluation and loading


@torch.inference_mode()
def reconstruct(
    model: AutoEncoder,
    images_u8: Tensor,
    batch_size: int = 1024,
    noise: tuple[str, ...] = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reconstructions (float32 [N, C, H, W] in [0, 1], on CPU) of uint8 images, in fp32."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for i in range(0, len(images_u8), batch_size):
        x = to_float(images_u8[i : i + batch_size], device)
        if noise:
            x = corrupt(x, noise, generator)
        outs.append(model(x).float().clamp_(0, 1).cpu())
    if not outs:
        c, s = model.config.channels, model.config.image_size
        return torch.zeros(0, c, s, s)
    return torch.cat(outs)


def evaluate(model: AutoEncoder, images_u8: Tensor, ssim: bool = True) -> dict[str, float]:
    """Test metrics of a model on uint8 images: MSE, PSNR, SSIM, latent size, compression ratio."""
    if len(images_u8) == 0:
        raise ValueError("no images to evaluate")
    y = reconstruct(model, images_u8)
    x = to_float(images_u8)
    m = summarize(x, y, ssim=ssim)
    n_in = math.prod(model.input_shape)
    return {
        **m,
        "latent_dim": model.latent_dim,
        "compression_ratio": n_in / model.latent_dim,
        "images": len(images_u8),
    }


def load(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", which: str = "best"
) -> AutoEncoder:
    """Load a trained model from a run directory (``which``: "best" or "last").

    The returned model is in eval mode and carries ``run_config`` (the :class:`RunConfig`) and
    ``run_dir`` attributes.
    """
    p = check_run_dir(run_dir)
    cfg = read_run_config(p / "config.json")
    model = build_model(cfg.model)
    weights = p / ("model.safetensors" if which == "best" else "last.safetensors")
    try:
        model.load_state_dict(load_weights(weights))
    except RuntimeError as e:  # torch's message lists every key on its own line: keep one line
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        detail = "; ".join(lines)
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ValueError(
            f"{weights}: weights do not match the architecture in config.json ({detail})"
        ) from e
    model.run_config = cfg  # type: ignore[attr-defined]
    model.run_dir = p  # type: ignore[attr-defined]
    dev = resolve_device(device) if isinstance(device, str) else device
    return model.to(dev).eval()


# ---------------------------------------------------------------------------------------------
# One call: data -> model -> fit -> metrics + plots in a run directory


def default_run_dir(cfg: RunConfig, root: str | os.PathLike = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = cfg.data.spec.replace("folder:", "").replace(os.sep, "_").strip("_.")[-24:] or "data"
    base = Path(root) / f"{stamp}-{cfg.model.arch}-{data}"
    p, k = base, 1
    while p.exists():
        k += 1
        p = Path(f"{base}-{k}")
    return p


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Fill in what depends on the data and the architecture (channels, size, latent dim, epochs,
    optimizer, version)."""
    m = cfg.model
    if cfg.data.channels is not None:
        m = replace(m, channels=cfg.data.channels)
    if cfg.data.image_size is not None:
        m = replace(m, image_size=cfg.data.image_size)
    if m.latent_dim is None:
        m = replace(m, latent_dim=default_latent_dim(m))
    m = resolve_mean_image(m)
    return replace(cfg, model=m, train=resolve_recipe(cfg.train, m.arch), version=__version__)


def resolve_recipe(cfg: TrainConfig, arch: str) -> TrainConfig:
    """Fill the fields left ``None`` (epochs, batch_size, optimizer, lr, warmup) from ``arch``'s
    default recipe."""
    fill = {k: v for k, v in default_recipe(arch).items() if getattr(cfg, k) is None}
    return replace(cfg, **fill) if fill else cfg


def train(
    cfg: RunConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
) -> Path:
    """Train a model as ``convae train`` does and return its run directory.

    Loads the data of ``cfg.data``, builds ``cfg.model``, fits, then (rank 0) writes test metrics,
    ``loss.png`` and ``reconstructions.png``. With ``resume``, ``out`` must be an existing run and
    its own ``config.json`` is used. ``progress`` receives :func:`fit`'s events, then
    ``{"event": "done"}`` once fitting is over.
    """
    from .plots import loss_figure, reconstruction_figure, save_figure

    rank, world = _world()
    dev = resolve_device(device) if isinstance(device, str) else device
    if resume:
        if out is None:
            raise ValueError("--resume needs the run directory (--out RUN)")
        out = Path(out)
        if not (out / "config.json").is_file():
            raise FileNotFoundError(
                f"{out}: not a run directory (no config.json) - nothing to resume"
            )
        cfg = read_run_config(out / "config.json")
        # a hand-edited config.json may hold nulls, which mean the architecture's recipe
        cfg = replace(cfg, train=resolve_recipe(cfg.train, cfg.model.arch))
    else:
        cfg = cfg or RunConfig()
        out = Path(out) if out is not None else default_run_dir(cfg)
        if (out / "model.safetensors").exists() or (out / "trainer.json").exists():
            raise FileExistsError(
                f"{out} already holds a run; use --resume to continue it or choose another --out"
            )
    if world > 1:  # one run directory for all ranks: rank 0's (a default name carries the time)
        name = [str(out)]
        dist.broadcast_object_list(name, src=0)
        out = Path(name[0])

    train_x, _ = load_split(cfg.data, "train")
    val_x, _ = load_split(cfg.data, "val")
    if not resume:
        # The data decides channels and size unless the user forced them.
        c, s = train_x.shape[1], train_x.shape[-1]
        if train_x.shape[-2] != s:
            raise ValueError(
                f"images are {train_x.shape[-1]}x{train_x.shape[-2]}; pass --image-size N for square inputs"
            )
        cfg = resolve_config(replace(cfg, model=replace(cfg.model, channels=c, image_size=s)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)  # identical init on every rank and every run
        model = build_model(cfg.model)
    # The user's mistakes in the training flags surface before anything is logged or written.
    _validate_train_cfg(cfg.train)
    resolve_precision(cfg.train.precision, dev)
    _loss_fn(cfg.train.loss, model.sigmoid_output)
    model.to(dev)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json(out / "config.json", cfg.to_dict())
    log.info(
        "training %s (latent %d, %d epoch%s, %s) on %d images, validating on %d, device %s",
        cfg.model.arch,
        model.latent_dim,
        cfg.train.epochs,
        "" if cfg.train.epochs == 1 else "s",
        cfg.train.optimizer,
        len(train_x),
        len(val_x),
        dev,
    )
    history = fit(
        model,
        train_x,
        val_x,
        cfg.train,
        run_dir=out,
        run_config=cfg,
        resume=resume,
        progress=progress,
    )
    if progress is not None:  # training is over: a progress bar closes before what follows logs
        progress({"event": "done"})
    if rank == 0:
        best = load(out, dev)
        test_x, _ = load_split(cfg.data, "test")
        split = "test"
        # a folder under 10 images has no test split: report on val, else train
        if len(test_x) == 0:
            test_x, split = (val_x, "validation") if len(val_x) else (train_x, "training")
            log.warning("no test images: metrics.json reports on the %s split", split)
        metrics = {**evaluate(best, test_x), "split": split}
        metrics["train_seconds"] = sum(r["seconds"] for r in history)
        metrics["epochs"] = len(history)
        write_json(out / "metrics.json", metrics)
        save_figure(loss_figure(history), out / "loss.png")
        k = min(10, len(test_x))
        shown = test_x[_spread_indices(len(test_x), k)]
        recon = reconstruct(
            best, shown, noise=cfg.train.noise, generator=torch.Generator().manual_seed(0)
        )
        inputs = to_float(shown)
        if cfg.train.noise:
            noisy = corrupt(inputs, cfg.train.noise, torch.Generator().manual_seed(0))
            save_figure(
                reconstruction_figure(inputs, recon, noisy=noisy), out / "reconstructions.png"
            )
        else:
            save_figure(reconstruction_figure(inputs, recon), out / "reconstructions.png")
    if world > 1:
        dist.barrier()  # every rank returns once rank 0 has finished the run directory
    return out


def _spread_indices(n: int, k: int) -> Tensor:
    """k indices spread over [0, n): shows every class when the split is sorted by label."""
    return torch.linspace(0, n - 1, k).round().long() if k else torch.zeros(0, dtype=torch.long)
