#!/usr/bin/env bash
# Installs what building and testing nybble needs on a fresh Debian/Ubuntu machine (idempotent:
# packages already present are skipped). Run as root or with sudo available.
set -euo pipefail

packages=(cmake ninja-build g++ pkg-config libgtest-dev libbenchmark-dev nlohmann-json3-dev python3)
packages+=(clang libclang-rt-dev)  # the fuzz targets (scripts/fuzz.sh): clang and its libFuzzer/ASan runtimes
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
