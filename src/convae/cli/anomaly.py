"""anomaly / bench anomaly. Library: convae.anomaly."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from .common import (
    _add,
    _check_images_fit,
    _int_list,
    _positive_int,
    _print_json,
    add_data_args,
    check_distinct,
    check_out_file,
    check_out_folder,
    data_config_from_args,
    display_name,
    folder_targets,
    plot_text,
    run_inputs,
)


def _fpr_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number, e.g. 0.05") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{s!r} must be between 0 and 1 (exclusive), e.g. 0.05")
    return v


def _anomaly_parser(sub) -> None:
    from ..anomaly import DEFAULT_SCORE, SCORES

    p = _add(
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
    p.add_argument("inputs", nargs="*", help="image files or folders to score (or --data SPEC)")
    add_data_args(p, default_spec=None)
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test"],
        help="with --data (default test)",
    )
    p.add_argument(
        "--normal-classes",
        type=_int_list,
        metavar="3",
        help="with --data: labels that are normal (default: the classes the run was trained on)",
    )
    p.add_argument("--csv", metavar="FILE", help="write one row per image: path, score, flagged")
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
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_anomaly)


def cmd_anomaly(args: argparse.Namespace) -> int:
    from ..anomaly import ensure_detector
    from ..inference import load

    if args.inputs and args.data:
        raise ValueError("give image files/folders or --data SPEC, not both")
    if args.top < 0:
        raise ValueError("--top must be 0 or more")
    calibrate_only = not args.inputs and not args.data
    if calibrate_only and not (args.calibrate or args.score or args.fpr):
        raise ValueError(
            "nothing to score: give image files/folders, or --data SPEC for labelled data "
            "(or --calibrate to only set the threshold)"
        )
    model = load(args.run, args.device)
    # Read (and check) what is to be scored before calibrating: a user's mistake fails fast.
    x, paths, labelled = None, [], None
    if args.inputs:
        from ..images import read_image_files

        c, s = model.config.channels, model.config.image_size
        x, paths = read_image_files(args.inputs, c, s, resize=args.resize)
    elif args.data:
        labelled = _anomaly_labelled_data(args, model)
        x = labelled["x"]
    if x is not None:
        _check_images_fit(model, x, "the")
    out = Path(args.out) if args.out else Path(model.run_dir) / "anomaly"
    if not calibrate_only:
        _check_anomaly_outputs(args, model, out, paths, labelled is not None)
    det, fresh = ensure_detector(model, score=args.score, fpr=args.fpr, recalibrate=args.calibrate)
    how = (
        f"{det.score} > {det.threshold:.6g} (target FPR {det.fpr:g} on {det.n_calibration} normal "
        f"validation images{', calibrated now' if fresh else ''})"
    )
    if calibrate_only:
        if args.json:
            _print_json({"run": str(model.run_dir), "calibrated_now": fresh, **det.to_dict()})
        else:
            print(f"threshold: {how}\nstored in {Path(model.run_dir) / 'anomaly.json'}")
        return 0
    if labelled is None:
        return _anomaly_files(args, model, det, how, out, fresh, x, paths)
    return _anomaly_dataset(args, model, det, how, out, fresh, labelled)


def _check_anomaly_outputs(args, model, out: Path, paths: list[Path], labelled: bool) -> None:
    """All outputs checked before calibrating or writing: OUT/heatmaps.png, OUT/roc.png (replaced
    on each run, as their names are fixed) and --csv, none of them an input."""
    inputs = [*paths, *run_inputs(model.run_dir)]
    names = (["heatmaps.png"] if args.top else []) + (["roc.png"] if labelled else [])
    files = folder_targets(check_out_folder(out), names, inputs, overwrite=True)
    if args.csv:
        check_out_file(args.csv, inputs, flag="--csv")
        check_distinct([*(("--out", f) for f in files), ("--csv", args.csv)])


def _short_title(name: str) -> str:
    """A heat-map title from a file name: at most 14 characters, printable, ``$`` literal."""
    t = display_name(name)
    return plot_text(t if len(t) <= 14 else "..." + t[-11:])


def _anomaly_labelled_data(args, model) -> dict[str, Any]:
    """The --data split with its labels and which of them are normal."""
    import numpy as np

    from ..data import load_split

    # score every class, not only the trained ones
    base = replace(model.run_config.data, classes=None)
    data = data_config_from_args(args, base)
    normal = args.normal_classes or model.run_config.data.classes
    if not normal:
        raise ValueError(
            "which labels are normal? pass --normal-classes (the run was trained on all classes)"
        )
    x, y = load_split(data, args.split)
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


def _anomaly_outputs(model, det, x, names: list[str], titles: list[str], args, out: Path):
    """Scores, flags, the heat-map figure of the top K (``titles`` above them) and the CSV;
    returns (scores, flags, files)."""
    from ..anomaly import heatmap_figure, score_images
    from ..checkpoint import atomic_write
    from ..inference import reconstruct, to_float
    from ..plots import save_figure

    recon = reconstruct(model, x)
    scores = score_images(model, x, det, recon=recon)
    flags = det.flag(scores)
    files: dict[str, str] = {}
    if args.top and len(x):
        top = list(scores.argsort()[::-1][: args.top])
        fig = heatmap_figure(
            to_float(x[top]),
            recon[top],
            [float(scores[i]) for i in top],
            [_short_title(titles[i]) for i in top],
            detector=det,
        )
        save_figure(fig, out / "heatmaps.png")
        files["heatmaps"] = str(out / "heatmaps.png")
    if args.csv:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "score", "flagged"])
        for n, s, f in zip(names, scores, flags, strict=True):
            w.writerow([n, f"{s:.8g}", int(f)])
        # a name with undecodable bytes is written back as those same bytes
        atomic_write(args.csv, buf.getvalue().encode("utf-8", errors="surrogateescape"))
        files["csv"] = str(args.csv)
    return scores, flags, files


def _anomaly_files(args, model, det, how: str, out: Path, fresh: bool, x, paths: list[Path]) -> int:
    names = [str(p) for p in paths]
    scores, flags, files = _anomaly_outputs(
        model, det, x, names, [p.name for p in paths], args, out
    )
    if args.json:
        _print_json(
            {
                "score": det.score,
                "threshold": det.threshold,
                "fpr_target": det.fpr,
                "images": len(x),
                "flagged": int(flags.sum()),
                "calibrated_now": fresh,
                **files,
                "results": [
                    {"path": n, "score": float(v), "flagged": bool(f)}
                    for n, v, f in zip(names, scores, flags, strict=True)
                ],
            }
        )
        return 0
    if not args.csv:
        shown = [display_name(n) for n in names]
        width = min(60, max(len(n) for n in shown))
        for n, v, f in zip(shown, scores, flags, strict=True):
            print(f"{n:<{width}}  {v:>10.6g}  {'ANOMALY' if f else 'normal'}")
    print(f"{int(flags.sum())} of {len(x)} image(s) flagged: {how}")
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0


def _anomaly_dataset(args, model, det, how: str, out: Path, fresh: bool, d: dict[str, Any]) -> int:
    from ..anomaly import detection_metrics, roc_figure
    from ..plots import save_figure

    data, x, y, normal, is_anom = d["data"], d["x"], d["y"], d["normal"], d["is_anom"]
    names = [f"{data.spec}/{args.split}/{i}" for i in range(len(x))]
    titles = [f"#{i} ({label})" for i, label in enumerate(y.tolist())]
    scores, flags, files = _anomaly_outputs(model, det, x, names, titles, args, out)
    m = detection_metrics(scores, is_anom, det.threshold)
    fig = roc_figure(
        {det.score: (scores, is_anom)},
        point=(m["fpr"], m["recall"]),
        title=f"{data.spec} {args.split}: normal = {','.join(map(str, normal))}",
    )
    save_figure(fig, out / "roc.png")
    files["roc"] = str(out / "roc.png")
    res = {
        "data": data.spec,
        "split": args.split,
        "normal_classes": normal,
        "score": det.score,
        "fpr_target": det.fpr,
        "calibrated_now": fresh,
        **m,
        **files,
    }
    if args.json:
        _print_json(res)
        return 0
    print(
        f"{len(x)} images ({data.spec}, {args.split}): {m['n_normal']} normal (labels "
        f"{','.join(map(str, normal))}), {m['n_anomalous']} anomalous"
    )
    print(f"AUROC {100 * m['auroc']:.2f}  AUPRC {100 * m['auprc']:.2f}")
    print(f"at the threshold, {how}:")
    print(
        f"  flagged {m['flagged']}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
        f"F1 {m['f1']:.3f}  false-positive rate {m['fpr']:.3f}"
    )
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0


def _bench_anomaly_parser(bsub) -> None:
    p = _add(
        bsub,
        "anomaly",
        "one-class benchmark: per class, train on it alone and score the test split "
        "(other classes = anomalies); AUROC per class vs a PCA baseline",
        "convae bench anomaly --data mnist-sample --json",
    )
    add_data_args(p)
    from ..config import PRESETS

    p.add_argument(
        "--preset",
        default="anomaly",
        choices=sorted(PRESETS),
        help="training recipe of every model (default anomaly); the flags below override it",
    )
    p.add_argument("--epochs", type=_positive_int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=_positive_int, help="override the preset's batch size")
    p.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    p.add_argument("--width", type=_positive_int, help="override the preset's base width")
    p.add_argument(
        "--latent-dim", type=_positive_int, metavar="L", help="override the preset's latent size"
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
        "--pca-components", type=_positive_int, default=16, metavar="K", help="PCA baseline size"
    )
    p.add_argument("--out", metavar="DIR", help="also write the results as DIR/bench.json")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPU threads for torch (default 1: these small models train no faster on more, and a "
        "busy CPU makes extra threads spin; measured in docs/anomaly.md)",
    )
    p.set_defaults(func=cmd_bench_anomaly)


def cmd_bench_anomaly(args: argparse.Namespace) -> int:
    import torch

    from ..anomaly import DEFAULT_SCORE, SCORES, one_class_benchmark
    from ..checkpoint import write_json
    from ..config import RunConfig, apply_preset

    if args.out:
        check_out_folder(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = apply_preset(RunConfig(), args.preset)
    m = {k: getattr(args, k) for k in ("width", "latent_dim") if getattr(args, k) is not None}
    t = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "seed")
        if getattr(args, k) is not None
    }
    recipe = replace(recipe, model=replace(recipe.model, **m), train=replace(recipe.train, **t))
    data = replace(data_config_from_args(args), classes=None)
    scores = list(SCORES)
    cols = [*scores, "pca"]
    if not args.json:
        print(
            f"one-class benchmark on {data.spec}: AUROC (%) per normal class; threshold at target FPR "
            f"{args.fpr:g} from that class's validation images"
        )
        print(
            f"{'class':>5} "
            + " ".join(f"{c:>8}" for c in cols)
            + f" {'F1':>6} {'FPR':>6} {'seconds':>8}"
            f"   (F1, FPR: {DEFAULT_SCORE} at the threshold)"
        )

    main_ = DEFAULT_SCORE  # F1 and FPR columns: the default score at its calibrated threshold

    def show(r):
        if not args.json:
            print(
                f"{r['class']:>5} "
                + " ".join(f"{100 * r[c]['auroc']:>8.2f}" for c in cols)
                + f" {r[main_]['f1']:>6.3f} {r[main_]['fpr']:>6.3f} {r['seconds']:>8.1f}",
                flush=True,
            )

    res = one_class_benchmark(
        data,
        recipe,
        classes=args.classes,
        fpr=args.fpr,
        scores=scores,
        pca_components=args.pca_components,
        device=args.device,
        progress=show,
    )
    res["beats_pca"] = {
        s: [r["class"] for r in res["classes"] if r[s]["auroc"] >= r["pca"]["auroc"]]
        for s in scores
    }
    if args.out:
        write_json(Path(args.out) / "bench.json", res)
    if args.json:
        _print_json(res)
        return 0
    mean = res["mean"]
    print(
        f"{'mean':>5} "
        + " ".join(f"{100 * mean[c]['auroc']:>8.2f}" for c in cols)
        + f" {mean[main_]['f1']:>6.3f} {mean[main_]['fpr']:>6.3f} {res['seconds']:>8.1f}"
    )
    n = len(res["classes"])
    print(
        f"{main_} >= PCA on {len(res['beats_pca'][main_])} of {n} classes; total {res['seconds']:.0f} s"
    )
    return 0
