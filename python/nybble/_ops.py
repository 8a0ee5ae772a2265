"""The ``torch.library`` ops of nybble (namespace ``nybble``): the reference's op registry (§6 of
the spec) with the same schemas, a fake (meta) kernel for each, and the CPU kernels of nybble._C.

Schemas are the reference's, so ``torch.ops.nybble.X`` takes the arguments
``torch.ops.bitsandbytes.X`` takes. Two nybble additions, both optional trailing arguments that
reference-style calls never pass: ``dequantize_4bit`` accepts the double-quantized absmax like
``gemm_4bit`` does (decoded in the kernel instead of in a separate pass), and ``gemv_4bit``
accepts any number of rows. Three ops are nybble's own: ``gemm_4bit_grad``, ``A @ W`` for the
4-bit weight W of ``gemm_4bit`` (its gradient with respect to A: MatMul4Bit's backward), and
``optimizer_update_32bit_multi`` and
``optimizer_update_8bit_blockwise_multi`` update a list of parameters with one set of
hyperparameters in one kernel call (the optimizers' step); the 8-bit one also clips the update
norm (``max_unorm``), which the reference's 8-bit op cannot. Both take optional device scalars:
``step_count`` (one fp32 [1] tensor per parameter) and ``lr_tensor`` (fp32 [1]), read by the kernel
when it runs instead of ``step`` and ``lr``, so that a CUDA graph can capture the step.

The kernel functions here only check what the fake kernels cannot (values), allocate outputs and
call nybble._C; all element work is in C++. The same functions serve the CPU and the CUDA
dispatch keys; on the GPU, kernels run on torch's current stream.
"""

from __future__ import annotations

import torch

from . import _C

_lib = torch.library.Library("nybble", "DEF")

BLOCKSIZES_4BIT = (32, 64, 128, 256, 512, 1024, 2048, 4096)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STORAGE_DTYPES = (torch.uint8, torch.int8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
NESTED_BLOCKSIZE = 256

_SCHEMAS = {
    "quantize_4bit": "(Tensor A, int blocksize, str quant_type, ScalarType quant_storage) -> (Tensor, Tensor)",
    "dequantize_4bit": "(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype, "
    "Tensor? absmax_8bit=None, Tensor? absmax_code=None, Tensor? absmax_offset=None) -> Tensor",
    "dequantize_4bit.out": "(Tensor A, Tensor absmax, int blocksize, str quant_type, int[] shape, ScalarType dtype, "
    "Tensor! out) -> ()",
    "gemm_4bit": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type, "
    "Tensor? bias=None, Tensor? absmax_8bit=None, Tensor? absmax_code=None, Tensor? absmax_offset=None) -> Tensor",
    "gemm_4bit_grad": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, int blocksize, str quant_type, "
    "Tensor? absmax_8bit=None, Tensor? absmax_code=None, Tensor? absmax_offset=None) -> Tensor",
    "gemv_4bit": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize) -> Tensor",
    "gemv_4bit.out": "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor code, int blocksize, Tensor! out) -> ()",
    "quantize_blockwise": "(Tensor A, Tensor code, int blocksize) -> (Tensor, Tensor)",
    "dequantize_blockwise": "(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype) -> Tensor",
    "dequantize_blockwise.out": "(Tensor A, Tensor absmax, Tensor code, int blocksize, ScalarType dtype, "
    "Tensor! out) -> ()",
    "int8_vectorwise_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor?)",
    "int8_vectorwise_dequant": "(Tensor A, Tensor stats) -> Tensor",
    "int8_linear_matmul": "(Tensor A, Tensor B) -> Tensor",
    "int8_linear_matmul.out": "(Tensor A, Tensor B, Tensor! out) -> ()",
    "int8_mm_dequant": "(Tensor A, Tensor row_stats, Tensor col_stats, ScalarType? dtype=None, Tensor? bias=None) "
    "-> Tensor",
    "int8_scaled_mm": "(Tensor A, Tensor B, Tensor row_stats, Tensor col_stats, Tensor? bias=None, "
    "ScalarType? dtype=None) -> Tensor",
    "int8_mixed_scaled_mm": "(Tensor A, Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? outlier_cols=None, "
    "Tensor? bias=None) -> (Tensor, Tensor?)",
    "int8_double_quant": "(Tensor A, float threshold=0.0) -> (Tensor, Tensor, Tensor, Tensor, Tensor?)",
    "optimizer_update_32bit": "(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, "
    "Tensor(a3!)? state2, Tensor(a4!)? unorm_vec, float max_unorm, float param_norm, float beta1, float beta2, "
    "float beta3, float alpha, float eps, float weight_decay, int step, float lr, float gnorm_scale, "
    "bool skip_zeros=False) -> ()",
    "optimizer_update_8bit_blockwise": "(str optimizer_name, Tensor(a0!) g, Tensor(a1!) p, Tensor(a2!) state1, "
    "Tensor(a3!)? state2, float beta1, float beta2, float beta3, float alpha, float eps, int step, float lr, "
    "Tensor(a4!) qmap1, Tensor(a5!)? qmap2, Tensor(a6!) absmax1, Tensor(a7!)? absmax2, float weight_decay, "
    "float gnorm_scale, bool skip_zeros=False) -> ()",
    "optimizer_update_32bit_multi": "(str optimizer_name, Tensor[] g, Tensor(a1!)[] p, Tensor(a2!)[] state1, "
    "Tensor(a3!)[]? state2, Tensor(a4!)[]? unorm_vec, float max_unorm, float beta1, float beta2, float beta3, "
    "float alpha, float eps, float weight_decay, int step, float lr, float gnorm_scale, bool skip_zeros=False, "
    "Tensor[]? step_count=None, Tensor? lr_tensor=None) -> ()",
    "optimizer_update_8bit_blockwise_multi": "(str optimizer_name, Tensor[] g, Tensor(a1!)[] p, "
    "Tensor(a2!)[] state1, Tensor(a3!)[]? state2, float beta1, float beta2, float beta3, float alpha, float eps, "
    "int step, float lr, Tensor qmap1, Tensor? qmap2, Tensor(a6!)[] absmax1, Tensor(a7!)[]? absmax2, "
    "float weight_decay, float gnorm_scale, bool skip_zeros=False, Tensor(a8!)[]? unorm_vec=None, "
    "float max_unorm=0.0, Tensor[]? step_count=None, Tensor? lr_tensor=None) -> ()",
}
for _name, _schema in _SCHEMAS.items():
    _lib.define(_name + _schema)

# Kernels implemented by nybble._C on these dispatch keys: the same functions serve both, the C++
# core picks the device from the tensors.
KERNEL_KEYS = ["CPU", "CUDA"] if _C.cuda_built() else ["CPU"]


# The Python functions behind the ops (kernels and composites), for `call`.
_IMPLS: dict = {}
_EAGER_DEVICES = ("cpu", "cuda")


def _kernel(name: str):
    def register(fn):
        for key in KERNEL_KEYS:
            _lib.impl(name, fn, key)
        _IMPLS[name] = fn
        return fn

    return register


def _composite(name: str):
    """Ops made of other nybble ops: one implementation for every device (and for meta tensors)."""

    def register(fn):
        _lib.impl(name, fn, "CompositeExplicitAutograd")
        _IMPLS[name] = fn
        return fn

    return register


def eager(A: torch.Tensor) -> bool:
    """Whether a call whose first tensor is A may run nybble._C directly: eager mode, a plain CPU or
    CUDA tensor. Not under torch.compile or tracing, inside a dispatch or function mode (fake
    tensors, meta devices), or for tensor subclasses."""
    return (type(A) is torch.Tensor and A.device.type in _EAGER_DEVICES and not torch.compiler.is_compiling()
            and not torch._C._is_tracing() and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled())


def op(name: str, A: torch.Tensor):
    """What ``torch.ops.nybble.<name>`` runs for a call whose first tensor is A. Where ``eager(A)``,
    the function the dispatcher would run, to be called directly: the dispatcher's round trip into
    a Python kernel costs ~15-40 us a call (more for lists of tensors), more than a small GEMV
    takes on a GPU. Else the op."""
    return _IMPLS[name] if eager(A) else getattr(torch.ops.nybble, name).default


def call(name: str, A: torch.Tensor, *args, **kwargs):
    """``torch.ops.nybble.<name>(A, *args, **kwargs)``, called as ``op`` says."""
    A = plain(A)
    return op(name, A)(A, *args, **kwargs)


def plain(t):
    """t as a plain tensor (same storage, same autograd graph) where t is a parameter: an
    ``nn.Parameter``, ``Params4bit`` or ``Int8Params``. Every method call and attribute read on a
    parameter subclass goes through its ``__torch_function__`` (~1-5 us each; on the H200's host
    ~0.3 ms over one 4-bit layer's forward and backward, bench/run_host_overhead.py), and an op
    called with one takes the dispatcher's round trip (``op``). Tensor subclasses that wrap other
    tensors (DTensor, fake or functional tensors; ``__tensor_flatten__``) and anything under
    torch.compile stay as they are."""
    if type(t) is torch.Tensor or not isinstance(t, torch.nn.Parameter) or hasattr(t, "__tensor_flatten__") \
            or torch.compiler.is_compiling():
        return t
    return t.as_subclass(torch.Tensor)


def _fake(name: str):
    return torch.library.register_fake("nybble::" + name, lib=_lib)


# ---- argument checks shared by the fake and the real kernels ------------------------------------


def _require(cond, message) -> None:
    """torch._check where a condition is symbolic (fake kernels under torch.compile); a plain test
    otherwise, as torch._check costs ~1.5 us per call and a small eager call makes dozens."""
    if cond is True:
        return
    if cond is False:
        raise RuntimeError(message())
    torch._check(cond, message)



def _check_4bit(blocksize: int, quant_type: str) -> None:
    _require(
        blocksize in BLOCKSIZES_4BIT,
        lambda: f"blocksize = {blocksize} is not allowed for 4-bit (must be one of {', '.join(map(str, BLOCKSIZES_4BIT))})",
    )
    _require(quant_type in ("nf4", "fp4"), lambda: f"quant_type = {quant_type!r} is not supported (must be 'nf4' or 'fp4')")


def _check_float(name: str, t: torch.Tensor) -> None:
    _require(t.dtype in FLOAT_DTYPES, lambda: f"{name} must be float16, bfloat16 or float32, got {t.dtype}")


def _check_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    _require(t.dtype == dtype, lambda: f"{name} must be {dtype}, got {t.dtype}")


def _check_nested(absmax_8bit, absmax_code, absmax_offset) -> None:
    if absmax_8bit is None:
        return
    _check_dtype("absmax_8bit", absmax_8bit, torch.uint8)
    _require(absmax_code is not None, lambda: "absmax_code is required when absmax_8bit is given")
    _require(absmax_code.dtype == torch.float32 and absmax_code.numel() == 256,
                 lambda: f"absmax_code must be float32 [256], got {absmax_code.dtype} {list(absmax_code.shape)}")
    _require(absmax_offset is not None and absmax_offset.numel() == 1,
                 lambda: "absmax_offset must be a one-element tensor when absmax_8bit is given")


def _check_gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, grad=False) -> None:
    """gemm_4bit's arguments (A [..., K]); grad: gemm_4bit_grad's (A [..., N])."""
    _require(len(shapeB) == 2, lambda: f"shapeB must be 2-D [N, K], got {list(shapeB)}")
    d, name = (0, "N") if grad else (1, "K")
    _require(A.shape[-1] == shapeB[d], lambda: f"A's last dimension ({A.shape[-1]}) must equal {name} = shapeB[{d}] ({shapeB[d]})")
    _check_float("A", A)
    _require(B.dtype in STORAGE_DTYPES, lambda: f"B (packed weight) has unsupported storage dtype {B.dtype}")
    _check_4bit(blocksize, quant_type)
    _check_dtype("absmax", absmax, torch.float32)


def _stream(t: torch.Tensor) -> int:
    """The stream nybble's kernels run on: torch's current stream of t's device (0 on the CPU)."""
    return torch._C._cuda_getCurrentRawStream(t.device.index) if t.is_cuda else 0


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The packed bytes of a 4-bit tensor stored in any dtype (quant_storage), as a flat uint8 view."""
    t = t.contiguous()
    return t.view(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.view(-1)


def _scales(absmax, absmax_8bit, absmax_code, absmax_offset):
    """(absmax, nested_absmax, nested_code, offset) as nybble._C takes them. The offset stays a
    one-element fp32 tensor on the data's device: the kernel reads it there (no host sync, so the
    op can be captured in a CUDA graph)."""
    if absmax_8bit is None:
        return absmax.contiguous(), None, None, None
    offset = absmax_offset.to(device=absmax_8bit.device, dtype=torch.float32).reshape(1)
    return absmax_8bit.contiguous(), absmax.contiguous(), absmax_code.contiguous(), offset


# ---- 4-bit ----------------------------------------------------------------------------------------


@_fake("quantize_4bit")
def _(A, blocksize, quant_type, quant_storage):
    _check_4bit(blocksize, quant_type)
    _check_float("A", A)
    n = A.numel()
    itemsize = torch.empty(0, dtype=quant_storage).element_size()
    packed = torch.empty(((n + 1) // (2 * itemsize), 1), device=A.device, dtype=quant_storage)
    return packed, torch.empty(-(n // -blocksize), device=A.device, dtype=torch.float32)


@_kernel("quantize_4bit")
def _(A, blocksize, quant_type, quant_storage):
    _check_4bit(blocksize, quant_type)
    _check_float("A", A)
    n = A.numel()
    itemsize = torch.empty(0, dtype=quant_storage).element_size()
    nbytes = (n + 1) // 2
    _require(nbytes % itemsize == 0,
                 lambda: f"quant_storage = {quant_storage}: the {nbytes} packed bytes of {n} elements are not a "
                 f"whole number of {itemsize}-byte items (use torch.uint8 or an element count divisible by {2 * itemsize})")
    packed = torch.empty((nbytes // itemsize, 1), device=A.device, dtype=quant_storage)
    absmax = torch.empty(-(n // -blocksize), device=A.device, dtype=torch.float32)
    _C.quantize_4bit(A.contiguous(), _bytes(packed), absmax, blocksize, quant_type, stream=_stream(A))
    return packed, absmax


@_fake("dequantize_4bit")
def _(A, absmax, blocksize, quant_type, shape, dtype, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_4bit(blocksize, quant_type)
    _check_nested(absmax_8bit, absmax_code, absmax_offset)
    return torch.empty(shape, dtype=dtype, device=A.device)


def _dequantize_4bit(A, absmax, blocksize, quant_type, out, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_4bit(blocksize, quant_type)
    _check_nested(absmax_8bit, absmax_code, absmax_offset)
    _dequantize_4bit_checked(A, absmax, blocksize, quant_type, out, absmax_8bit, absmax_code, absmax_offset)


def _dequantize_4bit_checked(A, absmax, blocksize, quant_type, out, absmax_8bit, absmax_code, absmax_offset):
    """_dequantize_4bit past the checks its caller made already (blocksize, quant type, nested scales)."""
    _dequantize_4bit_into(_weight_args(A, absmax, blocksize, quant_type, absmax_8bit, absmax_code,
                                                absmax_offset), out)


def _weight_args(A, absmax, blocksize, quant_type, absmax_8bit, absmax_code, absmax_offset):
    """The packed 4-bit weight A as nybble._C's 4-bit calls take it (packed bytes, scales, nested
    blocksize, blocksize, quant type): _C.dequantize_4bit's arguments but the output, and those
    after the activations of _C.gemm_4bit and _C.gemm_4bit_grad."""
    return (_bytes(A), *_scales(absmax, absmax_8bit, absmax_code, absmax_offset), NESTED_BLOCKSIZE, blocksize,
            quant_type)


def _dequantize_4bit_into(args, out):
    """Runs _C.dequantize_4bit with args from _weight_args into out."""
    _check_float("out", out)
    _C.dequantize_4bit(*args, out, stream=_stream(args[0]))  # the packed bytes' device


@_kernel("dequantize_4bit")
def _(A, absmax, blocksize, quant_type, shape, dtype, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    out = torch.empty(shape, dtype=dtype, device=A.device)
    _dequantize_4bit(A, absmax, blocksize, quant_type, out, absmax_8bit, absmax_code, absmax_offset)
    return out


def dequantizer_4bit(A, absmax, blocksize, quant_type, shape, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    """``dequantize_4bit``'s checks and argument conversions done now, for calls to come: a function
    of the dtype that returns the dequantized weight, or None where A is not ``eager``. For
    MatMul4Bit, whose backward runs on the autograd engine's device thread, where every host call
    costs 3-4.6x its main-thread time (docs/benchmarks/backward-thread.md)."""
    if not eager(A):
        return None
    _check_4bit(blocksize, quant_type)
    _check_nested(absmax_8bit, absmax_code, absmax_offset)
    args = _weight_args(A, absmax, blocksize, quant_type, absmax_8bit, absmax_code, absmax_offset)
    device = A.device

    def dequantize(dtype):
        out = torch.empty(shape, dtype=dtype, device=device)
        _dequantize_4bit_into(args, out)
        return out

    return dequantize


@_fake("dequantize_4bit.out")
def _(A, absmax, blocksize, quant_type, shape, dtype, out):
    _require(list(out.shape) == list(shape), lambda: f"out has shape {list(out.shape)}, expected {list(shape)}")
    _require(out.dtype == dtype, lambda: f"out has dtype {out.dtype}, expected {dtype}")


@_kernel("dequantize_4bit.out")
def _(A, absmax, blocksize, quant_type, shape, dtype, out):
    _require(list(out.shape) == list(shape), lambda: f"out has shape {list(out.shape)}, expected {list(shape)}")
    _require(out.dtype == dtype, lambda: f"out has dtype {out.dtype}, expected {dtype}")
    _require(out.is_contiguous(), lambda: "out must be contiguous")
    _dequantize_4bit(A, absmax, blocksize, quant_type, out)


@_fake("gemm_4bit")
def _(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type)
    _check_nested(absmax_8bit, absmax_code, absmax_offset)
    return torch.empty((*A.shape[:-1], shapeB[0]), dtype=A.dtype, device=A.device)


# Rows of A up to which gemm_4bit runs in C++ (_C.gemm_4bit: the weight read once and decoded on
# the fly); above, the weight is dequantized into a scratch tensor in A's dtype and multiplied by
# torch (F.linear: cuBLASLt on the GPU, oneDNN/MKL on the CPU).
# GPU: any activations up to GPU_STREAMING_MAX_ROWS, bf16/fp16 up to GPU_FUSED_MAX_ROWS, and on the
# tiled kernel's shapes (K % 64 == 0, blocksize >= 64: cuda/gemm4_tile.cu) up to GPU_TILE_MAX_ROWS;
# C++ picks the kernel (cuda/gemm4.cu's Note [gemm_4bit paths]). Measured on the H200: up to 16 rows
# (cpp/bench/cuda_bench.cpp's sweep, docs/benchmarks/h200-sweep.md; the six weight shapes, NF4 bs 64
# nested, bf16) the weight-streaming kernel (cuda/gemm4_skinny.cu) takes 13-105 us where dequantize +
# cuBLASLt took 23-280 us; above, the register-decoding kernel (cuda/gemm4_mma.cu) is 1.5-5x slower
# than dequantize + cuBLASLt at 32 and 64 rows (it decodes the weight again for every 16-64 rows of
# A); the tiled kernel (bench/run_cuda_gemm4_sweep.py, docs/benchmarks/h200-gemm4-sweep.md) beats
# dequantize + cuBLASLt up to 32 rows on weights of 2^25 elements and more (1.1-1.5x at 24-32 rows)
# and up to 64 on 28672 x 8192 (1.2x; 8192 x 28672: within 2 %), and loses on 4096 x 4096 past 16.
# CPU: per dtype, CPU_FUSED_MAX_ROWS (bench/run_cpu_gemm4_sweep.py, docs/benchmarks/cpu-gemm4-sweep.md;
# the 1.1 B Llama's projection shapes on the 2-core AVX2 machine, two runs): with bf16/fp16
# activations the kernel is 1.3-5x faster up to 8 rows, within 20 % either way at 16-24, and torch's
# matmul 1.2-1.9x faster from 32 rows and 4.5-6.6x at 512 (bf16); with fp32 ones the kernel wins to
# 32 rows on every shape, at 48-128 by shape (a 4-byte scratch weight of 5632 x 2048 costs ~25 ms
# to fill), and loses 1.5-2.1x at 512.
GPU_STREAMING_MAX_ROWS = 8  # the C++ side's kMaxRows (cuda/gemm4.cu)
GPU_FUSED_MAX_ROWS = 16
GPU_TILE_MAX_ROWS = ((2**27, 64), (2**25, 32))  # (weight elements at least, rows up to)
CPU_FUSED_MAX_ROWS = {torch.bfloat16: 16, torch.float16: 16, torch.float32: 64}


def _gemm_4bit_in_cpp(A, N, K, blocksize) -> bool:
    """Whether gemm_4bit runs in C++ (else dequantize + F.linear), by the measured rule above."""
    return _fused_rule(A.numel() // max(K, 1), A.dtype, A.is_cuda, N, K, blocksize)


def _fused_rule(rows, dtype, on_gpu, N, K, blocksize) -> bool:
    """_gemm_4bit_in_cpp for `rows` rows of A in `dtype` (the sweeps ask it for their tables)."""
    if not on_gpu:
        return rows <= CPU_FUSED_MAX_ROWS[dtype]
    if rows <= GPU_STREAMING_MAX_ROWS:
        return True
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    if rows <= GPU_FUSED_MAX_ROWS:
        return True
    if K % 64 or blocksize < 64:  # not cuda/gemm4_tile.cu's shapes (gemm4_tile_applies, alignment aside)
        return False
    return rows <= _gpu_tile_max_rows(N * K)


def _gpu_tile_max_rows(weight_elements: int) -> int:
    """Rows of A up to which the tiled kernel beats dequantize + cuBLASLt on a weight this large."""
    return next((rows for size, rows in GPU_TILE_MAX_ROWS if weight_elements >= size), GPU_FUSED_MAX_ROWS)


def _gemm_4bit_kernel(A, B, shapeB, absmax, blocksize, quant_type, bias, absmax_8bit, absmax_code, absmax_offset):
    N, K = shapeB
    out = torch.empty((*A.shape[:-1], N), dtype=A.dtype, device=A.device)
    _C.gemm_4bit(A.reshape(-1, K).contiguous(), *_weight_args(B, absmax, blocksize, quant_type, absmax_8bit, absmax_code,
                                                                absmax_offset),
                 None if bias is None else bias.contiguous(), out.view(-1, N), stream=_stream(A))
    return out


def _gemm_4bit_dequant_linear(A, B, shapeB, absmax, blocksize, quant_type, bias, absmax_8bit, absmax_code, absmax_offset):
    W = torch.empty(shapeB, dtype=A.dtype, device=A.device)
    _dequantize_4bit_checked(B, absmax, blocksize, quant_type, W, absmax_8bit, absmax_code, absmax_offset)
    return torch.nn.functional.linear(A, W, bias)


def linear_dequantized(A, dequantize, bias=None):
    """gemm_4bit's dequantize + F.linear path with a weight from ``dequantizer_4bit``'s function
    (MatMul4Bit's forward, which prepares that function for its backward anyway)."""
    if bias is not None and bias.dtype != A.dtype:
        bias = bias.to(A.dtype)
    return torch.nn.functional.linear(A, dequantize(A.dtype), bias)


@_kernel("gemm_4bit")
def _(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type)
    _check_nested(absmax_8bit, absmax_code, absmax_offset)
    N, K = shapeB
    if bias is not None and bias.dtype != A.dtype:
        bias = bias.to(A.dtype)
    path = _gemm_4bit_kernel if _gemm_4bit_in_cpp(A, N, K, blocksize) else _gemm_4bit_dequant_linear
    return path(A, B, shapeB, absmax, blocksize, quant_type, bias, absmax_8bit, absmax_code, absmax_offset)


@_fake("gemm_4bit_grad")
def _(A, B, shapeB, absmax, blocksize, quant_type, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, grad=True)
    _check_nested(absmax_8bit, absmax_code, absmax_offset)
    return torch.empty((*A.shape[:-1], shapeB[1]), dtype=A.dtype, device=A.device)


# Rows of A (the output's gradient, [M, N]) up to which gemm_4bit_grad runs in C++ on the GPU: the
# tiled kernel in its gradient form (cuda/gemm4_tile.cu's Note [The gradient]), on its shapes
# (bf16/fp16, K % 64 == 0, N % 8 == 0, blocksize >= 64); above, and on the CPU, the weight is
# dequantized into a scratch tensor and multiplied by torch (cuBLASLt, oneDNN/MKL), as before.
# Measured on the H200 (bench/run_cuda_gemm4_sweep.py --grad, docs/benchmarks/h200-gemm4-grad-sweep.md;
# the six weight shapes, NF4 bs 64 nested, bf16): up to 16 rows the kernel is 1.17-1.50x faster than
# dequantize + cuBLASLt on every shape; at 24-32 rows 1.00-1.21x on weights of 2^25+ elements with
# K >= 8192 (the kernel's output columns: 64 a CTA, so K / 64 CTAs before the split over N) and
# 1.03-1.19x slower with K = 4096; from 48 rows 1.06-4x slower everywhere.
GPU_GRAD_TILE_MAX_ROWS = ((2**25, 8192, 32),)  # (weight elements at least, K at least, rows up to)
GPU_GRAD_MIN_MAX_ROWS = 16  # every other weight


def _gemm_4bit_grad_in_cpp(A, N, K, blocksize) -> bool:
    """Whether gemm_4bit_grad runs in C++ (else dequantize + matmul), by the measured rule above."""
    return _grad_rule(A.numel() // max(N, 1), A.dtype, A.is_cuda, N, K, blocksize)


def _grad_rule(rows, dtype, on_gpu, N, K, blocksize) -> bool:
    """_gemm_4bit_grad_in_cpp for `rows` rows of A in `dtype` (the sweep asks it for its table)."""
    if not on_gpu or dtype not in (torch.bfloat16, torch.float16) or K % 64 or N % 8 or blocksize < 64:
        return False
    return rows <= _gpu_grad_max_rows(N, K)


def _gpu_grad_max_rows(N: int, K: int) -> int:
    """Rows of A up to which gemm_4bit_grad's tiled kernel beats dequantize + cuBLASLt on this weight."""
    return next((rows for size, min_k, rows in GPU_GRAD_TILE_MAX_ROWS if N * K >= size and K >= min_k),
                GPU_GRAD_MIN_MAX_ROWS)


def _gemm_4bit_grad_kernel(A, B, shapeB, absmax, blocksize, quant_type, absmax_8bit, absmax_code, absmax_offset):
    N, K = shapeB
    out = torch.empty((*A.shape[:-1], K), dtype=A.dtype, device=A.device)
    _C.gemm_4bit_grad(A.reshape(-1, N).contiguous(), *_weight_args(B, absmax, blocksize, quant_type, absmax_8bit,
                                                                     absmax_code, absmax_offset),
                      out.view(-1, K), stream=_stream(A))
    return out


def _gemm_4bit_grad_dequant_matmul(A, B, shapeB, absmax, blocksize, quant_type, absmax_8bit, absmax_code, absmax_offset):
    W = torch.empty(shapeB, dtype=A.dtype, device=A.device)
    _dequantize_4bit_checked(B, absmax, blocksize, quant_type, W, absmax_8bit, absmax_code, absmax_offset)
    return torch.matmul(A, W)


@_kernel("gemm_4bit_grad")
def _(A, B, shapeB, absmax, blocksize, quant_type, absmax_8bit=None, absmax_code=None, absmax_offset=None):
    _check_gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, grad=True)
    _check_nested(absmax_8bit, absmax_code, absmax_offset)
    N, K = shapeB
    path = _gemm_4bit_grad_kernel if _gemm_4bit_grad_in_cpp(A, N, K, blocksize) else _gemm_4bit_grad_dequant_matmul
    return path(A, B, shapeB, absmax, blocksize, quant_type, absmax_8bit, absmax_code, absmax_offset)


def _code_quant_type(code: torch.Tensor) -> str:
    """gemv_4bit passes the code table, not its name: NF4's second entry is negative, FP4's positive."""
    _require(code.numel() == 16, lambda: f"code must have 16 entries for 4-bit, got {code.numel()}")
    return "fp4" if float(code[1]) > 0 else "nf4"


@_fake("gemv_4bit")
def _(A, B, shapeB, absmax, code, blocksize):
    _require(len(shapeB) == 2, lambda: f"shapeB must be 2-D [N, K], got {list(shapeB)}")
    _check_float("A", A)
    return torch.empty((*A.shape[:-1], shapeB[0]), dtype=A.dtype, device=A.device)


@_kernel("gemv_4bit")
def _(A, B, shapeB, absmax, code, blocksize):
    return torch.ops.nybble.gemm_4bit.default(A, B, shapeB, absmax, blocksize, _code_quant_type(code))


@_fake("gemv_4bit.out")
def _(A, B, shapeB, absmax, code, blocksize, out):
    _require(out.shape == (*A.shape[:-1], shapeB[0]), lambda: f"out has shape {list(out.shape)}")


@_kernel("gemv_4bit.out")
def _(A, B, shapeB, absmax, code, blocksize, out):
    out.copy_(torch.ops.nybble.gemm_4bit.default(A, B, shapeB, absmax, blocksize, _code_quant_type(code)))


# ---- 8-bit blockwise --------------------------------------------------------------------------------


def _check_blockwise(code: torch.Tensor, blocksize: int) -> None:
    _require(blocksize > 0, lambda: f"blocksize = {blocksize} must be positive")
    _check_dtype("code", code, torch.float32)
    _require(code.numel() == 256, lambda: f"code must have 256 entries, got {code.numel()}")


@_fake("quantize_blockwise")
def _(A, code, blocksize):
    _check_blockwise(code, blocksize)
    n = A.numel()
    return torch.empty_like(A, dtype=torch.uint8), torch.empty(-(n // -blocksize), device=A.device, dtype=torch.float32)


@_kernel("quantize_blockwise")
def _(A, code, blocksize):
    _check_blockwise(code, blocksize)
    _check_float("A", A)
    n = A.numel()
    out = torch.empty(A.shape, device=A.device, dtype=torch.uint8)
    absmax = torch.empty(-(n // -blocksize), device=A.device, dtype=torch.float32)
    _C.quantize_blockwise(A.contiguous(), code.contiguous(), out, absmax, blocksize, stream=_stream(A))
    return out, absmax


@_fake("dequantize_blockwise")
def _(A, absmax, code, blocksize, dtype):
    _check_blockwise(code, blocksize)
    _check_dtype("A", A, torch.uint8)
    return torch.empty_like(A, dtype=dtype)


@_kernel("dequantize_blockwise")
def _(A, absmax, code, blocksize, dtype):
    _check_blockwise(code, blocksize)
    out = torch.empty(A.shape, device=A.device, dtype=dtype)
    _C.dequantize_blockwise(A.contiguous(), absmax.contiguous(), code.contiguous(), blocksize, out, stream=_stream(A))
    return out


@_fake("dequantize_blockwise.out")
def _(A, absmax, code, blocksize, dtype, out):
    _require(out.shape == A.shape and out.dtype == dtype,
                 lambda: f"out must be {dtype} {list(A.shape)}, got {out.dtype} {list(out.shape)}")


@_kernel("dequantize_blockwise.out")
def _(A, absmax, code, blocksize, dtype, out):
    _check_blockwise(code, blocksize)
    _require(out.shape == A.shape and out.dtype == dtype and out.is_contiguous(),
                 lambda: f"out must be contiguous {dtype} {list(A.shape)}, got {out.dtype} {list(out.shape)}")
    _C.dequantize_blockwise(A.contiguous(), absmax.contiguous(), code.contiguous(), blocksize, out, stream=_stream(A))


# ---- LLM.int8 -------------------------------------------------------------------------------------


@_fake("int8_vectorwise_quant")
def _(A, threshold=0.0):
    out = torch.empty_like(A, dtype=torch.int8)
    rows = A.numel() // A.shape[-1] if A.ndim else 1
    row_stats = torch.empty(rows, device=A.device, dtype=torch.float32)
    if threshold == 0.0:
        return out, row_stats, None
    n = torch.library.get_ctx().new_dynamic_size()
    return out, row_stats, torch.empty(n, device=A.device, dtype=torch.int64)


@_kernel("int8_vectorwise_quant")
def _(A, threshold=0.0):
    _check_float("A", A)
    _require(threshold >= 0.0, lambda: f"threshold = {threshold} must be >= 0 (0 disables outliers)")
    cols = A.shape[-1] if A.ndim else 1
    rows = A.numel() // cols if cols else 0
    out = torch.empty(A.shape, device=A.device, dtype=torch.int8)
    row_stats = torch.empty(rows, device=A.device, dtype=torch.float32)
    mask = torch.empty(cols, device=A.device, dtype=torch.uint8) if threshold > 0.0 else None
    _C.int8_vectorwise_quant(A.reshape(rows, cols).contiguous(), float(threshold), out.view(rows, cols), row_stats, mask, stream=_stream(A))
    return out, row_stats, None if mask is None else mask.nonzero().view(-1)


@_fake("int8_vectorwise_dequant")
def _(A, stats):
    _check_dtype("A", A, torch.int8)
    return torch.empty_like(A, dtype=torch.float32)


@_kernel("int8_vectorwise_dequant")
def _(A, stats):
    _check_dtype("A", A, torch.int8)
    out = torch.empty(A.shape, device=A.device, dtype=torch.float32)
    cols = A.shape[-1] if A.ndim else 1
    _C.int8_vectorwise_dequant(A.reshape(-1, cols).contiguous(), stats.reshape(-1).float().contiguous(), out.view(-1, cols), stream=_stream(A))
    return out


def _check_int8_matmul(A, B):
    _check_dtype("A", A, torch.int8)
    _check_dtype("B", B, torch.int8)
    _require(B.ndim == 2, lambda: f"B must be 2-D [N, K], got {B.ndim}-D")
    _require(A.shape[-1] == B.shape[-1], lambda: f"A's last dimension ({A.shape[-1]}) must equal B's ({B.shape[-1]})")


@_fake("int8_linear_matmul")
def _(A, B):
    _check_int8_matmul(A, B)
    return torch.empty((*A.shape[:-1], B.shape[0]), device=A.device, dtype=torch.int32)


def _int8_linear_matmul(A, B, out):
    K = A.shape[-1]
    _C.int8_linear_matmul(A.reshape(-1, K).contiguous(), B.contiguous(), out.view(-1, B.shape[0]), stream=_stream(A))


@_kernel("int8_linear_matmul")
def _(A, B):
    _check_int8_matmul(A, B)
    out = torch.empty((*A.shape[:-1], B.shape[0]), device=A.device, dtype=torch.int32)
    _int8_linear_matmul(A, B, out)
    return out


@_fake("int8_linear_matmul.out")
def _(A, B, out):
    _check_int8_matmul(A, B)
    _check_dtype("out", out, torch.int32)


@_kernel("int8_linear_matmul.out")
def _(A, B, out):
    _check_int8_matmul(A, B)
    _check_dtype("out", out, torch.int32)
    _require(out.shape == (*A.shape[:-1], B.shape[0]) and out.is_contiguous(),
                 lambda: f"out must be contiguous {[*A.shape[:-1], B.shape[0]]}, got {list(out.shape)}")
    _int8_linear_matmul(A, B, out)


def _check_mm_dequant(A, row_stats, col_stats):
    _check_dtype("A", A, torch.int32)
    _check_dtype("row_stats", row_stats, torch.float32)
    _check_dtype("col_stats", col_stats, torch.float32)


@_fake("int8_mm_dequant")
def _(A, row_stats, col_stats, dtype=None, bias=None):
    _check_mm_dequant(A, row_stats, col_stats)
    return torch.empty_like(A, dtype=dtype or torch.float16)


def _int8_mm_dequant(A, row_stats, col_stats, dtype, bias):
    out = torch.empty(A.shape, device=A.device, dtype=dtype or torch.float16)
    N = A.shape[-1]
    _C.int8_mm_dequant(A.reshape(-1, N).contiguous(), row_stats.reshape(-1).contiguous(), col_stats.reshape(-1).contiguous(),
                       None if bias is None else bias.contiguous(), out.view(-1, N), stream=_stream(A))
    return out


@_kernel("int8_mm_dequant")
def _(A, row_stats, col_stats, dtype=None, bias=None):
    _check_mm_dequant(A, row_stats, col_stats)
    return _int8_mm_dequant(A, row_stats, col_stats, dtype, bias)


@_fake("int8_scaled_mm")
def _(A, B, row_stats, col_stats, bias=None, dtype=None):
    _check_int8_matmul(A, B)
    return torch.empty((*A.shape[:-1], B.shape[0]), device=A.device, dtype=dtype or torch.float16)


# One op (not a composite of the two): an eager call pays one dispatcher round trip, not three.
@_kernel("int8_scaled_mm")
def _(A, B, row_stats, col_stats, bias=None, dtype=None):
    _check_int8_matmul(A, B)
    _check_dtype("row_stats", row_stats, torch.float32)
    _check_dtype("col_stats", col_stats, torch.float32)
    acc = torch.empty((*A.shape[:-1], B.shape[0]), device=A.device, dtype=torch.int32)
    _int8_linear_matmul(A, B, acc)
    return _int8_mm_dequant(acc, row_stats, col_stats, dtype, bias)


@_composite("int8_mixed_scaled_mm")
def _(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
    out = call("int8_scaled_mm", CA, CB, SCA, SCB, bias=bias, dtype=A.dtype)
    if outlier_cols is None or outlier_cols.numel() == 0:
        return out, torch.empty(0, device=A.device, dtype=A.dtype)
    # Outlier columns in the input's precision against the dequantized int8 weight columns (§2.1).
    subA = A[..., outlier_cols].contiguous()
    subB = call("int8_vectorwise_dequant", CB[:, outlier_cols].contiguous(), SCB).to(A.dtype)
    out.view(-1, out.shape[-1]).addmm_(subA.view(-1, subA.shape[-1]), subB.t())
    return out, subA


@_composite("int8_double_quant")
def _(A, threshold=0.0):
    CA, row_stats, outlier_cols = call("int8_vectorwise_quant", A, threshold)
    # Column-wise: quantize the transpose row-wise (outliers zeroed first), then transpose back.
    At = A.reshape(-1, A.shape[-1])
    if outlier_cols is not None and threshold > 0.0:
        At = torch.where(At.abs() >= threshold, torch.zeros((), dtype=At.dtype, device=At.device), At)
    CAt, col_stats, _ = call("int8_vectorwise_quant", At.t().contiguous(), 0.0)
    return CA, CAt.t().reshape(A.shape), row_stats, col_stats, outlier_cols


# ---- optimizers ------------------------------------------------------------------------------------
# The update math and its validation are in C++ (nybble/optim.hpp); the checks here are the
# reference's fake-kernel contract (its messages), shared by the fake and the real kernels.


def _check_optimizer_param(g, p) -> None:
    _require(g.numel() == p.numel(),
                 lambda: f"g and p must have the same number of elements, got {g.numel()} and {p.numel()}")
    _require(g.dtype in FLOAT_DTYPES, lambda: f"g must be bfloat16, float16, or float32, got {g.dtype}")
    _require(g.dtype == p.dtype,
                 lambda: f"Expected all tensors to have the same dtype, got g.dtype={g.dtype}, p.dtype={p.dtype}")


def _check_optimizer_32bit(g, p, state1, state2) -> None:
    _check_optimizer_param(g, p)
    _check_dtype("state1", state1, torch.float32)
    if state2 is not None:
        _check_dtype("state2", state2, torch.float32)


def _check_optimizer_8bit(g, p, state1, state2, qmap1, qmap2, absmax1, absmax2) -> None:
    _check_optimizer_param(g, p)
    _require(state1.dtype == torch.uint8, lambda: f"state1 must be uint8, got {state1.dtype}")
    _require(qmap1.dtype == absmax1.dtype == torch.float32,
                 lambda: f"Expected qmap1 and absmax1 to be float32, got qmap1.dtype={qmap1.dtype}, "
                 f"absmax1.dtype={absmax1.dtype}")
    if state2 is not None:
        _require(state2.dtype == torch.uint8, lambda: f"state2 must be uint8, got {state2.dtype}")
        _require(qmap2 is not None and absmax2 is not None, lambda: "state2 needs qmap2 and absmax2")
        _require(qmap2.dtype == absmax2.dtype == torch.float32,
                     lambda: f"Expected qmap2 and absmax2 to be float32, got qmap2.dtype={qmap2.dtype}, "
                     f"absmax2.dtype={absmax2.dtype}")


def _item(tensors, i):
    return None if tensors is None else tensors[i]


def fp32_norm(p: torch.Tensor) -> torch.Tensor:
    """||p||_2 in fp32: the limit of update-norm clipping (max_unorm, LAMB and LARS) is relative to it."""
    return torch.linalg.vector_norm(p.detach(), dtype=torch.float32)


def refuse_clipped_capture(p: torch.Tensor, max_unorm: float) -> None:
    """Raises while p's stream is captured in a CUDA graph and max_unorm > 0: clipping reads the
    parameters' norms on the host."""
    if max_unorm > 0.0 and p.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"max_unorm = {max_unorm}: a step that clips the update norm (LAMB, LARS) reads the "
                           "parameters' norms on the host and cannot be captured in a CUDA graph; capture steps "
                           "with max_unorm = 0")


def _param_norms(p, max_unorm: float) -> list[float]:
    """Every parameter's norm as a float when clipping (max_unorm > 0), else []. The kernels take
    the norm as a host float, so this is where a clipped step waits for the GPU: once per call
    (one transfer of all norms), never without clipping."""
    if not max_unorm > 0.0:
        return []
    refuse_clipped_capture(p[0], max_unorm)
    return torch.stack([fp32_norm(t) for t in p]).tolist()


@_fake("optimizer_update_32bit")
def _(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha, eps,
      weight_decay, step, lr, gnorm_scale, skip_zeros=False):
    _check_optimizer_32bit(g, p, state1, state2)


@_kernel("optimizer_update_32bit")
def _(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3, alpha, eps,
      weight_decay, step, lr, gnorm_scale, skip_zeros=False):
    _check_optimizer_32bit(g, p, state1, state2)
    _C.optimizer_update_32bit(optimizer_name, g.contiguous(), p, state1, state2, unorm_vec, max_unorm, param_norm,
                              beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, skip_zeros,
                              stream=_stream(p))


@_fake("optimizer_update_8bit_blockwise")
def _(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1,
      absmax2, weight_decay, gnorm_scale, skip_zeros=False):
    _check_optimizer_8bit(g, p, state1, state2, qmap1, qmap2, absmax1, absmax2)


@_kernel("optimizer_update_8bit_blockwise")
def _(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1,
      absmax2, weight_decay, gnorm_scale, skip_zeros=False):
    _check_optimizer_8bit(g, p, state1, state2, qmap1, qmap2, absmax1, absmax2)
    _C.optimizer_update_8bit_blockwise(optimizer_name, g.contiguous(), p, state1, state2, beta1, beta2, beta3, alpha,
                                       eps, step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay, gnorm_scale,
                                       skip_zeros, stream=_stream(p))


# Note [Checks on failure]: the multi kernels take hundreds of parameters per call, and checking
# each in Python costs ~3 us, as much as updating a small one. nybble checks every parameter in C++
# before it changes anything, so the kernels call C++ first and, only when it refuses, run the
# reference's checks, which raise the reference's message for what they cover (the fake kernels
# run them first, as the reference does).


def _check_optimizer_32bit_multi(g, p, state1, state2) -> None:
    for i in range(len(g)):
        _check_optimizer_32bit(g[i], p[i], state1[i], _item(state2, i))


@_fake("optimizer_update_32bit_multi")
def _(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, beta1, beta2, beta3, alpha, eps, weight_decay,
      step, lr, gnorm_scale, skip_zeros=False, step_count=None, lr_tensor=None):
    _check_optimizer_32bit_multi(g, p, state1, state2)


@_kernel("optimizer_update_32bit_multi")
def _(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, beta1, beta2, beta3, alpha, eps, weight_decay,
      step, lr, gnorm_scale, skip_zeros=False, step_count=None, lr_tensor=None):
    if not p:
        return
    norms = _param_norms(p, max_unorm)
    try:
        _C.optimizer_update_32bit_multi(optimizer_name, [t.contiguous() for t in g], p, state1, state2, unorm_vec,
                                        norms, max_unorm, beta1, beta2, beta3, alpha, eps,
                                        weight_decay, step, lr, gnorm_scale, skip_zeros, step_count, lr_tensor,
                                        stream=_stream(p[0]))
    except Exception:
        _check_optimizer_32bit_multi(g, p, state1, state2)  # Note [Checks on failure]
        raise


def _check_optimizer_8bit_multi(g, p, state1, state2, qmap1, qmap2, absmax1, absmax2) -> None:
    for i in range(len(g)):
        _check_optimizer_8bit(g[i], p[i], state1[i], _item(state2, i), qmap1, qmap2, absmax1[i], _item(absmax2, i))


@_fake("optimizer_update_8bit_blockwise_multi")
def _(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1,
      absmax2, weight_decay, gnorm_scale, skip_zeros=False, unorm_vec=None, max_unorm=0.0, step_count=None,
      lr_tensor=None):
    _check_optimizer_8bit_multi(g, p, state1, state2, qmap1, qmap2, absmax1, absmax2)


@_kernel("optimizer_update_8bit_blockwise_multi")
def _(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1,
      absmax2, weight_decay, gnorm_scale, skip_zeros=False, unorm_vec=None, max_unorm=0.0, step_count=None,
      lr_tensor=None):
    if not p:
        return
    norms = _param_norms(p, max_unorm)
    try:
        _C.optimizer_update_8bit_blockwise_multi(optimizer_name, [t.contiguous() for t in g], p, state1, state2,
                                                 beta1, beta2, beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1,
                                                 absmax2, weight_decay, gnorm_scale, skip_zeros, unorm_vec,
                                                 norms, max_unorm, step_count, lr_tensor,
                                                 stream=_stream(p[0]))
    except Exception:
        _check_optimizer_8bit_multi(g, p, state1, state2, qmap1, qmap2, absmax1, absmax2)  # Note [Checks on failure]
        raise
