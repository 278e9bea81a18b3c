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
    except (KeyboardInterrupt, ImportError) as caught:
        e = interrupt_behind(caught)
        if e is None:
            raise
        print(f"convae: {e.args[0] if e.args else 'interrupted'}", file=sys.stderr)
        return 143 if e.args else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return cli_main(argv)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt("interrupted by SIGTERM")


def interrupt_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) behind ``e``: itself, or the one that broke a lazy import (a
    C extension's initialization turns it into an ``ImportError``); None for a real error."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
