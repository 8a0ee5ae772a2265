#!/usr/bin/env python3
"""Side-by-side CPU benchmark of the Python API: nybble against bitsandbytes 0.50.2's CPU backend and torch.

Usage (from the repository root):
    python3 bench/run_python_bench.py                    # full run (~10 min), writes docs/benchmarks/
    python3 bench/run_python_bench.py --quick            # small sizes, a smoke test (writes to a temp dir)
    python3 bench/run_python_bench.py --only nybble      # re-measure one library, keep the others' results
    python3 bench/run_python_bench.py --from-json docs/benchmarks/cpu_python.json   # re-render only

One benchmark body runs in one subprocess per library, each importing its library as
``bitsandbytes`` and calling only public bitsandbytes API names, so the same code measures both:
  - reference: PYTHONPATH=.ref/bnb (bitsandbytes 0.50.2, its CPU backend);
  - nybble:    PYTHONPATH=python:python/compat (nybble's drop-in ``bitsandbytes``), or, while the
               drop-in is missing, ``import nybble as bitsandbytes`` with PYTHONPATH=python;
  - torch:     the unquantized baselines (bf16 F.linear at the same shapes) and the copy bandwidth.
Every subprocess also measures torch's copy bandwidth (dst.copy_(src)), so drift between them shows.

Timing: time.perf_counter around batches of calls, one warm-up call first; the median over the
repetitions is reported. Threads: torch.set_num_threads(all cores) in every subprocess; nybble's
own pool uses all cores. Byte counts follow spec/performance.md (bytes_4bit etc. below, and the table
header). Standard library + torch only.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, git_commit, log
BEGIN = "<!-- python-bench:begin -->"
END = "<!-- python-bench:end -->"
LIBS = ("torch", "reference", "nybble")

# Targets (spec/performance.md, CPU table).
TARGET_VS_REF = 3.0
TARGET_FRAC_B = 0.50  # quantize/dequantize rows
TARGET_M1_VS_BF16 = 1.5  # matmul_4bit M = 1 against torch bf16 F.linear


# ------------------------------------------------------------------------------------------------
# machine facts
# ------------------------------------------------------------------------------------------------

def l3_bytes() -> int:
    try:
        v = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        if v > 0:
            return v
    except (ValueError, OSError):
        pass
    try:
        s = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
        return int(s.rstrip("KMG")) * mult
    except (OSError, ValueError):
        return 32 << 20


def cpu_model() -> str:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            info.setdefault(key.strip(), val.strip())
    except OSError:
        return platform.processor() or "unknown"
    flags = info.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extra = [isa] + (["virtual machine"] if "hypervisor" in flags else [])
    return f"{info.get('model name', 'unknown')} ({', '.join(extra)})"


def make_config(quick: bool) -> dict:
    l3 = l3_bytes()
    if quick:
        return {"quick": True, "l3_bytes": l3, "n": 16 << 20, "mm_nk": 2048, "mm_ms": [1, 16], "mm_copies": 4,
                "lin8_nk": 1024, "lin8_ms": [16], "budget_s": 0.5, "slow_budget_s": 1.0}
    # Memory-bound inputs: the smallest power of two >= 64 Mi elements whose bf16 bytes are at least
    # twice the L3 (the same rule as cpp/bench); 512 Mi elements = 1 GiB when the L3 is 256-512 MiB.
    n = 64 << 20
    while 2 * n < 2 * l3:
        n *= 2
    return {"quick": False, "l3_bytes": l3, "n": n, "mm_nk": 8192, "mm_ms": [1, 16], "mm_copies": 0,
            "lin8_nk": 4096, "lin8_ms": [16, 128], "budget_s": 3.0, "slow_budget_s": 6.0}


def rotation_copies(cfg: dict, bytes_per_copy: int) -> int:
    """Copies of a fixed-size operand that together fill twice the L3, so each call reads memory."""
    if cfg.get("mm_copies"):
        return cfg["mm_copies"]
    return max(2, math.ceil(2 * cfg["l3_bytes"] / bytes_per_copy))


# ------------------------------------------------------------------------------------------------
# byte counts (spec/performance.md "Bytes counted")
# ------------------------------------------------------------------------------------------------

def bytes_4bit(n: int, bs: int = 64, nested_read: bool = False) -> int:
    nb = -(-n // bs)
    scales = nb + 4 * -(-nb // 256) if nested_read else 4 * nb
    return 2 * n + (n + 1) // 2 + scales


def bytes_8bit(n: int, bs: int = 256) -> int:
    return 2 * n + n + 4 * -(-n // bs)


def bytes_4bit_weight(nk: int, bs: int = 64, nested: bool = True) -> int:
    nb = nk // bs
    return nk // 2 + (nb + 4 * -(-nb // 256) if nested else 4 * nb)


# ------------------------------------------------------------------------------------------------
# the benchmark body (runs inside a subprocess)
# ------------------------------------------------------------------------------------------------

def timeit(fn, budget_s: float, min_reps: int = 3, max_reps: int = 15, rep_s: float = 0.1) -> dict:
    """fn(i) does call i. One warm-up call, then repetitions of `iters` calls; seconds per call."""
    gc.collect()
    t0 = time.perf_counter()
    fn(0)
    per_call = time.perf_counter() - t0
    k = 1
    if per_call < rep_s:  # a few more warm-up calls give a better estimate for fast ops
        t0 = time.perf_counter()
        m = max(1, min(50, int(0.05 / max(per_call, 1e-6))))
        for _ in range(m):
            fn(k)
            k += 1
        per_call = (time.perf_counter() - t0) / m
    iters = max(1, int(rep_s / max(per_call, 1e-7)))
    reps = int(budget_s / (iters * per_call))
    reps = max(min_reps, min(max_reps, reps))
    samples = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(k)
                k += 1
            samples.append((time.perf_counter() - t0) / iters)
    finally:
        if gc_was:
            gc.enable()
    return {"s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "reps": reps, "iters": iters}


def worker(lib: str, cfg: dict) -> dict:
    import logging
    import warnings

    import torch
    import torch.nn.functional as F

    warnings.simplefilter("ignore")  # per-call warnings (the reference's bf16 -> fp16 cast) flood the log
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    info: dict = {"lib": lib, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "env": {k: os.environ[k] for k in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE", "PYTHONPATH",
                                                     "OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "NYBBLE_CPU_ISA")
                          if k in os.environ}}
    rows: dict[str, dict] = {}
    budget = cfg["slow_budget_s"] if lib == "reference" else cfg["budget_s"]

    bnb = None
    if lib in ("reference", "nybble"):
        bnb = import_library(lib, info)

    def record(key: str, meta: dict, fn, budget_s: float = budget, **kw) -> None:
        log(f"[{lib}] {key} ...")
        try:
            r = timeit(fn, budget_s, **kw)
        except Exception as e:  # a missing or broken op is a row with an error, not a failed run
            rows[key] = {**meta, "error": f"{type(e).__name__}: {e}"[:300]}
            log(f"[{lib}] {key}: {rows[key]['error']}")
            return
        rows[key] = {**meta, **r}
        log(f"[{lib}] {key}: {r['s'] * 1e3:.3f} ms (median of {r['reps']} x {r['iters']})")

    def randn(shape, scale=1.0):
        # Filled in chunks, so a 1 GiB bf16 tensor needs no 2 GiB fp32 temporary.
        out = torch.empty(shape, dtype=torch.bfloat16)
        flat = out.view(-1)
        step = 1 << 24
        for s in range(0, flat.numel(), step):
            flat[s:s + step] = torch.randn(min(step, flat.numel() - s)) * scale
        return out

    n = cfg["n"]
    A = randn((n,))
    size = f"n={n / 2**20:.0f}Mi bf16 ({2 * n / 2**20:.0f} MiB)"

    # ---- copy bandwidth (every subprocess: shows drift between them) ----
    dst = torch.empty_like(A)
    record("copy", {"name": "copy (`dst.copy_(src)`)", "size": size, "bytes": 4 * n},
           lambda i: dst.copy_(A), budget_s=cfg["budget_s"])
    del dst
    if lib == "torch":
        record("clone", {"name": "copy into a fresh tensor (`src.clone()`)", "size": size, "bytes": 4 * n},
               lambda i: A.clone(), budget_s=cfg["budget_s"])

    # ---- quantize / dequantize on the large tensor ----
    if bnb is not None:
        Fb = bnb.functional
        # Fast ops get the normal budget; each op's own first call decides how many reps fit.
        for dq in (False, True):
            tag = "_dq" if dq else ""
            last: dict = {}  # the last call's result feeds the dequantize rows (the reference's quantize is slow)

            def quantize_4bit(i, dq=dq, last=last):
                last.clear()
                last["r"] = Fb.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=dq)

            record(f"quantize_4bit_nf4_bs64{tag}", {"size": size, "bytes": bytes_4bit(n)}, quantize_4bit)
            try:
                q, qs = last.pop("r") if "r" in last else \
                    Fb.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=dq)
            except Exception as e:
                rows[f"dequantize_4bit_nf4_bs64{tag}"] = {"size": size, "error": f"quantize failed: {e}"[:300]}
                continue
            record(f"dequantize_4bit_nf4_bs64{tag}", {"size": size, "bytes": bytes_4bit(n, nested_read=dq)},
                   lambda i: Fb.dequantize_4bit(q, qs))
            check_error(rows, f"dequantize_4bit_nf4_bs64{tag}", lambda: Fb.dequantize_4bit(q, qs), A)
            if lib == "nybble":
                # The same into a preallocated output: the kernel without the page faults of fresh
                # memory (the reference's CPU backend has no dequantize_4bit.out kernel: it raises).
                out = torch.empty_like(A)
                record(f"dequantize_4bit_nf4_bs64{tag}_out",
                       {"size": size, "bytes": bytes_4bit(n, nested_read=dq)},
                       lambda i: Fb.dequantize_4bit(q, qs, out=out))
                del out
            del q, qs
            gc.collect()
        record("quantize_blockwise_bs256", {"size": size, "bytes": bytes_8bit(n)},
               lambda i: Fb.quantize_blockwise(A, blocksize=256))
        try:
            q, qs = Fb.quantize_blockwise(A, blocksize=256)
            record("dequantize_blockwise_bs256", {"size": size, "bytes": bytes_8bit(n)},
                   lambda i: Fb.dequantize_blockwise(q, qs))
            check_error(rows, "dequantize_blockwise_bs256", lambda: Fb.dequantize_blockwise(q, qs), A)
            if lib == "nybble":
                out = torch.empty_like(A)
                record("dequantize_blockwise_bs256_out", {"size": size, "bytes": bytes_8bit(n)},
                       lambda i: Fb.dequantize_blockwise(q, qs, out=out))
                del out
            del q, qs
        except Exception as e:
            rows["dequantize_blockwise_bs256"] = {"size": size, "error": f"quantize failed: {e}"[:300]}
    del A
    gc.collect()

    # ---- 4-bit matmul (NF4 bs 64, double quant) / bf16 F.linear, weight cycled through copies ----
    nk = cfg["mm_nk"]
    W = randn((nk, nk), 0.02)
    xs = {m: randn((m, nk)) for m in cfg["mm_ms"]}
    if lib == "torch":
        copies = rotation_copies(cfg, 2 * nk * nk)
        Ws = [W] + [W.clone() for _ in range(copies - 1)]
        for m, x in xs.items():
            record(f"linear_bf16_M{m}_{nk}", {"name": f"F.linear bf16, M={m}",
                                              "size": f"M={m} N=K={nk} bf16, {copies} weight copies",
                                              "bytes": 2 * nk * nk, "flop": 2 * m * nk * nk, "copies": copies},
                   lambda i, x=x: F.linear(x, Ws[i % copies]))
        del Ws
    elif bnb is not None:
        copies = rotation_copies(cfg, bytes_4bit_weight(nk * nk))
        try:
            Wq, st = bnb.functional.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
            Qs = [(Wq, st)]
            for _ in range(copies - 1):  # deep copies: distinct memory, no re-quantization cost
                Qs.append(copy.deepcopy((Wq, st)))
        except Exception as e:
            Qs = None
            err = f"quantize/copy failed: {type(e).__name__}: {e}"[:300]
        for m, x in xs.items():
            key = f"matmul_4bit_M{m}_{nk}"
            meta = {"size": f"M={m} N=K={nk} NF4 bs64 DQ, bf16 x, {copies} weight copies",
                    "bytes": bytes_4bit_weight(nk * nk), "flop": 2 * m * nk * nk, "copies": copies}
            if Qs is None:
                rows[key] = {**meta, "error": err}
                continue
            with torch.no_grad():
                record(key, meta,
                       lambda i, x=x: bnb.matmul_4bit(x, Qs[i % copies][0].t(), quant_state=Qs[i % copies][1]))
                try:
                    ref = F.linear(x.float(), W.float())
                    got = bnb.matmul_4bit(x, Wq.t(), quant_state=st).float()
                    rows[key]["rel_err"] = float((got - ref).norm() / ref.norm())
                except Exception as e:
                    rows[key]["check_error"] = f"{type(e).__name__}: {e}"[:200]
        del Qs
    del W, xs
    gc.collect()

    # ---- LLM.int8: Linear8bitLt forward (has_fp16_weights=False) / bf16 F.linear ----
    nk8 = cfg["lin8_nk"]
    W8 = randn((nk8, nk8), 0.02)
    outlier_cols = torch.randperm(nk8)[:8]
    xs8 = {}
    for m in cfg["lin8_ms"]:
        x = randn((m, nk8))
        x[:, outlier_cols] = 8.0  # 8 outlier columns, as in spec/performance.md
        xs8[m] = x
    if lib == "torch":
        for m, x in xs8.items():
            record(f"linear_bf16_M{m}_{nk8}", {"name": f"F.linear bf16, M={m}",
                                               "size": f"M={m} N=K={nk8} bf16", "bytes": 2 * nk8 * nk8,
                                               "flop": 2 * m * nk8 * nk8},
                   lambda i, x=x: F.linear(x, W8))
    elif bnb is not None:
        for thr in (6.0, 0.0):
            try:
                lin = bnb.nn.Linear8bitLt(nk8, nk8, bias=False, has_fp16_weights=False, threshold=thr)
                lin.weight = bnb.nn.Int8Params(W8.clone(), requires_grad=False, has_fp16_weights=False)
                lin = lin.to("cpu").eval()
                if lin.weight.dtype != torch.int8:
                    raise RuntimeError(f"weight not quantized on .to('cpu'): {lin.weight.dtype}")
                lin_err = None
            except Exception as e:
                lin, lin_err = None, f"setup failed: {type(e).__name__}: {e}"[:300]
            for m, x in xs8.items():
                key = f"linear8bitlt_t{thr:g}_M{m}_{nk8}"
                meta = {"size": f"M={m} N=K={nk8} bf16 x (8 outlier columns)", "bytes": nk8 * nk8 + 4 * nk8,
                        "flop": 2 * m * nk8 * nk8}
                if lin is None:
                    rows[key] = {**meta, "error": lin_err}
                    continue
                with torch.no_grad():
                    record(key, meta, lambda i, x=x: lin(x))
                    try:
                        ref = F.linear(x.float(), W8.float())
                        got = lin(x).float()
                        rows[key]["rel_err"] = float((got - ref).norm() / ref.norm())
                    except Exception as e:
                        rows[key]["check_error"] = f"{type(e).__name__}: {e}"[:200]
            del lin
    info["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return {"info": info, "rows": rows}


def check_error(rows: dict, key: str, fn, A) -> None:
    """Mean abs error of the round trip on randn input (spec/performance.md's quality column)."""
    if "error" in rows.get(key, {}):
        return
    try:
        d = fn().reshape(-1)
        m = min(d.numel(), 1 << 22)
        rows[key]["mean_abs_err"] = float((d[:m].float() - A[:m].float()).abs().mean())
    except Exception as e:
        rows[key]["check_error"] = f"{type(e).__name__}: {e}"[:200]


def import_library(lib: str, info: dict):
    import importlib

    want = ROOT / (".ref/bnb" if lib == "reference" else "python")
    mode = "bitsandbytes"
    try:
        bnb = importlib.import_module("bitsandbytes")
        needed = ("functional", "matmul_4bit", "nn")
        if not all(hasattr(bnb, a) for a in needed):
            raise ImportError(f"bitsandbytes at {bnb.__file__} lacks one of {needed}")
    except Exception as e:
        if lib == "reference":
            raise
        info["dropin_error"] = f"{type(e).__name__}: {e}"[:300]
        for k in [k for k in sys.modules if k == "bitsandbytes" or k.startswith("bitsandbytes.")]:
            del sys.modules[k]
        bnb = importlib.import_module("nybble")
        mode = "nybble (direct; the drop-in was not importable)"
    path = Path(bnb.__file__).resolve()
    if want.resolve() not in path.parents:
        raise RuntimeError(f"{lib}: imported {path}, expected a module under {want}")
    info["import"] = mode
    info["path"] = str(path.parent.relative_to(ROOT)) if ROOT in path.parents else str(path.parent)
    info["version"] = getattr(bnb, "__version__", "?")
    if lib == "nybble":
        try:
            import nybble
            info["nybble_version"] = nybble.__version__
            info["nybble_threads"] = nybble._C.get_num_threads()
            info["nybble_cpu_isa"] = nybble._C.cpu_isa()
        except Exception as e:  # informational only
            info["nybble_info_error"] = str(e)[:200]
    return bnb


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------

# Note [warm allocator]: torch's CPU allocator takes large tensors from glibc, which maps every block
# over 32 MiB fresh from the OS and unmaps it on free, so each call that returns a large tensor
# page-faults its whole output (in a VM about 2 µs per 4 KiB page: ~0.6 s per GiB, more than the
# kernels themselves). By default every subprocess runs with glibc told never to mmap nor trim, so
# freed blocks are reused as CUDA's caching allocator reuses them: the same setting for all three
# libraries, and the times are the libraries' work. --alloc os keeps glibc's defaults.
WARM_ALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"


def lib_env(lib: str, cfg: dict) -> dict:
    env = dict(os.environ)
    if cfg.get("thp"):
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    if cfg.get("isa") == "avx2":  # the CI machine class: torch's kernels, the reference's AVX-512 checks, nybble
        env["ATEN_CPU_CAPABILITY"] = "avx2"
        env["NYBBLE_CPU_ISA"] = "avx2"
    if cfg.get("alloc", "warm") == "warm":
        env["GLIBC_TUNABLES"] = ":".join(x for x in (env.get("GLIBC_TUNABLES"), WARM_ALLOC_TUNABLES) if x)
    env.pop("PYTHONPATH", None)
    if lib == "reference":
        env["PYTHONPATH"] = str(ROOT / ".ref" / "bnb")
    elif lib == "nybble":
        compat = ROOT / "python" / "compat"
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python")] + ([str(compat)] if compat.is_dir() else []))
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or NaN."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait; no guest
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_worker(lib: str, cfg: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib, "--config", json.dumps(cfg),
               "--result", str(out)]
        log(f"+ {lib}: PYTHONPATH={lib_env(lib, cfg).get('PYTHONPATH', '')} {' '.join(cmd[:3])} ...")
        start, busy0 = time.monotonic(), busy_seconds()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, env=lib_env(lib, cfg), cwd=ROOT)
        elapsed = time.monotonic() - start
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        other = max(0.0, (busy_seconds() - busy0 - own) / elapsed)
        if proc.returncode != 0 or not out.exists():
            return {"info": {"lib": lib, "failed": f"worker exited with {proc.returncode}"}, "rows": {},
                    "seconds": elapsed, "other_load": round(other, 3)}
        res = json.loads(out.read_text())
        res["seconds"] = round(elapsed, 1)
        res["other_load"] = round(other, 3)
        log(f"  {lib}: {elapsed:.0f} s; other processes used {other:.2f} cores meanwhile")
        return res


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    if s >= 0.9995:
        return f"{s:.3g} s"
    if s >= 0.9995e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fmt_num(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def row_s(data: dict, lib: str, key: str) -> float | None:
    r = data["results"].get(lib, {}).get("rows", {}).get(key)
    return r.get("s") if r and "error" not in r else None


def copy_bps(data: dict, lib: str | None = None) -> float | None:
    """Copy bandwidth measured in one subprocess, or B: the highest of them (the least disturbed by
    other work on the machine; each subprocess measures the same copy of the same tensor)."""
    if lib is None:
        seen = [b for b in (copy_bps(data, x) for x in LIBS) if b]
        return max(seen) if seen else None
    r = data["results"].get(lib, {}).get("rows", {}).get("copy")
    return r["bytes"] / r["s"] if r and "s" in r else None


def ops_rows(data: dict) -> list[tuple[str, str]]:
    """(row key, display name) in table order."""
    cfg = data["config"]
    nk, nk8 = cfg["mm_nk"], cfg["lin8_nk"]
    rows = [("quantize_4bit_nf4_bs64", "quantize_4bit NF4 bs64"),
            ("quantize_4bit_nf4_bs64_dq", "quantize_4bit NF4 bs64 + compress_statistics"),
            ("dequantize_4bit_nf4_bs64", "dequantize_4bit NF4 bs64"),
            ("dequantize_4bit_nf4_bs64_dq", "dequantize_4bit NF4 bs64, nested absmax"),
            ("quantize_blockwise_bs256", "quantize_blockwise 8-bit bs256"),
            ("dequantize_blockwise_bs256", "dequantize_blockwise 8-bit bs256")]
    rows += [(f"matmul_4bit_M{m}_{nk}", f"matmul_4bit M={m}") for m in cfg["mm_ms"]]
    rows += [(f"linear8bitlt_t{t:g}_M{m}_{nk8}", f"Linear8bitLt threshold {t:g}, M={m}")
             for t in (6.0, 0.0) for m in cfg["lin8_ms"]]
    return rows


def bf16_key(data: dict, key: str) -> str | None:
    cfg = data["config"]
    for m in cfg["mm_ms"]:
        if key == f"matmul_4bit_M{m}_{cfg['mm_nk']}":
            return f"linear_bf16_M{m}_{cfg['mm_nk']}"
    for m in cfg["lin8_ms"]:
        if key.startswith("linear8bitlt_") and key.endswith(f"_M{m}_{cfg['lin8_nk']}"):
            return f"linear_bf16_M{m}_{cfg['lin8_nk']}"
    return None


def evaluate(data: dict) -> list[dict]:
    """Per op: times, rates and the target checks."""
    B = copy_bps(data)
    out = []
    for key, name in ops_rows(data):
        cands = [data["results"][lib]["rows"][key] for lib in ("nybble", "reference")
                 if key in data["results"].get(lib, {}).get("rows", {})]
        meta = next((r for r in cands if "bytes" in r), cands[0] if cands else {})
        t_ref, t_nyb = row_s(data, "reference", key), row_s(data, "nybble", key)
        bk = bf16_key(data, key)
        t_bf16 = row_s(data, "torch", bk) if bk else None
        e = {"key": key, "name": name, "size": meta.get("size", ""), "t_ref": t_ref, "t_nyb": t_nyb,
             "t_bf16": t_bf16, "bytes": meta.get("bytes"), "flop": meta.get("flop"), "checks": []}
        e["errors"] = {lib: data["results"][lib]["rows"][key]["error"] for lib in ("reference", "nybble")
                       if "error" in data["results"].get(lib, {}).get("rows", {}).get(key, {})}
        e["t_nyb_out"] = row_s(data, "nybble", key + "_out")
        e["frac_nyb_out"] = e["bytes"] / e["t_nyb_out"] / B if e["t_nyb_out"] and e["bytes"] and B else None
        e["speedup"] = t_ref / t_nyb if t_ref and t_nyb else None
        e["vs_bf16"] = t_bf16 / t_nyb if t_bf16 and t_nyb else None
        for lib, t in (("nyb", t_nyb), ("ref", t_ref)):
            e[f"gbs_{lib}"] = e["bytes"] / t / 1e9 if t and e["bytes"] else None
            e[f"frac_{lib}"] = e["bytes"] / t / B if t and e["bytes"] and B else None
            e[f"gflops_{lib}"] = e["flop"] / t / 1e9 if t and e["flop"] else None
        targets = []
        if key.startswith(("quantize", "dequantize", "matmul_4bit", "linear8bitlt")):
            targets.append((f"≥ {TARGET_VS_REF:g}× reference", e["speedup"], TARGET_VS_REF))
        if key.startswith(("quantize", "dequantize")):
            targets.append((f"≥ {TARGET_FRAC_B:.0%} of copy", e["frac_nyb"], TARGET_FRAC_B))
            if e["t_nyb_out"]:
                targets.append((f"≥ {TARGET_FRAC_B:.0%} of copy with `out=`", e["frac_nyb_out"], TARGET_FRAC_B))
        if key.startswith("matmul_4bit_M1_"):
            targets.append((f"≥ {TARGET_M1_VS_BF16:g}× bf16 F.linear", e["vs_bf16"], TARGET_M1_VS_BF16))
        for label, val, goal in targets:
            e["checks"].append({"target": label, "value": val, "met": None if val is None else val >= goal})
        out.append(e)
    return out


def render(data: dict) -> str:
    cfg = data["config"]
    res = data["results"]
    B = copy_bps(data)
    ev = evaluate(data)
    info = {lib: res.get(lib, {}).get("info", {}) for lib in LIBS}
    nyb, ref = info["nybble"], info["reference"]
    clone = res.get("torch", {}).get("rows", {}).get("clone")
    copies_seen = [f"{lib} {copy_bps(data, lib) / 1e9:.1f}" for lib in LIBS if copy_bps(data, lib)]
    runs = sorted({res[lib].get("run", info[lib].get("date", "?"))[:16] for lib in LIBS if lib in res})
    n = cfg["n"]
    l3 = cfg["l3_bytes"]

    def working_set(prefix: str) -> str:
        r = next((r for lib in LIBS for k, r in res.get(lib, {}).get("rows", {}).items()
                  if k.startswith(prefix) and r.get("copies")), None)
        if not r:
            return "several copies"
        total = r["copies"] * r["bytes"]
        return f"{r['copies']} copies ({total / 2**20:.0f} MiB, {total / l3:.1f}× the L3)"

    anyinfo = next((info[lib] for lib in LIBS if info[lib].get("torch")), {})
    L = [BEGIN, "", "## Python API, side by side: nybble vs bitsandbytes 0.50.2 (CPU backend) vs torch", ""]
    L.append("Generated by `python3 bench/run_python_bench.py" + (" --quick" if cfg["quick"] else "") +
             "` (one benchmark body, one subprocess per library, public `bitsandbytes` API names only). "
             "Raw results: [cpu_python.json](cpu_python.json).")
    L.append("")
    L.append(f"- **Machine:** {data['machine']}, {data['cpus']} cores, L3 {l3 / 2**20:.0f} MiB; torch CPU "
             f"capability `{anyinfo.get('torch_cpu_capability', '?')}`" +
             (" (`--isa avx2`: ATEN_CPU_CAPABILITY=avx2 and NYBBLE_CPU_ISA=avx2 emulate the AVX2 CI machine class; "
              "the reference's native library still picks its own kernels from CPUID)" if cfg.get("isa") == "avx2"
              else "" if "AVX-512" not in data["machine"] else
              " (an AVX-512 host: the reference's CPU backend uses its AVX-512 paths, e.g. `torch._int_mm` for "
              "int8, which the AVX2 CI machine class lacks; `--isa avx2` emulates that class)"))
    L.append(f"- **Date:** {', '.join(runs)}" + (" (libraries measured in separate runs: `--only`)"
                                                 if len(runs) > 1 else ""))
    L.append(f"- **Commit:** {data['commit']}; torch {anyinfo.get('torch', '?')}; threads: torch "
             f"{anyinfo.get('torch_threads', '?')} in every subprocess, nybble's pool {nyb.get('nybble_threads', '?')} "
             f"(kernel set `{nyb.get('nybble_cpu_isa', '?')}`)")
    other = {lib: res[lib]["other_load"] for lib in LIBS if "other_load" in res.get(lib, {})}
    if other:
        busy = max(other.values())
        L.append("- **Other load** (CPU time of other processes / wall time, while each subprocess ran): " +
                 ", ".join(f"{lib} {v:.2f}" for lib, v in other.items()) +
                 (f". **Other work was running (up to {busy:.2f} cores of {data['cpus']}): every multi-threaded "
                  "op then waits for descheduled threads, so these times are noisy.**" if busy >= 0.2 else
                  " (quiet)."))
    rss = [f"{lib} {info[lib]['max_rss_gib']:.1f}" for lib in LIBS if "max_rss_gib" in info[lib]]
    if rss:
        L.append(f"- **Peak memory** (max RSS of each subprocess, GiB): {', '.join(rss)}")
    L.append(f"- **reference:** bitsandbytes {ref.get('version', '?')} from `{ref.get('path', '?')}`"
             + (f" — FAILED: {ref['failed']}" if "failed" in ref else ""))
    L.append(f"- **nybble:** {nyb.get('version', '?')} imported as `{nyb.get('import', '?')}` from "
             f"`{nyb.get('path', '?')}`" + (f" — FAILED: {nyb['failed']}" if "failed" in nyb else ""))
    L.append("- **Copy bandwidth B:** " + (f"{B / 1e9:.1f} GB/s" if B else "not measured") +
             " (torch `dst.copy_(src)` of the bf16 input, bytes read + written, measured in every subprocess; "
             "B is the highest)" +
             (f"; into a fresh tensor (`src.clone()`): {clone['bytes'] / clone['s'] / 1e9:.1f} GB/s"
              if clone and "s" in clone else "") +
             (f". Copy in each subprocess, GB/s: {', '.join(copies_seen)} (their spread is a measure of the "
              "noise)." if copies_seen else "."))
    L.append(f"- **Sizes:** quantize/dequantize on n = {n:,} elements ({2 * n / 2**20:.0f} MiB of bf16, "
             f"{2 * n / l3:.1f}× the L3" +
             ("; the L3 is large, so a ~1 GiB input is used)" if 2 * n >= 1 << 30 else ")") +
             f". matmul_4bit: N = K = {cfg['mm_nk']}, NF4 bs 64 + double quant, bf16 activations; "
             f"the packed weight is cycled through {working_set('matmul_4bit')}, torch's bf16 weight through "
             f"{working_set('linear_bf16_M1_')}, so that each call reads memory when that is over the L3. "
             f"Linear8bitLt: N = K = {cfg['lin8_nk']}, has_fp16_weights=False, eval(), no_grad, bf16 input "
             "with 8 outlier columns (|x| = 8), weight resident (not cycled).")
    if cfg.get("alloc", "warm") == "warm":
        alloc = ("Outputs are allocated by each call (no `out=`), as users call the API, with glibc set to "
                 f"reuse freed memory (`GLIBC_TUNABLES={WARM_ALLOC_TUNABLES}` in every subprocess, like a "
                 "caching allocator), so a call's time is the library's work, not the page faults of fresh "
                 "memory (`--alloc os` measures with glibc's defaults: there every large output is fresh memory "
                 "and, on a VM, its page faults cost more than most kernels)")
    else:
        alloc = ("Outputs are allocated by each call (no `out=`) with glibc's defaults (`--alloc os`): every "
                 "output over 32 MiB is fresh memory from the OS, so its page faults are in every time, for all "
                 "libraries (compare the `src.clone()` row)")
    L.append("- **Timing:** time.perf_counter around batches of calls after one warm-up call; the median "
             "per-call time over the repetitions. " + alloc + ". \"nybble into `out=`\" is the same call "
             "writing into a preallocated tensor (the reference's CPU backend has no `.out` dequantize kernels)." +
             (" Run with `THP_MEM_ALLOC_ENABLE=1` (torch allocates large tensors on transparent huge pages)."
              if cfg.get("thp") else ""))
    L.append("- **Bytes counted** (spec/performance.md): quantize/dequantize_4bit 2 B + 0.5 B per element + "
             "4 B per 64-block (nested dequantize: 1 B per block + 4 B per 256 blocks); 8-bit blockwise "
             "2 B + 1 B per element + 4 B per 256-block; matmul_4bit the packed weight + u8 absmax + nested absmax; "
             "Linear8bitLt the int8 weight (GFLOP/s = 2·M·N·K).")
    L.append("")
    L.append("× = reference time / nybble time (above 1: nybble is faster); vs bf16 = torch bf16 `F.linear` "
             "time / nybble time at the same shape.")
    L.append("")
    L.append("| op | size | reference | nybble | nybble × | nybble GB/s | nybble % of B | reference % of B | "
             "nybble into `out=` | vs bf16 F.linear | targets |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for e in ev:
        def pct(x):
            return f"{fmt_num(100 * x)} %" if x is not None else ""
        gbs = fmt_num(e["gbs_nyb"]) if e["gbs_nyb"] else ""
        if e["flop"] and e["gflops_nyb"]:
            gbs += f" ({fmt_num(e['gflops_nyb'])} GFLOP/s)"
        checks = "; ".join(f"{c['target']}: " + ("n/a" if c["met"] is None else "met" if c["met"] else "**not met**")
                           for c in e["checks"])
        out_cell = (f"{fmt_time(e['t_nyb_out'])} ({pct(e['frac_nyb_out'])} of B)" if e["t_nyb_out"] else "")
        t_ref = fmt_time(e["t_ref"]) if "reference" not in e["errors"] else "error"
        t_nyb = fmt_time(e["t_nyb"]) if "nybble" not in e["errors"] else "error"
        L.append(f"| {e['name']} | {e['size']} | {t_ref} | {t_nyb} | "
                 f"{fmt_num(e['speedup']) + '×' if e['speedup'] else ''} | {gbs} | {pct(e['frac_nyb'])} | "
                 f"{pct(e['frac_ref'])} | {out_cell} | {fmt_num(e['vs_bf16']) + '×' if e['vs_bf16'] else ''} | "
                 f"{checks} |")
    acc = []
    for key, name in ops_rows(data):
        vals = {}
        for lib in ("reference", "nybble"):
            r = res.get(lib, {}).get("rows", {}).get(key, {})
            v = r.get("mean_abs_err", r.get("rel_err"))
            if v is not None:
                vals[lib] = v
        if vals:
            what = "mean abs error" if "dequantize" in key else "relative error"
            acc.append(f"{name} {what} " + " / ".join(f"{vals[lib]:.4g}" if lib in vals else "–"
                                                       for lib in ("reference", "nybble")))
    if acc:
        L.append("")
        L.append("Check on the same inputs (reference / nybble; randn input, the dequantize rows against the "
                 "input, the matmuls against fp32 F.linear with the unquantized weight): " + "; ".join(acc) + ".")
    L.append("")
    L.append("torch baselines, same run:")
    L.append("")
    L.append("| op | size | time | GB/s | % of B | GFLOP/s |")
    L.append("|---|---|---:|---:|---:|---:|")
    for k, r in res.get("torch", {}).get("rows", {}).items():
        if "s" not in r:
            L.append(f"| {k} | {r.get('size', '')} | error | | | |")
            continue
        bps = r["bytes"] / r["s"] if r.get("bytes") else None
        name = r.get("name", k)
        L.append(f"| {name} | {r.get('size', '')} | {fmt_time(r['s'])} | {fmt_num(bps / 1e9) if bps else ''} | "
                 f"{fmt_num(100 * bps / B) + ' %' if bps and B else ''} | "
                 f"{fmt_num(r['flop'] / r['s'] / 1e9) if r.get('flop') else ''} |")
    checks = [c for e in ev for c in e["checks"]]
    met = sum(1 for c in checks if c["met"])
    L.append("")
    unmeasured = sum(1 for c in checks if c["met"] is None)
    L.append(f"Targets met: {met} of {len(checks)}" + (f" ({unmeasured} not measurable)" if unmeasured else "") + ".")
    errs = [f"{e['name']} ({lib}): {msg}" for e in ev for lib, msg in e["errors"].items()]
    if errs:
        L.append("")
        L.append("Errors:")
        L.append("")
        L += [f"- {x}" for x in errs]
    if nyb.get("dropin_error"):
        L.append("")
        L.append(f"(nybble's drop-in `bitsandbytes` was not importable: {nyb['dropin_error']})")
    L += ["", END]
    return "\n".join(L) + "\n"


def write_section(md_path: Path, section: str) -> None:
    old = md_path.read_text() if md_path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + section.rstrip("\n") + tail
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + section
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(md_path)


def console_summary(data: dict) -> str:
    lines = []
    for e in evaluate(data):
        s = f"{e['name']:<48} ref {fmt_time(e['t_ref']):>9}  nybble {fmt_time(e['t_nyb']):>9}"
        if e["speedup"]:
            s += f"  {e['speedup']:6.2f}×"
        if e["frac_nyb"] is not None:
            s += f"  {100 * e['frac_nyb']:5.1f}% of B"
        if e["vs_bf16"]:
            s += f"  {e['vs_bf16']:.2f}× bf16"
        for c in e["checks"]:
            s += f"  [{c['target']}: {'n/a' if c['met'] is None else 'MET' if c['met'] else 'NOT MET'}]"
        lines.append(s)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, short budgets (a smoke test)")
    ap.add_argument("--only", choices=LIBS, action="append",
                    help="run only this library (repeatable); the others' results are kept from the existing JSON")
    ap.add_argument("--alloc", choices=("warm", "os"), default="warm",
                    help="warm (default): glibc reuses freed memory, no page faults per call (Note [warm "
                         "allocator]); os: glibc's defaults, each large output is fresh memory from the OS")
    ap.add_argument("--isa", choices=("native", "avx2"), default="native",
                    help="avx2: emulate the CI machine class on an AVX-512 host (ATEN_CPU_CAPABILITY=avx2, which "
                         "also turns off the reference's AVX-512 paths chosen in Python, and NYBBLE_CPU_ISA=avx2)")
    ap.add_argument("--thp", action="store_true",
                    help="set THP_MEM_ALLOC_ENABLE=1 in every subprocess (huge pages for torch's large tensors)")
    ap.add_argument("--from-json", help="only re-render the cpu.md section from this JSON (no run)")
    ap.add_argument("--out-dir", help="where cpu_python.json and cpu.md go (default docs/benchmarks; "
                                      "with --quick a temporary directory)")
    ap.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = worker(args.worker, json.loads(args.config))
        Path(args.result).write_text(json.dumps(res, indent=1))
        return 0

    os.chdir(ROOT)
    if args.out_dir:
        out_dir = Path(args.out_dir)
    elif args.quick:
        out_dir = Path(tempfile.gettempdir()) / "nybble-python-bench"
    else:
        out_dir = ROOT / "docs" / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "cpu_python.json"

    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        cfg = make_config(args.quick)
        cfg["thp"] = args.thp
        cfg["alloc"] = args.alloc
        cfg["isa"] = args.isa
        data = {"config": cfg, "machine": cpu_model(), "cpus": os.cpu_count(), "commit": git_commit(),
                "results": {}}
        libs = args.only or list(LIBS)
        if args.only and json_path.exists():
            old = json.loads(json_path.read_text())
            if old.get("config") == cfg:
                data["results"] = {k: v for k, v in old["results"].items() if k not in libs}
            else:
                log(f"{json_path}: different sizes; the other libraries' results are not kept")
        start = time.monotonic()
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for lib in [lib for lib in LIBS if lib in libs]:
            data["results"][lib] = {**run_worker(lib, cfg), "run": started}
        data["run_seconds"] = round(time.monotonic() - start, 1)
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(json_path)

    section = render(data)
    write_section(out_dir / "cpu.md", section)
    print(section)
    print(console_summary(data))
    log(f"wrote {out_dir / 'cpu.md'} (section) and {json_path}"
        + (f"; run took {data.get('run_seconds', 0):.0f} s" if "run_seconds" in data else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
