"""What every ``convae`` sub-command shares: the parser helpers, argument types, data and thread
flags, logging/JSON output, the progress bar."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
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
    items = [v.strip() for v in s.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"{s!r} has an empty item; give a comma list of integers, e.g. 1,5,6"
        )
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r} is not a comma list of integers, e.g. 1,5,6"
        ) from None


_FLOAT32_MAX = 3.4028234663852886e38


def _float_list(s: str) -> list[float]:
    """A comma list of finite numbers: no empty items ("1,,2", "-8,0,"), no nan/inf, nothing
    beyond float32 (the codes are float32: 1e40 would silently become inf)."""
    items = [v.strip() for v in s.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(
            f"{s!r} has an empty item; give a comma list of numbers, e.g. -8,0"
        )
    try:
        vals = [float(v) for v in items]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{s!r} is not a comma list of numbers, e.g. -8,0"
        ) from None
    for v in vals:
        if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
            raise argparse.ArgumentTypeError(
                f"{s!r}: {v:g} is not a usable value (give finite numbers within +-3.4e38)"
            )
    return vals


_THREADS_HELP = (
    "CPU threads for torch (default: one per core, minus cores other processes are busy on)"
)


def add_threads_arg(p, extra: str = "") -> None:
    """``--threads N``; without it :func:`set_threads` picks the load-aware count."""
    p.add_argument("--threads", type=_positive_int, help=_THREADS_HELP + extra)


def set_threads(args: argparse.Namespace) -> int:
    """Apply ``--threads`` or :func:`convae.train.auto_threads` (never oversubscribe a busy CPU)."""
    import torch

    from ..runtime import auto_threads

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
        if ev["event"] == "done":  # train() finished fitting: later warnings get their own lines
            self.close()
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
            self.bar = None


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


def display_name(path: str | os.PathLike) -> str:
    """A path as printable text: undecodable bytes become U+FFFD (never a UnicodeEncodeError)."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def plot_text(s: str) -> str:
    """Text safe for a matplotlib title: printable, and ``$`` taken literally (not mathtext)."""
    return display_name(s).replace("$", r"\$")


# ---------------------------------------------------------------------------------------------
# Output paths: every command checks ALL its targets before it writes anything. An input is never
# an output; a folder output never replaces files unless --overwrite; errors name the flag.

# The files of a run directory that commands read (checkpoint, trainer state, codec, detector):
# they are inputs of every command given the run, so no output may replace them.
RUN_FILES = ("config.json", "model.safetensors", "last.safetensors", "trainer.safetensors",
             "trainer.json", "history.jsonl", "metrics.json", "codec.safetensors", "codec.json",
             "anomaly.json")  # fmt: skip


def run_inputs(run: str | os.PathLike) -> list[Path]:
    """The files of a run directory that must never be written over by a command's outputs."""
    return [Path(run) / n for n in RUN_FILES]


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


class _FileSet:
    """Files by resolved path and by (device, inode), for O(1) "is this one of them?" checks (a
    folder of 10,000 images must not cost 10,000 x 10,000 path comparisons)."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self.paths: set[Path] = set()
        self.inodes: set[tuple[int, int]] = set()
        for p in paths:
            self.paths.add(Path(p).resolve())
            with contextlib.suppress(OSError):
                st = os.stat(p)
                self.inodes.add((st.st_dev, st.st_ino))

    def __contains__(self, path: Path) -> bool:
        if path.resolve() in self.paths:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self.inodes  # hard links


def _input_at(path: Path, inputs: Iterable[str | os.PathLike] | _FileSet) -> bool:
    """Whether ``path`` would replace one of ``inputs``."""
    return path in (inputs if isinstance(inputs, _FileSet) else _FileSet(inputs))


def _check_parents(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder (``a.txt/b.png`` cannot be made)."""
    for anc in path.parents:
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                raise NotADirectoryError(f"{flag} {path}: {anc} is a file, not a folder")
            return


def check_out_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder output: it may exist (as a folder) or be made; no file stands in its way."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{flag} {folder} is a file, not a folder")
    _check_parents(folder, flag)
    return folder


def check_out_file(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), flag: str = "--out"
) -> Path:
    """A single-file output: it may replace a file of that name (as is conventional), but never
    one of the command's ``inputs`` nor a folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder; give a file name")
    _check_parents(path, flag)
    if _input_at(path, inputs):
        raise ValueError(f"{flag} {path} is one of the input files; choose another name")
    return path


def check_distinct(outputs: Sequence[tuple[str, str | os.PathLike | None]]) -> None:
    """Two outputs of one command (``[("--out", a), ("--csv", b)]``) must not be the same file."""
    seen: list[tuple[str, Path]] = []
    for flag, p in outputs:
        if p is None:
            continue
        for f0, p0 in seen:
            if _same_file(Path(p), p0):
                raise ValueError(f"{flag} {p} is also {f0}; give each output its own name")
        seen.append((flag, Path(p)))


def folder_targets(
    folder: str | os.PathLike,
    names: Sequence[str],
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    flag: str = "--out",
) -> list[Path]:
    """The files ``folder/name`` a command is about to write, all checked before the first write.

    Never an input file, never an existing folder; existing files only with ``overwrite`` (the
    error gives how many and the first). Returns the target paths in ``names`` order.
    """
    folder = check_out_folder(folder, flag)
    inputs = _FileSet(inputs)
    targets = [folder / n for n in names]
    existing = []
    for t in targets:
        _check_parents(t, flag)  # e.g. OUT/noisy is a file
        if t.is_dir():
            raise IsADirectoryError(f"{flag} {folder}: {t} is a folder, where an image would go")
        if _input_at(t, inputs):
            raise ValueError(
                f"{flag} {folder} would replace the input file {t}; choose another folder"
            )
        if t.exists() or t.is_symlink():
            existing.append(t)
    if existing and not overwrite:
        raise FileExistsError(
            f"{flag} {folder}: {len(existing)} of the {len(targets)} output file(s) already exist "
            f"(first: {existing[0].relative_to(folder)}); pass --overwrite to replace them"
        )
    return targets


OVERWRITE_HELP = "replace files of the same name already in the output folder (never an input)"


def add_out_folder_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--out DIR`` (required) for a command writing one PNG per image, and ``--overwrite``."""
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help=f"folder for the {what} (files already there only with --overwrite)",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
