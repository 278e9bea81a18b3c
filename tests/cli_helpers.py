"""Running the CLI in-process from tests: exit code, stdout and stderr, and its JSON line."""

from __future__ import annotations

import contextlib
import io
import json

from convae import cli


def run_cli(*args) -> tuple[int, str, str]:
    """``main(args)`` -> (exit code, stdout, stderr); ``--help`` exits through SystemExit(0)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's --help / --version
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def last_json(stdout: str):
    """The last line of a command's stdout (its --json result), parsed."""
    return json.loads(stdout.strip().splitlines()[-1])
