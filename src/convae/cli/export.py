"""export / report. Library: convae.export, convae.report."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_command,
    add_data_args,
    add_device_arg,
    check_no_links,
    check_out_file,
    data_config_from_args,
    finish,
    folder_targets,
    run_inputs,
)


def add_commands(sub) -> None:
    """export, report."""
    _add_export_parser(sub)
    _add_report_parser(sub)


def _add_export_parser(sub) -> None:
    from ..export import FORMATS, PARTS

    p = add_command(
        sub,
        "export",
        "export a trained model to ONNX or TorchScript (uint8 images in, /255 and the mean image "
        "inside), checked against convae on real images before it is written",
        "convae export runs/digit3 --format onnx --out exported/",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--format", default="onnx", choices=list(FORMATS), help="default onnx")
    p.add_argument(
        "--part",
        default="autoencoder",
        choices=list(PARTS),
        help="autoencoder: image -> reconstruction; encoder: image -> code; decoder: code -> "
        "reconstruction (default autoencoder)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for PART.EXT and PART.EXT.json"
    )
    p.add_argument("--which", default="best", choices=["best", "last"], help="weights (best)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export there")
    add_data_args(p, default_spec=None)  # the images the parity check runs on (the run's own)
    p.set_defaults(func=cmd_export)


def _describe(t: dict) -> str:
    return f"{t['name']} {t['dtype']} [{', '.join(map(str, t['shape']))}]"


def cmd_export(args: argparse.Namespace) -> int:
    from ..config import read_run_config
    from ..export import FORMATS, export_run

    run = Path(args.run)
    name = f"{args.part}{FORMATS[args.format]}"
    folder_targets(args.out, [name, f"{name}.json"], run_inputs(run), args.overwrite)
    data = None
    if (run / "config.json").is_file() and any(
        getattr(args, k, None) is not None
        for k in ("data", "data_dir", "classes", "channels", "image_size", "strict")
    ):
        data = data_config_from_args(args, read_run_config(run / "config.json").data)
    res = export_run(run, format=args.format, part=args.part, out=args.out, which=args.which,
                     data=data, overwrite=args.overwrite)  # fmt: skip
    return finish(args, res, lambda: _export_text(args, run, res))


def _export_text(args: argparse.Namespace, run: Path, res: dict) -> str:
    par = res["parity"]
    sizes = " and ".join("x".join(map(str, sz)) for sz in par["sizes"])
    lines = [
        f"exported the {args.part} of {run} ({res['run']['arch']}, {args.which} weights) to "
        f"{res['files'][0]}",
        f"  {_describe(res['inputs'][0])} -> {_describe(res['outputs'][0])}",
        f"  sidecar {res['files'][1]}",
        f"parity with convae ({res['runtime']}): max |diff| {par['max_abs_diff']:.2g} (tolerance "
        f"{par['tolerance']:g}) on {par['images']} {par['data']} {par['split']} images, batches "
        f"of {' and '.join(map(str, par['batches']))}, size{'s' if len(par['sizes']) > 1 else ''} "
        f"{sizes}",
    ]
    a = par.get("anomaly")
    if a and a["checked"]:
        an = res["anomaly"]
        lines.append(
            f"anomaly: {an['score']} > {an['threshold']:.6g} on {a['images']} test images: "
            f"scores max |diff| {a['max_abs_score_diff']:.2g}, flags "
            f"{'identical' if a['flags_equal'] else 'DIFFERENT'} ({a['flagged']} flagged)"
        )
    return "\n".join(lines)


def _add_report_parser(sub) -> None:
    p = add_command(
        sub,
        "report",
        "write RUN/report.html: config, metrics per class, loss curves, reconstructions, latent "
        "map, codec, denoising and anomaly results in one self-contained file",
        "convae report runs/digit3",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--out", metavar="FILE", help="the HTML file (default RUN/report.html)")
    add_device_arg(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..checkpoint import check_run_dir
    from ..report import REPORT_FILE, write_report

    run = check_run_dir(args.run)
    if args.out:
        check_out_file(args.out, run_inputs(run))
    else:
        check_no_links(run, [run / REPORT_FILE])
    res = write_report(run, args.out, device=args.device)
    text = f"report: {res['report']} ({res['bytes'] / 1024:.0f} KiB; {', '.join(res['sections'])})"
    return finish(args, res, text)
