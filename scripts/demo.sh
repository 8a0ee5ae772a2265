#!/usr/bin/env bash
# The main job: installs nybble (scripts/install.sh), then runs the demo on the built-in default
# model (demo/demo.py: full precision vs int8 vs NF4 vs NF4 + double quant vs FP4 through
# transformers, then QLoRA with peft). Arguments go to the demo, e.g. --quick, --with-reference.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
python3 demo/demo.py "$@"
