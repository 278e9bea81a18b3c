"""The ``convae`` command line: argparse sub-commands, progress bars and human/JSON output.

``main(argv) -> int`` never lets a user's mistake become a traceback: bad input is printed as one
line on stderr with a non-zero exit code. Exit codes: 0 done, 1 an error (one ``convae: error:``
line), 2 a bad command line, 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM - both
128 + the signal's number, as a shell reports them.

``--json`` prints one JSON object (or list) as the last stdout line. JSON has no infinity: an
infinite number - the PSNR of a perfect reconstruction, whose MSE is 0 - is ``null`` there, with a
sibling key ``"<name>_inf": "+inf"`` saying why (the text output prints ``inf dB``). A NaN is never
printed: it is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from ..entry import interrupt_behind
from ..training import TrainingDiverged
from ..version import __version__
from . import anomaly, cache, codec, denoise, export, latent, train
from .common import (
    EXIT_ERROR,
    EXIT_USAGE,
    Parser,
    ProgressBar,
    UsageError,
    add_command,
    describe_os_error,
    formatter,
    setup_logging,
)

__all__ = ["main", "build_parser", "ProgressBar", "Terminated"]

EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_SIGPIPE = 128 + signal.SIGPIPE  # 141


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: the same clean stop (temp files
    removed, the run lock released), then exit code 143."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="convae",
        formatter_class=formatter,
        description="Convolutional autoencoders on images: train, evaluate, explore the latent "
        "space, compress, denoise and detect anomalies.\n\nexample:\n  convae train",
    )
    parser.add_argument("--version", action="version", version=f"convae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    # `convae --help` lists the commands in this order
    for module in (train, latent, codec, denoise, anomaly, cache, export):
        module.add_commands(sub)
    bench = add_command(
        sub, "bench", "benchmarks: codec, denoise, anomaly", "convae bench denoise --json"
    )
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=Parser)
    bsub.required = True
    for module in (codec, denoise, anomaly):
        module.add_benches(bsub)
    return parser


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`, so a stop asked by a job scheduler or
    ``kill`` unwinds like Ctrl-C; the previous handler is back afterwards. Only the main thread
    may set handlers: elsewhere (``main`` called from a worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# Errors that are the user's (or the machine's) and get one line: a ValueError for bad input,
# an OSError for the file system (said in words), a diverged training.
_ONE_LINE = (ValueError, OSError, UsageError, TrainingDiverged)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``convae`` and ``python -m convae``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = None
    with _sigterm_as_interrupt():
        try:
            try:
                args = build_parser().parse_args(argv)
            except UsageError as e:
                print(f"convae: error: {e}", file=sys.stderr)
                return EXIT_USAGE
            args.argv = argv  # what an interrupted command prints to continue
            setup_logging(args.verbose, args.quiet or args.json)
            return int(args.func(args) or 0)
        except (KeyboardInterrupt, ImportError) as caught:
            e = interrupt_behind(caught)
            if e is None:
                raise
            how = " by SIGTERM" if isinstance(e, Terminated) else ""
            print(f"convae: interrupted{how}" + (f"; {e}" if str(e) else ""), file=sys.stderr)
            return EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT
        except BrokenPipeError:
            # the reader of stdout went away (`convae --help | head`): stop quietly, as `cat` does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_SIGPIPE
        except _ONE_LINE as e:
            msg = describe_os_error(e, args) if isinstance(e, OSError) else str(e)
            print(f"convae: error: {msg}", file=sys.stderr)
            return EXIT_ERROR
