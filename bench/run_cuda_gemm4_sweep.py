#!/usr/bin/env python3
"""The GPU sweep behind gemm_4bit's rule above 16 rows: nybble's tiled kernel against dequantize + F.linear.

Usage (from the repository root, on a CUDA machine):
    python3 bench/run_cuda_gemm4_sweep.py                  # writes docs/benchmarks/h200-gemm4-sweep.md
    python3 bench/run_cuda_gemm4_sweep.py --grad           # writes docs/benchmarks/h200-gemm4-grad-sweep.md
    python3 bench/run_cuda_gemm4_sweep.py --out-dir /tmp/s --quick

For each weight shape of spec/performance.md's 4-bit matmul table (NF4 bs 64, double quantization,
bf16 activations and bias) and M: the time of the C++ path (nybble._C.gemm_4bit called directly: above
16 rows the tiled kernel of cuda/gemm4_tile.cu, each weight decoded once per CTA into shared memory),
of dequantize_4bit into bf16 followed by F.linear (cuBLASLt), and of F.linear on the bf16 weight.
Each time: 10 calls captured in a CUDA graph and replayed, median of 20 CUDA-event-timed batches
(run_h200_bench.py's graph_time; the weight is not rotated, so weights up to 50 MiB may be read
from L2). gemm_4bit's rule (_ops._gemm_4bit_in_cpp) takes the C++ path up to GPU_TILE_MAX_ROWS rows (by
the weight's size) on these shapes.

With --grad, the same for gemm_4bit_grad, the backward's G [M, N] @ W (no bias): nybble._C.gemm_4bit_grad
(the tiled kernel in its gradient form) against dequantize_4bit + torch.matmul and bf16 torch.matmul,
from one row; its rule (_ops._gemm_4bit_grad_in_cpp) takes the C++ path up to GPU_GRAD_TILE_MAX_ROWS rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, git_commit, log  # noqa: E402
from run_h200_bench import graph_time  # noqa: E402

sys.path[:0] = [str(ROOT / "python"), str(ROOT / "python" / "compat")]
import torch  # noqa: E402

import nybble.functional as F  # noqa: E402
from nybble import _ops  # noqa: E402
from nybble.autograd import _functions as AF  # noqa: E402

SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192), (8192, 28672))
ROWS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
GRAD_ROWS = (1, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512)


def paths(A, packed, qs, bias, grad: bool):
    """The two paths of gemm_4bit (grad: gemm_4bit_grad) whatever the rule says, with the op's arguments."""
    absmax, absmax_8bit, code, offset = AF._nested_args(qs)
    if grad:
        args = (A, packed, qs.shape, absmax, qs.blocksize, qs.quant_type, absmax_8bit, code, offset)
        return (lambda: _ops._gemm_4bit_grad_kernel(*args)), (lambda: _ops._gemm_4bit_grad_dequant_matmul(*args))
    args = (A, packed, qs.shape, absmax, qs.blocksize, qs.quant_type, bias, absmax_8bit, code, offset)
    return (lambda: _ops._gemm_4bit_kernel(*args)), (lambda: _ops._gemm_4bit_dequant_linear(*args))


def measure(quick: bool, grad: bool) -> dict:
    all_rows = GRAD_ROWS if grad else ROWS
    shapes, row_counts = (SHAPES[:2], all_rows[::3]) if quick else (SHAPES, all_rows)
    torch.manual_seed(0)
    rows = []
    for n, k in shapes:
        W = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        bias = None if grad else torch.randn(n, device="cuda", dtype=torch.bfloat16)
        packed, qs = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        Wd = F.dequantize_4bit(packed, qs).float()
        for m in row_counts:
            A = torch.randn(m, n if grad else k, device="cuda", dtype=torch.bfloat16)
            fused, deq = paths(A, packed, qs, bias, grad)
            ref = A.float() @ Wd if grad else torch.nn.functional.linear(A.float(), Wd, bias.float())
            err = ((fused().float() - ref).abs().max() / ref.abs().max()).item()
            t_fused, t_deq = graph_time(fused), graph_time(deq)
            t_bf16 = graph_time((lambda: A @ W) if grad else (lambda: torch.nn.functional.linear(A, W, bias)))
            rows.append({"N": n, "K": k, "M": m, "fused_s": t_fused, "dequant_linear_s": t_deq, "bf16_s": t_bf16,
                         "max_rel_err": err})
            log(f"{n}x{k} M={m}: fused {t_fused} dequant+linear {t_deq} bf16 {t_bf16} err {err:.2e}")
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "grad": grad,
            "rows": rows}


def rule(n: int, k: int, m: int, grad: bool) -> str:
    """What gemm_4bit's (grad: gemm_4bit_grad's) rule takes for bf16 activations of m rows on the GPU, NF4 bs 64."""
    if grad:
        return "fused" if _ops._grad_rule(m, torch.bfloat16, True, n, k, 64) else "dequantize + F.linear"
    return "fused" if _ops._fused_rule(m, torch.bfloat16, True, n, k, 64) else "dequantize + F.linear"


def render(data: dict, stem: str) -> str:
    grad = data.get("grad", False)
    if grad:
        head = ["# gemm_4bit_grad (the backward's G @ W) on the H200: the tiled kernel against dequantize + matmul",
                " ".join(__doc__.split("\n\n")[3].split()),
                f"The rule's thresholds (GPU_GRAD_TILE_MAX_ROWS: weight elements at least, K at least, rows up to; "
                f"{_ops.GPU_GRAD_MIN_MAX_ROWS} rows on other weights): {[list(r) for r in _ops.GPU_GRAD_TILE_MAX_ROWS]}. "
                "Max rel. err: the fused output's largest error over the largest |output| of fp32 G @ dequantize. "
                "(\"dequantize + F.linear\" in the table: dequantize + torch.matmul; \"bf16 F.linear\": bf16 G @ W.)"]
    else:
        head = ["# gemm_4bit on the H200 above 16 rows: the tiled kernel against dequantize + F.linear",
                " ".join(__doc__.split("\n\n")[2].split()),
                "The rule's thresholds (GPU_TILE_MAX_ROWS: weight elements at least, rows up to): "
                f"{[list(r) for r in _ops.GPU_TILE_MAX_ROWS]}. Max rel. err: the fused output's largest error over "
                "the largest |output| of fp32 dequantize + linear."]
    lines = [head[0], "",
             f"Generated by `python3 bench/run_cuda_gemm4_sweep.py{' --grad' if grad else ''}` on {data['date']} at "
             f"commit {data['commit']}; {data['gpu']}, torch {data['torch']}. Raw results: [{stem}.json]({stem}.json).", "",
             head[1], "", head[2], "",
             "| weight N × K | M | fused | dequantize + F.linear | bf16 F.linear | faster | fused × bf16 | "
             f"{'gemm_4bit_grad' if grad else 'gemm_4bit'} takes (its × bf16) | its time ÷ the faster's | max rel. err |",
             "|---|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    misses = 0
    for r in data["rows"]:
        fused, deq, bf = r["fused_s"], r["dequant_linear_s"], r["bf16_s"]
        faster = "fused" if fused < deq else "dequantize + F.linear"
        taken = rule(r["N"], r["K"], r["M"], grad)
        t_taken = fused if taken == "fused" else deq
        over = t_taken / min(fused, deq)
        misses += over > 1.05
        lines.append(f"| {r['N']} × {r['K']} | {r['M']} | {fused * 1e6:.1f} µs | {deq * 1e6:.1f} µs | "
                     f"{bf * 1e6:.1f} µs | {faster} ({max(fused, deq) / min(fused, deq):.2f}×) | {bf / fused:.2f}× | "
                     f"{taken} ({bf / t_taken:.2f}×) | {over:.3f} | {r['max_rel_err']:.1e} |")
    lines += ["", f"Cells where the rule's path is more than 5 % slower than the faster one: {misses} of "
              f"{len(data['rows'])}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--quick", action="store_true", help="two shapes, four row counts: a smoke test")
    ap.add_argument("--grad", action="store_true", help="gemm_4bit_grad (the backward) instead of gemm_4bit")
    ap.add_argument("--from-json", type=Path, help="render a saved run (the rule column from the current rule)")
    args = ap.parse_args()
    data = json.loads(args.from_json.read_text()) if args.from_json else measure(args.quick, args.grad)
    stem = "h200-gemm4-grad-sweep" if data.get("grad", False) else "h200-gemm4-sweep"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not args.from_json:
        (args.out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1))
    text = render(data, stem)
    (args.out_dir / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
