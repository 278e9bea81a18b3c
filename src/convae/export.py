"""Export a trained run for runtimes without convae: ONNX (onnxruntime) or TorchScript.

What an exported file takes and gives (one contract for both formats)::

    image   uint8 [N, C, H, W], 0-255, channels first     (the /255 is inside the model)
    code    float32 [N, L], or [N, K, H/s, W/s] for a fully convolutional model
    output  float32 [N, C, H, W] in [0, 1]                 (clamped, as convae.reconstruct)

``autoencoder`` maps image -> reconstruction, ``encoder`` image -> code, ``decoder`` code ->
reconstruction. The batch is dynamic; a fully convolutional model (``model.fully_conv``) also
takes any height and width that are multiples of its stride ``s``, at least ``2 s`` (pad other sizes at the
bottom/right by reflection and crop the output, as convae does: :func:`pad_to_stride`); the
other architectures take their training size only. The run's mean image is a buffer of the
decoder, so it is part of the exported graph.

Beside the model, ``PART.EXT.json`` says what a runtime needs (see docs/export.md): the
inputs and outputs with their shapes, dtypes and value ranges, the latent shape, the stride or
fixed size, the parity measured at export, and - for an autoencoder of a run with a current
``anomaly.json`` - the anomaly score, its scales and threshold, defined so that numpy alone
computes it from the model's output (:func:`numpy_scores`).

Every export is checked before it is moved into place: the exported file, run by onnxruntime or
``torch.jit.load``, against convae's own output on real images of the run's data, at two batch
sizes (and two image sizes for a fully convolutional model). A difference above
:data:`TOLERANCE` is an :class:`ExportError` and nothing is written.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .anomaly import load_detector, model_fingerprint, score_images
from .checkpoint import fingerprint, write_json
from .config import DataConfig
from .data import load_images, load_split
from .inference import WHOLE_PIXELS, apply_batched, load, reconstruct, spread_indices
from .models import AutoEncoder, CodeConv2d, CodeConvTranspose2d
from .version import __version__

__all__ = [
    "FORMATS",
    "PARTS",
    "TOLERANCE",
    "ExportError",
    "export_run",
    "export_module",
    "load_exported",
    "pad_to_stride",
    "numpy_scores",
    "anomaly_spec",
]

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
PARTS = ("autoencoder", "encoder", "decoder")
TOLERANCE = 1e-4  # largest |exported - convae| accepted, in fp32 output units
OPSET = 17
SIDECAR_FORMAT = "convae-export"
SIDECAR_VERSION = 1
PARITY_IMAGES = 16  # real images per parity case
PARITY_BATCHES = (1, 8)
_PARITY_SIDE = 64  # a fully convolutional model is checked on crops of at most 64 x 64
_NAMES = {  # (input name, output name) of each part
    "autoencoder": ("image", "reconstruction"),
    "encoder": ("image", "code"),
    "decoder": ("code", "reconstruction"),
}


class ExportError(ValueError):
    """The exported model does not reproduce convae's output (nothing was written)."""


# ---------------------------------------------------------------------------------------------
# The exported modules: uint8 in, the run's own output out


class _Autoencoder(nn.Module):
    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:  # uint8 [N, C, H, W] -> [N, C, H, W] in [0, 1]
        return self.model(image.float() / 255.0).clamp(0.0, 1.0)


class _Encoder(nn.Module):
    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:  # uint8 -> [N, L] or [N, K, H/s, W/s]
        x = image.float() / 255.0
        return self.model.encoder(x) if self.model.fully_conv else self.model.encode(x)


class _Decoder(nn.Module):
    def __init__(self, model: AutoEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, code: Tensor) -> Tensor:  # the encoder's output -> [N, C, H, W] in [0, 1]
        # A fully convolutional model has no mean image (it would tie it to one size), so its
        # decoder takes a code map of any size as it is.
        y = self.model.decoder(code) if self.model.fully_conv else self.model.decode(code)
        return y.clamp(0.0, 1.0)


def _plain_layers(model: AutoEncoder) -> AutoEncoder:
    """A copy whose 1x1-code layers run as the convolutions they are: their matrix-product
    forward reads the batch size as a Python int, which a trace would freeze."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, CodeConv2d):
            mod.__class__ = nn.Conv2d
        elif isinstance(mod, CodeConvTranspose2d):
            mod.__class__ = nn.ConvTranspose2d
    return m.cpu().float().eval()


def _check_part(model: AutoEncoder, part: str) -> None:
    """A restoration network (no code) exports as a whole only."""
    if part != "autoencoder" and not model.has_code:
        raise ValueError(
            f"{model.config.arch} has skip connections and no code: export --part autoencoder "
            f"(the whole model), not the {part}"
        )


def export_module(model: AutoEncoder, part: str = "autoencoder") -> nn.Module:
    """The module that is exported for ``part``: uint8 images (or codes) in, eval mode, CPU."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    _check_part(model, part)
    wrap = {"autoencoder": _Autoencoder, "encoder": _Encoder, "decoder": _Decoder}[part]
    return wrap(_plain_layers(model)).eval()


def _example(model: AutoEncoder, part: str) -> Tensor:
    """A traced input: batch 2 (a batch of 1 could be specialised away), the training size."""
    x = torch.randint(0, 256, (2, *model.input_shape), dtype=torch.uint8)
    if part != "decoder":
        return x
    with torch.inference_mode():
        return _Encoder(model)(x).clone()


# ---------------------------------------------------------------------------------------------
# Writing and running the two formats


def _dynamic_axes(model: AutoEncoder, part: str) -> dict[str, dict[int, str]]:
    image = {0: "N", 2: "H", 3: "W"} if model.fully_conv else {0: "N"}
    code = {0: "N", 2: "h", 3: "w"} if model.fully_conv else {0: "N"}
    axes = {"image": image, "reconstruction": image, "code": code}
    return {name: axes[name] for name in _NAMES[part]}


def _write(module: nn.Module, model: AutoEncoder, part: str, fmt: str, path: Path) -> None:
    example = _example(model, part)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # the legacy exporters' deprecation and tracer notes are for us, not for the user
        warnings.simplefilter("ignore")
        try:
            if fmt == "onnx":
                torch.onnx.export(
                    module, (example,), str(path), dynamo=False, opset_version=OPSET,
                    input_names=[_NAMES[part][0]], output_names=[_NAMES[part][1]],
                    dynamic_axes=_dynamic_axes(model, part),
                )  # fmt: skip
                import onnx

                onnx.checker.check_model(str(path))
            else:
                traced = torch.jit.trace(module, (example,), check_trace=False)
                torch.jit.save(traced, str(path))
        except Exception as e:  # any exporter or checker failure: the export is impossible
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"exporting the {part} to {fmt} failed: {first}") from e
    module.eval()  # the exporter restores the training flag it found; keep eval for the checks


def load_exported(path: str | os.PathLike, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function running an exported file on a numpy batch (onnxruntime or ``torch.jit.load``,
    on CPU) -> its float32 numpy output."""
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # as many as torch may use
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: np.ascontiguousarray(x)})[0]
    if fmt != "torchscript":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return run


# ---------------------------------------------------------------------------------------------
# Parity: the exported file against convae's own output


def parity_images(model: AutoEncoder, data: DataConfig) -> tuple[list[Tensor], str]:
    """Real uint8 batches to check an export on, and the split they came from: the training size
    for a fixed-size model; for a fully convolutional one, crops at a multiple of the stride and
    pairs of them side by side (a second, non-square size)."""
    for split in ("test", "val", "train"):
        store = load_images(data, split)
        if len(store):
            break
    else:
        raise ValueError(f"{data.spec}: no images to check the export on; pass --data SPEC")
    imgs = [store.image(i) for i in spread_indices(len(store), PARITY_IMAGES).tolist()]
    c = model.input_shape[0]
    if imgs[0].shape[0] != c:
        raise ValueError(
            f"{data.spec} images have {imgs[0].shape[0]} channels but the model takes {c}"
        )
    if model.fully_conv:
        s = model.stride
        h = min(_PARITY_SIDE, *(int(i.shape[-2]) for i in imgs)) // s * s
        w = min(_PARITY_SIDE, *(int(i.shape[-1]) for i in imgs)) // s * s
        if h == 0 or w == 0:
            raise ValueError(f"{data.spec} {split}: images smaller than the stride ({s} px)")
        a = torch.stack([i[:, :h, :w] for i in imgs])  # [n, C, h, w]
        return [a, torch.cat([a, a.roll(1, 0)], dim=-1)], split  # and [n, C, h, 2w]
    _, h, w = model.input_shape
    fit = [i[:, :h, :w] for i in imgs if i.shape[-2] >= h and i.shape[-1] >= w]
    if not fit:
        raise ValueError(f"{data.spec} {split}: no image of at least {h}x{w}, the model's size")
    return [torch.stack(fit)], split


def _reference(model: AutoEncoder, part: str, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(input of the exported part, convae's own output) for uint8 images ``x``."""
    dev = next(model.parameters()).device
    encode = model.encoder if model.fully_conv else model.encode
    if part == "autoencoder":
        return x.numpy(), reconstruct(model, x).numpy()  # type: ignore[union-attr]
    z = apply_batched(encode, x, dev)
    if part == "encoder":
        return x.numpy(), z.numpy()
    decode = model.decoder if model.fully_conv else model.decode
    return z.numpy(), apply_batched(lambda c: decode(c).clamp(0, 1), z, dev).numpy()


def _parity(run: Callable, model: AutoEncoder, part: str, batches: list[Tensor]) -> list[dict]:
    """One row per (image size, batch size): the largest |exported - convae|."""
    rows = []
    for x in batches:
        inp, ref = _reference(model, part, x)
        for b in PARITY_BATCHES:
            out = np.concatenate([run(inp[i : i + b]) for i in range(0, len(inp), b)])
            if out.shape != ref.shape:
                raise ExportError(
                    f"the exported {part} gives {list(out.shape)} where convae gives "
                    f"{list(ref.shape)}; nothing written"
                )
            diff = float(np.abs(out.astype(np.float64) - ref).max())
            rows.append(
                {"images": len(x), "batch": b, "size": list(x.shape[-2:]), "max_abs_diff": diff}
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Anomaly scores with numpy alone


def pad_to_stride(x: np.ndarray, stride: int) -> np.ndarray:
    """uint8 [N, C, H, W] padded at the bottom/right to multiples of ``stride`` (at least two
    code cells): by reflection, or by repeating the edge where the image is too small to reflect.
    The padding convae itself applies to whole images; crop the model's output back to H x W."""
    h, w = x.shape[-2:]
    hp, wp = max(2 * stride, -(-h // stride) * stride), max(2 * stride, -(-w // stride) * stride)
    mode = "reflect" if hp - h < h and wp - w < w else "edge"
    return np.pad(x, ((0, 0), (0, 0), (0, hp - h), (0, wp - w)), mode=mode)


def _ssim_window(h: int, w: int) -> dict[str, Any]:
    """The SSIM window of :func:`convae.metrics.ssim_per_image` for ``h x w`` images."""
    if min(h, w) >= 11:
        return {"window": "gaussian", "size": 11, "sigma": 1.5, "sample_covariance": False}
    return {"window": "box", "size": min(7, min(h, w) // 2 * 2 - 1), "sample_covariance": True}


def _ssim(x: np.ndarray, y: np.ndarray, win: dict[str, Any]) -> np.ndarray:
    """Mean SSIM of each image pair, float64 [N, C, H, W] x2 -> [N] (scikit-image's definition,
    data range 1, K1 0.01, K2 0.03). Its mean leaves out a border of half a window, so the
    filtered maps are only needed where the window fits: a 'valid' separable filter."""
    r = win["size"] // 2
    if win["window"] == "gaussian":
        g = np.exp(-0.5 * (np.arange(-r, r + 1) / win["sigma"]) ** 2)
        g /= g.sum()
    else:
        g = np.full(win["size"], 1.0 / win["size"])
    view = np.lib.stride_tricks.sliding_window_view

    def blur(u: np.ndarray) -> np.ndarray:
        return view(view(u, len(g), axis=-1) @ g, len(g), axis=-2) @ g

    n = win["size"] ** 2
    cov = n / (n - 1) if win["sample_covariance"] else 1.0
    ux, uy = blur(x), blur(y)
    vx, vy = cov * (blur(x * x) - ux * ux), cov * (blur(y * y) - uy * uy)
    vxy = cov * (blur(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(axis=(-2, -1)).mean(axis=1)


def numpy_scores(image: np.ndarray, output: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Anomaly scores [N] from uint8 images [N, C, H, W] and the exported autoencoder's output,
    as the sidecar's ``anomaly`` entry (``spec``) defines them; numpy only."""
    x = image.astype(np.float64) / 255.0
    y = output.astype(np.float64)
    parts: dict[str, np.ndarray] = {}
    if "mse" in spec["parts"]:
        parts["mse"] = ((x - y) ** 2).mean(axis=(1, 2, 3))
    if "ssim" in spec["parts"]:
        parts["ssim"] = 1.0 - _ssim(x, y, _ssim_window(*x.shape[-2:]))
    if len(parts) == 1:
        return next(iter(parts.values()))
    return sum(parts[p] / spec["scales"][p] for p in parts)


# The anomaly scores an export carries (numpy in the sidecar); the per-pixel map score is not one.
EXPORT_SCORES = ("mse", "ssim", "mse+ssim")


def anomaly_spec(det) -> dict[str, Any]:
    """The sidecar's ``anomaly`` entry of a :class:`convae.anomaly.Detector`."""
    if det.score not in EXPORT_SCORES:
        raise ValueError(f"the {det.score} score (per-pixel maps) is not part of an export")
    parts = {"mse": ["mse"], "ssim": ["ssim"], "mse+ssim": ["mse", "ssim"]}[det.score]
    spec: dict[str, Any] = {
        "score": det.score,
        "parts": {
            "mse": "mean over C, H, W of (x - y)**2, x = image / 255, y = the output (float64)",
            "ssim": "1 - SSIM(x, y): scikit-image's structural_similarity with data_range 1, "
            "channels averaged; images of 11 px and more: Gaussian window, size 11, sigma 1.5, "
            "population covariance; smaller: box window of min(7, largest odd < min(H, W)) px, "
            "sample covariance",
        },
        "definition": " + ".join(f"{p} / scales.{p}" for p in parts)
        if len(parts) > 1
        else parts[0],
        "scales": dict(det.scales),
        "threshold": det.threshold,
        "flag": "score > threshold",
        "fpr": det.fpr,
        "n_calibration": det.n_calibration,
        "calibration_data": det.calibration_data,
        "fingerprint": det.fingerprint,
    }
    spec["parts"] = {p: spec["parts"][p] for p in parts}
    return spec


def _anomaly_parity(run: Callable, model: AutoEncoder, det, data: DataConfig) -> dict:
    """Scores and flags of the exported autoencoder (numpy, as the sidecar defines them) against
    :func:`convae.anomaly.score_images` on the whole test split, every class."""

    x, _ = load_split(replace(data, classes=None), "test")
    if len(x) == 0 or x.shape[-2] * x.shape[-1] > WHOLE_PIXELS:
        return {"checked": False, "reason": "no test images that convae scores in one pass"}
    h, w = x.shape[-2:]
    xin = pad_to_stride(x.numpy(), model.stride) if model.fully_conv else x.numpy()
    y = np.concatenate([run(xin[i : i + 64]) for i in range(0, len(xin), 64)])[..., :h, :w]
    ours = numpy_scores(x.numpy(), y, anomaly_spec(det))
    ref = score_images(model, x, det)
    diff = float(np.abs(ours - ref).max())
    return {
        "checked": True,
        "images": len(x),
        "max_abs_score_diff": diff,
        "max_score_diff_over_threshold": diff / max(abs(det.threshold), 1e-12),
        "flags_equal": bool((det.flag(ours) == det.flag(ref)).all()),
        "flagged": int(det.flag(ref).sum()),
    }


# ---------------------------------------------------------------------------------------------
# The sidecar JSON


def _io(model: AutoEncoder, part: str) -> dict[str, dict[str, Any]]:
    """The tensors a part takes and gives, by name: shapes with symbolic N (and H, W)."""
    c, h, w = model.input_shape
    s = model.stride
    size: list[Any] = ["H", "W"] if model.fully_conv else [h, w]
    code = ["N", model.latent_shape[0], f"H/{s}", f"W/{s}"] if model.fully_conv else ["N", model.latent_dim]  # fmt: skip
    return {
        "image": {"name": "image", "shape": ["N", c, *size], "dtype": "uint8",
                  "range": [0, 255], "layout": "NCHW"},
        "reconstruction": {"name": "reconstruction", "shape": ["N", c, *size], "dtype": "float32",
                           "range": [0.0, 1.0], "layout": "NCHW"},
        "code": {"name": "code", "shape": code, "dtype": "float32", "range": None},
    }  # fmt: skip


def _size(model: AutoEncoder) -> dict[str, Any]:
    c, h, w = model.input_shape
    if model.fully_conv:
        return {"fully_conv": True, "stride": model.stride, "multiple_of": model.stride,
                "min_side": 2 * model.stride, "height": None, "width": None, "trained_at": [h, w],
                "other_sizes": f"pad at the bottom/right to multiples of {model.stride}, at least "
                               f"{2 * model.stride} (reflect; "
                               "edge where the image is smaller than the padding), crop the output"}  # fmt: skip
    return {"fully_conv": False, "stride": model.stride, "multiple_of": None, "height": h,
            "width": w, "trained_at": [h, w], "other_sizes": "not supported: resize or tile"}  # fmt: skip


def _runtime(fmt: str) -> str:
    if fmt == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch.jit.load (torch {torch.__version__})"


def _sidecar(model: AutoEncoder, part: str, fmt: str, file: Path, which: str) -> dict[str, Any]:

    io = _io(model, part)
    cfg = model.run_config
    native = list(model.latent_shape)
    latent = (
        {"shape": [native[0], f"H/{model.stride}", f"W/{model.stride}"], "dim": model.latent_dim,
         "note": "a code map; flattened row-major at the training size it is model.encode(x)"}
        if model.fully_conv else {"shape": [model.latent_dim], "dim": model.latent_dim}
    )  # fmt: skip
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "file": file.name,
        "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        "runtime": _runtime(fmt),
        "export_format": fmt,
        "opset": OPSET if fmt == "onnx" else None,
        "part": part,
        "inputs": [io[_NAMES[part][0]]],
        "outputs": [io[_NAMES[part][1]]],
        "size": _size(model),
        "latent": latent,
        "normalization": "inside the model: image / 255; the run's mean image (if it has one) "
        "in the decoder; outputs clamped to [0, 1] as convae.reconstruct",
        "run": {
            "dir": str(model.run_dir),
            "arch": model.config.arch,
            "weights": which,
            "fingerprint": fingerprint(model.state_dict(), model.config).hex(),
            "model": asdict(cfg.model) if cfg is not None else None,
            "data": cfg.data.spec if cfg is not None else None,
        },
        "convae_version": __version__,
        "torch_version": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------
# export_run


def _existing_ancestor(out: Path) -> Path:
    """The nearest existing folder at or above ``out`` (where the temporary folder goes: the same
    file system, so moving the files into place is a rename)."""
    for p in (out.absolute(), *out.absolute().parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"--out {out}: {p} is a file, not a folder")
            return p
    raise FileNotFoundError(f"--out {out}: no existing folder above it")


def _check_targets(out: Path, targets: list[Path], overwrite: bool) -> None:
    _existing_ancestor(out)
    for t in targets:
        if t.is_dir():
            raise IsADirectoryError(f"--out {out}: {t} is a folder, where the export would go")
    there = [t for t in targets if t.exists() or t.is_symlink()]
    if there and not overwrite:
        raise FileExistsError(f"--out {out}: {there[0].name} already exists; pass --overwrite")


def _current_detector(model: AutoEncoder):
    """The run's anomaly detector when it was fitted to these weights (else None, with a note)."""

    det = load_detector(model.run_dir)  # type: ignore[arg-type]
    if det is not None and det.fingerprint != model_fingerprint(model):
        logging.getLogger(__name__).warning(
            "%s/anomaly.json was fitted to other weights; the export carries no anomaly "
            "threshold (run `convae anomaly RUN --calibrate` first)", model.run_dir)  # fmt: skip
        return None
    if det is not None and det.score not in EXPORT_SCORES:
        logging.getLogger(__name__).warning(
            "the %s score of %s/anomaly.json (per-pixel maps) is not part of an export; the "
            "export carries no anomaly threshold", det.score, model.run_dir)  # fmt: skip
        return None
    return det


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _checked_parity(runner, model, part, batches, det, data, split: str) -> dict[str, Any]:
    """The parity entry of the sidecar; an :class:`ExportError` when a check fails."""
    rows = _parity(runner, model, part, batches)
    worst = max(r["max_abs_diff"] for r in rows)
    parity: dict[str, Any] = {
        "max_abs_diff": worst, "tolerance": TOLERANCE, "images": len(batches[0]),
        "data": data.spec, "split": split, "batches": list(PARITY_BATCHES),
        "sizes": [list(x.shape[-2:]) for x in batches], "cases": rows,
    }  # fmt: skip
    if not worst <= TOLERANCE:  # NaN fails too
        raise ExportError(
            f"the exported {part} differs from convae by up to {worst:.3g} (> {TOLERANCE:g}) on "
            f"{len(batches[0])} {data.spec} {split} images; nothing written"
        )
    if det is not None:
        a = _anomaly_parity(runner, model, det, data)
        parity["anomaly"] = a
        if a["checked"] and not (
            a["flags_equal"] and a["max_score_diff_over_threshold"] <= TOLERANCE
        ):
            raise ExportError(
                f"anomaly scores of the exported {part} differ from convae's (max "
                f"{a['max_abs_score_diff']:.3g}, flags equal: {a['flags_equal']}); nothing written"
            )
    return parity


def export_run(
    run: str | os.PathLike,
    *,
    format: str = "onnx",
    part: str = "autoencoder",
    out: str | os.PathLike,
    which: str = "best",
    data: DataConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export one part of a run to ``out/PART.onnx`` (or ``.pt``) with ``PART.EXT.json`` beside it.

    The file is checked against convae's own output on real images of ``data`` (default: the
    run's) before it is moved into place; on any failure nothing is written. Returns the
    sidecar's content with ``files`` (the two paths) and ``seconds``.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
    t0 = time.perf_counter()
    model = load(run, "cpu", which)
    _check_part(model, part)
    out = Path(out)
    name = f"{part}{FORMATS[format]}"
    targets = [out / name, out / f"{name}.json"]
    _check_targets(out, targets, overwrite)
    data = data or model.run_config.data  # type: ignore[union-attr]
    batches, split = parity_images(model, data)  # read before anything is written
    det = _current_detector(model) if part == "autoencoder" else None
    tmp = Path(tempfile.mkdtemp(prefix=".convae-export-", dir=_existing_ancestor(out)))
    try:
        _write(export_module(model, part), model, part, format, tmp / name)
        parity = _checked_parity(load_exported(tmp / name, format), model, part, batches, det,
                                 data, split)  # fmt: skip
        side = _sidecar(model, part, format, tmp / name, which)
        side["parity"] = parity
        if det is not None:
            side["anomaly"] = anomaly_spec(det)
        write_json(tmp / targets[1].name, side)
        _fsync(tmp / name)
        out.mkdir(parents=True, exist_ok=True)
        for t in targets:  # the model, then its JSON: a sidecar never names a missing file
            os.replace(tmp / t.name, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**side, "files": [str(t) for t in targets], "seconds": time.perf_counter() - t0}
