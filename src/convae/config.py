"""Typed, frozen configuration for a run: model, data and training.

The resolved :class:`RunConfig` is written as ``config.json`` next to every checkpoint, so a run
directory alone is enough to rebuild the model and the data pipeline that trained it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "Recipe",
    "recipe_for",
    "register_recipe",
    "PRESETS",
    "preset_overrides",
    "preset_crop",
    "apply_preset",
    "read_run_config",
    "OPTIMIZERS",
    "preset_for_data",
]

# convae.optim builds them: torch's AdamW and Adam, and Muon (orthogonalized momentum for weight
# matrices, AdamW for biases and norms in the same optimizer).
OPTIMIZERS = ("adamw", "adam", "muon")


@dataclass(frozen=True)
class ModelConfig:
    # registry name (`convae.models.available()`); None = "convae", or "convae-map" (fully
    # convolutional) when training on crops of images of any size
    arch: str | None = None
    channels: int = 1  # 1 (grey) or 3 (RGB) input channels
    image_size: int = 28  # square input side in pixels; must be divisible by 4
    latent_dim: int | None = None  # bottleneck values per image; None = the architecture's default
    width: int = 16  # base channel width of the `convae` arch (seed archs keep their own widths)
    decoder: str = "upsample"  # "upsample" (nearest + conv) or "transpose" (ConvTranspose2d)
    norm: str = "batch"  # "batch" or "none" (the `convae` arch)
    depth: int | None = None  # stride-2 stages before the code map (convae-map); None = 2
    code_channels: int | None = None  # channels of a code map (convae-map); None = from latent_dim
    # How convae-map's convolutions pad borders: "zeros" or "reflect". None = "reflect" when
    # trained on crops (a crop's border then looks like the inside of a whole image, so the model
    # runs on whole images as well as on crops), else "zeros".
    padding: str | None = None
    # The decoder adds the training images' mean image to its output (before the sigmoid, as a
    # logit, where the output has one): it predicts each image's difference from the mean.
    # fit() sets it from the training split. None = the architecture's default (on where it was
    # measured better: docs/benchmarks.md, docs/latent.md).
    mean_image: bool | None = None


@dataclass(frozen=True)
class DataConfig:
    spec: str = "mnist-sample"  # mnist-sample | mnist | fashion-mnist | cifar10 | folder:PATH
    data_dir: str | None = None  # where the user's already-downloaded files are
    classes: tuple[int, ...] | None = None  # keep only these labels
    channels: int | None = None  # force 1 or 3 channels (folders); None = the dataset's own
    image_size: int | None = None  # resize + centre-crop folders to this side
    max_side: int | None = None  # folders: shrink images whose longer side is above this
    val_fraction: float = 0.1  # fraction of train carved out (stratified) for validation
    strict: bool = False  # folders: unreadable files are an error instead of skipped
    max_pixels: int | None = (
        None  # folders: decode images of up to this many pixels (None: Pillow's limit)
    )
    split_seed: int = 0  # seed of the deterministic train/val split
    split_by: str = "file"  # folders: hold out whole "file"s or whole sub-"folder"s
    crop: int | None = None  # train on random crop x crop crops (+ flips) of images of any size
    crops_per_epoch: int | None = None  # crops in an epoch; None = 64 per training image, >= 2048
    # Crops only: "flip" (horizontal flips), "dihedral" (the 8 flips and 90-degree rotations),
    # "dihedral+channels" (and a random order of the colour channels), or "none".
    augment: str = "flip"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = None  # passes over the training split; None = the arch's default
    batch_size: int | None = None  # images per step (per process under DDP); None = the arch's (32)
    lr: float | None = None  # peak learning rate of the schedule; None = the arch's default (1e-2)
    optimizer: str | None = None  # "adamw", "adam" or "muon" (convae.optim); None: the arch's
    weight_decay: float = 1e-4  # decoupled weight decay (adamw, muon; ignored by adam)
    schedule: str = "onecycle"  # "onecycle", "cosine" or "constant"
    warmup: float | None = None  # fraction of steps warming up; None = the arch's default (0.15)
    loss: str = "mse"  # "mse", "l1" or "bce"
    precision: str = "auto"  # "auto", "fp32", "bf16" or "fp16"
    channels_last: bool | None = None  # None = on (measured faster on CPU and CUDA)
    patience: int = 0  # early stop after this many epochs without val improvement; 0 = off
    seed: int = 0  # one seed: init, shuffling, noise
    # input corruptions for denoising, e.g. ("gaussian:0.4",) or ("blind",) (convae.noise)
    noise: tuple[str, ...] = ()
    eval_every: int = 1  # validate every N epochs (always on the last)
    clip: float | None = None  # clip each step's gradient norm to this; None = no clipping


@dataclass(frozen=True)
class Recipe:
    """An architecture's default training recipe: what :class:`TrainConfig` fields left ``None``
    become. Each value is a measured choice (docs/benchmarks.md)."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-2  # peak of the schedule
    warmup: float = 0.15  # fraction of the steps warming up
    cpu_bf16: bool = True  # --precision auto trains under bf16 autocast on a CPU with fast bf16
    # Epochs left to the recipe are raised until training takes at least this many optimizer
    # steps: on 100 images, 10 epochs of 32 are 30 steps, too few to learn more than the mean.
    min_steps: int = 300

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}"
            )

    def fill(self, cfg: TrainConfig, items: int | None = None) -> TrainConfig:
        """``cfg`` with every field left ``None`` taken from this recipe; with ``items`` (the
        training images or crops of an epoch), epochs left ``None`` give at least ``min_steps``."""
        names = ("epochs", "batch_size", "optimizer", "lr", "warmup")
        over = {k: getattr(self, k) for k in names if getattr(cfg, k) is None}
        if cfg.epochs is None and items:
            steps = max(1, items // (cfg.batch_size or self.batch_size))
            over["epochs"] = max(self.epochs, math.ceil(self.min_steps / steps))
        return replace(cfg, **over) if over else cfg


_RECIPES: dict[str, Recipe] = {
    # Muon: without normalization and with a 7x7 conv into a 1x1 code this model needs optimizer
    # steps, not images; Muon's orthogonalized updates reach the seeds' quality in about half of
    # AdamW's steps. With its mean image a short, hot schedule gets there soonest; batch 64
    # because its step is per-operation overhead (an epoch of 64s costs ~0.7x an epoch of 32s);
    # fp32 because autocast's casts cost more than bf16 saves on convolutions of 1-32 channels.
    "seed-strided": Recipe(
        epochs=9, batch_size=64, optimizer="muon", lr=1.5e-2, warmup=0.02, cpu_bf16=False
    ),
    "seed-upsample": Recipe(optimizer="muon"),
    "seed-dense": Recipe(optimizer="muon"),
    "convae": Recipe(optimizer="muon"),
    "convae-map": Recipe(optimizer="muon"),
    # The photo codec (docs/codec.md): Adam at a low rate (GDN and the densities diverge under
    # hot schedules), small batches of 128 px crops; fp32 (bf16 rounding breaks the bit counts).
    "hyperprior": Recipe(
        epochs=12, batch_size=8, optimizer="adam", lr=5e-4, warmup=0.02, cpu_bf16=False
    ),
    # The residual U-Net has no normalization: Adam at a moderate rate with a short warm-up, in
    # small batches (the preset `denoise` on crops pins its measured recipe).
    "convae-unet": Recipe(batch_size=16, optimizer="adam", lr=2e-3, warmup=0.02),
}


def recipe_for(arch: str) -> Recipe:
    """The default recipe of architecture ``arch`` (:class:`Recipe`'s defaults when it has none)."""
    return _RECIPES.get(arch, Recipe())


def register_recipe(arch: str, recipe: Recipe) -> None:
    """Give architecture ``arch`` its own default recipe (for architectures users register)."""
    _RECIPES[arch] = recipe


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None  # the --preset the run was made with, for the record
    version: str = ""  # convae version that wrote it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Rebuild from a dict; unknown keys (from newer versions) are ignored, missing ones default."""
        if not isinstance(d, dict):
            raise ValueError("config must be a JSON object")

        def build(kind: type, section: str, sub: Any) -> Any:
            sub = {} if sub is None else sub
            if not isinstance(sub, dict):
                raise ValueError(f"{section} must be a JSON object, not {_describe(sub)}")
            known = {f.name: f for f in fields(kind)}
            kwargs = {}
            for k, v in sub.items():
                if k not in known:
                    continue
                _check_type(f"{section}.{k}", v, str(known[k].type))
                if isinstance(v, list):  # JSON has no tuples
                    v = tuple(v)
                kwargs[k] = v
            return kind(**kwargs)

        if not isinstance(d.get("model", {}), dict | None):
            raise ValueError(f"model must be a JSON object, not {_describe(d['model'])}")
        model = dict(d.get("model") or {})
        # Run directories written before the mean image existed have none (their weights lack it).
        model.setdefault("mean_image", False)
        for key in ("preset", "version"):
            _check_type(key, d.get(key), "str | None")
        return cls(
            model=build(ModelConfig, "model", model),
            data=build(DataConfig, "data", d.get("data")),
            train=build(TrainConfig, "train", d.get("train")),
            preset=d.get("preset"),
            version=d.get("version") or "",
        )

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


def read_run_config(path: str | os.PathLike) -> RunConfig:
    """A run directory's ``config.json``; a malformed one is a one-line ``ValueError`` naming it."""
    try:
        return RunConfig.from_json(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _describe(v: Any) -> str:
    return f"{type(v).__name__} {v!r}" if not isinstance(v, dict | list) else type(v).__name__


# What a config.json value must be, by the field's annotation (the ones the dataclasses use).
_SCALARS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": (
        "a number",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    ),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
}


def _check_type(name: str, v: Any, annotation: str) -> None:
    kinds = [k.strip() for k in annotation.split("|")]
    if "None" in kinds and v is None:
        return
    for k in kinds:
        if k in _SCALARS and _SCALARS[k][1](v):
            return
        if k.startswith("tuple[") and isinstance(v, list | tuple):
            item = k[len("tuple[") :].split(",")[0].strip()
            if all(_SCALARS[item][1](x) for x in v):
                return
    wanted = []
    for k in kinds:
        if k in _SCALARS:
            wanted.append(_SCALARS[k][0])
        elif k.startswith("tuple["):
            item = k[len("tuple[") :].split(",")[0].strip()
            wanted.append(f"a list of {_SCALARS[item][0].split(' ', 1)[1]}s")
        elif k == "None":
            wanted.append("null")
    raise ValueError(f"{name} must be {' or '.join(wanted)}, not {_describe(v)}")


# Presets: named overrides of the defaults for a task. A user's explicit flags win over a preset.
# Each entry maps a section ("model" / "train") to field overrides.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    # Denoising (docs/denoise.md). Images of one size (digits): a wide dense bottleneck (the code
    # must carry the whole clean digit, not a compressed summary of it), a narrow cheap network,
    # and many small steps - each epoch draws new noise; the noise comes from --noise. Crops of
    # photos (--crop, or a folder without --image-size: the "crop" entry below): the residual
    # U-Net trained blind. Pinned in full so the documented numbers do not move with the defaults.
    "denoise": {
        "model": {
            "arch": "convae",
            "width": 16,
            "latent_dim": 128,
            "decoder": "upsample",
            "norm": "batch",
            "mean_image": False,  # measured without it (and it is off for this arch anyway)
        },
        "train": {
            "epochs": 30,
            "batch_size": 64,
            "lr": 6e-3,
            "optimizer": "adamw",
            "weight_decay": 1e-4,
            "schedule": "onecycle",
            "warmup": 0.15,
            "loss": "mse",
        },
        # On crops: a blind photo denoiser (any size, any noise level up to ~50/255). Adam with a
        # short warm-up and MSE (measured 0.3-0.6 dB above L1 at width 40), small batches of
        # 64 x 64 crops under all 8 flips/rotations and channel orders (6 photos are little
        # data), fp32 weights with a bf16 forward where the CPU has it. Width 40, 70 epochs of
        # 128 steps: 27 minutes on one core of the benchmark's CPU, within the 30-minute budget
        # the docs measure it against (docs/denoise.md, Photos).
        "crop": {
            "model": {
                "arch": "convae-unet",
                "width": 40,
                "depth": 3,
                "latent_dim": None,
                "norm": "none",
                "mean_image": False,
            },
            "data": {"crop": 64, "augment": "dihedral+channels", "crops_per_epoch": 2048},
            "train": {
                "epochs": 70,
                "batch_size": 16,
                "lr": 2e-3,
                "optimizer": "adam",
                "weight_decay": 0.0,
                "schedule": "onecycle",
                "warmup": 0.02,
                "loss": "mse",
                "noise": ("blind",),
                "channels_last": False,
            },
        },
    },
    # One-class anomaly detection (docs/anomaly.md): a narrow model (width 16, 16 latent values)
    # trained long on few normal images; pinned here so the default recipe can change freely.
    "anomaly": {
        "model": {
            "arch": "convae",
            "width": 16,
            "latent_dim": 16,
            "decoder": "upsample",
            "norm": "batch",
            "mean_image": False,  # measured without it (and it is off for this arch anyway)
        },
        "train": {
            "epochs": 30,
            "batch_size": 32,
            "lr": 3e-3,
            "optimizer": "adamw",
            "schedule": "onecycle",
            "loss": "mse",
        },
        # On crops, for parts of any size (docs/anomaly.md, "Textures"): a fully convolutional
        # code-map model (8 values per 8 x 8 block of RGB pixels, 1/24 of the input), no mean
        # image, RGB inputs so that a colour defect on grey parts shows in the residual, and 2,048
        # AdamW steps of 16 crops of 64 px; the texture benchmark uses it (with --epochs 8).
        "crop": {
            "model": {
                "arch": "convae-map",
                "width": 32,
                "depth": 3,
                "code_channels": 8,
                "latent_dim": None,
                "decoder": "upsample",
                "norm": "batch",
                "padding": "reflect",
                "mean_image": False,
            },
            "data": {"channels": 3, "crop": 64},
            "train": {
                "epochs": 16,
                "batch_size": 16,
                "lr": 2e-3,
                "optimizer": "adamw",
                "weight_decay": 1e-4,
                "schedule": "onecycle",
                "warmup": 0.05,
                "loss": "mse",
            },
        },
    },
    # Compression (docs/codec.md): the model `convae bench codec` measures - a [4, 7, 7] code map
    # (no dense layer: it generalizes from few images, and background positions cost few bits),
    # width 8 for >= 10,000 digits/s. `convae encode` then fine-tunes it for rate-distortion once
    # and fits its quantizer/probability tables. Pinned in full so the documented numbers stay.
    "codec": {
        "model": {
            "arch": "convae-map",
            "width": 8,
            "latent_dim": None,
            "code_channels": 4,  # a [4, s/4, s/4] map: 196 values at 28 px
            "decoder": "transpose",
            "norm": "batch",
            "mean_image": False,  # measured without it (and it is off for this arch anyway)
        },
        "train": {
            "epochs": 60,
            "batch_size": 32,
            "lr": 1e-2,
            "optimizer": "adamw",
            "weight_decay": 1e-4,
            "schedule": "onecycle",
            "warmup": 0.15,
            "loss": "mse",
        },
    },
    # The learned photo codec (docs/codec.md): what `--preset codec` means on a folder of photos.
    # 128 px crops, 250 steps of 8 crops per epoch, 12 epochs (3,000 steps: 13 min with one thread
    # on a quiet core, 39 min on a busy one); six quality levels (lambdas in
    # convae.models.hyperprior) in one model.
    "codec-photo": {
        "model": {
            "arch": "hyperprior",
            "width": 96,
            "latent_dim": None,
            "code_channels": 192,
            "mean_image": False,
        },
        "data": {"channels": 3, "crop": 128, "crops_per_epoch": 2000},
        "train": {
            "epochs": 12,
            "batch_size": 8,
            "lr": 5e-4,
            "optimizer": "adam",
            "weight_decay": 0.0,
            "schedule": "cosine",
            "warmup": 0.02,
            "loss": "mse",
            "precision": "fp32",
            "channels_last": False,  # measured slower for this model on CPU
            "clip": 1.0,  # GDN and the densities can spike the loss; clipping keeps it bounded
        },
    },
}


def preset_for_data(name: str | None, spec: str | None) -> str | None:
    """The preset a name means for a dataset: ``codec`` on a folder of photos (``folder:PATH``)
    is the learned photo codec ``codec-photo``; on digits it stays the per-image table codec."""
    if name == "codec" and spec is not None and spec.startswith("folder:"):
        return "codec-photo"
    return name


def preset_overrides(name: str, crops: bool = False) -> dict[str, dict[str, Any]]:
    """The preset's overrides by section ("model", "data", "train"); on crops of images of any
    size (``crops``) its "crop" entry, where it has one, is laid over them."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    out = {k: dict(v) for k, v in p.items() if k != "crop"}
    if crops:
        for section, fields_ in p.get("crop", {}).items():
            out[section] = {**out.get(section, {}), **fields_}
    return out


def preset_crop(name: str | None) -> int | None:
    """The crop size of a preset's crop form (None: it has none)."""
    return PRESETS.get(name or "", {}).get("crop", {}).get("data", {}).get("crop")


def apply_preset(cfg: RunConfig, name: str | None, crops: bool | None = None) -> RunConfig:
    """Return ``cfg`` with the preset's overrides applied (the CLI applies user flags afterwards);
    on crops (``crops``; None: whether ``cfg.data.crop`` is set) the preset's crop form."""
    if name is None:
        return cfg
    p = preset_overrides(name, cfg.data.crop is not None if crops is None else crops)
    return replace(
        cfg,
        model=replace(cfg.model, **p.get("model", {})),
        data=replace(cfg.data, **p.get("data", {})),
        train=replace(cfg.train, **p.get("train", {})),
        preset=name,
    )
