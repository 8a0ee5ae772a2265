#!/usr/bin/env bash
# The FSDP2 QLoRA check of issue 8 in one command: examples/fsdp_qlora.py in one process and under
# torchrun on 2 ranks, both with --resume-at, then the comparison the issue asks for: the same
# losses (bf16 tolerance), each rank holding about half of the frozen 4-bit base, and a distributed
# checkpoint that resumes bit for bit. Prints the numbers and exits non-zero when a check fails.
# Usage: scripts/fsdp-check.sh [cuda|cpu] [out-dir]     (default: cuda, build-fsdp)
#   cuda needs 2 GPUs (NCCL, NVLink multicast off); cpu runs 2 gloo processes (a small model).
#   The nybble extension must be importable from python/ (scripts/device-test.sh builds it there).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-cuda}
out=$(realpath -m "${2:-build-fsdp}")
mkdir -p "$out"
export PYTHONPATH=$PWD/python:$PWD/python/compat NCCL_NVLS_ENABLE=0
args=(--device "$device" --steps 20 --resume-at 10)
[[ $device == cpu ]] && args=(--device cpu --steps 6 --resume-at 3 --hidden 128 --layers 2 --seq 64)

python3 examples/fsdp_qlora.py "${args[@]}" --losses "$out/one.json" >"$out/one.log" 2>&1 \
  || { tail -20 "$out/one.log"; exit 1; }
python3 -m torch.distributed.run --nproc_per_node 2 examples/fsdp_qlora.py "${args[@]}" --losses "$out/two.json" \
  >"$out/two.log" 2>&1 || { tail -30 "$out/two.log"; exit 1; }

python3 - "$out/one.json" "$out/two.json" <<'EOF'
import json, sys
import torch

one, two = (json.load(open(p)) for p in sys.argv[1:3])
a, b = torch.tensor(one["losses"]), torch.tensor(two["losses"])
worst = float(((a - b).abs() / a.abs()).max())
share = two["base_bytes_rank0"] / one["base_bytes_rank0"]
checks = {
    f"losses of {len(a)} steps agree within 2e-2 relative (worst {worst:.2e})": worst <= 2e-2,
    f"rank 0 holds {share:.3f} of the frozen base (<= 0.55)": share <= 0.55,
    "one process resumes bit for bit": one["resume_identical"],
    "2 ranks resume bit for bit": two["resume_identical"],
}
print("losses, 1 process:", " ".join(f"{x:.4f}" for x in one["losses"]))
print("losses, 2 ranks:  ", " ".join(f"{x:.4f}" for x in two["losses"]))
for key in ("peak_mem_bytes_rank0", "base_bytes_rank0"):
    if key in one:
        print(f"{key}: 1 process {one[key] / 2**20:.1f} MiB, 2 ranks {two[key] / 2**20:.1f} MiB")
for name, ok in checks.items():
    print(("ok      " if ok else "FAILED  ") + name)
sys.exit(0 if all(checks.values()) else 1)
EOF
