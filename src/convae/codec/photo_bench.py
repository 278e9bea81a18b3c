"""Rate-distortion of learned photo codec runs on whole photos against JPEG, WebP and AVIF.

Every convae point is a real .cae file (header and checksum included, no run path or name) decoded
back; every classical point is a whole file written and decoded by Pillow. BD-rates compare
convae's curve with each classical codec's (PCHIP on log-rate vs PSNR, 0.1-1 bpp and the whole
overlap); speeds are wall-clock megapixels per second on the largest photo.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, features

from ..checkpoint import atomic_write, write_json
from ..plots import save_figure
from .photo import PhotoCodec, decode_photo, encode_photo
from .photo_store import load_photo_codec
from .rd import bd_rate, ms_ssim, psnr

__all__ = ["bench_photos", "photo_rd_markdown", "photo_rd_figure", "PILLOW_SWEEPS", "LEVELS"]

LEVELS = tuple(i / 2 for i in range(11))  # 0, 0.5, ..., 5
PILLOW_SWEEPS = {  # format -> (save options, quality settings)
    "jpeg": ({"optimize": True}, (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
    "webp": ({"method": 6}, (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
    "avif": ({"speed": 4}, (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)),
}
FILES = ("rd.json", "rd.md", "rd.png")
Progress = Callable[[dict[str, Any]], None]


def _point(img: np.ndarray, out: np.ndarray, nbytes: int, **extra: Any) -> dict[str, Any]:
    h, w = img.shape[:2]
    return {**extra, "bytes": nbytes, "bpp": nbytes * 8 / (h * w), "psnr": psnr(img, out),
            "ms_ssim": ms_ssim(img, out)}  # fmt: skip


def avif_available() -> bool:
    """Pillow writes AVIF itself (11.2+ built with libavif) or through pillow-avif-plugin."""
    if features.check("avif"):
        return True
    try:
        import pillow_avif  # noqa: F401 - registers the AVIF plugin

        return True
    except ImportError:
        return False


def pillow_points(img: np.ndarray, fmt: str) -> list[dict[str, Any]]:
    """One point per quality setting of ``fmt``: whole-file bytes and the decoded quality."""
    opts, qualities = PILLOW_SWEEPS[fmt]
    points = []
    for q in qualities:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt.upper(), quality=q, **opts)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        points.append(_point(img, out, buf.tell(), quality=q))
    return points


def convae_points(codec: PhotoCodec, img: np.ndarray, levels: Sequence[float]) -> list[dict]:
    """One point per level: a whole .cae file, decoded through the real bitstream."""
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    points = []
    for lv in levels:
        data = encode_photo(codec, x, lv)
        out = decode_photo(codec, data)[0].numpy().transpose(1, 2, 0)
        points.append(_point(img, out, len(data), level=lv))
    return points


def speed(codec: PhotoCodec, img: np.ndarray, level: float, repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` encode and decode megapixels per second (wall clock), at the current
    torch thread count."""
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    enc, dec = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        data = encode_photo(codec, x, level)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode_photo(codec, data)
        dec.append(time.perf_counter() - t)
    mp = img.shape[0] * img.shape[1] / 1e6
    return {"level": level, "threads": torch.get_num_threads(), "megapixels": mp,
            "encode_mp_s": mp / min(enc), "decode_mp_s": mp / min(dec),
            "load_avg_1min": os.getloadavg()[0]}  # fmt: skip


def bd_table(points: dict[str, list[dict]], refs: Sequence[str]) -> dict[str, dict[str, float]]:
    """BD-rate (%) of convae against each classical codec: 0.1-1 bpp and the whole overlap."""

    def rq(k: str) -> tuple[np.ndarray, np.ndarray]:
        return np.array([p["bpp"] for p in points[k]]), np.array([p["psnr"] for p in points[k]])

    out = {}
    for ref in refs:
        args = (*rq(ref), *rq("convae"))
        out[ref] = {"bd_0.1_1bpp": _or_none(bd_rate(*args, rate_range=(0.1, 1.0))),
                    "bd_overlap": _or_none(bd_rate(*args))}  # fmt: skip
    return out


def _or_none(v: float) -> float | None:
    """None where the curves do not overlap (JSON has no NaN)."""
    return None if v != v else v


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def bench_photos(
    run: str | os.PathLike,
    photos: dict[str, np.ndarray],
    out: str | os.PathLike,
    *,
    levels: Sequence[float] = LEVELS,
    repeats: int = 2,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every photo (name -> uint8 [H, W, 3]) through the run's codec and each classical codec;
    BD-rates per photo and their mean, speed on the largest photo. Writes rd.json, rd.md and
    rd.png into ``out`` and returns the report."""
    codec = load_photo_codec(run)
    refs = [f for f in PILLOW_SWEEPS if f != "avif" or avif_available()]
    report: dict[str, Any] = {"run": str(run), "model": codec.fingerprint[:8].hex(),
                              "levels": list(levels), "photos": {}}  # fmt: skip
    for name, img in photos.items():
        pts = {"convae": convae_points(codec, img, levels)}
        pts.update({f: pillow_points(img, f) for f in refs})
        report["photos"][name] = {"size": list(img.shape[:2]), "points": pts,
                                  "bd": bd_table(pts, refs)}  # fmt: skip
        if progress is not None:
            progress({"event": "photo", "name": name})
    report["mean_bd"] = {
        r: {k: _mean([ph["bd"][r][k] for ph in report["photos"].values()])
            for k in ("bd_0.1_1bpp", "bd_overlap")}
        for r in refs
    }  # fmt: skip
    big = max(photos.values(), key=lambda a: a.shape[0] * a.shape[1])
    report["speed"] = [speed(codec, big, lv, repeats) for lv in (levels[0], levels[-1])]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rd.json", report)
    atomic_write(out / "rd.md", photo_rd_markdown(report))

    save_figure(photo_rd_figure(report), out / "rd.png")
    return report


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f} %"


def photo_rd_markdown(report: dict[str, Any]) -> str:
    """BD-rate table (per photo and mean), convae's points and speed, as Markdown."""
    refs = list(report["mean_bd"])
    head = " | ".join(f"vs {r.upper()} 0.1-1 bpp" for r in refs)
    lines = [f"| photo | {head} | vs {' / '.join(r.upper() for r in refs)} whole overlap | "
             "max PSNR |", "|---|" + "---:|" * len(refs) + "---|---:|"]  # fmt: skip
    for name, ph in {**report["photos"], "mean": {"bd": report["mean_bd"]}}.items():
        bd = ph["bd"]
        full = " / ".join(_pct(bd[r]["bd_overlap"]) for r in refs)
        top = f"{max(p['psnr'] for p in ph['points']['convae']):.2f} dB" if "points" in ph else ""
        cells = " | ".join(_pct(bd[r]["bd_0.1_1bpp"]) for r in refs)
        lines.append(f"| {name} | {cells} | {full} | {top} |")
    lines += [
        "",
        "| photo | level | bytes | bpp | PSNR dB | MS-SSIM |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ph in report["photos"].items():
        for p in ph["points"]["convae"]:
            lines.append(f"| {name} | {p['level']:g} | {p['bytes']} | {p['bpp']:.3f} | "
                         f"{p['psnr']:.2f} | {p['ms_ssim']:.4f} |")  # fmt: skip
    lines += ["", "| level | threads | MP | encode MP/s | decode MP/s | load (1 min) |",
              "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in report["speed"]:
        lines.append(f"| {r['level']:g} | {r['threads']} | {r['megapixels']:.3f} | "
                     f"{r['encode_mp_s']:.2f} | {r['decode_mp_s']:.2f} | "
                     f"{r['load_avg_1min']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def photo_rd_figure(report: dict[str, Any]):
    """Per photo: PSNR and MS-SSIM against bpp, one curve per codec (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    photos = report["photos"]
    fig = Figure(figsize=(4.2 * len(photos), 7.0))
    axes = fig.subplots(2, len(photos), squeeze=False)
    for j, (name, ph) in enumerate(photos.items()):
        for codec, pts in ph["points"].items():
            bpp = [p["bpp"] for p in pts]
            style = {"marker": "o", "lw": 2} if codec == "convae" else {"marker": ".", "lw": 1}
            axes[0, j].plot(bpp, [p["psnr"] for p in pts], label=codec, **style)
            axes[1, j].plot(bpp, [p["ms_ssim"] for p in pts], label=codec, **style)
        axes[0, j].set_title(f"{name} ({ph['size'][1]}x{ph['size'][0]})")
        for i, what in enumerate(("PSNR (dB)", "MS-SSIM")):
            axes[i, j].set_xlim(0, 2.0)
            axes[i, j].set_xlabel("bits per pixel (whole file)")
            axes[i, j].set_ylabel(what)
            axes[i, j].grid(alpha=0.3)
    axes[0, 0].legend()
    axes[1, 0].set_ylim(0.85, 1.0)
    fig.tight_layout()
    return fig
