#!/usr/bin/env bash
# Builds nybble (with the CUDA backend when nvcc is present), runs the C++ tests, installs the
# Python package and its `bitsandbytes` drop-in, and runs the Python tests.
# Usage: scripts/test.sh [build-dir]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

scripts/setup.sh
scripts/setup-python.sh
# The CUDA toolkit installs nvcc outside PATH; CMake finds it through PATH.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" --parallel
ctest --test-dir "$build" --output-on-failure --parallel 2

python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps .
python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps ./python/compat
# From the repository root pytest puts python/tests (not python/) on sys.path, so `import nybble`
# is the installed package.
python3 -m pytest -q -rs python/tests
