"""anomaly / bench anomaly. Library: convae.anomaly."""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..anomaly import (
    DEFAULT_SCORE,
    DETECTOR_FILE,
    SCORES,
    bench_anomaly,
    detection_metrics,
    ensure_detector,
    heatmap_figure,
    roc_figure,
    score_images,
)
from ..checkpoint import atomic_write
from ..config import PRESETS, RunConfig, apply_preset
from ..images import read_image_files
from ..inference import load, reconstruct, to_float
from ..plots import save_figure
from .common import (
    add_command,
    add_data_args,
    add_device_arg,
    add_inputs_or_data,
    add_threads_arg,
    check_distinct,
    check_images_fit,
    check_no_links,
    check_out_file,
    check_out_folder,
    data_config_from_args,
    display_name,
    finish,
    folder_targets,
    inputs_or_data,
    int_list,
    load_data_split,
    plot_text,
    positive_int,
    run_inputs,
    set_threads,
)


def _fpr_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number, e.g. 0.05") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{s!r} must be between 0 and 1 (exclusive), e.g. 0.05")
    return v


# ---------------------------------------------------------------------------------------------
# anomaly


def _add_anomaly_parser(sub) -> None:
    p = add_command(
        sub,
        "anomaly",
        "score images by how badly a model of normal images reconstructs them; "
        "flag those above a threshold set on normal images only",
        "convae anomaly runs/digit3 --data mnist-sample --split test --normal-classes 3\n"
        "  convae anomaly runs/digit3 scans/ --csv scores.csv",
    )
    p.add_argument(
        "run", help="run directory of a model trained on normal images (e.g. --classes 3)"
    )
    add_inputs_or_data(p, "to score")
    p.add_argument(
        "--normal-classes",
        type=int_list,
        metavar="3",
        help="with --data: labels that are normal (default: the classes the run was trained on)",
    )
    p.add_argument("--csv", metavar="FILE", help="write one row per image: path, score, flagged")
    _add_threshold_args(p)
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", metavar="DIR", help="folder for heatmaps.png and roc.png (default RUN/anomaly)"
    )
    g.add_argument(
        "--top",
        type=int,
        default=8,
        metavar="K",
        help="heat maps of the K most anomalous images (0 = none; default 8)",
    )
    p.add_argument(
        "--resize", action="store_true", help="resize + centre-crop input files to the model's size"
    )
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_anomaly)


def _add_threshold_args(p) -> None:
    g = p.add_argument_group("threshold (stored in RUN/anomaly.json; changing it recalibrates)")
    g.add_argument(
        "--score",
        choices=list(SCORES),
        help="; ".join(f"{k}: {v}" for k, v in SCORES.items())
        + f" (default: the run's calibrated score, else {DEFAULT_SCORE})",
    )
    g.add_argument(
        "--fpr",
        type=_fpr_arg,
        metavar="RATE",
        help="target false-positive rate on normal images (default: the run's calibrated rate, "
        "else 0.05)",
    )
    g.add_argument(
        "--calibrate",
        action="store_true",
        help="recalibrate on the run's normal validation images even if a threshold is stored",
    )


def cmd_anomaly(args: argparse.Namespace) -> int:
    source = inputs_or_data(args)
    if args.top < 0:
        raise ValueError("--top must be 0 or more")
    if source is None and not (args.calibrate or args.score or args.fpr):
        raise ValueError(
            "nothing to score: give image files/folders, or --data SPEC for labelled data "
            "(or --calibrate to only set the threshold)"
        )
    set_threads(args)
    model = load(args.run, args.device)
    run = Path(model.run_dir)
    check_no_links(run, [run / DETECTOR_FILE])
    # Read (and check) what is to be scored before calibrating: a user's mistake fails fast.
    x, paths, labelled = None, [], None
    if source == "files":
        c, s = model.config.channels, model.config.image_size
        x, paths = read_image_files(args.inputs, c, s, resize=args.resize)
    elif source == "data":
        labelled = _labelled_data(args, model)
        x = labelled["x"]
    if x is not None:
        check_images_fit(model, x, "the")
        _check_anomaly_outputs(args, run, paths, labelled is not None)
    det, fresh = ensure_detector(model, score=args.score, fpr=args.fpr, recalibrate=args.calibrate)
    how = (
        f"{det.score} > {det.threshold:.6g} (target FPR {det.fpr:g} on {det.n_calibration} normal "
        f"validation images{', calibrated now' if fresh else ''})"
    )
    if source is None:
        res = {"run": str(run), "calibrated_now": fresh, **det.to_dict()}
        return finish(args, res, f"threshold: {how}\nstored in {run / DETECTOR_FILE}")
    if labelled is None:
        return _anomaly_files(args, model, det, how, fresh, x, paths)
    return _anomaly_dataset(args, model, det, how, fresh, labelled)


def _out_dir(args: argparse.Namespace, run: Path) -> tuple[Path, Path]:
    """(the folder of the figures, the folder the user named that holds it)."""
    return (Path(args.out), Path(args.out)) if args.out else (run / "anomaly", run)


def _check_anomaly_outputs(args, run: Path, paths: list[Path], labelled: bool) -> None:
    """All outputs checked before calibrating or writing: OUT/heatmaps.png, OUT/roc.png (replaced
    on each run, as their names are fixed) and --csv, none of them an input."""
    out, root = _out_dir(args, run)
    inputs = [*paths, *run_inputs(run)]
    names = (["heatmaps.png"] if args.top else []) + (["roc.png"] if labelled else [])
    files = folder_targets(out, names, inputs, overwrite=True, root=root)
    if args.csv:
        check_out_file(args.csv, inputs, flag="--csv")
        check_distinct([*(("--out", f) for f in files), ("--csv", args.csv)])


def _short_title(name: str) -> str:
    """A heat-map title from a file name: at most 14 characters, printable, ``$`` literal."""
    t = display_name(name)
    return plot_text(t if len(t) <= 14 else "..." + t[-11:])


def _labelled_data(args, model) -> dict[str, Any]:
    """The --data split with its labels and which of them are normal."""
    # score every class, not only the trained ones
    data = data_config_from_args(args, replace(model.run_config.data, classes=None))
    normal = args.normal_classes or model.run_config.data.classes
    if not normal:
        raise ValueError(
            "which labels are normal? pass --normal-classes (the run was trained on all classes)"
        )
    x, y = load_data_split(data, args.split)
    if len(x) == 0:
        raise ValueError(f"{data.spec} {args.split}: no images")
    is_anom = ~np.isin(y.numpy(), np.asarray(normal))
    if is_anom.all() or not is_anom.any():
        raise ValueError(
            f"{data.spec} {args.split} has {int((~is_anom).sum())} normal and {int(is_anom.sum())} "
            f"anomalous images (normal labels {','.join(map(str, normal))}); AUROC needs both - "
            "check --normal-classes and --classes"
        )
    return {"data": data, "x": x, "y": y, "normal": list(normal), "is_anom": is_anom}


def _write_csv(path: str, names: list[str], scores, flags) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "score", "flagged"])
    for n, s, f in zip(names, scores, flags, strict=True):
        w.writerow([n, f"{s:.8g}", int(f)])
    # a name with undecodable bytes is written back as those same bytes
    atomic_write(path, buf.getvalue().encode("utf-8", errors="surrogateescape"))


def _anomaly_outputs(model, det, x, names: list[str], titles: list[str], args):
    """Scores, flags, the heat-map figure of the top K (``titles`` above them) and the CSV;
    returns (scores, flags, files)."""
    out, _ = _out_dir(args, Path(model.run_dir))
    recon = reconstruct(model, x)
    scores = score_images(model, x, det, recon=recon)
    flags = det.flag(scores)
    files: dict[str, str] = {}
    if args.top and len(x):
        top = list(scores.argsort()[::-1][: args.top])
        fig = heatmap_figure(to_float(x[top]), recon[top], [float(scores[i]) for i in top],
                             [_short_title(titles[i]) for i in top], detector=det)  # fmt: skip
        save_figure(fig, out / "heatmaps.png")
        files["heatmaps"] = str(out / "heatmaps.png")
    if args.csv:
        _write_csv(args.csv, names, scores, flags)
        files["csv"] = str(args.csv)
    return scores, flags, files


def _anomaly_files(args, model, det, how: str, fresh: bool, x, paths: list[Path]) -> int:
    names = [str(p) for p in paths]
    scores, flags, files = _anomaly_outputs(model, det, x, names, [p.name for p in paths], args)
    res = {"score": det.score, "threshold": det.threshold, "fpr_target": det.fpr,
           "images": len(x), "flagged": int(flags.sum()), "calibrated_now": fresh, **files,
           "results": [{"path": n, "score": float(v), "flagged": bool(f)}
                       for n, v, f in zip(names, scores, flags, strict=True)]}  # fmt: skip

    def text() -> str:
        lines = []
        if not args.csv:
            shown = [display_name(n) for n in names]
            width = min(60, max(len(n) for n in shown))
            for n, v, f in zip(shown, scores, flags, strict=True):
                lines.append(f"{n:<{width}}  {v:>10.6g}  {'ANOMALY' if f else 'normal'}")
        lines.append(f"{int(flags.sum())} of {len(x)} image(s) flagged: {how}")
        lines += [f"{k}: {v}" for k, v in files.items()]
        return "\n".join(lines)

    return finish(args, res, text)


def _anomaly_dataset(args, model, det, how: str, fresh: bool, d: dict[str, Any]) -> int:
    data, x, y, normal, is_anom = d["data"], d["x"], d["y"], d["normal"], d["is_anom"]
    names = [f"{data.spec}/{args.split}/{i}" for i in range(len(x))]
    titles = [f"#{i} ({label})" for i, label in enumerate(y.tolist())]
    scores, flags, files = _anomaly_outputs(model, det, x, names, titles, args)
    m = detection_metrics(scores, is_anom, det.threshold)
    out, _ = _out_dir(args, Path(model.run_dir))
    fig = roc_figure({det.score: (scores, is_anom)}, point=(m["fpr"], m["recall"]),
                     title=f"{data.spec} {args.split}: normal = {','.join(map(str, normal))}")  # fmt: skip
    save_figure(fig, out / "roc.png")
    files["roc"] = str(out / "roc.png")
    res = {"data": data.spec, "split": args.split, "normal_classes": normal, "score": det.score,
           "fpr_target": det.fpr, "calibrated_now": fresh, **m, **files}  # fmt: skip
    text = [
        f"{len(x)} images ({data.spec}, {args.split}): {m['n_normal']} normal (labels "
        f"{','.join(map(str, normal))}), {m['n_anomalous']} anomalous",
        f"AUROC {100 * m['auroc']:.2f}  AUPRC {100 * m['auprc']:.2f}",
        f"at the threshold, {how}:",
        f"  flagged {m['flagged']}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
        f"F1 {m['f1']:.3f}  false-positive rate {m['fpr']:.3f}",
        *(f"{k}: {v}" for k, v in files.items()),
    ]
    return finish(args, res, "\n".join(text))


# ---------------------------------------------------------------------------------------------
# bench anomaly


def _add_bench_anomaly_parser(bsub) -> None:
    p = add_command(
        bsub,
        "anomaly",
        "one-class benchmark: per class, train on it alone and score the test split "
        "(other classes = anomalies); AUROC per class vs a PCA baseline",
        "convae bench anomaly --data mnist-sample --json",
    )
    add_data_args(p)
    p.add_argument(
        "--preset",
        default="anomaly",
        choices=sorted(PRESETS),
        help="training recipe of every model (default anomaly); the flags below override it",
    )
    p.add_argument("--epochs", type=positive_int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=positive_int, help="override the preset's batch size")
    p.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    p.add_argument("--width", type=positive_int, help="override the preset's base width")
    p.add_argument(
        "--latent-dim", type=positive_int, metavar="L", help="override the preset's latent size"
    )
    p.add_argument("--seed", type=int, help="training seed (default the preset's)")
    p.add_argument(
        "--fpr",
        type=_fpr_arg,
        default=0.05,
        metavar="RATE",
        help="target false-positive rate of the calibrated thresholds (default 0.05)",
    )
    p.add_argument(
        "--pca-components", type=positive_int, default=16, metavar="K", help="PCA baseline size"
    )
    p.add_argument("--out", metavar="DIR", help="also write the results as DIR/bench.json")
    add_device_arg(p)
    add_threads_arg(
        p,
        default=1,
        help="CPU threads for torch (default 1: these small models train no faster on more, and "
        "a busy CPU makes extra threads spin; measured in docs/anomaly.md)",
    )
    p.set_defaults(func=cmd_bench_anomaly)


def _bench_recipe(args: argparse.Namespace) -> RunConfig:
    """The preset with the model and training flags given."""
    recipe = apply_preset(RunConfig(), args.preset)
    m = {k: getattr(args, k) for k in ("width", "latent_dim") if getattr(args, k) is not None}
    t = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed")
         if getattr(args, k) is not None}  # fmt: skip
    return replace(recipe, model=replace(recipe.model, **m), train=replace(recipe.train, **t))


_COLUMNS = [*SCORES, "pca"]


def _row_text(label, r: dict[str, Any], seconds: float) -> str:
    """One line of the table: AUROC (%) per score and PCA, then the default score's F1 and FPR."""
    main = r[DEFAULT_SCORE]
    return (
        f"{label:>5} " + " ".join(f"{100 * r[c]['auroc']:>8.2f}" for c in _COLUMNS)
        + f" {main['f1']:>6.3f} {main['fpr']:>6.3f} {seconds:>8.1f}"
    )  # fmt: skip


def cmd_bench_anomaly(args: argparse.Namespace) -> int:
    if args.out:
        check_out_folder(args.out)
        check_no_links(args.out, [Path(args.out) / "bench.json"], "--out")
    set_threads(args)
    data = replace(data_config_from_args(args), classes=None)
    if not args.json:
        print(
            f"one-class benchmark on {data.spec}: AUROC (%) per normal class; threshold at target "
            f"FPR {args.fpr:g} from that class's validation images\n{'class':>5} "
            + " ".join(f"{c:>8}" for c in _COLUMNS)
            + f" {'F1':>6} {'FPR':>6} {'seconds':>8}   (F1, FPR: {DEFAULT_SCORE} at the threshold)"
        )

    def show(r: dict[str, Any]) -> None:
        if not args.json:
            print(_row_text(r["class"], r, r["seconds"]), flush=True)

    res = bench_anomaly(data, _bench_recipe(args), args.out, classes=args.classes, fpr=args.fpr,
                        pca_components=args.pca_components, device=args.device,
                        progress=show)  # fmt: skip
    n, beats = len(res["classes"]), len(res["beats_pca"][DEFAULT_SCORE])
    return finish(
        args,
        res,
        lambda: (
            _row_text("mean", res["mean"], res["seconds"])
            + f"\n{DEFAULT_SCORE} >= PCA on {beats} of {n} classes; total {res['seconds']:.0f} s"
        ),
    )


def add_commands(sub) -> None:
    """anomaly."""
    _add_anomaly_parser(sub)


def add_benches(bsub) -> None:
    """bench anomaly."""
    _add_bench_anomaly_parser(bsub)
