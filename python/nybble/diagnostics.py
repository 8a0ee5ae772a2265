"""``python -m nybble`` (and the drop-in's ``python -m bitsandbytes``): the environment in the
reference's format (bitsandbytes ``diagnostics/main.py``), what nybble was built with, the devices
it sees, and a self-check of its kernels on every device that takes about a second.

The self-check calls the ``torch.ops.nybble`` ops (the layer every API above dispatches through)
on small random inputs and checks each result against a bound that holds for a correct kernel
and is far below what a wrong layout, code table or scale produces. Exit status 1 if a check
fails, or if torch sees a GPU that nybble was not built for.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import time
import traceback
from collections.abc import Callable

import torch

from . import _C, __version__

HEADER_WIDTH = 60
# The reference's list, in its order (bitsandbytes diagnostics/main.py _RELATED_PACKAGES).
RELATED_PACKAGES = ("accelerate", "diffusers", "numpy", "pip", "peft", "safetensors", "transformers", "triton", "trl")
CHECK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def print_header(text: str = "") -> None:
    """``" text "`` centred in a line of '=' (the reference's ``print_header``)."""
    print((f" {text} " if text else "").center(HEADER_WIDTH, "="))


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not found"


def show_environment() -> None:
    """The reference's environment block, line for line."""
    print(f"Platform: {platform.platform()}")
    if platform.system() == "Linux":
        print(f"  libc: {'-'.join(platform.libc_ver())}")
    print(f"Python: {platform.python_version()}")
    print(f"PyTorch: {torch.__version__}")
    print(f"  CUDA: {torch.version.cuda or 'N/A'}")
    print(f"  HIP: {torch.version.hip or 'N/A'}")
    print(f"  XPU: {getattr(torch.version, 'xpu', 'N/A') or 'N/A'}")
    print("Related packages:")
    for name in RELATED_PACKAGES:
        print(f"  {name}: {package_version(name)}")


def _installed(name: str) -> str:
    """`name version (where)`, with a warning when the package that ``import name`` finds is not
    that distribution's (a source checkout on the path, or another project's `bitsandbytes`)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name} not installed"
    text = f"{name} {dist.version}"
    if name == "bitsandbytes" and "nybble" not in dist.version:
        return text + " (WARNING: not nybble's drop-in; pip install ./python/compat replaces it)"
    spec = importlib.util.find_spec(name)
    imported = os.path.dirname(os.path.realpath(spec.origin)) if spec and spec.origin else None
    installed = os.path.realpath(str(dist.locate_file(name)))
    if imported and imported != installed and os.path.isdir(installed):
        text += f" (installed in {os.path.dirname(installed)}, but this process imports {imported})"
    return text


def show_build() -> None:
    print(f"nybble {__version__} at {os.path.dirname(os.path.abspath(__file__))}")
    if _C.version() != __version__:
        print(f"  WARNING: the native library nybble._C is version {_C.version()}, the Python package {__version__}: "
              "rebuild or reinstall nybble")
    print(f"  distributions: {_installed('nybble')}; {_installed('bitsandbytes')}")
    isa_env = os.environ.get("NYBBLE_CPU_ISA")
    print(f"  CPU kernels: {_C.cpu_isa()}" + (f" (NYBBLE_CPU_ISA={isa_env})" if isa_env else ""))
    print(f"  CPU features: {_C.cpu_features() or 'none beyond the baseline'}")
    print(f"  threads: {_C.get_num_threads()}")
    if _C.cuda_built():
        print("  CUDA kernels: built (compiled architectures: not reported, nybble._C has no query for them)")
    else:
        print("  CUDA kernels: not built (CPU only)")


def cuda_devices() -> list[torch.device]:
    if torch.version.hip is not None or not torch.cuda.is_available():
        return []
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:  # Linux; platform.processor() is often empty there
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def show_devices() -> None:
    print("Devices:")
    print(f"  cpu: {_cpu_name()}, {os.cpu_count()} logical cores")
    for dev in cuda_devices():
        p = torch.cuda.get_device_properties(dev)
        print(f"  {dev}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    if not cuda_devices():
        reason = "PyTorch is a ROCm build" if torch.version.hip else "torch.cuda.is_available() is False"
        print(f"  cuda: none ({reason})")
    if _C.cuda_built() and len(cuda_devices()) != _C.cuda_device_count():
        print(f"  NOTE: nybble's CUDA runtime counts {_C.cuda_device_count()} device(s), PyTorch {len(cuda_devices())}")


# ---- self-check -----------------------------------------------------------------------------------
# Each check raises AssertionError with the measured and allowed values. Inputs are drawn on the
# CPU from a fixed seed and moved, so every device sees the same numbers.


def _randn(*shape: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _check_absmax(absmax: torch.Tensor, A: torch.Tensor, blocksize: int) -> torch.Tensor:
    expected = A.float().reshape(-1, blocksize).abs().amax(1)
    _expect(torch.equal(absmax.cpu(), expected.cpu()), "absmax differs from the blocks' max |x|")
    return expected


def _check_round_trip(A: torch.Tensor, dequantized: torch.Tensor, absmax: torch.Tensor, blocksize: int,
                      code: torch.Tensor) -> None:
    """Nearest-code quantization is off by at most half the widest gap of the code table (or the
    distance from ±1 to its outermost code) times the block's absmax, plus the output's rounding."""
    values = code.sort().values
    half_gap = max(values.diff().max().item() / 2, 1 - values[-1].item(), 1 + values[0].item())
    bound = half_gap + torch.finfo(A.dtype).eps + 1e-6
    err = (A.float() - dequantized.float()).abs().reshape(-1, blocksize) / absmax[:, None].clamp_min(1e-30)
    _expect(err.max().item() <= bound, f"round-trip error {err.max().item():.4g} x absmax exceeds {bound:.4g} x absmax")


def check_4bit(device: torch.device, dtype: torch.dtype, quant_type: str) -> None:
    A, bs = _randn(64, 256, dtype=dtype, device=device, seed=1), 64
    packed, absmax = torch.ops.nybble.quantize_4bit(A, bs, quant_type, torch.uint8)
    _expect(tuple(packed.shape) == (A.numel() // 2, 1), f"packed shape {tuple(packed.shape)}")
    expected = _check_absmax(absmax, A, bs)
    out = torch.ops.nybble.dequantize_4bit(packed, absmax, bs, quant_type, list(A.shape), dtype)
    _check_round_trip(A, out, expected, bs, torch.tensor(_C.code_table(quant_type), device=device))


def check_8bit(device: torch.device, dtype: torch.dtype) -> None:
    A, bs = _randn(64, 256, dtype=dtype, device=device, seed=2), 256
    code = torch.tensor(_C.code_table("dynamic_signed"), device=device)
    q, absmax = torch.ops.nybble.quantize_blockwise(A, code, bs)
    expected = _check_absmax(absmax, A, bs)
    out = torch.ops.nybble.dequantize_blockwise(q, absmax, code, bs, dtype)
    _check_round_trip(A, out, expected, bs, code)


# Allowed |gemm - dequantize+matmul| relative to sum_k |a_k w_k| (fp32 accumulation in both;
# fp16/bf16 outputs round once more, and the fused kernel may round the weights to the input dtype).
GEMM_RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def check_gemm_4bit(device: torch.device, dtype: torch.dtype) -> None:
    (N, K), bs = (96, 320), 64
    W = _randn(N, K, dtype=dtype, device=device, seed=3)
    X = _randn(3, K, dtype=dtype, device=device, seed=4)
    packed, absmax = torch.ops.nybble.quantize_4bit(W, bs, "nf4", torch.uint8)
    Wq = torch.ops.nybble.dequantize_4bit(packed, absmax, bs, "nf4", [N, K], torch.float32)
    out = torch.ops.nybble.gemm_4bit(X, packed, [N, K], absmax, bs, "nf4")
    _expect(out.shape == (3, N) and out.dtype == dtype, f"output {out.dtype} {tuple(out.shape)}")
    err = ((out.float() - X.float() @ Wq.T).abs() / (X.float().abs() @ Wq.abs().T)).max().item()
    _expect(err <= GEMM_RTOL[dtype], f"relative error {err:.3g} exceeds {GEMM_RTOL[dtype]:.3g}")


def check_int8_matmul(device: torch.device) -> None:
    g = torch.Generator().manual_seed(5)
    A = torch.randint(-127, 128, (5, 200), generator=g, dtype=torch.int8)
    B = torch.randint(-127, 128, (48, 200), generator=g, dtype=torch.int8)
    out = torch.ops.nybble.int8_linear_matmul(A.to(device), B.to(device))
    _expect(out.dtype == torch.int32, f"output dtype {out.dtype}")
    _expect(torch.equal(out.cpu().long(), A.long() @ B.long().T), "int32 result differs from the exact product")


def check_int8_pipeline(device: torch.device, dtype: torch.dtype) -> None:
    """LLM.int8 without outliers: row-wise quantize X and W, int8 matmul, dequantize."""
    X = _randn(5, 200, dtype=dtype, device=device, seed=6)
    W = _randn(48, 200, dtype=dtype, device=device, seed=7)
    CX, sx, _ = torch.ops.nybble.int8_vectorwise_quant(X)
    CW, sw, _ = torch.ops.nybble.int8_vectorwise_quant(W)
    _expect(torch.equal(sx.cpu(), X.float().abs().amax(1).cpu()), "row_stats differ from the rows' max |x|")
    off = (CX.float() - torch.round(X.float() * 127 / sx[:, None])).abs().max().item()
    _expect(off <= 1, f"codes differ from round(127 x / row_stats) by up to {off:.0f}")
    out = torch.ops.nybble.int8_mm_dequant(torch.ops.nybble.int8_linear_matmul(CX, CW), sx, sw, dtype=dtype)
    # Each factor is off by at most half a step (stats/254); the product error follows.
    Xf, Wf, dx, dw = X.float(), W.float(), sx[:, None] / 254, sw[None, :] / 254
    bound = (Xf.abs().sum(1, keepdim=True) * dw + dx * Wf.abs().sum(1)[None, :] + X.shape[1] * dx * dw
             + (Xf.abs() @ Wf.abs().T) * torch.finfo(dtype).eps)
    err = (out.float() - Xf @ Wf.T).abs()
    worst = (err / bound).max().item()
    _expect(worst <= 1.001, f"error exceeds the quantization bound by up to {worst:.3g}x")


def self_checks(device: torch.device) -> list[tuple[str, Callable[[], None]]]:
    checks = []
    for dtype in CHECK_DTYPES:
        name = str(dtype).removeprefix("torch.")
        for qt in ("nf4", "fp4"):
            checks.append((f"4-bit {qt} quantize/dequantize, {name}", lambda d=dtype, q=qt: check_4bit(device, d, q)))
        checks.append((f"8-bit blockwise quantize/dequantize, {name}", lambda d=dtype: check_8bit(device, d)))
        checks.append((f"gemm_4bit vs dequantize + matmul, {name}", lambda d=dtype: check_gemm_4bit(device, d)))
        checks.append((f"int8 quantize, matmul, dequantize, {name}", lambda d=dtype: check_int8_pipeline(device, d)))
    checks.append(("int8_linear_matmul exact", lambda: check_int8_matmul(device)))
    return checks


def run_self_check() -> bool:
    """Runs every check on every device and prints a line per device, then each distinct failure
    once (with the checks it hit and one traceback); returns whether all passed."""
    devices = [torch.device("cpu"), *cuda_devices()]
    print(f"Self-check of nybble's kernels on {', '.join(map(str, devices))}:")
    failures: dict[str, tuple[list[str], str]] = {}  # error -> (checks, first traceback)
    if len(devices) > 1 and not _C.cuda_built():
        failures["nybble was built without CUDA kernels, but PyTorch sees a CUDA GPU: rebuild nybble where the "
                 "CUDA toolkit is installed (CMake option NYBBLE_CUDA=ON)"] = (["cuda"], "")
        devices = devices[:1]
    for device in devices:
        start, checks, failed = time.perf_counter(), self_checks(device), 0
        for name, check in checks:
            try:
                check()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            except Exception as e:  # noqa: BLE001 (every failure is reported; none stops the others)
                failed += 1
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                failures.setdefault(error, ([], traceback.format_exc()))[0].append(f"{device}: {name}")
        seconds = time.perf_counter() - start
        print(f"  {device}: {len(checks) - failed} of {len(checks)} checks passed ({seconds:.2f} s)")
    for error, (where, details) in failures.items():
        print(f"FAILED ({len(where)}x): {error}\n  in: {'; '.join(where)}")
        if details:
            print(details.rstrip())
    return not failures


def main(title: str | None = None) -> int:
    """The whole report; returns the exit status. ``title`` is the header text (the drop-in passes
    ``bitsandbytes v<version>``)."""
    print_header(title or f"nybble v{__version__}")
    show_environment()
    print_header()
    show_build()
    show_devices()
    print_header()
    ok = run_self_check()
    print("SUCCESS!" if ok else "FAILED: see above. Please include this output when reporting an issue.")
    return 0 if ok else 1
