#!/usr/bin/env python3
"""Optimizer step benchmark: nybble against bitsandbytes 0.50.2 and torch.optim.AdamW, one device.

Usage (from the repository root):
    python3 bench/run_optim_bench.py                 # CPU, writes docs/benchmarks/optim-cpu.md/.json
    python3 bench/run_optim_bench.py --device cuda   # GPU, writes docs/benchmarks/optim-cuda.md/.json
    python3 bench/run_optim_bench.py --quick         # small sizes, a smoke test (writes to a temp dir)

Cases (spec/performance.md): "large", fp32 parameters in 16 tensors: 1.07 B on a GPU; on the CPU
64 Mi (1.07 B with 32-bit states needs ~17 GB and minutes a step there); "small", 1,000 tensors of
4,096 elements (the per-parameter overhead case). Optimizers: torch's AdamW (fused=True, on
either device), AdamW (32-bit), AdamW8bit, PagedAdamW8bit (GPU), Lion8bit, AdEMAMix8bit and
LAMB8bit of each library, with the same hyper-parameters and random gradients.

Each library runs in its own subprocess (the reference imports as ``bitsandbytes`` from .ref/bnb,
nybble as its drop-in), so both are timed by the same code. Timing: two warm-up steps, then the
median over repetitions of a step (CPU: perf_counter; GPU: CUDA events). Bytes per element are the
minimum an update moves with fp32 parameters and gradients (BYTES below: e.g. 32-bit Adam reads
p, g, m, v and writes p, m, v = 28 B; 8-bit Adam 4 + 4 + 1 + 1 read, 4 + 1 + 1 written = 16 B),
against the bandwidth B of an in-place add (stream_bandwidth) measured in the same subprocess. State memory: the bytes of every
tensor in ``optimizer.state`` after the first step. Standard library + torch only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_worker_arguments, git_commit, lib_env, log, run_worker, serve_worker

LIBS = ("torch", "reference", "nybble")
OPTIMIZERS = ("AdamW", "AdamW8bit", "PagedAdamW8bit", "Lion8bit", "AdEMAMix8bit", "LAMB8bit")
BYTES = {"torch AdamW": 28, "AdamW": 28, "AdamW8bit": 16, "PagedAdamW8bit": 16, "Lion8bit": 14,
         "AdEMAMix8bit": 18, "LAMB8bit": 16}
TARGET_8BIT_GPU = 0.70  # 8-bit steps: fraction of B on the GPU
TARGET_CPU_VS_REF = 3.0


def make_config(device: str, quick: bool) -> dict:
    large = (1 << 20) if quick else (1_070_000_000 // 16 if device == "cuda" else 4 << 20)
    return {"device": device, "cases": {"large": [large] * 16, "small": [4096] * (100 if quick else 1000)},
            "reps": 3 if quick else (20 if device == "cuda" else 5)}


# ------------------------------------------------------------------------------------------------
# worker (one library)
# ------------------------------------------------------------------------------------------------

def timer(device: str):
    import torch

    def run(fn, reps: int) -> float:
        fn(), fn()  # warm-up: the first step allocates the states
        times = []
        for _ in range(reps):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    return run


def stream_bandwidth(device: str, run) -> float:
    """B: bytes read + written per second by an in-place fp32 add over 2 x 256 MiB (a.add_(b) reads
    a and b and writes a back), the access pattern of an optimizer step: in-place updates, so no
    write-allocate reads that a copy into a fresh buffer would add (and hide from its count)."""
    import torch

    a = torch.rand(64 << 20, device=device)
    b = torch.rand_like(a)
    return 3 * a.numel() * a.element_size() / run(lambda: a.add_(b), 5)


def worker(lib: str, cfg: dict) -> dict:
    import torch

    device = cfg["device"]
    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    run = timer(device)
    info = {"lib": lib, "torch": torch.__version__}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    rows = {"stream_bps": stream_bandwidth(device, run)}
    if lib == "torch":
        makers = {"torch AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)}
    else:
        import bitsandbytes as bnb

        info["version"] = bnb.__version__
        makers = {name: (lambda ps, name=name: getattr(bnb.optim, name)(ps, lr=1e-3))
                  for name in OPTIMIZERS if device == "cuda" or not name.startswith("Paged")}
    for case, sizes in cfg["cases"].items():
        for name, make in makers.items():
            key = f"{name}/{case}"
            params = [torch.nn.Parameter(torch.randn(n, device=device) * 0.1) for n in sizes]
            for p in params:
                p.grad = torch.randn_like(p) * 0.01
            try:
                opt = make(params)
                step = opt.step
                seconds = run(step, cfg["reps"])
                state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                                  if isinstance(t, torch.Tensor))
                rows[key] = {"s": seconds, "elements": sum(sizes), "state_bytes": state_bytes}
                log(f"  {lib} {key}: {seconds * 1e3:.2f} ms")
            except Exception as e:  # a library without this optimizer on this device
                rows[key] = {"error": f"{type(e).__name__}: {e}"[:200]}
                log(f"  {lib} {key}: {rows[key]['error']}")
            del params, opt
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"info": info, "rows": rows}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def fmt_ms(s: float | None) -> str:
    return "—" if s is None else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")


def render(data: dict) -> str:
    cfg, res = data["config"], data["results"]
    device = cfg["device"]
    B = res["nybble"]["rows"].get("stream_bps") or res["torch"]["rows"].get("stream_bps")
    lines = [f"# Optimizer steps on the {device.upper()}: nybble, bitsandbytes 0.50.2 and torch", "",
             f"Generated by `python3 bench/run_optim_bench.py --device {device}` on {data['date']} at commit "
             f"{data['commit']}; {res['torch']['info'].get('gpu', data.get('cpu', 'CPU'))}, torch "
             f"{res['torch']['info']['torch']}. Raw results: [optim-{device}.json](optim-{device}.json).", "",
             f"Bandwidth B = {B / 1e9:.1f} GB/s (an in-place fp32 add, bytes read + written, measured in the "
             f"nybble subprocess; a probe, not a ceiling: a kernel that streams better than torch's add_ "
             f"shows over 100 %). Step time: median of "
             f"{cfg['reps']} steps after two warm-ups. % of B: the bytes an update must move (fp32 parameters "
             "and gradients: 28 B an element for 32-bit Adam, 16 for 8-bit Adam/LAMB, 14 for Lion, 18 for "
             "AdEMAMix) over the step time. × ref = the reference's time / nybble's. State: bytes of the "
             "optimizer's state tensors.", ""]
    errors = []  # a library's refusal, shown once below its table

    def refused(row):
        if "error" not in row:
            return "—"
        if row["error"] not in errors:
            errors.append(row["error"])
        return f"refused [{errors.index(row['error']) + 1}]"

    for case, sizes in cfg["cases"].items():
        n = sum(sizes)
        lines += [f"## {case}: {len(sizes)} tensors, {n:,} parameters", "",
                  "| optimizer | reference | nybble | × ref | nybble % of B | torch AdamW | nybble × torch | state (nybble) | target |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        t_torch = res["torch"]["rows"].get(f"torch AdamW/{case}", {}).get("s")
        for name in OPTIMIZERS:
            ours = res["nybble"]["rows"].get(f"{name}/{case}")
            if ours is None:
                continue
            ref = res["reference"]["rows"].get(f"{name}/{case}", {})
            t_ours, t_ref = ours.get("s"), ref.get("s")
            frac = BYTES[name] * n / t_ours / B if t_ours else None
            vs_ref = t_ref / t_ours if t_ours and t_ref else None
            target = ""
            if case == "large" and device == "cuda" and "8bit" in name and frac is not None:
                target = f"≥ {TARGET_8BIT_GPU:.0%} of B: " + ("met" if frac >= TARGET_8BIT_GPU else "**not met**")
            if case == "large" and device == "cuda" and name == "AdamW" and t_ours and t_torch:
                target = "≥ torch fused: " + ("met" if t_torch / t_ours >= 1 else "**not met**")
            if device == "cpu" and vs_ref is not None:
                target = f"≥ {TARGET_CPU_VS_REF:.0f}× ref: " + ("met" if vs_ref >= TARGET_CPU_VS_REF else "**not met**")
            lines.append(
                f"| {name} | {fmt_ms(t_ref) if t_ref else refused(ref)} | {fmt_ms(t_ours) if t_ours else refused(ours)} | "
                f"{'—' if vs_ref is None else f'{vs_ref:.2f}×'} | {'—' if frac is None else f'{frac:.0%}'} | "
                f"{fmt_ms(t_torch)} | {'—' if not (t_ours and t_torch) else f'{t_torch / t_ours:.2f}×'} | "
                f"{ours.get('state_bytes', 0) / 2**20:.1f} MiB | {target} |")
        lines.append("")
    lines += [f"[{i + 1}] {e}" for i, e in enumerate(errors)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--from-json", type=Path)
    add_worker_arguments(ap, LIBS)
    args = ap.parse_args()
    if serve_worker(args, worker):
        return 0
    out_dir = args.out_dir or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "docs" / "benchmarks")
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        cfg = make_config(args.device, args.quick)
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
        data = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": git_commit(), "cpu": f"{cpu}, {os.cpu_count()} threads", "config": cfg,
                "results": {lib: run_worker(__file__, lib, cfg, lib_env(lib, ROOT / ".ref" / "bnb")) for lib in LIBS}}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"optim-{args.device}.json").write_text(json.dumps(data, indent=1))
    md = render(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"optim-{data['config']['device']}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
