"""The ``convae`` command's entry point: the command line's modules import torch, so a Ctrl-C (or
SIGTERM) while they load must be answered here, before the CLI's own handlers exist."""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Import the CLI and run it; an interrupt during the imports is one line and exit 130/143."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt as e:
        print(f"convae: {e.args[0] if e.args else 'interrupted'}", file=sys.stderr)
        return 143 if e.args else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return cli_main(argv)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt("interrupted by SIGTERM")
