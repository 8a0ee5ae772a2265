#!/usr/bin/env python3
"""Build and run nybble's CPU benchmarks; write docs/benchmarks/cpu.md and cpu.json.

Usage (from the repository root):  python3 bench/run_cpu_bench.py [--no-build] [--filter REGEX]
                                   python3 bench/run_cpu_bench.py --from-json docs/benchmarks/cpu.json

Builds nybble_bench in build-bench (Release, no CUDA), runs it with 3 repetitions and reports
the median of each benchmark. Every rate is compared with the copy bandwidth B measured in the
same run (multi-threaded memcpy, bytes read + written). Byte counts follow
spec/performance.md; see the header comment of each cpp/bench/*.cpp file. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, git_commit
COPY_BENCH = "copy/memcpy"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def build(build_dir: Path) -> Path:
    run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
         "-DNYBBLE_CUDA=OFF", "-DNYBBLE_BUILD_TESTS=OFF", "-DNYBBLE_BUILD_BENCH=ON"],
        stdout=subprocess.DEVNULL)
    run(["ninja", "-C", str(build_dir), "nybble_bench"])
    return build_dir / "cpp" / "bench" / "nybble_bench"


def run_bench(exe: Path, repetitions: int, extra: list[str]) -> dict:
    # JSON goes to a file (same content as --benchmark_format=json); the console table streams to
    # stderr as progress.
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [str(exe), f"--benchmark_out={out}", "--benchmark_out_format=json"]
        if repetitions > 1:
            cmd += [f"--benchmark_repetitions={repetitions}", "--benchmark_report_aggregates_only=true"]
        run(cmd + extra, stdout=sys.stderr)
        return json.loads(out.read_text())


def clean_name(run_name: str) -> str:
    parts = [p for p in run_name.split("/") if not re.match(r"^(min_time|iterations|real_time|repeats)", p)]
    return "/".join(parts)


def pick_results(data: dict) -> list[dict]:
    """One entry per benchmark: the median aggregate, or the single run without repetitions."""
    rows, seen = [], set()
    have_aggregates = any(b.get("run_type") == "aggregate" for b in data["benchmarks"])
    for b in data["benchmarks"]:
        if have_aggregates and not (b.get("run_type") == "aggregate" and b.get("aggregate_name") == "median"):
            continue
        if b.get("error_occurred"):
            continue
        name = clean_name(b.get("run_name", b["name"]))
        if name in seen:
            continue
        seen.add(name)
        rows.append({**b, "op": name})
    return rows


def fmt_time(value: float, unit: str) -> str:
    seconds = value * {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
    if seconds >= 1.0:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_num(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def table(rows: list[dict], copy_bps: float | None) -> list[str]:
    lines = ["| op | size | time | GB/s | fraction of copy bandwidth | GFLOP/s |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        bps = r.get("bytes_per_second")
        gbs = fmt_num(bps / 1e9) if bps else ""
        frac = f"{fmt_num(100 * bps / copy_bps)} %" if bps and copy_bps else ""
        if "FLOP/s" in r:
            flops = fmt_num(r["FLOP/s"] / 1e9)
        elif "OP/s" in r:
            flops = f"{fmt_num(r['OP/s'] / 1e9)} (int8 OP/s)"
        else:
            flops = ""
        lines.append(f"| {r['op']} | {r.get('label', '')} | {fmt_time(r['real_time'], r['time_unit'])} | "
                     f"{gbs} | {frac} | {flops} |")
    return lines


def cpu_model() -> str:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            info.setdefault(key.strip(), val.strip())
    except OSError:
        return "unknown"
    model = info.get("model name", "unknown")
    extra = [f"{k} {info[k]}" for k in ("cpu family", "model", "stepping") if k in info]
    if "hypervisor" in info.get("flags", "").split():
        extra.append("virtual machine")
    return f"{model} ({', '.join(extra)})" if extra else model


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def report(data: dict, rows: list[dict]) -> str:
    ctx = data["context"]
    elapsed = float(ctx.get("run_seconds", "nan"))
    copy = next((r for r in rows if r["op"] == COPY_BENCH), None)
    copy_bps = copy["bytes_per_second"] if copy else None
    l3 = next((c for c in ctx.get("caches", []) if c.get("level") == 3), None)
    l3_text = f"{mib(l3['size'])} (shared by {l3['num_sharing']} CPUs)" if l3 else "unknown"
    mem_elems = int(ctx.get("mem_elems", "0"))
    l3_bytes = int(ctx.get("l3_bytes", "0")) or (l3["size"] if l3 else 0)
    l3_ratio = f"{2 * mem_elems / l3_bytes:.1f}× the L3 cache" if l3_bytes else "L3 size unknown"
    lines = [
        "# nybble CPU benchmarks",
        "",
        "Generated by `python3 bench/run_cpu_bench.py` (Google Benchmark program `nybble_bench`, "
        "sources in `cpp/bench/`). Raw results: [cpu.json](cpu.json). Optimizer steps against the "
        "reference and torch: [optim-cpu.md](optim-cpu.md) (`bench/run_optim_bench.py`).",
        "",
        f"- **Machine:** {cpu_model()}, {ctx.get('num_cpus', os.cpu_count())} cores, "
        f"{ctx.get('mhz_per_cpu', '?')} MHz, L3 {l3_text}",
        f"- **Date:** {ctx.get('date', datetime.datetime.now(datetime.timezone.utc).isoformat())}",
        f"- **Commit:** {git_commit()}; nybble {ctx.get('nybble_version', '?')}, {ctx.get('compiler', '?')}, "
        "Release build",
        f"- **nybble CPU kernel set:** `{ctx.get('nybble_cpu_isa', '?')}` "
        f"(detected features: {ctx.get('nybble_cpu_features', '?')}); "
        f"{ctx.get('nybble_threads', '?')} threads (nybble's pool, all cores)",
        f"- **Copy bandwidth B:** " + (f"{copy_bps / 1e9:.1f} GB/s" if copy_bps else "not measured") +
        " (multi-threaded memcpy, bytes read + written, same run)",
        f"- **Timing:** wall-clock time, median of {rows[0].get('repetitions', 1) if rows else 1} repetitions; "
        f"whole run {elapsed:.0f} s. GB/s = 10^9 bytes/s.",
        "",
        "Sizes: the 1-D memory-bound inputs have n = "
        f"{mem_elems:,} elements ({mib(2 * mem_elems)} of bf16, {l3_ratio}). "
        "Fixed-size operands (the 4-bit weights of gemm_4bit, the int8_vectorwise_quant matrices) "
        "are cycled through as many copies as fill twice the L3 cache, so each iteration reads from "
        "memory. Inputs are random (approximately normal), drawn fresh each run.",
        "",
        "Bytes counted (spec/performance.md): quantize_4bit / dequantize_4bit: 2 B/elem bf16 + 0.5 B/elem "
        "packed + 4 B per 64-element block of absmax (the nested-scale dequantize reads 1 B per block "
        "+ 4 B per 256 blocks instead); 8-bit blockwise: 2 B + 1 B per element + 4 B per 256-element "
        "block; gemm_4bit: packed weight + u8 absmax codes + nested absmax (activations not counted), "
        "FLOP = 2·M·N·K; int8_vectorwise_quant: 2 B in + 1 B out per element; int8_linear_matmul: "
        "OP = 2·M·N·K.",
        "",
    ]
    lines += table(rows, copy_bps)
    if ctx.get("library_build_type") == "debug":
        lines += ["", "(The Google Benchmark library itself is the distribution's debug build; this affects "
                  "only the harness around the timed loops.)"]
    return "\n".join(lines) + "\n"


def kept_section(md_path: Path) -> str:
    """The section bench/run_python_bench.py maintains between its marker lines, carried over as is."""
    old = md_path.read_text() if md_path.exists() else ""
    begin, end = "<!-- python-bench:begin -->", "<!-- python-bench:end -->"
    if begin not in old or end not in old:
        return ""
    return "\n" + begin + old.split(begin, 1)[1].split(end, 1)[0] + end + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default="build-bench", help="CMake build directory (default: build-bench)")
    ap.add_argument("--no-build", action="store_true", help="use the existing nybble_bench binary")
    ap.add_argument("--repetitions", type=int, default=3, help="repetitions per benchmark (median reported)")
    ap.add_argument("--filter", help="only benchmarks matching this regex (--benchmark_filter)")
    ap.add_argument("--from-json", help="only re-render cpu.md from an existing cpu.json (no build, no run)")
    ap.add_argument("--out-dir", default="docs/benchmarks", help="where cpu.md and cpu.json go")
    args = ap.parse_args()

    os.chdir(ROOT)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        build_dir = Path(args.build_dir)
        exe = build_dir / "cpp" / "bench" / "nybble_bench"
        if not args.no_build:
            exe = build(build_dir)
        extra = [f"--benchmark_filter={args.filter}"] if args.filter else []
        start = time.monotonic()
        data = run_bench(exe, args.repetitions, extra)
        data["context"]["run_seconds"] = f"{time.monotonic() - start:.1f}"
    rows = pick_results(data)
    if not rows:
        print("no benchmark results", file=sys.stderr)
        return 1

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.from_json:
        (out_dir / "cpu.json").write_text(json.dumps(data, indent=2) + "\n")
    md = report(data, rows) + kept_section(out_dir / "cpu.md")
    (out_dir / "cpu.md").write_text(md)
    print(md)
    print(f"wrote {out_dir / 'cpu.md'} and {out_dir / 'cpu.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
