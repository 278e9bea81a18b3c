"""The ``convae`` command line: argparse sub-commands, progress bars and human/JSON output.

``main(argv) -> int`` never lets a user's mistake become a traceback: bad input is printed as one
line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys

from .anomaly import _anomaly_parser, _bench_anomaly_parser
from .cache import _cache_parser
from .codec import _bench_codec_parser, _decode_parser, _encode_parser, _info_parser
from .common import (
    EXIT_ERROR,
    EXIT_USAGE,
    UsageError,
    _add,
    _formatter,
    _Parser,
    _setup_logging,
)
from .common import _ProgressBar as _ProgressBar
from .common import add_data_args as add_data_args
from .common import add_threads_arg as add_threads_arg
from .common import data_config_from_args as data_config_from_args
from .common import output_names as output_names
from .common import set_threads as set_threads
from .denoise import _bench_denoise_parser, _denoise_parser
from .latent import _generate_parser, _interpolate_parser, _latent_parser, _sweep_parser
from .train import _eval_parser, _reconstruct_parser, _summary_parser, _train_parser
from .train import build_run_config as build_run_config

__all__ = ["main"]

# The sub-commands in `convae --help` order; each module of this package holds its parser builders
# and cmd_* functions. _BENCHES are the `convae bench X` ones.
_COMMANDS: list = [_train_parser, _eval_parser, _reconstruct_parser, _summary_parser]
_COMMANDS += [_latent_parser, _generate_parser, _interpolate_parser, _sweep_parser]
_COMMANDS += [_encode_parser, _decode_parser, _info_parser]
_COMMANDS += [_denoise_parser, _anomaly_parser]
_COMMANDS += [_cache_parser]
_BENCHES: list = [_bench_codec_parser, _bench_denoise_parser, _bench_anomaly_parser]


# ---------------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = _Parser(
        prog="convae",
        formatter_class=_formatter,
        description="Convolutional autoencoders on images: train, evaluate, explore the latent "
        "space, compress, denoise and detect anomalies.\n\nexample:\n  convae train",
    )
    parser.add_argument("--version", action="version", version=f"convae {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", help="print one JSON object as the last stdout line"
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors on stderr"
    )
    common.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    orig = sub.add_parser

    def add_parser(name, **kw):  # every sub-command gets the common flags
        kw.setdefault("parents", [common])
        return orig(name, **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add in _COMMANDS:
        add(sub)
    bench = _add(sub, "bench", "benchmarks: codec, denoise, anomaly", "convae bench denoise --json")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bsub.required = True
    borig = bsub.add_parser

    def badd(name, **kw):
        kw.setdefault("parents", [common])
        return borig(name, **kw)

    bsub.add_parser = badd  # type: ignore[method-assign]
    for add in _BENCHES:
        add(bsub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``convae`` and ``python -m convae``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"convae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(
        getattr(args, "verbose", 0), getattr(args, "quiet", False) or getattr(args, "json", False)
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("convae: interrupted", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ConnectionError,
        UsageError,
    ) as e:
        print(f"convae: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except RuntimeError as e:
        from ..train import TrainingDiverged

        if isinstance(e, TrainingDiverged):
            print(f"convae: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        raise
