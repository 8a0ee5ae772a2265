#!/usr/bin/env python3
"""Where a 4-bit layer's backward spends host time: the same calls timed inside MatMul4Bit.backward
(on the autograd engine's CUDA device thread) and on the main thread.

Usage (from the repository root, on a CUDA machine):
    python3 bench/probe_backward_thread.py        # prints the table (docs/benchmarks/backward-thread.md)
    python3 bench/probe_backward_thread.py --cpus 0,1   # the process pinned first: a cause to test

The layer of bench/run_host_overhead.py: Linear4bit K = N = 256 (NF4 bs 64, double quantization, bf16
compute), x [M, 256] bf16 requiring grad. MatMul4Bit.backward is replaced by a copy that times each
of its calls with time.perf_counter (the prepared dequantize and matmul, or gemm_4bit_grad where its
rule takes the fused kernel) and two plain torch allocations; the same calls are then timed on the
main thread. Medians of 500 calls after 100 warm-up calls. --cpus pins the main thread to those CPUs
before torch starts any thread (the autograd engine's device thread, created at the first backward,
inherits the set): if the device thread's slowness is its running on other cores than the main
thread (the main thread's Python objects in another core's caches), pinning removes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "python" / "compat")]
import torch  # noqa: E402

import bitsandbytes as bnb  # noqa: E402
from nybble.autograd import _functions as AF  # noqa: E402

CALLS, WARMUP = 600, 100


def timed(times: dict, key: str, fn):
    start = time.perf_counter()
    result = fn()
    times.setdefault(key, []).append(time.perf_counter() - start)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpus", help="comma-separated CPU numbers to pin the process to first")
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    torch.manual_seed(0)
    w = torch.randn(256, 256, dtype=torch.bfloat16) / 16
    layer = bnb.nn.Linear4bit(256, 256, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                              compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True)
    layer = layer.to("cuda")
    times: dict = {}
    called_at = [0.0]

    def backward(ctx, g):
        entered = time.perf_counter()
        times.setdefault("from backward() to the Function's backward", []).append(entered - called_at[0])
        assert threading.current_thread() is not threading.main_thread()
        if ctx.dequantize is not None:
            W = timed(times, "prepared dequantize", lambda: ctx.dequantize(g.dtype))
            grad = timed(times, "torch.matmul", lambda: torch.matmul(g, W))
        else:
            grad = timed(times, "gemm_4bit_grad (fused)", lambda: AF.gemm_4bit_grad(g, ctx.B, ctx.state))
        timed(times, "torch.empty 256 x 256", lambda: torch.empty(256, 256, dtype=torch.bfloat16, device="cuda"))
        timed(times, "torch.zeros(1)", lambda: torch.zeros(1, device="cuda"))
        times.setdefault("the backward's body", []).append(time.perf_counter() - entered)
        return grad, None, None, None, None

    AF.MatMul4Bit.backward = staticmethod(backward)
    print("| M | call | autograd device thread | main thread |")
    print("|---:|---|---:|---:|")
    for m in (4, 64):
        times.clear()
        x = torch.randn(m, 256, dtype=torch.bfloat16, device="cuda", requires_grad=True)
        g = torch.ones(m, 256, dtype=torch.bfloat16, device="cuda")
        for _ in range(CALLS):
            y = layer(x)
            called_at[0] = time.perf_counter()
            y.backward(g)
            times.setdefault("backward() in all", []).append(time.perf_counter() - called_at[0])
        torch.cuda.synchronize()
        main: dict = {}
        state = layer.weight.quant_state
        prepared = AF._dequantizer_4bit(layer.weight, state)
        for _ in range(CALLS):
            timed(main, "prepared dequantize", lambda: prepared(torch.bfloat16))
            timed(main, "gemm_4bit_grad (fused)", lambda: AF.gemm_4bit_grad(g, layer.weight, state))
            timed(main, "torch.empty 256 x 256", lambda: torch.empty(256, 256, dtype=torch.bfloat16, device="cuda"))
            timed(main, "torch.zeros(1)", lambda: torch.zeros(1, device="cuda"))
        torch.cuda.synchronize()
        for key, values in times.items():
            on_main = f"{statistics.median(main[key][WARMUP:]) * 1e6:.1f} µs" if key in main else "—"
            print(f"| {m} | {key} | {statistics.median(values[WARMUP:]) * 1e6:.1f} µs | {on_main} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
