#!/usr/bin/env bash
# One command from a fresh clone: create .venv, install convae with its test tools, run the tests.
# The default run skips tests marked slow; run them with  bash test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' >/dev/null
exec .venv/bin/python -m pytest "$@"
