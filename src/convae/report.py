"""The run report: everything a run directory holds, in one self-contained HTML file.

``RUN/report.html`` has the config, the test metrics (per class where the data has classes),
the loss curves, reconstructions, a 2-D map of the codes by class and - where the run has them -
the denoising results, the codec's rate-distortion and the anomaly detector with its ROC and heat
maps. Images are inline PNGs (base64 data URIs) and the CSS is inline: the file opens anywhere,
offline, with no script. Figures are drawn from the run's files and its test split; the PNGs that
other commands left in the run (``anomaly/roc.png``, ``anomaly/heatmaps.png``) are embedded as
they are.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .anomaly import MAP_SCORE, load_detector, model_fingerprint, score_images
from .anomaly_maps import size_key
from .checkpoint import atomic_write, read_json
from .codec import load_codec, rd_figure
from .codec.bench import BASELINES, baseline_rd, codec_rd
from .config import RunConfig
from .data import load_images, load_split
from .inference import evaluate, load, reconstruct, spread_indices, to_float
from .latent import encode_images, latent_map_figure
from .metrics import psnr_per_image, ssim_per_image
from .models import AutoEncoder
from .noise import corrupt
from .plots import loss_figure, reconstruction_figure
from .version import __version__

log = logging.getLogger(__name__)

__all__ = ["REPORT_FILE", "build_report", "write_report", "report_after_training"]

REPORT_FILE = "report.html"
MAP_POINTS = 2000  # codes drawn in the latent map
CODEC_IMAGES = 200  # test images the rate-distortion rows are measured on
# PNG and four lossy WebP settings: the curve to compare with, at a fraction of the benchmark's time
_BASELINES = {("png", "lossless"), *(("webp", f"q{q}") for q in (5, 20, 60, 80))}
DENOISE_IMAGES = 500
_PNG = b"\x89PNG\r\n\x1a\n"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1100px;
margin:0 auto;padding:1em 2em 3em;line-height:1.45}
h1{font-size:1.6em;margin:.3em 0 .1em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.8em}h3{font-size:1em;margin:1em 0 .3em}
.sub,.note,figcaption{color:#666;font-size:.9em}nav{margin:.6em 0 0}nav a{margin-right:1em;
color:#0645ad;text-decoration:none}table{border-collapse:collapse;margin:.4em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.2em .55em;text-align:right;vertical-align:top}
th{background:#f5f5f5}.k{text-align:left}.row{display:flex;flex-wrap:wrap;gap:1.5em;
align-items:flex-start}figure{margin:.5em 0}figure img{max-width:100%;height:auto;
border:1px solid #eee}.big{font-size:1.05em}.big b{font-size:1.15em}
"""


@dataclass
class _Run:
    """What the sections read: the run, its model, its metrics and its test images."""

    dir: Path
    cfg: RunConfig
    model: AutoEncoder
    metrics: dict[str, Any] | None
    images: list[torch.Tensor]  # the test split (or val), uint8 [C, H, W] each
    labels: np.ndarray | None
    split: str
    data_note: str | None  # why there are no images, when there are none

    def stacked(self) -> torch.Tensor | None:
        """The images as one batch of the model's size, or None (other sizes, or no images)."""
        if not self.images or any(
            tuple(i.shape) != tuple(self.model.input_shape) for i in self.images
        ):
            return None
        return torch.stack(self.images)


Section = tuple[str, str, str]  # (anchor, title, HTML body)


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if v else "-"
    if isinstance(v, dict):
        return "; ".join(f"{k} {_fmt(x)}" for k, x in v.items()) if v else "-"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], first_left: bool = True) -> str:
    """A table; the first column left-aligned (names), the others right (numbers)."""

    def cell(tag: str, j: int, v: Any) -> str:
        cls = ' class="k"' if j == 0 and first_left else ""
        return f"<{tag}{cls}>{_esc(_fmt(v) if tag == 'td' else v)}</{tag}>"

    head = "".join(cell("th", j, h) for j, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", j, v) for j, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str, caption: str = "") -> str:
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{_esc(alt)}">{cap}</figure>'


def _fig_png(fig: Figure, dpi: int = 80) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _file_png(path: Path) -> bytes | None:
    """A PNG file's bytes; None when it is missing or not a PNG (a broken image is never shown)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(_PNG) else None


# ---------------------------------------------------------------------------------------------
# Sections


def _overview(r: _Run) -> str:
    m, mc = r.metrics or {}, r.cfg.model
    parts = [f"<b>{_esc(mc.arch)}</b>, latent {_fmt(r.model.latent_dim)}",
             f"input {'x'.join(map(str, r.model.input_shape))}",
             f"data {_esc(r.cfg.data.spec)}"
             + (f" (classes {_fmt(list(r.cfg.data.classes))})" if r.cfg.data.classes else "")]  # fmt: skip
    if m:
        parts.append(
            f"test PSNR <b>{_fmt(m.get('psnr'))} dB</b>, SSIM <b>{_fmt(m.get('ssim'))}</b>, "
            f"MSE {_fmt(m.get('mse'))}, ratio {_fmt(m.get('compression_ratio'))}:1"
        )
        parts.append(f"{_fmt(m.get('epochs'))} epochs in {_fmt(m.get('train_seconds'))} s")
    return '<p class="big">' + " &middot; ".join(parts) + "</p>"


def _metrics(r: _Run) -> Section | None:
    if r.metrics is None and not r.images:
        return None
    parts = []
    if r.metrics is not None:
        keys = [k for k in r.metrics if not isinstance(r.metrics[k], (dict, list))]
        parts.append("<div><h3>metrics.json (written when training ended)</h3>"
                     + _table(["metric", "value"], [(k, r.metrics[k]) for k in sorted(keys)])
                     + "</div>")  # fmt: skip
    classes = np.unique(r.labels) if r.labels is not None else []
    if r.images and len(classes) > 1:
        x = r.stacked()
        per = evaluate(r.model, x if x is not None else r.images, per_image=True)["per_image"]
        rows = []
        for c in classes:
            sel = r.labels == c
            rows.append([str(c), int(sel.sum()),
                         *(float(np.mean(np.asarray(per[k])[sel])) for k in ("mse", "psnr", "ssim"))])  # fmt: skip
        parts.append(f"<div><h3>Per class ({_esc(r.split)} split)</h3>"
                     + _table(["class", "images", "MSE", "PSNR dB", "SSIM"], rows) + "</div>")  # fmt: skip
    body = '<div class="row">' + "".join(parts) + "</div>"
    return "metrics", "Metrics", body


def _history(run: Path) -> list[dict[str, Any]]:

    path = run / "history.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a damaged line drops one point of the curve, not the report
        if isinstance(row, dict) and "epoch" in row and "train_loss" in row:
            rows.append(row)
    return rows


def _training(r: _Run) -> Section | None:

    hist = _history(r.dir)
    if not hist:
        return None
    val = [h for h in hist if h.get("val_loss") is not None]
    best = min(val, key=lambda h: h["val_loss"]) if val else None
    note = (f"best validation loss {_fmt(best['val_loss'])} at epoch {best['epoch']} "
            "(the weights every command uses)") if best else ""  # fmt: skip
    # loss.png, which training wrote from the same history, unless it is missing or damaged
    png = _file_png(r.dir / "loss.png") or _fig_png(loss_figure(hist))
    return "training", "Training", _img(png, "loss curves", note)


def _reconstructions(r: _Run) -> Section | None:

    png = _file_png(r.dir / "reconstructions.png")
    if png is None and r.images:
        shown = [r.images[i] for i in spread_indices(len(r.images), 10).tolist()]
        recon = reconstruct(r.model, shown)
        png = _fig_png(reconstruction_figure([to_float(x) for x in shown], recon))
    if png is None:
        return None
    return "reconstructions", "Reconstructions", _img(png, "reconstructions", f"{r.split} images")


def _plane(codes: np.ndarray) -> tuple[np.ndarray, tuple[str, str], str]:
    """2-D points of codes [N, L]: the code itself up to 2-D, else its two principal axes (an SVD:
    the same axes as scikit-learn's PCA, without importing it for one picture)."""
    n, L = codes.shape
    if L == 1:
        return np.stack([codes[:, 0], np.zeros(n)], 1), ("z0", ""), "the 1-D code"
    if L == 2:
        return codes.copy(), ("z0", "z1"), "the 2-D code itself"
    z = codes - codes.mean(0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    ev = s**2 / max(float((s**2).sum()), 1e-300)
    axes = (f"PC1 ({100 * ev[0]:.0f}% var.)", f"PC2 ({100 * ev[1]:.0f}% var.)")
    return z @ vt[:2].T, axes, "the codes' two principal axes (PCA)"


def _latent(r: _Run) -> Section | None:

    x, labels, note = r.stacked(), r.labels, ""
    if r.cfg.data.classes and x is not None:
        # a run on some classes: every class of the split, to show where the others fall
        xa, ya = load_split(replace(r.cfg.data, classes=None), r.split)
        x, labels = xa, ya.numpy()
        note = f"; every class, trained on {_fmt(list(r.cfg.data.classes))}"
    if x is None or len(x) < 3:
        return None
    idx = spread_indices(len(x), MAP_POINTS)
    points, axes, how = _plane(encode_images(r.model, x[idx]).double().numpy())
    labels = labels[idx.numpy()] if labels is not None else None
    fig = latent_map_figure(points, labels, axes, title=f"{len(idx)} {r.split} codes")
    cap = f"{how}; {r.model.latent_dim} values per image{note}"
    return "latent", "Latent map", _img(_fig_png(fig), "latent map", cap)


def _denoise(r: _Run) -> Section | None:

    noise = r.cfg.train.noise
    x = r.stacked()
    if not noise or x is None:
        return None
    x = x[spread_indices(len(x), DENOISE_IMAGES)]
    clean = to_float(x)
    noisy = corrupt(clean, noise, torch.Generator().manual_seed(0))
    out = reconstruct(r.model, x, noise=noise, generator=torch.Generator().manual_seed(0))
    rows = [(name, float(psnr_per_image(clean, y).mean()), float(ssim_per_image(clean, y).mean()))
            for name, y in (("noisy input", noisy), ("denoised", out))]  # fmt: skip
    body = _table(["images", "PSNR dB", "SSIM"], rows)
    body += f'<p class="note">{len(x)} {_esc(r.split)} images corrupted with {_esc(", ".join(noise))} (the training noise, seed 0)</p>'
    return "denoise", "Denoising", body


def _codec(r: _Run) -> Section | None:

    if not (r.dir / "codec.safetensors").is_file():
        return None
    codec = load_codec(r.dir, fit_if_missing=False)
    x = r.stacked()
    body = ""
    if x is not None:
        x = x[spread_indices(len(x), CODEC_IMAGES)]
        rows = codec_rd(codec, x, repeats=1, ssim=False)
        base = baseline_rd(x, [b for b in BASELINES if b[:2] in _BASELINES], ssim=False)
        fig = rd_figure(rows + base, title=f"{len(x)} {r.split} images")
        body += _img(
            _fig_png(fig),
            "rate-distortion",
            "one .cae file for all images vs one PNG / WebP file per image",
        )
        body += _table(["level", "step", "bytes/image", "bpp", "PSNR dB"],
                       [(row["level"], row["step"], row["bytes_per_image"], row["bpp"], row["psnr"])
                        for row in rows])  # fmt: skip
    info = codec.info
    body += _table(["codec.json", "value"],
                   [("default level", codec.default_level), ("levels", len(codec.levels)),
                    ("fine-tune images", info.get("train_images")),
                    ("fine-tune seconds", info.get("seconds")),
                    ("fingerprint", codec.fingerprint.hex()[:16])])  # fmt: skip
    return "codec", "Codec", body


def _anomaly_classes(r: _Run, det) -> str:
    """Mean score and share flagged per class of the whole test split (every class); images of
    any size for a run trained on crops, flagged where their size has a threshold."""
    data = replace(r.cfg.data, classes=None)
    names = None
    if data.crop is not None:
        store = load_images(data, "test")
        images, y, names = list(store), np.asarray(store.labels), list(store.classes)
    else:
        x, labels = load_split(data, "test")
        if tuple(x.shape[1:]) != tuple(r.model.input_shape):
            return ""
        images, y = x, labels.numpy()
    if len(images) == 0:
        return ""
    scores = score_images(r.model, images, det)
    sizes = [tuple(t.shape[-2:]) for t in images]
    known = det.score != MAP_SCORE or all(size_key(*hw) in det.thresholds for hw in set(sizes))
    flags = (np.array([s > det.threshold_for(*hw) for s, hw in zip(scores, sizes, strict=True)])
             if known else None)  # fmt: skip
    normal = set(r.cfg.data.classes or ())
    rows = []
    for c in np.unique(y):
        sel = y == c
        name = names[c] if names is not None and 0 <= c < len(names) else c
        rows.append([f"{name}{' (normal)' if c in normal else ''}", int(sel.sum()),
                     float(np.mean(scores[sel])),
                     f"{100 * flags[sel].mean():.1f} %" if flags is not None else "-"])  # fmt: skip
    return "<h3>Scores per class (test split)</h3>" + _table(
        ["class", "images", f"mean {det.score}", "flagged"], rows
    )


def _pixel_rows(pixel: dict | None) -> list[tuple[str, Any]]:
    """The per-pixel map's threshold and calibration, for a detector that has one."""
    if pixel is None:
        return []
    return [("per-pixel threshold (map units)", pixel.get("pixel_threshold")),
            ("per-pixel target false-positive rate", pixel.get("pixel_fpr")),
            ("calibration pixels", pixel.get("n_pixels"))]  # fmt: skip


def _anomaly(r: _Run) -> Section | None:

    det = load_detector(r.dir)
    figs = [(n, _file_png(r.dir / "anomaly" / f"{n}.png")) for n in ("roc", "heatmaps")]
    if det is None and not any(png for _, png in figs):
        return None
    body = ""
    if det is not None:
        current = det.fingerprint == model_fingerprint(r.model)
        body += _table(["anomaly.json", "value"], [
            ("score", det.score), ("threshold (flag above)", det.threshold),
            ("target false-positive rate", det.fpr), ("calibration images", det.n_calibration),
            ("calibration data", det.calibration_data), ("scales", det.scales),
            ("calibration quantiles", det.calibration_quantiles),
            *_pixel_rows(det.pixel), ("fitted to these weights", current)])  # fmt: skip
        if current:
            body += _anomaly_classes(r, det)
    captions = {
        "roc": "ROC (anomaly/roc.png)",
        "heatmaps": "most anomalous images (anomaly/heatmaps.png)",
    }
    body += (
        '<div class="row">'
        + "".join(_img(png, name, captions[name]) for name, png in figs if png)
        + "</div>"
    )
    return "anomaly", "Anomaly detection", body


def _config(r: _Run) -> Section:
    d = r.cfg.to_dict()
    tables = [
        f"<div><h3>{name}</h3>{_table(['key', 'value'], sorted(d[name].items()))}</div>"
        for name in ("model", "data", "train")
    ]
    extra = _table(
        ["key", "value"], [("preset", d.get("preset")), ("convae version", d.get("version"))]
    )
    return "config", "Config", '<div class="row">' + "".join(tables) + "</div>" + extra


# ---------------------------------------------------------------------------------------------
# The report


def _collect(model: AutoEncoder) -> _Run:
    run = Path(model.run_dir)  # type: ignore[arg-type]
    cfg = model.run_config
    assert cfg is not None
    metrics = None
    if (run / "metrics.json").is_file():
        metrics = read_json(run / "metrics.json")
    images: list[torch.Tensor] = []
    labels, split, note = None, "test", None
    try:
        for split in ("test", "val"):
            store = load_images(cfg.data, split)
            if len(store):
                images = [store.image(i) for i in range(len(store))]
                labels = np.asarray(store.labels)
                break
        else:
            note = f"{cfg.data.spec} has no test or validation images"
    except (OSError, ValueError, ConnectionError) as e:  # e.g. a dataset that is not here
        note = f"the run's data could not be read: {e}"
    return _Run(run, cfg, model, metrics, images, labels, split, note)


_SECTIONS: list[Callable[[_Run], Section | None]] = [
    _metrics, _training, _reconstructions, _latent, _denoise, _codec, _anomaly, _config,
]  # fmt: skip


def build_report(
    run: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[str, list[str]]:
    """The report of a run as one HTML page -> (html, anchors of the sections it has)."""

    model = load(run, device)
    r = _collect(model)
    sections: list[Section] = []
    for fn in _SECTIONS:
        try:
            s = fn(r)
        except (OSError, ValueError) as e:  # a damaged file of the run spoils its section only
            name = fn.__name__.strip("_")
            s = (name, name.capitalize(), f'<p class="note">not shown: {_esc(e)}</p>')
        if s is not None:
            sections.append(s)
    nav = "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{_esc(t)}</h2>{b}</section>' for a, t, b in sections)
    note = f'<p class="note">{_esc(r.data_note)}</p>' if r.data_note else ""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>convae run {_esc(r.dir.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>convae run <code>{_esc(r.dir.name)}</code></h1>"
        f'<div class="sub">{_esc(r.dir.resolve())} &middot; report written {when} by convae '
        f"{_esc(__version__)}</div><nav>{nav}</nav>{_overview(r)}{note}{body}</body></html>\n"
    )
    return page, [a for a, _, _ in sections]


def write_report(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Write the report (default ``RUN/report.html``) atomically -> {"report", "sections", "bytes"}."""
    page, sections = build_report(run, device=device)
    path = Path(out) if out is not None else Path(run) / REPORT_FILE
    data = page.encode("utf-8")
    atomic_write(path, data)
    return {"report": str(path), "sections": sections, "bytes": len(data)}


def report_after_training(run: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """:func:`write_report` at the end of ``convae train``: the run is complete without it, so a
    failure is a warning with the command that retries, never a lost training."""
    try:
        res = write_report(run, device=device)
        log.info("report: %s", res["report"])
    except (OSError, ValueError, RuntimeError) as e:
        log.warning("could not write %s (%s); run `convae report %s`", REPORT_FILE, e, run)
