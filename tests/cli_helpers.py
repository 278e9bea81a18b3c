"""Running the CLI in-process from tests: exit code, stdout and stderr, and its JSON line."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

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


def one_line_error(rc: int, out: str, err: str, code: int | None = None) -> str:
    """The single ``convae: error:`` line of a failed command (exit ``code`` when given, else
    any non-zero one): no traceback, and an OS error said in words, not as a raw ``[Errno]``."""
    assert rc != 0 if code is None else rc == code, (rc, out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("convae: error:"), lines[0]
    assert "Errno" not in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` -> its bytes (None for a folder or a link): to prove nothing
    changed."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() or p.is_symlink() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }
