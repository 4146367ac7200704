#!/usr/bin/env bash
# Create .venv and install b2b with its dependencies and the extras named in $1 (idempotent: a second run
# only checks). The demo needs "demo,audio"; the tests need "all,dev" (DeepSpeed, Slurm, trackers, ...).
# torch: a machine without an NVIDIA GPU gets the CPU build (B2B_TORCH overrides the spec, e.g.
# B2B_TORCH="torch --index-url https://download.pytorch.org/whl/cu124" on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    python -m pip install -q ${B2B_TORCH:-torch}
  else
    # shellcheck disable=SC2086
    python -m pip install -q ${B2B_TORCH:-torch==2.13.0}
  fi
fi
python -m pip install -q -e ".[${1:-demo,audio}]"
