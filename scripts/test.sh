#!/usr/bin/env bash
# Installs nybble (scripts/install.sh), builds the C++ library and its tests (with the CUDA backend
# when nvcc is present), runs the C++ tests, the Python tests and the demo in its quick mode.
# Usage: scripts/test.sh [build-dir]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

scripts/install.sh
# The CUDA toolkit installs nvcc outside PATH; CMake finds it through PATH.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" --parallel
ctest --test-dir "$build" --output-on-failure --parallel 2
# The libFuzzer targets, each for a bounded time (NYBBLE_FUZZ_SECONDS per target).
NYBBLE_FUZZ_SECONDS=${NYBBLE_FUZZ_SECONDS:-45} scripts/fuzz.sh "$build-fuzz"

# From the repository root pytest puts python/tests (not python/) on sys.path, so `import nybble`
# is the installed package.
export NYBBLE_CLI="$(cd "$build" && pwd)/cpp/tools/nybble"  # the nybble command, for test_cli.py
python3 -m pytest -q -rs python/tests
# The demo, in its quick mode, on the installed package.
python3 demo/demo.py --quick --out "$build/demo-out"
