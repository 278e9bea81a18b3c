"""What every ``convae`` sub-command shares: the parser helpers, argument types, data and thread
flags, logging/JSON output, the progress bar."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

log = logging.getLogger("convae")

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add(sub, name: str, help: str, example: str, **kw) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help,
        description=f"{help}\n\nexample:\n  {example}",
        formatter_class=_formatter,
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# Argument types


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be at least 1")
    return v


def _int_list(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r} is not a comma list of integers, e.g. 1,5,6"
        ) from None


def _float_list(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r} is not a comma list of numbers, e.g. -8,0"
        ) from None


_THREADS_HELP = (
    "CPU threads for torch (default: one per core, minus cores other processes are busy on)"
)


def add_threads_arg(p, extra: str = "") -> None:
    """``--threads N``; without it :func:`set_threads` picks the load-aware count."""
    p.add_argument("--threads", type=_positive_int, help=_THREADS_HELP + extra)


def set_threads(args: argparse.Namespace) -> int:
    """Apply ``--threads`` or :func:`convae.train.auto_threads` (never oversubscribe a busy CPU)."""
    import torch

    from ..train import auto_threads

    torch.set_num_threads(args.threads or auto_threads())
    return torch.get_num_threads()


def _channels(s: str) -> int:
    if s not in ("1", "3"):
        raise argparse.ArgumentTypeError("must be 1 or 3")
    return int(s)


def add_data_args(p: argparse.ArgumentParser, default_spec: str | None = "mnist-sample") -> None:
    """The data flags shared by every command that reads a dataset."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=default_spec,
        metavar="SPEC",
        help="mnist-sample (embedded, default), mnist, fashion-mnist, cifar10 or folder:PATH",
    )
    g.add_argument(
        "--data-dir", metavar="DIR", help="folder holding already-downloaded dataset files"
    )
    g.add_argument("--classes", type=_int_list, metavar="1,5,6", help="keep only these labels")
    g.add_argument("--channels", type=_channels, help="force 1 or 3 channels (folders)")
    g.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="N",
        help="resize + centre-crop to N x N (folders)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="unreadable images are an error, not skipped",
    )


def data_config_from_args(args: argparse.Namespace, base=None):
    """A DataConfig: ``base`` (e.g. the run's own) overridden by whatever data flags were given."""
    from ..config import DataConfig

    d = base or DataConfig()
    over: dict[str, Any] = {}
    if getattr(args, "data", None) is not None:
        over["spec"] = args.data
    for k in ("data_dir", "classes", "channels", "image_size", "strict"):
        v = getattr(args, k, None)
        if v is not None:
            over[k] = v
    if "spec" in over and over["spec"] != d.spec:
        # another dataset: the run's data dir does not apply, nor its --classes (other labels)
        over.setdefault("data_dir", None)
        over.setdefault("classes", None)
    return replace(d, **over)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------
# Shared by several commands: the progress bar, the image-size check, output file names


class _ProgressBar:
    """tqdm bar over all steps of the run, with the live loss; the only progress UI in convae."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, ev: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            total = ev["steps"] * ev["epochs"] if ev["event"] == "step" else None
            self.bar = tqdm(
                total=total, unit="step", dynamic_ncols=True, file=sys.stderr, leave=True
            )
        if ev["event"] == "step":
            done = (ev["epoch"] - 1) * ev["steps"] + ev["step"]
            self.bar.update(max(0, done - self.bar.n))
            self.bar.set_description(f"epoch {ev['epoch']}/{ev['epochs']}")
            self.bar.set_postfix(loss=f"{ev['loss']:.4f}")
        else:
            val = ev.get("val_loss")
            self.bar.write(
                f"epoch {ev['epoch']:>3}/{ev['epochs']}  train {ev['train_loss']:.5f}"
                + (f"  val {val:.5f}" if val is not None else "")
                + f"  {ev['seconds']:.1f}s"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_images_fit(model, x, what: str) -> None:
    want = tuple(model.input_shape)
    if tuple(x.shape[1:]) != want:
        raise ValueError(
            f"{what} images are {tuple(x.shape[1:])} but the model takes {want}; "
            "pass --channels/--image-size to convert them"
        )


def output_names(paths: list[Path]) -> list[str]:
    """PNG names for outputs: the input's stem, made unique when two inputs share one."""
    names, seen = [], set()
    for p in paths:
        stem, k = p.stem, 1
        name = f"{stem}.png"
        while name in seen:
            k += 1
            name = f"{stem}-{k}.png"
        seen.add(name)
        names.append(name)
    return names
