#!/usr/bin/env python3
"""GPU benchmark of the Python API: nybble against bitsandbytes 0.50.2 and torch, side by side.

Usage (from the repository root, on the GPU machine):
    python3 bench/run_h200_bench.py                 # writes docs/benchmarks/h200.md and h200.json
    python3 bench/run_h200_bench.py --out-dir DIR   # writes them to DIR instead
    python3 bench/run_h200_bench.py --quick         # small shapes, a smoke test
    python3 bench/run_h200_bench.py --from-json docs/benchmarks/h200.json   # re-render only

One benchmark body runs in one subprocess per library, each importing its library as
``bitsandbytes`` and calling only public bitsandbytes API names:
  - reference: PYTHONPATH=$NYBBLE_REFERENCE_DIR (default .ref/bnb-cuda: the wheel's Python files
               and libbitsandbytes_cuda130.so; scripts/setup-python.sh makes it);
  - nybble:    PYTHONPATH=python:python/compat (nybble's drop-in ``bitsandbytes``);
  - torch:     the ceilings (copy bandwidth B, 8192^3 bf16 matmul) and the unquantized baselines
               (bf16 / fp16 F.linear at the same shapes).
Shapes, byte counts and targets are those of spec/performance.md. GPU timing: CUDA events around
batches of calls, median of >= 20 repetitions after warm-up; "graph" = the same call captured in a
CUDA graph and replayed (kernel time without launch overhead), "eager" = what a PyTorch user gets
per call. Inputs are fresh random tensors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

from _common import ROOT, add_worker_arguments, git_commit, lib_env, log, run_worker, serve_worker
LIBS = ("torch", "reference", "nybble")
MATMUL_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192), (8192, 28672)]
MATMUL_M = [1, 4, 16, 64, 256, 1024, 4096]
INT8_SHAPES = [(4096, 4096), (28672, 8192)]
INT8_M = [1, 16, 256, 4096]
# Targets of spec/performance.md (fraction of B, or × bf16 for the matmul at M).
QUANT_TARGETS = {"quantize_4bit": 0.70, "quantize_blockwise": 0.70, "dequantize_4bit": 0.85,
                 "dequantize_blockwise": 0.85, "int8_vectorwise_quant": 0.80}
MATMUL_TARGETS = {16: 2.5, 64: 1.5, 256: 1.0, 1024: 0.95, 4096: 0.95}


# ---- timing (runs in the workers) ------------------------------------------------------------------


def cuda_time(fn, reps: int = 20, target_ms: float = 10.0) -> float:
    """Median seconds per call of fn() over `reps` CUDA-event-timed batches, after warm-up."""
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    iters = max(1, min(200, int(target_ms / one)))
    samples = []
    for _ in range(reps):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters / 1e3)
    return statistics.median(samples)


def graph_time(fn, reps: int = 20) -> float | None:
    """Seconds per call of fn() captured in a CUDA graph (10 calls per graph) and replayed; None if
    the call cannot be captured."""
    import torch

    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(10):
                fn()
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        log(f"  capture failed: {type(e).__name__}: {str(e)[:200]}")
        torch.cuda.synchronize()
        return None
    return cuda_time(g.replay, reps) / 10


# ---- the benchmark body (one per library) ---------------------------------------------------------


def run_torch(cfg: dict) -> dict:
    import torch

    rows = {}
    n = cfg["copy_elems"]
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    rows["copy"] = {"s": cuda_time(lambda: dst.copy_(src)), "bytes": 4 * n}
    a = torch.randn(cfg["gemm"], cfg["gemm"], device="cuda", dtype=torch.bfloat16)
    rows["bf16_gemm"] = {"s": cuda_time(lambda: a @ a, reps=10), "flops": 2 * cfg["gemm"] ** 3}
    del src, dst, a
    for N, K in cfg["matmul_shapes"]:
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        for M in cfg["matmul_m"]:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            f = lambda: torch.nn.functional.linear(x, W)  # noqa: E731
            rows[f"linear_bf16/{N}x{K}/M{M}"] = {"s": graph_time(f), "eager_s": cuda_time(f)}
    for N, K in cfg["int8_shapes"]:
        layer = torch.nn.Linear(K, N, bias=False, device="cuda", dtype=torch.float16)
        for M in cfg["int8_m"]:
            x = torch.randn(M, K, device="cuda", dtype=torch.float16)
            with torch.no_grad():
                rows[f"linear_fp16/{N}x{K}/M{M}"] = {"s": cuda_time(lambda: layer(x))}
    return rows


def run_library(bnb, cfg: dict) -> dict:
    import torch

    F = bnb.functional
    rows = {}
    R, C = cfg["quant_shape"]
    W = torch.randn(R, C, device="cuda", dtype=torch.bfloat16)
    n = W.numel()
    blocks64, blocks256 = -(-n // 64), -(-n // 256)
    b4 = 2 * n + n // 2 + 4 * blocks64  # bf16 in, packed out, absmax (spec/performance.md)
    b4_dq = 2 * n + n // 2 + blocks64 + 4 * -(-blocks64 // 256)
    b8 = 2 * n + n + 4 * blocks256
    for qt in ("nf4", "fp4"):
        for dq in (False, True):
            if qt == "fp4" and dq:
                continue
            name = f"quantize_4bit/{qt}" + ("+dq" if dq else "")
            rows[name] = {"s": cuda_time(lambda: F.quantize_4bit(W, blocksize=64, quant_type=qt,
                                                                 compress_statistics=dq)), "bytes": b4}
            packed, state = F.quantize_4bit(W, blocksize=64, quant_type=qt, compress_statistics=dq)
            y = F.dequantize_4bit(packed, state)
            rows[name]["mean_abs_err"] = float((y.float() - W.float()).abs().mean())
            if qt == "nf4":
                rows[f"dequantize_4bit/{qt}" + ("+dq" if dq else "")] = {
                    "s": cuda_time(lambda: F.dequantize_4bit(packed, state)), "bytes": b4_dq if dq else b4}
            del packed, state, y
    rows["quantize_blockwise/bs256"] = {"s": cuda_time(lambda: F.quantize_blockwise(W, blocksize=256)), "bytes": b8}
    q8, s8 = F.quantize_blockwise(W, blocksize=256)
    rows["quantize_blockwise/bs256"]["mean_abs_err"] = float(
        (F.dequantize_blockwise(q8, s8).float() - W.float()).abs().mean())
    rows["dequantize_blockwise/bs256"] = {"s": cuda_time(lambda: F.dequantize_blockwise(q8, s8)), "bytes": b8}
    del q8, s8
    Wh = W.half()
    del W
    bi8 = 2 * n + n + 4 * R
    rows["int8_vectorwise_quant/t0"] = {"s": cuda_time(lambda: F.int8_vectorwise_quant(Wh)), "bytes": bi8}
    Wo = Wh.clone()
    Wo[:, :: max(1, C // 8)][:, :8] = 8.0  # 8 outlier columns
    rows["int8_vectorwise_quant/t6"] = {"s": cuda_time(lambda: F.int8_vectorwise_quant(Wo, threshold=6.0)),
                                        "bytes": bi8}
    del Wh, Wo

    for N, K in cfg["matmul_shapes"]:
        Wq = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        packed, state = F.quantize_4bit(Wq, blocksize=64, quant_type="nf4", compress_statistics=True)
        del Wq
        weight_bytes = N * K // 2 + -(-N * K // 64) + 4 * -(-N * K // 64 // 256)
        for M in cfg["matmul_m"]:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            f = lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state)  # noqa: E731
            rows[f"matmul_4bit/{N}x{K}/M{M}"] = {"s": graph_time(f), "eager_s": cuda_time(f), "bytes": weight_bytes}
        del packed, state
        torch.cuda.empty_cache()

    for N, K in cfg["int8_shapes"]:
        for threshold in (0.0, 6.0):
            layer = bnb.nn.Linear8bitLt(K, N, bias=False, has_fp16_weights=False, threshold=threshold)
            layer = layer.to(torch.float16).to("cuda")
            layer.eval()
            for M in cfg["int8_m"]:
                x = torch.randn(M, K, device="cuda", dtype=torch.float16)
                if threshold:
                    x[:, :: max(1, K // 8)][:, :8] = 8.0  # 8 outlier columns
                with torch.no_grad():
                    rows[f"linear8bit/{N}x{K}/t{threshold:g}/M{M}"] = {"s": cuda_time(lambda: layer(x))}
            del layer
            torch.cuda.empty_cache()
    return rows


def worker(lib: str, cfg: dict) -> dict:
    import torch

    info = {"lib": lib, "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0)}
    torch.manual_seed(0)
    if lib == "torch":
        rows = run_torch(cfg)
    else:
        import bitsandbytes as bnb

        info["version"] = bnb.__version__
        info["path"] = str(Path(bnb.__file__).resolve().parent)
        rows = run_library(bnb, cfg)
    return {"info": info, "rows": rows}


# ---- driver ----------------------------------------------------------------------------------------


def make_config(quick: bool) -> dict:
    if quick:
        return {"copy_elems": 1 << 24, "gemm": 2048, "quant_shape": [2048, 2048],
                "matmul_shapes": [[1024, 1024]], "matmul_m": [1, 16, 256], "int8_shapes": [[1024, 1024]],
                "int8_m": [1, 256]}
    return {"copy_elems": 1 << 30, "gemm": 8192, "quant_shape": [16384, 16384], "matmul_shapes": MATMUL_SHAPES,
            "matmul_m": MATMUL_M, "int8_shapes": INT8_SHAPES, "int8_m": INT8_M}


# ---- report ----------------------------------------------------------------------------------------


def t_fmt(s) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def render(data: dict) -> str:
    t, ref, nyb = (data["results"][lib]["rows"] for lib in LIBS)
    B = t["copy"]["bytes"] / t["copy"]["s"]
    tflops = t["bf16_gemm"]["flops"] / t["bf16_gemm"]["s"] / 1e12
    info = data["results"]["nybble"]["info"]
    rinfo = data["results"]["reference"]["info"]
    out = ["# nybble on the H200: side by side with bitsandbytes 0.50.2 and torch", "",
           f"Generated by `python3 bench/run_h200_bench.py` on {data['date']} at commit {data['commit']}. "
           f"GPU: {info.get('gpu', '?')}; torch {info.get('torch', '?')} (CUDA {info.get('cuda', '?')}); "
           f"reference: bitsandbytes {rinfo.get('version', rinfo.get('failed', '?'))}; nybble: "
           f"{info.get('version', info.get('failed', '?'))}. Raw results: [h200.json](h200.json).", "",
           f"**Ceilings measured in this run:** copy bandwidth B = {B / 1e12:.2f} TB/s (bf16 copy of "
           f"{data['config']['copy_elems'] * 2 / 2**30:.0f} GiB, bytes read + written); bf16 GEMM "
           f"{data['config']['gemm']}³ = {tflops:.0f} TFLOP/s.", "",
           "Timing: CUDA events, median of 20 batches after warm-up. Bytes counted as spec/performance.md "
           "(quantize/dequantize: 2 B + 0.5 B (4-bit) or 1 B (8-bit) per element + absmax; matmul: the packed "
           "weight + absmax + nested absmax).", "",
           "Each target missed below, what limits it (found by measurement) and what would close it: "
           "[h200-targets.md](h200-targets.md). Single eager calls profiled: "
           "[h200-eager-profile.md](h200-eager-profile.md) (`bench/profile_eager.py`). Optimizer steps: "
           "[optim-cuda.md](optim-cuda.md) (`bench/run_optim_bench.py --device cuda`). Every 4-bit matmul "
           "kernel forced, the sweep behind gemm_4bit's rule: [h200-sweep.md](h200-sweep.md). QLoRA training "
           "step and batch-1 decode: [qlora.md](qlora.md) (`bench/run_qlora_bench.py`).", "",
           f"## Quantization, W = {data['config']['quant_shape'][0]} × {data['config']['quant_shape'][1]}", "",
           "| op | reference | % of B | nybble | % of B | nybble × | target | mean abs err ref / nybble |",
           "|---|---:|---:|---:|---:|---:|---|---|"]
    for key in nyb:
        if "/" not in key or not key.split("/")[0] in QUANT_TARGETS:
            continue
        r, m = ref.get(key, {}), nyb[key]
        fr = (r["bytes"] / r["s"] / B) if r.get("s") else None
        fm = m["bytes"] / m["s"] / B
        goal = QUANT_TARGETS[key.split("/")[0]]
        err = (f"{r.get('mean_abs_err', float('nan')):.4f} / {m['mean_abs_err']:.4f}" if "mean_abs_err" in m else "")
        out.append(f"| {key} | {t_fmt(r.get('s'))} | {'' if fr is None else f'{100 * fr:.0f} %'} | {t_fmt(m['s'])} | "
                   f"{100 * fm:.0f} % | {ratio(r.get('s'), m['s'])} | ≥ {100 * goal:.0f} % of B: "
                   f"{'met' if fm >= goal else '**not met**'} | {err} |")
    out += ["", "## 4-bit matmul (`matmul_4bit`, NF4 bs 64 + double quant, bf16) against bf16 `F.linear`", "",
            "CUDA-graph times; × = bf16 time / 4-bit time (above 1: faster than unquantized). Eager overhead = "
            "eager time − graph time per call.", "",
            "| weight N × K | M | bf16 | reference | nybble | ref × bf16 | nybble × bf16 | nybble × ref | "
            "nybble weight GB/s (% of B) | eager ref / nybble | nybble eager overhead | target |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for N, K in data["config"]["matmul_shapes"]:
        for M in data["config"]["matmul_m"]:
            key = f"matmul_4bit/{N}x{K}/M{M}"
            bf, r, m = t.get(f"linear_bf16/{N}x{K}/M{M}", {}), ref.get(key, {}), nyb.get(key, {})
            ms = m.get("s")
            bw = f"{m['bytes'] / ms / 1e9:.0f} ({100 * m['bytes'] / ms / B:.0f} %)" if ms else "n/a"
            over = t_fmt(m["eager_s"] - ms) if ms and m.get("eager_s") else "n/a"
            goal = MATMUL_TARGETS.get(M)
            if M == 1:
                ok = ms and m["bytes"] / ms / B >= 0.85 and bf.get("s") and bf["s"] / ms >= 3.0
                target = f"≥ 85 % of B and ≥ 3× bf16: {'met' if ok else '**not met**'}"
            elif goal:
                ok = ms and bf.get("s") and bf["s"] / ms >= goal
                target = f"≥ {goal}× bf16: {'met' if ok else '**not met**'}"
            else:
                target = ""
            out.append(f"| {N} × {K} | {M} | {t_fmt(bf.get('s'))} | {t_fmt(r.get('s'))} | {t_fmt(ms)} | "
                       f"{ratio(bf.get('s'), r.get('s'))} | {ratio(bf.get('s'), ms)} | {ratio(r.get('s'), ms)} | {bw} | "
                       f"{t_fmt(r.get('eager_s'))} / {t_fmt(m.get('eager_s'))} | {over} | {target} |")
    out += ["", "## LLM.int8 (`Linear8bitLt`, has_fp16_weights=False) against fp16 `nn.Linear`, eager", "",
            "| weight N × K | threshold | M | fp16 | reference | nybble | ref × fp16 | nybble × fp16 | nybble × ref |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for N, K in data["config"]["int8_shapes"]:
        for th in (0.0, 6.0):
            for M in data["config"]["int8_m"]:
                key = f"linear8bit/{N}x{K}/t{th:g}/M{M}"
                fp = t.get(f"linear_fp16/{N}x{K}/M{M}", {}).get("s")
                r, m = ref.get(key, {}).get("s"), nyb.get(key, {}).get("s")
                out.append(f"| {N} × {K} | {th:g} | {M} | {t_fmt(fp)} | {t_fmt(r)} | {t_fmt(m)} | {ratio(fp, r)} | "
                           f"{ratio(fp, m)} | {ratio(r, m)} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--from-json", type=Path)
    add_worker_arguments(ap, LIBS)
    args = ap.parse_args()
    if serve_worker(args, worker):
        return 0
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        cfg = make_config(args.quick)
        reference = ROOT / ".ref" / "bnb-cuda"
        data = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": git_commit(), "config": cfg,
                "results": {lib: run_worker(__file__, lib, cfg, lib_env(lib, reference)) for lib in LIBS}}
        for lib in LIBS:
            if "failed" in data["results"][lib]["info"]:
                log(f"{lib}: {data['results'][lib]['info']['failed']}")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "h200.json").write_text(json.dumps(data, indent=1))
    md = render(data)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "h200.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
