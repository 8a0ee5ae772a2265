#!/usr/bin/env bash
# Installs nybble on this machine: the Debian packages (scripts/setup.sh), the Python packages and
# the default model (scripts/setup-python.sh), then `pip install`s the package `nybble` (which
# builds the C++ library and nybble._C, with the CUDA backend when nvcc is present) and the drop-in
# distribution `bitsandbytes`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/setup-python.sh
# The CUDA toolkit installs nvcc outside PATH; CMake finds it through PATH.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps .
python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps ./python/compat
