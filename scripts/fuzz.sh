#!/usr/bin/env bash
# Builds the libFuzzer targets (cpp/fuzz) with clang, ASan and UBSan, and runs each for a bounded
# time from its seed corpus (cpp/fuzz/corpus/<target>). Inputs the fuzzer finds go to a scratch
# corpus in the build folder, not into the repository; a crash stops the script with the input
# saved under <build-dir>/artifacts/ (reproduce: <build-dir>/cpp/fuzz/<target>_fuzz <input>).
# Usage: scripts/fuzz.sh [build-dir]      (default: build-fuzz)
#   NYBBLE_FUZZ_SECONDS   seconds per target (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-fuzz}
seconds=${NYBBLE_FUZZ_SECONDS:-60}

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DNYBBLE_BUILD_FUZZ=ON \
  -DNYBBLE_BUILD_TESTS=OFF -DNYBBLE_BUILD_BENCH=OFF -DNYBBLE_CUDA=OFF >/dev/null
cmake --build "$build" --target safetensors_fuzz quant_state_json_fuzz

mkdir -p "$build/artifacts"
for target in safetensors quant_state_json; do
  corpus="$build/corpus/$target" log="$build/fuzz-$target.log"
  mkdir -p "$corpus"
  echo "fuzz: $target for ${seconds} s"
  status=0
  "$build/cpp/fuzz/${target}_fuzz" "$corpus" "cpp/fuzz/corpus/$target" -max_total_time="$seconds" -max_len=8192 \
    -timeout=10 -rss_limit_mb=2048 -dict=cpp/fuzz/keys.dict -artifact_prefix="$build/artifacts/$target-" \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(INFO: seed corpus|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  if ((status != 0)); then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed (exit $status); the input is under $build/artifacts/, the log in $log" >&2
    exit 1
  fi
done
