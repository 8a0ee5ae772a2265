#!/usr/bin/env bash
# Builds nybble with the CUDA backend (sm_90) and its Python extension, then runs on the GPU: the
# C++ tests, the Python tests (every device-parametrized test on CUDA, the comparisons against
# bitsandbytes 0.50.2 on CUDA) and compute-sanitizer memcheck over the CUDA C++ tests.
#
# Meant for the lent H200 machine, which has the CUDA toolkit, CMake, ninja, nanobind, torch and
# compute-sanitizer but no network and neither GoogleTest nor nlohmann-json: those come from .deps/
# (googletest sources and the json headers, copied there from this machine's Debian packages).
# The reference for the CUDA comparisons comes from NYBBLE_REFERENCE_DIR (default .ref/bnb-cuda:
# the wheel's Python files and libbitsandbytes_cuda130.so, see scripts/setup-python.sh).
#
# Usage: scripts/device-test.sh [out-dir] [steps]   steps: any of build,ctest,pytest,sanitize
#        (build-py builds only the Python extension)
#        (default all). Logs go to out-dir (default build-device/logs). PYTEST_ARGS (default
#        python/tests) chooses the Python tests: the whole suite takes longer on the H200 machine
#        than one device call may run (~11 min on 2026-11-30), so split it there, e.g. the files
#        up to test_fsdp.py in one call and the rest in the next.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-build-device/logs}")
steps=${2:-build,ctest,pytest,sanitize}
mkdir -p "$out"
build=build-device/nybble
prefix=$PWD/.deps/prefix
py=$(command -v python3)
jobs=$(nproc)

step() { [[ ",$steps," == *",$1,"* ]]; }

if step build || step build-py; then
  if [[ ! -f $prefix/lib/cmake/GTest/GTestConfig.cmake && ! -f $prefix/lib64/cmake/GTest/GTestConfig.cmake ]]; then
    cmake -S .deps/googletest-src -B build-device/gtest -G Ninja -DCMAKE_BUILD_TYPE=Release \
          -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_POSITION_INDEPENDENT_CODE=ON >"$out/gtest.log" 2>&1
    cmake --build build-device/gtest --target install >>"$out/gtest.log" 2>&1
  fi
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNYBBLE_CUDA=ON -DNYBBLE_BUILD_BENCH=ON \
        -DNYBBLE_BUILD_PYTHON=ON -DPython_EXECUTABLE="$py" -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DCMAKE_PREFIX_PATH="$prefix" >"$out/configure.log" 2>&1
  target=$(step build || echo "--target _C")
  cmake --build "$build" --parallel "$jobs" $target >"$out/build.log" 2>&1 || { tail -60 "$out/build.log"; exit 1; }
  # The extension beside the package sources, so that PYTHONPATH=python imports it.
  ln -sf "$PWD/$build/python/"_C*.so python/nybble/
fi

if step ctest; then
  ctest --test-dir "$build" --output-on-failure --parallel 4 >"$out/ctest.log" 2>&1 || true
  tail -25 "$out/ctest.log"
fi

if step pytest; then
  export NYBBLE_REFERENCE_DIR=${NYBBLE_REFERENCE_DIR:-$PWD/.ref/bnb-cuda}
  PYTHONPATH=$PWD/python:$PWD/python/compat "$py" -m pytest -v -rs --durations=25 -p no:cacheprovider ${PYTEST_ARGS:-python/tests} \
    --junitxml="$out/pytest.xml" >"$out/pytest.log" 2>&1 || { echo "pytest exit $?"; dmesg 2>/dev/null | tail -5; }
  grep -E "FAILED|ERROR" "$out/pytest.log" | head -40
  tail -3 "$out/pytest.log"
fi

if step sanitize; then
  # Every CUDA test but the two past 2^31 elements (hours under memcheck; they ran above).
  compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 "$build/cpp/tests/nybble_tests" \
    --gtest_filter='Cuda*:-*Beyond2To31*' >"$out/memcheck.log" 2>&1 && echo "memcheck: clean" \
    || { echo "memcheck: FAILED"; tail -40 "$out/memcheck.log"; }
  tail -3 "$out/memcheck.log"
fi
