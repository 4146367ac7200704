#!/usr/bin/env bash
# Set up and run every test. As root on Debian/Ubuntu it first installs the system packages the tests
# use for real: Slurm + munge (a two-node cluster on loopback), Chromium (the sample gallery is opened
# in a headless browser) and FluidSynth (audio). Elsewhere those tests skip and say why.
# Before pytest it runs `ruff check .`, `ruff format --check .` and `mypy b2b`; any failure stops it.
# Extra arguments go to pytest, e.g. `bash launch/test.sh -k loader`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh all,dev
. .venv/bin/activate
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need=""
  for pkg in slurm-wlm munge chromium fluidsynth libfluidsynth3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
  done
  if [ -n "$need" ]; then
    echo "installing system packages for the tests:$need"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
  fi
fi
# Static checks first (seconds): lint, formatting, and the type checker on the package.
ruff check .
ruff format --check .
mypy b2b
export OMP_NUM_THREADS=1
python -m pytest -q -ra "$@"
