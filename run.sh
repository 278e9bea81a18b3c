#!/usr/bin/env bash
# One command from a fresh clone: create .venv, install convae, train the default model on the
# embedded MNIST sample and print where the run directory (plots, metrics) is.
# Extra arguments go to `convae train`, e.g.  bash run.sh --arch seed-strided --latent-dim 12
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e . >/dev/null
exec .venv/bin/convae train "$@"
