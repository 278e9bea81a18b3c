"""Rate-distortion benchmark: convae levels and Pillow's PNG / WebP / JPEG, measured the same way."""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from ..checkpoint import atomic_write, write_json
from ..config import DataConfig, RunConfig, apply_preset
from ..metrics import json_safe, psnr_per_image, ssim_per_image
from ..plots import save_figure
from ..training import train
from .core import Codec, decode, encode, quantize
from .entropy import encode_symbols
from .format import unpack
from .store import load_codec

log = logging.getLogger(__name__)


def _quality(x_u8: Tensor, y_u8: Tensor, ssim: bool) -> dict[str, float]:
    x, y = x_u8.float() / 255.0, y_u8.float() / 255.0
    out = {"psnr": float(psnr_per_image(x, y).mean())}
    if ssim:
        out["ssim"] = float(ssim_per_image(x, y).mean())
    return out


def _row(
    method: str,
    setting: str,
    n_bytes: int,
    n: int,
    pixels: int,
    t_enc: float,
    t_dec: float,
    q: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "method": method,
        "setting": setting,
        "bytes_per_image": n_bytes / n,
        "bpp": 8.0 * n_bytes / (n * pixels),
        "encode_per_s": n / t_enc,
        "decode_per_s": n / t_dec,
        "codec_per_s": n / (t_enc + t_dec),
        **q,
        **extra,
    }


def codec_rd(
    codec: Codec,
    x_u8: Tensor,
    levels: Sequence[int] | None = None,
    repeats: int = 3,
    ssim: bool = True,
    name: str = "convae",
) -> list[dict[str, Any]]:
    """One row per quality level: bytes/image of one .cae file holding all of ``x_u8``, bpp, PSNR,
    SSIM, encode and decode images/s (best of ``repeats``; timed from uint8 pixels to bytes and back),
    plus the payload size with zlib and lzma on the same symbols and the tables' ideal entropy.
    """
    n, pixels = len(x_u8), math.prod(x_u8.shape[2:])  # bpp per image pixel
    rows = []
    for i in levels if levels is not None else range(len(codec.levels)):
        lv = codec.level(i)
        t_enc = t_dec = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            data = encode(codec, x_u8, i)
            t_enc = min(t_enc, time.perf_counter() - t)
            t = time.perf_counter()
            y, _ = decode(codec, data)
            t_dec = min(t_dec, time.perf_counter() - t)
        q, clipped = quantize(codec, x_u8, i)
        overhead_bytes = len(data) - len(unpack(data)[1])  # header + CRC
        payload = {c: len(encode_symbols(q, lv, c)) for c in ("range", "zlib", "lzma")}
        rows.append(
            _row(
                name,
                f"level {i} (step {lv.step:g})",
                len(data),
                n,
                pixels,
                t_enc,
                t_dec,
                _quality(x_u8, y, ssim),
                level=i,
                step=lv.step,
                file_bytes=len(data),
                overhead_bytes=overhead_bytes,
                payload_range=payload["range"],
                payload_zlib=payload["zlib"],
                payload_lzma=payload["lzma"],
                entropy_bytes=lv.entropy_bits(q) / 8,
                clipped=clipped,
                single_image_file_bytes=len(encode(codec, x_u8[:1], i)),
            )
        )
    return rows


def _pillow_codec(fmt: str, channels: int, **kw: Any):
    mode = "L" if channels == 1 else "RGB"

    def enc(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **kw)
        return buf.getvalue()

    def dec(b: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im.convert(mode))  # WebP has no grey mode: it decodes to RGB

    return enc, dec


BASELINES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("png", "lossless", "PNG", {"optimize": True}),
    ("webp", "lossless", "WEBP", {"lossless": True, "quality": 100, "method": 6}),
    *[("webp", f"q{q}", "WEBP", {"quality": q}) for q in (0, 5, 10, 20, 40, 60, 80)],
    *[("jpeg", f"q{q}", "JPEG", {"quality": q}) for q in (5, 10, 30, 50, 70, 90)],
]


def baseline_rd(
    x_u8: Tensor,
    specs: Sequence[tuple[str, str, str, dict[str, Any]]] = BASELINES,
    ssim: bool = True,
) -> list[dict[str, Any]]:
    """PNG/WebP/JPEG through Pillow, one file per image (that is how those formats store images)."""
    n, pixels = len(x_u8), math.prod(x_u8.shape[2:])  # bpp per image pixel
    arrs = [a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0) for a in x_u8.numpy()]
    rows = []
    for method, setting, fmt, kw in specs:
        enc, dec = _pillow_codec(fmt, x_u8.shape[1], **kw)
        t = time.perf_counter()
        blobs = [enc(a) for a in arrs]
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        outs = [dec(b) for b in blobs]
        t_dec = time.perf_counter() - t
        y = torch.from_numpy(np.stack(outs))
        y = y[:, None] if y.ndim == 3 else y.permute(0, 3, 1, 2)
        rows.append(
            _row(
                method,
                setting,
                sum(len(b) for b in blobs),
                n,
                pixels,
                t_enc,
                t_dec,
                _quality(x_u8, y, ssim),
            )
        )
    return rows


def bytes_at_psnr(rows: Sequence[dict[str, Any]], psnr: float) -> float | None:
    """Bytes/image a rate-distortion curve needs for ``psnr``: log-linear interpolation between the
    points of its Pareto front (no point has both more PSNR and fewer bytes); None outside the
    measured range - no extrapolation."""
    pts = sorted((r["psnr"], r["bytes_per_image"]) for r in rows)
    pts = [(p, b) for p, b in pts if not any(p2 >= p and b2 < b for p2, b2 in pts)]
    for (p0, b0), (p1, b1) in zip(pts, pts[1:], strict=False):
        if p0 <= psnr <= p1:
            if p1 == p0:
                return min(b0, b1)
            t = (psnr - p0) / (p1 - p0)
            return float(math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))))
    if pts and any(p == psnr for p, _ in pts):
        return min(b for p, b in pts if p == psnr)
    return None


def rd_figure(rows: Sequence[dict[str, Any]], title: str = "Rate-distortion on test images"):
    """PSNR against bytes per image, one line per method (log-scaled bytes)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if math.isfinite(r["psnr"]):  # lossless rows (infinite PSNR) are listed in the table
            methods.setdefault(r["method"], []).append(r)
    for m, rs in methods.items():
        rs = sorted(rs, key=lambda r: r["bytes_per_image"])
        ax.plot([r["bytes_per_image"] for r in rs], [r["psnr"] for r in rs], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return fig


def rd_markdown(res: dict[str, Any]) -> str:
    """The benchmark's tables as Markdown: every method, convae vs WebP at equal PSNR, coders."""
    has_ssim = all("ssim" in r for r in res["rows"])
    lines = [
        f"{res['images']} images of {res['data']} ({res['split']}), torch threads {res['threads']}",
        "",
        "| method | setting | bytes/image | bpp | PSNR dB | "
        + ("SSIM | " if has_ssim else "")
        + "encode/s | decode/s | enc+dec/s |",
        "|---|---|---:|---:|---:|" + ("---:|" if has_ssim else "") + "---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['bytes_per_image']:.1f} | {r['bpp']:.3f} | "
            f"{r['psnr']:.2f} | "
            + (f"{r['ssim']:.4f} | " if has_ssim else "")
            + f"{r['encode_per_s']:,.0f} | {r['decode_per_s']:,.0f} | {r['codec_per_s']:,.0f} |"
        )
    lines += [
        "",
        "convae at the PSNR of each WebP setting (interpolated on convae's Pareto front):",
        "",
        "| WebP | PSNR dB | WebP bytes | convae bytes | convae / WebP |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in res["equal_psnr_vs_webp"]:
        cb = "out of range" if c["convae_bytes"] is None else f"{c['convae_bytes']:.1f}"
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append(f"| {c['webp']} | {c['psnr']:.2f} | {c['webp_bytes']:.1f} | {cb} | {ratio} |")
    lines += [
        "",
        "Payload coders on the same symbols (bytes per file; ideal = the tables' entropy):",
        "",
        "| method | setting | range | zlib | lzma | ideal | header+CRC |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        if "payload_range" in r:
            lines.append(
                f"| {r['method']} | {r['setting']} | {r['payload_range']:,} | {r['payload_zlib']:,} | "
                f"{r['payload_lzma']:,} | {r['entropy_bytes']:,.0f} | {r['overhead_bytes']} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# `convae bench codec`: the whole benchmark, written to a folder

BENCH_FILES = ("rd.json", "rd.md", "rd.png")


def default_codec_run(data: DataConfig, work: str | os.PathLike) -> Path:
    """Where :func:`bench_codec` trains (once) and keeps the codec preset's run for ``data``."""
    return Path(work) / data.spec.replace("folder:", "").replace(os.sep, "_").strip("_.")


def _equal_psnr_vs_webp(rows: Sequence[dict[str, Any]], ours: Sequence[dict[str, Any]]):
    """convae's bytes at the PSNR of each lossy WebP setting (see :func:`bytes_at_psnr`)."""
    compare = []
    for r in rows:
        if r["method"] == "webp" and math.isfinite(r["psnr"]):
            b = bytes_at_psnr(ours, r["psnr"])
            compare.append({"webp": r["setting"], "psnr": r["psnr"],
                            "webp_bytes": r["bytes_per_image"], "convae_bytes": b,
                            "ratio": None if b is None else b / r["bytes_per_image"]})  # fmt: skip
    return compare


def bench_codec(
    images: Tensor,
    out: str | os.PathLike,
    *,
    data: DataConfig,
    split: str = "test",
    runs: Sequence[str | os.PathLike] = (),
    work: str | os.PathLike = "runs/bench-codec",
    repeats: int = 3,
    ssim: bool = True,
    progress=None,
) -> dict[str, Any]:
    """Rate-distortion of convae's codec against PNG, WebP and JPEG on ``images`` (uint8
    [N, C, H, W], the ``split`` of ``data``).

    The codecs are those of ``runs``; without runs, the codec preset is trained once on ``data``
    into :func:`default_codec_run` (``progress`` gets the trainer's events) and reused after.
    Writes ``rd.json``, ``rd.md`` and ``rd.png`` into ``out`` and returns the report.
    """
    if len(images) == 0:
        raise ValueError(f"{data.spec} {split}: no images")
    runs = [Path(r) for r in runs]
    if not runs:
        run = default_codec_run(data, work)
        if not (run / "model.safetensors").is_file():
            log.info("training the codec preset on %s into %s (once)", data.spec, run)
            cfg = replace(apply_preset(RunConfig(), "codec"), data=data)
            train(cfg, run, device="cpu", progress=progress)
        runs = [run]
    codecs = [load_codec(r) for r in runs]
    rows = []
    for r, c in zip(runs, codecs, strict=True):
        name = "convae" if len(runs) == 1 else f"convae:{r.name}"
        rows += codec_rd(c, images, repeats=repeats, ssim=ssim, name=name)
    ours = [dict(r) for r in rows]
    rows += baseline_rd(images, ssim=ssim)
    res = {
        "data": data.spec,
        "split": split,
        "images": len(images),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "runs": [str(r) for r in runs],
        "models": [c.fingerprint.hex() for c in codecs],
        "rows": rows,
        "equal_psnr_vs_webp": _equal_psnr_vs_webp(rows, ours),
    }
    out = Path(out)
    write_json(out / "rd.json", json_safe(res))
    atomic_write(out / "rd.md", rd_markdown(res))
    save_figure(rd_figure(rows, title=f"{data.spec} {split}: {len(images)} images"), out / "rd.png")
    return res
