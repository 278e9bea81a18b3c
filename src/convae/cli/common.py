"""What every ``convae`` sub-command shares: the parser pieces (common flags, ``--device``,
``--split``, ``--threads``, the data flags, image files or ``--data``), argument types, the one
JSON-or-text ending, the progress bar, and the checks on every output path."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig
from ..data import load_split
from ..metrics import json_safe
from ..runtime import auto_threads

log = logging.getLogger("convae")

EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see --help)")


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _common_flags() -> argparse.ArgumentParser:
    """The parent parser of every sub-command: --json, -q, -v."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object as the last stdout line (an infinite number, such as the PSNR "
        'of a perfect reconstruction, is null with a sibling "<name>_inf": "+inf")',
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


COMMON_FLAGS = _common_flags()


def add_command(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A sub-command of ``sub`` with the common flags, its help and a usage example."""
    return sub.add_parser(
        name,
        help=help,
        description=f"{help}\n\nexample:\n  {example}",
        formatter_class=formatter,
        parents=[COMMON_FLAGS],
    )


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


# ---------------------------------------------------------------------------------------------
# Argument types


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} must be at least 1")
    return v


def int_list(s: str) -> tuple[int, ...]:
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


def float_list(s: str) -> list[float]:
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


def channels_arg(s: str) -> int:
    if s not in ("1", "3"):
        raise argparse.ArgumentTypeError("must be 1 or 3")
    return int(s)


# ---------------------------------------------------------------------------------------------
# Flags shared by several commands: --device, --threads, --split, the data flags


def add_device_arg(p) -> None:
    """``--device``, default ``auto`` on every command."""
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda, then mps, then cpu; default), cpu, cuda or mps",
    )


THREADS_HELP = (
    "CPU threads for torch (default: one per core, minus cores other processes are busy on)"
)


def add_threads_arg(p, default: int | None = None, help: str = THREADS_HELP) -> None:
    """``--threads N``; without it :func:`set_threads` picks the load-aware count
    (:func:`convae.runtime.auto_threads`) unless the command gives a measured ``default``."""
    p.add_argument("--threads", type=positive_int, default=default, help=help)


def set_threads(args: argparse.Namespace) -> int:
    """Apply ``--threads`` or the load-aware count (never oversubscribe a busy CPU)."""
    torch.set_num_threads(args.threads or auto_threads())
    log.debug("torch CPU threads: %d", torch.get_num_threads())
    return torch.get_num_threads()


SPLITS = ("train", "val", "test", "all")
_SPLIT_HELP = "train, val, test, or all (every image of the dataset: train + val + test)"


def add_split_arg(p, what: str = "", default: str = "test") -> None:
    """``--split train|val|test|all``."""
    p.add_argument(
        "--split",
        default=default,
        choices=SPLITS,
        help=f"{_SPLIT_HELP}{'; ' + what if what else ''} (default {default})",
    )


def load_data_split(data: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of one split, or of ``all``: train, val and test concatenated."""
    if split != "all":
        return load_split(data, split)
    parts = [load_split(data, s) for s in ("train", "val", "test")]
    full = [p for p in parts if len(p[0])] or parts[:1]
    return torch.cat([x for x, _ in full]), torch.cat([y for _, y in full])


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
    g.add_argument("--classes", type=int_list, metavar="1,5,6", help="keep only these labels")
    g.add_argument("--channels", type=channels_arg, help="force 1 or 3 channels (folders)")
    g.add_argument(
        "--image-size",
        type=positive_int,
        metavar="N",
        help="resize + centre-crop to N x N (folders)",
    )
    g.add_argument(
        "--max-side",
        type=positive_int,
        metavar="M",
        help="folders: shrink images whose longer side exceeds M pixels",
    )
    g.add_argument(
        "--split-by",
        choices=["file", "folder"],
        help="folders: hold out single files (default) or whole sub-folders for val/test",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="unreadable images are an error, not skipped",
    )
    g.add_argument(
        "--max-pixels",
        type=positive_int,
        metavar="N",
        help="folders: decode images of up to N pixels (default: Pillow's decompression-bomb "
        "limit, 178,956,970)",
    )


_DATA_FIELDS = ("data_dir", "classes", "channels", "image_size", "max_side", "split_by", "strict",
                "max_pixels", "crop", "crops_per_epoch")  # fmt: skip


def data_config_from_args(args: argparse.Namespace, base: DataConfig | None = None) -> DataConfig:
    """A DataConfig: ``base`` (e.g. the run's own) overridden by whatever data flags were given."""
    d = base or DataConfig()
    over: dict[str, Any] = {}
    if getattr(args, "data", None) is not None:
        over["spec"] = args.data
    for k in _DATA_FIELDS:
        v = getattr(args, k, None)
        if v is not None:
            over[k] = v
    if "spec" in over and over["spec"] != d.spec:
        # another dataset: the run's data dir does not apply, nor its --classes (other labels)
        over.setdefault("data_dir", None)
        over.setdefault("classes", None)
    return replace(d, **over)


def add_inputs_or_data(p: argparse.ArgumentParser, what: str) -> None:
    """Image files or folders as positional arguments, or ``--data SPEC`` with ``--split``."""
    p.add_argument("inputs", nargs="*", help=f"image files or folders {what} (or --data SPEC)")
    add_data_args(p, default_spec=None)
    add_split_arg(p, "with --data")


def inputs_or_data(args: argparse.Namespace) -> str | None:
    """ "files", "data" or None (neither given); both at once is a mistake."""
    if args.inputs and args.data:
        raise ValueError("give image files/folders or --data SPEC, not both")
    return "files" if args.inputs else "data" if args.data else None


# ---------------------------------------------------------------------------------------------
# The ending of every command


def finish(args: argparse.Namespace, result: Any, text: str | Callable[[], str]) -> int:
    """Print the command's result and return exit code 0: with ``--json`` one JSON line (an
    infinite number as ``null`` plus ``"<key>_inf": "+inf"``, see :func:`convae.metrics.json_safe`),
    else ``text`` (or what ``text()`` returns). A NaN anywhere in ``result`` is an error, not output.
    """
    safe = json_safe(result)
    if args.json:
        print(json.dumps(safe, sort_keys=True, default=str, allow_nan=False))
    else:
        s = text() if callable(text) else text
        if s:
            print(s)
    return 0


# ---------------------------------------------------------------------------------------------
# Shared by several commands: the progress bar, the image-size check, output file names


class ProgressBar:
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
            # disable=None: no bar when stderr is not a terminal (a log file gets the epoch lines)
            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr,
                            leave=True, disable=None)  # fmt: skip
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


def check_images_fit(model, x, what: str) -> None:
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
# an output; a folder output never replaces files unless --overwrite; nothing is written through a
# symbolic link the command did not make; errors name the flag.

# The files of a run directory that commands read (checkpoint, trainer state, codec, detector):
# they are inputs of every command given the run, so no output may replace them.
RUN_FILES = ("config.json", "model.safetensors", "last.safetensors", "trainer.safetensors",
             "trainer.json", "history.jsonl", "metrics.json", "codec.safetensors", "codec.json",
             "anomaly.json")  # fmt: skip


def run_inputs(run: str | os.PathLike) -> list[Path]:
    """The files of a run directory that must never be written over by a command's outputs."""
    return [Path(run) / n for n in RUN_FILES]


# What training writes into a run directory, besides its per-epoch state files.
_TRAIN_OUTPUTS = ("config.json", "model.safetensors", "trainer.json", "history.jsonl",
                  "metrics.json", "loss.png", "reconstructions.png", "report.html")  # fmt: skip


def run_outputs(run: str | os.PathLike) -> list[Path]:
    """The files training writes into ``run`` (the state files already there included): what
    :func:`check_no_links` checks before a command trains into a run directory."""
    run = Path(run)
    states = sorted(run.glob("state-*.safetensors")) if run.is_dir() else []
    return [*(run / n for n in _TRAIN_OUTPUTS), *states]


def check_no_links(
    root: str | os.PathLike, paths: Iterable[str | os.PathLike], flag: str | None = None
) -> None:
    """Refuse to write any of ``paths`` through a symbolic link below ``root``.

    ``root`` is the folder the user named (``--out DIR``, a run directory): it may itself be a
    link the user made, and is taken as given. Below it, every existing component of every path
    must be a real folder or file, because a folder a user received (a run directory from someone
    else) could hold a link such as ``anomaly -> ~/`` that would send a command's output into the
    link's target. ``paths`` lie below ``root`` (``root / name``); ``flag`` names the option that
    chose ``root``, for the remedy.
    """
    root = Path(root)
    for path in paths:
        cur = root
        for part in Path(path).relative_to(root).parts:
            cur = cur / part
            if cur.is_symlink():
                other = f" or choose another {flag}" if flag else ""
                raise ValueError(
                    f"{cur} is a symbolic link inside {root}; convae writes nothing through a "
                    f"link it did not make (remove the link{other})"
                )


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
    if path in _FileSet(inputs):
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
    root: str | os.PathLike | None = None,
) -> list[Path]:
    """The files ``folder/name`` a command is about to write, all checked before the first write.

    Never an input file, never an existing folder, never through a symbolic link below ``root``
    (the folder the user named: ``folder`` itself unless the command derived it, e.g.
    ``RUN/anomaly``); existing files only with ``overwrite`` (the error gives how many and the
    first). Returns the target paths in ``names`` order.
    """
    folder = check_out_folder(folder, flag)
    inputs = _FileSet(inputs)
    targets = [folder / n for n in names]
    check_no_links(folder if root is None else root, [folder, *targets], flag)
    existing = []
    for t in targets:
        _check_parents(t, flag)  # e.g. OUT/noisy is a file
        if t.is_dir():
            raise IsADirectoryError(f"{flag} {folder}: {t} is a folder, where an image would go")
        if t in inputs:
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


# ---------------------------------------------------------------------------------------------
# File-system errors in words

# errno -> (what happened, what to do); "{flag}" is the output flag the path belongs to.
_OS_ERRORS = {
    errno.EROFS: ("the file system is read-only", "choose another {flag}"),
    errno.ENOSPC: ("no space left on the device", "free space or choose another {flag}"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or choose another {flag}"),
    errno.EACCES: ("permission denied", "check its permissions or choose another {flag}"),
    errno.EPERM: ("operation not permitted", "check its permissions or choose another {flag}"),
    errno.ENAMETOOLONG: ("the name is too long for the file system", "choose a shorter name"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("it is a folder", "give a file name"),
    errno.EEXIST: ("it already exists", "choose another {flag}"),
    errno.EIO: ("input/output error on the device", "check the disk"),
    errno.ELOOP: ("too many levels of symbolic links", "check the path"),
}
_OUTPUT_FLAGS = (("--out", "out"), ("--csv", "csv"), ("--frames", "frames"), ("--work", "work"))


def _flag_of(path: Path, args: argparse.Namespace | None) -> str:
    """The output flag whose value holds ``path`` ("--out" when none does)."""
    for flag, name in _OUTPUT_FLAGS:
        value = getattr(args, name, None) if args is not None else None
        if isinstance(value, str | os.PathLike):
            with contextlib.suppress(ValueError):
                Path(os.path.abspath(path)).relative_to(os.path.abspath(value))
                return flag
    return "--out"


def describe_os_error(e: OSError, args: argparse.Namespace | None = None) -> str:
    """A file-system error in words: the path, what happened, and what to do (never "[Errno N]")."""
    if e.errno is None:  # raised by convae with its own message
        return str(e)
    name = e.filename2 if e.filename2 is not None else e.filename
    path = Path(os.fsdecode(name)) if name is not None else None
    if path is not None and path.name.startswith(".convae-") and path.name.endswith(".tmp"):
        path = path.parent  # an atomic write's temp file: the folder is what matters to the user
    reason, remedy = _OS_ERRORS.get(e.errno, (e.strerror or os.strerror(e.errno), ""))
    flag = _flag_of(path, args) if path is not None else "--out"
    where = f"{display_name(path)}: " if path is not None else ""
    return f"{where}{reason}" + (f"; {remedy.format(flag=flag)}" if remedy else "")
