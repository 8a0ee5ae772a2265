"""nybble.functional: the low-level API of ``bitsandbytes.functional`` (0.50.2).

Same names, signatures, defaults, return types and warnings as the reference (spec §1-§4.5).
Every function here does bookkeeping only (argument checks, shapes, dtypes, allocation, building
a ``QuantState``) and hands element work to the ``torch.ops.nybble`` ops (``_ops.py``), which run
nybble's C++ kernels. Where nybble deliberately differs from the reference (spec "Decisions":
any number of rows in ``gemv_4bit``, exactly nearest 8-bit codes on every device, fp16/bf16/fp32
int8 quantization without a cast, ``1/(127*127)`` in ``int8_mm_dequant``) it is the op that
differs, and this module simply passes the arguments through.

Error messages name the argument, its value and the rule; where the reference's message is
matched by its users' tests, it is kept as a substring.
"""

from __future__ import annotations

import ctypes as ct
import itertools
import math
import numbers
import statistics
import warnings
from collections.abc import Iterable
from typing import Any, Optional

import torch
from torch import Tensor
from typing_extensions import deprecated

from . import _C
from . import _ops  # noqa: F401  (registers torch.ops.nybble.*)
from .autograd._functions import gemm_4bit as _gemm_4bit
from .utils import pack_dict_to_tensor, unpack_tensor_to_dict

# The reference exposes its ctypes library here; nybble's native module takes its place.
lib = _C

# Scale of the int8 row/column statistics (the reference exports it as ``C``).
C = 127.0

# Code maps by name, filled lazily as the reference does ("dynamic" = the signed dynamic map).
name2qmap: dict[str, Tensor] = {}

FIRST_CUDA_DEVICE = torch.device("cuda", index=0)

BLOCKSIZES_4BIT = _ops.BLOCKSIZES_4BIT
FLOAT_DTYPES = _ops.FLOAT_DTYPES
_QUANT_STORAGE_DTYPES = _ops.STORAGE_DTYPES
_NESTED_BLOCKSIZE = _ops.NESTED_BLOCKSIZE  # double quantization of 4-bit absmax (spec §1.6)


# ---- singletons ----------------------------------------------------------------------------------


class GlobalPageManager:
    """Keeps the paged tensors of paged optimizers, to prefetch them all at once."""

    _instance = None

    def __init__(self):
        raise RuntimeError("Call get_instance() instead")

    def initialize(self):
        self.paged_tensors = []

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def prefetch_all(self, to_cpu=False):
        # The first tensors added are used first: swap them in last so they are not evicted again.
        for t in reversed(self.paged_tensors):
            prefetch_tensor(t, to_cpu)


class CUBLAS_Context:
    """The reference's per-device cuBLAS handle cache. nybble's int8 matmul manages its own
    handles inside the C++ library, so there is no context to hand out."""

    _instance = None

    def __init__(self):
        raise RuntimeError("Call get_instance() instead")

    def initialize(self):
        self.context = {}

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def get_context(self, device):
        raise NotImplementedError(
            "CUBLAS_Context.get_context: nybble keeps no cuBLAS context in Python; "
            "use int8_linear_matmul (torch.ops.nybble.int8_linear_matmul) for int8 matrix products"
        )


# ---- argument checks -----------------------------------------------------------------------------


def _check_tensor(func: str, name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{func}: {name} must be a torch.Tensor, got {type(value).__name__}")


def _check_float_input(func: str, A, what: str) -> None:
    _check_tensor(func, "A", A)
    if A.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{func}: A: {what} only supports 16/32-bit floats (float16, bfloat16, float32), "
                         f"but got {A.dtype}")


def _check_dtype(func: str, name: str, value, dtype: torch.dtype) -> None:
    _check_tensor(func, name, value)
    if value.dtype != dtype:
        raise ValueError(f"{func}: {name} must be {dtype}, got {value.dtype}")


def _check_blocksize_4bit(func: str, blocksize) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, numbers.Integral) or blocksize not in BLOCKSIZES_4BIT:
        raise ValueError(f"{func}: invalid blocksize {blocksize!r}: 4-bit blocksize must be one of "
                         f"{', '.join(map(str, BLOCKSIZES_4BIT))}")


def _check_quant_type(func: str, quant_type) -> None:
    if quant_type not in QuantState.valid_quant_types:
        raise ValueError(f"{func}: quant_type must be 'nf4' or 'fp4', got {quant_type!r}")


def _check_blocksize_8bit(func: str, blocksize) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, numbers.Integral):
        raise TypeError(f"{func}: blocksize must be an int, got {type(blocksize).__name__} {blocksize!r}")
    if blocksize <= 0:
        raise ValueError(f"{func}: blocksize must be positive, got {blocksize}")


# ---- code maps -----------------------------------------------------------------------------------

# nybble's built-in tables, read once from C++ (a plain list is also what torch.compile can trace).
_CODE_TABLES: dict[str, list[float]] = {
    name: _C.code_table(name) for name in ("nf4", "fp4", "dynamic_signed", "dynamic_unsigned")
}


def _code_table(name: str, device) -> Tensor:
    """A fresh float32 tensor of one of nybble's built-in tables. Fresh on every call: quant maps
    of different layers must not share storage (safetensors refuses shared tensors in one
    state_dict)."""
    return torch.tensor(_CODE_TABLES[name], dtype=torch.float32, device=device)


# AbnormalFloat4 (arXiv 2306.06965), blocksize 64 only, listed descending as in the reference.
_AF4_BS64 = [
    1.0, 0.72424863, 0.55496234, 0.42563882, 0.31675666, 0.21961274, 0.12934483, 0.04273164,
    0.0, -0.04934812, -0.14982478, -0.25607552, -0.3736951, -0.51243739, -0.69441008, -1.0,
]


def get_4bit_type(typename, device=None, blocksize=64):
    """The 16-entry code of a 4-bit type, indexed by the 4-bit code: "nf4", "fp4" (bit-pattern
    order, spec §1.1-1.2), "int4" ([7..0, -0..-7] / 7) or "af4" (blocksize 64 only).

    ``device=None`` means CUDA in the reference; nybble uses CUDA when it is available, else CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if typename in ("nf4", "fp4"):
        return _code_table(typename, device)
    if typename == "int4":
        # The reference builds this from Python ints and fails dividing in place (int64 tensor);
        # nybble returns the intended float table.
        data = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]
    elif typename == "af4":
        if blocksize != 64:
            raise NotImplementedError("4-bit AbnormalFloats currently only support blocksize 64.")
        data = list(_AF4_BS64)
    else:
        raise NotImplementedError(f"Typename {typename} not supported")
    code = torch.tensor(data, dtype=torch.float32, device=device)
    return code.div_(code.abs().max())


def create_linear_map(signed=True, total_bits=8, add_zero=True):
    """``2**total_bits`` evenly spaced values in [-1, 1] (or [0, 1]), zero-padded in the middle
    to 256 entries. With ``add_zero`` (or fewer than 8 bits) a signed map has an odd count so
    that 0 is one of the values."""
    low = -1.0 if signed else 0.0
    count = 2**total_bits
    if (add_zero or total_bits < 8) and signed:
        count -= 1
    values = torch.linspace(low, 1.0, count, dtype=torch.float32)
    gap = 256 - values.numel()
    if gap == 0:
        return values
    half = values.numel() // 2
    return torch.tensor(values[:half].tolist() + [0.0] * gap + values[half:].tolist(), dtype=torch.float32)


def _normal_ppf(quantiles: Tensor) -> list[float]:
    """Inverse normal CDF at float32 quantiles, as float32 values. scipy's ``norm.ppf`` (what
    the reference calls) when installed; otherwise the standard library's exact inverse rounded
    to float32, which is what scipy returns for float32 input."""
    try:
        from scipy.stats import norm
    except ImportError:
        inv = statistics.NormalDist().inv_cdf
        return torch.tensor([inv(float(q)) for q in quantiles], dtype=torch.float32).tolist()
    return norm.ppf(quantiles.numpy()).tolist()


def create_normal_map(offset=0.9677083, use_extra_value=True):
    """The NormalFloat map (spec §1.1): normal quantiles at evenly spaced probabilities between
    ``offset`` and 0.5, mirrored, zero-padded to 256 entries, sorted, divided by the maximum.
    ``use_extra_value`` gives 8 positive values (asymmetric NF4), else 7."""
    positives = _normal_ppf(torch.linspace(offset, 0.5, 9 if use_extra_value else 8)[:-1])
    negatives = [-v for v in _normal_ppf(torch.linspace(offset, 0.5, 8)[:-1])]
    zeros = [0.0] * (256 - len(positives) - len(negatives))
    values = torch.tensor(positives + zeros + negatives, dtype=torch.float32).sort().values
    values /= values.max()
    return values


def create_fp8_map(signed=True, exponent_bits=5, precision_bits=2, total_bits=8):
    """A small float format normalized to [-1, 1]: exponent bias ``2**(exponent_bits-1)``,
    normals ``(1 + mantissa) * 2**(e - bias - 1)``, subnormals ``mantissa * 2**-bias``; sorted and
    zero-padded to 256 entries. FP4 is ``create_fp8_map(True, 2, 1, 4)`` (spec §1.2)."""
    if exponent_bits + precision_bits != total_bits - (1 if signed else 0):
        raise ValueError(f"create_fp8_map: exponent_bits ({exponent_bits}) + precision_bits ({precision_bits}) "
                         f"must equal total_bits ({total_bits}) minus the sign bit ({int(bool(signed))})")
    bias = 2 ** (exponent_bits - 1)
    values = []
    for exponent in range(2**exponent_bits):
        for mantissa_bits in itertools.product([0, 1], repeat=precision_bits):
            value = 0 if exponent == 0 else 1
            for i, bit in enumerate(mantissa_bits):
                value += bit * 2 ** -(i + 1)
            # Python ints and floats mixed exactly as the reference does, so -0 and 0 sort alike.
            value = value * 2**-bias if exponent == 0 else value * 2 ** -(exponent - bias - 1)
            values.append(value)
            if signed:
                values.append(-value)
    values.sort()
    values += [0] * (256 - len(values)) if total_bits < 8 else []
    values.sort()
    code = torch.tensor(values, dtype=torch.float32)
    code /= code.max()
    return code


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """The dynamic-exponent 8-bit map (spec §1.3; arXiv 1511.04561): for each decade
    ``10**(i - max_exponent_bits + 1)`` the midpoints of an even split of [0.1, 1], more of them
    for the larger decades, plus 0 and 1, sorted. The default signed and unsigned maps come from
    nybble's C++ tables (``_C.code_table``), which equal the reference bit for bit."""
    if max_exponent_bits == 7 and total_bits == 8:
        return _code_table("dynamic_signed" if signed else "dynamic_unsigned", "cpu")
    return _build_dynamic_map(signed, max_exponent_bits, total_bits)


def _build_dynamic_map(signed: bool, max_exponent_bits: int, total_bits: int) -> Tensor:
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    data: list[float] = []

    def add_decade(decade: int, items: int) -> None:
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + decade)
        data.extend((scale * means).tolist())
        if signed:
            data.extend((-scale * means).tolist())

    for i in range(max_exponent_bits):
        extra = 0 if signed else 1
        add_decade(i, int(2 ** (i + non_sign_bits - max_exponent_bits + extra) + 1))
    if additional_items > 0:
        # The reference puts the additional items in the last decade of the loop above.
        add_decade(max_exponent_bits - 1, additional_items + 1)
    data += [0, 1.0]
    if len(data) != 2**total_bits:
        raise ValueError(f"create_dynamic_map: signed={signed}, max_exponent_bits={max_exponent_bits}, "
                         f"total_bits={total_bits} gives {len(data)} values, not 2**total_bits = {2**total_bits}")
    data += [0] * (256 - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def _default_dynamic_map(device) -> Tensor:
    if "dynamic" not in name2qmap:
        name2qmap["dynamic"] = create_dynamic_map().to(device)
    return name2qmap["dynamic"]


# ---- device helpers ------------------------------------------------------------------------------


def is_on_gpu(tensors: Iterable[Optional[Tensor]]):
    """True if all given tensors (None and paged tensors skipped) are on one device: all on the
    CPU or all on the same accelerator. Raises RuntimeError otherwise."""
    tensors = list(tensors)
    devices = {(t.device.type, t.device.index) for t in tensors
               if t is not None and not getattr(t, "is_paged", False)}
    if len(devices) <= 1:
        return True
    found = [(t.shape, t.device) for t in tensors if t is not None]
    where = "device" if ("cpu", None) in devices else "GPU"
    raise RuntimeError(f"Input tensors need to be on the same {where}, but found the following tensor and "
                       f"device combinations:\n {found}")


def get_ptr(A: Optional[Tensor]) -> Optional[ct.c_void_p]:
    """The address of A's first element as a ctypes pointer (None for None)."""
    if A is None:
        return None
    return ct.c_void_p(A.data_ptr())


def has_avx512bf16():
    """False. In the reference this says whether its CPU library has the fused AVX512-BF16 4-bit
    kernel, and True makes Linear4bit repack weights into that kernel's private layout. nybble's
    CPU kernels read the standard packed layout on every CPU (they pick AVX2/AVX-512 themselves),
    so there is no repacked path to take."""
    return False


# ---- QuantState ----------------------------------------------------------------------------------


def _dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the reference writes ``str(dtype).strip("torch.")``,
    which is the same for every torch dtype)."""
    return str(dtype).removeprefix("torch.")


class QuantState:
    """The state needed to undo a blockwise quantization (spec §1.7): absmax per block, the code
    table, block size, original shape and dtype, the 4-bit type, and for double quantization the
    offset and the nested state of the 8-bit quantized absmax."""

    valid_quant_types = ("fp4", "nf4")
    valid_qs_type_keys = [f"bitsandbytes__{x}" for x in valid_quant_types]
    valid_qs_keys = [
        "absmax",
        "quant_map",
        "nested_absmax",
        "nested_quant_map",
        "quant_state",
        "quant_type",
        "blocksize",
        "dtype",
        "shape",
        "nested_blocksize",
        "nested_dtype",
        "nested_offset",
    ]

    def __init__(self, absmax, shape=None, code=None, blocksize=None, quant_type=None, dtype=None, offset=None,
                 state2=None):
        self.absmax = absmax
        self.shape = shape
        self.code = code
        self.dtype = dtype
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.offset = offset
        self.state2 = state2
        self.nested = state2 is not None

    def __getattr__(self, name):
        # FSDP resolves the state_dict key "weight.quant_state.bitsandbytes__nf4" by getattr
        # traversal; answer with the packed tensor. Only reached for attributes that do not exist.
        if name.startswith("bitsandbytes__"):
            packed = self.as_dict(packed=True)
            key = "quant_state." + name
            if key in packed:
                return packed[key]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __getitem__(self, idx):
        """The legacy list view: ``[absmax, shape, dtype, blocksize, [offset, state2] or None,
        quant_type]``."""
        nested = [self.offset, self.state2] if self.nested else None
        return [self.absmax, self.shape, self.dtype, self.blocksize, nested, self.quant_type][idx]

    # -- serialization ------------------------------------------------------------------------------

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        """The state as a dict for ``_save_to_state_dict``. Unpacked: tensors and plain values.
        Packed (4-bit states only): the tensors, plus the plain values as JSON bytes in one uint8
        tensor under ``"quant_state.bitsandbytes__<quant_type>"`` (safetensors stores tensors
        only). Key order and JSON text are the reference's (checkpoint compatibility)."""
        qs = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": _dtype_name(self.dtype),
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            qs.update({
                "nested_absmax": self.state2.absmax,
                "nested_blocksize": self.state2.blocksize,
                # A copy: the nested map of every layer is the same table, and safetensors drops
                # shared tensors on save.
                "nested_quant_map": self.state2.code.clone(),
                "nested_dtype": _dtype_name(self.state2.dtype),
                "nested_offset": self.offset.item(),
            })
        if not packed or self.quant_type is None:
            return qs
        tensors = {k: v for k, v in qs.items() if isinstance(v, Tensor)}
        plain = {k: v for k, v in qs.items() if not isinstance(v, Tensor)}
        tensors["quant_state.bitsandbytes__" + self.quant_type] = pack_dict_to_tensor(plain)
        return tensors

    @classmethod
    def from_dict(cls, qs_dict: dict[str, Any], device: torch.device) -> QuantState:
        """Rebuilds a state from ``as_dict`` output (packed or unpacked; key prefixes such as
        ``"weight."`` are ignored) and moves its tensors to ``device``. Raises ValueError naming
        the key for missing, unknown, duplicate or malformed entries. The given dict is not
        modified."""
        if not isinstance(qs_dict, dict):
            raise TypeError(f"QuantState.from_dict: qs_dict must be a dict, got {type(qs_dict).__name__}")
        items = dict(qs_dict)
        packed_keys = [k for k, v in items.items() if "quant_state" in k and isinstance(v, Tensor)]
        if not any(k.split(".")[-1] == "quant_type" for k in items):
            if not packed_keys:
                raise ValueError("Expected packed or unpacked quant_state items, found neither")
            if len(packed_keys) != 1 or packed_keys[0].split(".")[-1] not in cls.valid_qs_type_keys:
                raise ValueError(f"There should be exactly one `quant_state` item with ending from "
                                 f"{cls.valid_qs_type_keys}.\nDetected {packed_keys}.")
        if len(packed_keys) == 1:
            key = packed_keys[0]
            items.update(_unpack_quant_state(key, items.pop(key)))

        qs: dict[str, Any] = {}
        for key, value in items.items():
            name = key.split(".")[-1]
            if name in qs:
                raise ValueError(f"QuantState.from_dict: more than one entry for {name!r} (keys differ only in "
                                 f"their prefix): {sorted(k for k in items if k.split('.')[-1] == name)}")
            qs[name] = value
        unknown = sorted(set(qs) - set(cls.valid_qs_keys))
        if unknown:
            raise ValueError(f"QuantState.from_dict: unexpected keys {unknown}; valid keys are {cls.valid_qs_keys}")

        def need(name: str, kind: str):
            if name not in qs:
                raise ValueError(f"QuantState.from_dict: missing {name!r} ({kind})")
            return qs[name]

        quant_type = need("quant_type", "'nf4', 'fp4', or None for 8-bit states")
        if quant_type is not None and quant_type not in cls.valid_quant_types:
            raise ValueError(f"QuantState.from_dict: quant_type = {quant_type!r} is not one of {cls.valid_quant_types}")
        shape = need("shape", "the original shape, a list of ints or None")
        if shape is not None:
            if not isinstance(shape, (list, tuple, torch.Size)) or not all(_is_int(d) and d >= 0 for d in shape):
                raise ValueError(f"QuantState.from_dict: shape = {shape!r} must be a list of non-negative ints or None")
            shape = torch.Size(shape)

        state2 = offset = None
        nested_keys = [k for k in cls.valid_qs_keys if k.startswith("nested_")]
        if "nested_absmax" in qs:
            offset_value = need("nested_offset", "the double-quantization offset, a float")
            if isinstance(offset_value, bool) or not isinstance(offset_value, (numbers.Real, Tensor)):
                raise ValueError(f"QuantState.from_dict: nested_offset = {offset_value!r} must be a number")
            offset = torch.tensor(float(offset_value), dtype=torch.float32).to(device)
            need("nested_quant_map", "the 8-bit map of the nested absmax, a tensor")
            state2 = cls(
                absmax=_tensor_entry(qs, "nested_absmax").to(device),
                blocksize=_blocksize_entry(need("nested_blocksize", "an int")),
                code=_tensor_entry(qs, "nested_quant_map").to(device),
                dtype=_dtype_entry("nested_dtype", need("nested_dtype", "a dtype name")),
            )
        elif any(k in qs for k in nested_keys):
            raise ValueError(f"QuantState.from_dict: {sorted(k for k in nested_keys if k in qs)} given without "
                             f"'nested_absmax' (a double-quantized state needs all of {nested_keys})")

        need("absmax", "a tensor")
        need("quant_map", "the code table, a tensor")
        return cls(
            quant_type=quant_type,
            absmax=_tensor_entry(qs, "absmax").to(device),
            blocksize=_blocksize_entry(need("blocksize", "an int")),
            code=_tensor_entry(qs, "quant_map").to(device),
            dtype=_dtype_entry("dtype", need("dtype", "a dtype name such as 'bfloat16'")),
            shape=shape,
            offset=offset,
            state2=state2,
        )

    # -- movement and comparison --------------------------------------------------------------------

    def to(self, device):
        """Moves the state's tensors to ``device`` in place (returns None, as the reference)."""
        if self.code is not None:
            self.code = self.code.to(device)
        self.absmax = self.absmax.to(device)
        if self.nested:
            self.offset = self.offset.to(device)
            self.state2.absmax = self.state2.absmax.to(device)
            self.state2.code = self.state2.code.to(device)

    def __eq__(self, other):
        if not isinstance(other, QuantState):
            return False
        if (self.shape != other.shape or self.dtype != other.dtype or self.blocksize != other.blocksize
                or self.quant_type != other.quant_type or self.nested != other.nested):
            return False
        if not (_close(self.absmax, other.absmax) and _close(self.code, other.code)):
            return False
        if (self.offset is None) != (other.offset is None):
            return False
        if self.offset is not None and not bool(self.offset.cpu() == other.offset.cpu()):
            return False
        return self.state2 == other.state2 if self.nested else True


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _close(a, b) -> bool:
    """``allclose(atol=1e-6)`` as the reference compares absmax and code, but False (not an
    exception) for different shapes, dtypes or devices."""
    if a is None or b is None:
        return a is b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.allclose(a.cpu().float(), b.cpu().float(), atol=1e-6)


def _unpack_quant_state(key: str, tensor) -> dict:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(f"QuantState.from_dict: {key!r} must be a 1-D uint8 tensor of JSON bytes, "
                         f"got {tensor.dtype} {list(tensor.shape)}")
    try:
        plain = unpack_tensor_to_dict(tensor)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"QuantState.from_dict: {key!r} does not hold UTF-8 JSON ({e})") from e
    if not isinstance(plain, dict):
        raise ValueError(f"QuantState.from_dict: {key!r} must hold a JSON object, got {type(plain).__name__}")
    tensors = sorted(k for k in plain if k in ("absmax", "quant_map", "nested_absmax", "nested_quant_map"))
    if tensors:
        raise ValueError(f"QuantState.from_dict: {key!r} holds tensor entries {tensors} as JSON")
    return plain


def _tensor_entry(qs: dict, name: str) -> Tensor:
    value = qs[name]
    if not isinstance(value, Tensor):
        raise ValueError(f"QuantState.from_dict: {name!r} must be a tensor, got {type(value).__name__}")
    return value


def _blocksize_entry(value) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"QuantState.from_dict: blocksize = {value!r} must be a positive int")
    return int(value)


def _dtype_entry(name: str, value) -> torch.dtype:
    dtype = getattr(torch, value, None) if isinstance(value, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"QuantState.from_dict: {name} = {value!r} is not the name of a torch dtype "
                         f"(e.g. 'float16', 'bfloat16', 'float32')")
    return dtype


# ---- 8-bit blockwise -----------------------------------------------------------------------------


def quantize_blockwise(
    A: Tensor,
    code: Optional[Tensor] = None,
    absmax: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    blocksize=4096,
    nested=False,
) -> tuple[Tensor, QuantState]:
    """Quantizes A (fp16/bf16/fp32) to 8-bit codes in blocks of ``blocksize`` elements: each
    element becomes the index of the nearest entry of ``code`` (default: the signed dynamic map)
    to ``x / absmax(block)``.

    ``nested=True`` also quantizes the absmax (quirk kept from the reference: the mean is
    subtracted and the nested quantization uses the same blocksize, spec §1.6). ``absmax`` and
    ``out`` are legacy buffers the results are copied into.

    Returns ``(codes uint8 shaped like A, QuantState)``.
    """
    func = "quantize_blockwise"
    _check_blocksize_8bit(func, blocksize)
    _check_float_input(func, A, "blockwise quantization")
    if code is None:
        code = _default_dynamic_map(A.device)
    _check_tensor(func, "code", code)

    codes, block_absmax = torch.ops.nybble.quantize_blockwise.default(A, code.to(A.device), blocksize)
    if nested:
        offset = block_absmax.mean()
        block_absmax -= offset
        qabsmax, state2 = quantize_blockwise(block_absmax, blocksize=blocksize, nested=False)
        state = QuantState(absmax=qabsmax, code=code.to(A.device, copy=True), blocksize=blocksize, dtype=A.dtype,
                           offset=offset, state2=state2)
    else:
        state = QuantState(absmax=block_absmax, code=code.to(A.device, copy=True), blocksize=blocksize, dtype=A.dtype)

    if out is not None:
        codes = out.copy_(codes)
    if absmax is not None:
        state.absmax = absmax.copy_(state.absmax)
    return codes, state


def _dequantize_absmax(state: QuantState) -> Tensor:
    """The fp32 absmax of a double-quantized state: ``code8[q] * nested_absmax + offset``."""
    absmax = dequantize_blockwise(state.absmax, state.state2)
    absmax += state.offset
    return absmax if absmax.dtype == torch.float32 else absmax.float()


def dequantize_blockwise(
    A: Tensor,
    quant_state: Optional[QuantState] = None,
    absmax: Optional[Tensor] = None,
    code: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    blocksize: int = 4096,
    nested=False,
) -> Tensor:
    """Undoes ``quantize_blockwise``: ``out[i] = code[A[i]] * absmax[i // blocksize]`` in the
    state's dtype (float32 without a state). Give either ``quant_state`` or ``absmax`` (with
    ``code``, default the signed dynamic map, and ``blocksize``). ``nested`` is unused (the
    state says whether it is nested)."""
    func = "dequantize_blockwise"
    if quant_state is None and absmax is None:
        raise ValueError("dequantize_blockwise requires either quant_state or absmax")
    _check_tensor(func, "A", A)
    if A.dtype != torch.uint8:
        raise ValueError(f"{func}: A must be uint8, got {A.dtype}")
    if quant_state is None:
        if code is None:
            code = _default_dynamic_map(A.device)
        quant_state = QuantState(absmax=absmax, code=code, blocksize=blocksize, dtype=torch.float32)
    _check_blocksize_8bit(func, quant_state.blocksize)
    if quant_state.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{func}: quant_state.dtype must be float16, bfloat16 or float32, got {quant_state.dtype}")

    scales = _dequantize_absmax(quant_state) if quant_state.nested else quant_state.absmax
    code = quant_state.code.to(A.device)
    if out is not None:
        torch.ops.nybble.dequantize_blockwise.out(A, scales, code, quant_state.blocksize, quant_state.dtype, out=out)
        return out
    return torch.ops.nybble.dequantize_blockwise.default(A, scales, code, quant_state.blocksize, quant_state.dtype)


# ---- 4-bit ---------------------------------------------------------------------------------------


def quantize_4bit(
    A: Tensor,
    absmax: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    blocksize=None,
    compress_statistics=False,
    quant_type="fp4",
    quant_storage=torch.uint8,
) -> tuple[Tensor, QuantState]:
    """Quantizes A (fp16/bf16/fp32) to NF4 or FP4 in blocks of ``blocksize`` (default 64) elements,
    two codes per byte, the even element in the high nibble (spec §1.4-1.5).

    ``compress_statistics`` double-quantizes the absmax (spec §1.6): offset = mean of the absmax,
    then 8-bit blockwise quantization of ``absmax - offset`` with blocksize 256 and the signed
    dynamic map. ``quant_storage`` reinterprets the packed bytes as another dtype (FSDP).
    ``absmax`` and ``out`` are legacy buffers the results are copied into.

    Returns ``(packed [(n+1) // (2 * itemsize), 1] in quant_storage, QuantState)``.
    """
    func = "quantize_4bit"
    if blocksize is None:
        blocksize = 64
    _check_blocksize_4bit(func, blocksize)
    _check_quant_type(func, quant_type)
    _check_float_input(func, A, "blockwise 4bit quantization")
    if quant_storage not in _QUANT_STORAGE_DTYPES:
        raise ValueError(f"{func}: quant_storage = {quant_storage!r} is not supported (one of "
                         f"{', '.join(map(str, _QUANT_STORAGE_DTYPES))})")
    itemsize = quant_storage.itemsize
    nbytes = (A.numel() + 1) // 2
    if nbytes % itemsize:
        raise ValueError(f"{func}: quant_storage = {quant_storage}: the {nbytes} packed bytes of {A.numel()} "
                         f"elements are not a whole number of {itemsize}-byte items")

    packed, block_absmax = torch.ops.nybble.quantize_4bit.default(A, blocksize, quant_type, quant_storage)
    code = get_4bit_type(quant_type, device=A.device)
    if compress_statistics:
        # torch's mean on the absmax's device, as the reference computes it: the offset, and so
        # the whole double-quantized state, is then the reference's bit for bit on that device.
        offset = block_absmax.mean()
        qabsmax, state2 = quantize_blockwise(block_absmax - offset, blocksize=_NESTED_BLOCKSIZE)
        state = QuantState(absmax=qabsmax, shape=A.shape, dtype=A.dtype, blocksize=blocksize, code=code,
                           quant_type=quant_type, offset=offset, state2=state2)
    else:
        state = QuantState(absmax=block_absmax, shape=A.shape, dtype=A.dtype, blocksize=blocksize, code=code,
                           quant_type=quant_type)

    if out is not None:
        packed = out.copy_(packed)
    if absmax is not None:
        state.absmax = absmax.copy_(state.absmax)
    return packed, state


def quantize_fp4(A: Tensor, absmax: Optional[Tensor] = None, out: Optional[Tensor] = None, blocksize=None,
                 compress_statistics=False, quant_storage=torch.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "fp4", quant_storage)


def quantize_nf4(A: Tensor, absmax: Optional[Tensor] = None, out: Optional[Tensor] = None, blocksize=None,
                 compress_statistics=False, quant_storage=torch.uint8):
    return quantize_4bit(A, absmax, out, blocksize, compress_statistics, "nf4", quant_storage)


def dequantize_4bit(
    A: Tensor,
    quant_state: Optional[QuantState] = None,
    absmax: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
    blocksize: Optional[int] = None,
    quant_type="fp4",
) -> Tensor:
    """Undoes ``quantize_4bit``: ``out[i] = code[nibble i] * absmax[i // blocksize]`` computed in
    fp32, returned in ``quant_state.dtype`` and ``quant_state.shape``. Without a state, ``absmax``
    and ``out`` are required (shape and dtype come from ``out``; ``blocksize`` default 64 and
    ``quant_type`` from the arguments).

    Quirk kept from the reference (BC shim): a packed tensor of shape ``[1, m]`` (a transposed
    packed weight) gets its result transposed back.
    """
    func = "dequantize_4bit"
    _check_tensor(func, "A", A)
    if blocksize is None:
        blocksize = 64
    if quant_state is None:
        if absmax is None or out is None:
            raise ValueError("dequantize_4bit requires both absmax and out when quant_state is not provided")
        quant_state = QuantState(absmax=absmax, shape=out.shape, dtype=out.dtype, blocksize=blocksize,
                                 quant_type=quant_type)
    _check_blocksize_4bit(func, quant_state.blocksize)
    _check_quant_type(func, quant_state.quant_type)
    if quant_state.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{func}: blockwise 4bit dequantization only supports 16/32-bit floats, but got "
                         f"quant_state.dtype = {quant_state.dtype}")
    if quant_state.shape is None:
        raise ValueError(f"{func}: quant_state.shape is None; the original shape is needed to dequantize")
    if A.dtype not in _QUANT_STORAGE_DTYPES:
        raise ValueError(f"{func}: A (packed 4-bit data) has dtype {A.dtype}; expected uint8 or the quant_storage "
                         f"dtype it was packed as ({', '.join(map(str, _QUANT_STORAGE_DTYPES))})")

    shape = list(quant_state.shape)
    if out is not None:
        scales = _dequantize_absmax(quant_state) if quant_state.nested else quant_state.absmax
        torch.ops.nybble.dequantize_4bit.out(A, scales, quant_state.blocksize, quant_state.quant_type, shape,
                                             quant_state.dtype, out=out)
    elif quant_state.nested:
        # The nested scales are decoded inside the kernel (same roundings as dequantizing them first).
        out = torch.ops.nybble.dequantize_4bit.default(
            A, quant_state.state2.absmax, quant_state.blocksize, quant_state.quant_type, shape, quant_state.dtype,
            absmax_8bit=quant_state.absmax, absmax_code=quant_state.state2.code.to(A.device),
            absmax_offset=quant_state.offset)
    else:
        out = torch.ops.nybble.dequantize_4bit.default(A, quant_state.absmax, quant_state.blocksize,
                                                       quant_state.quant_type, shape, quant_state.dtype)

    if A.dim() >= 1 and A.shape[0] == 1 and out.dim() <= 2:
        return out.t()
    return out


def dequantize_fp4(A: Tensor, quant_state: Optional[QuantState] = None, absmax: Optional[Tensor] = None,
                   out: Optional[Tensor] = None, blocksize: Optional[int] = None) -> Tensor:
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "fp4")


def dequantize_nf4(A: Tensor, quant_state: Optional[QuantState] = None, absmax: Optional[Tensor] = None,
                   out: Optional[Tensor] = None, blocksize: Optional[int] = None) -> Tensor:
    return dequantize_4bit(A, quant_state, absmax, out, blocksize, "nf4")


def gemv_4bit(A: Tensor, B: Tensor, out: Optional[Tensor] = None, transposed_A=False, transposed_B=False,
              state=None):
    """``A @ dequantize_4bit(B, state).T`` for a packed 4-bit weight B of shape ``state.shape =
    [N, K]``; output ``[*A.shape[:-1], N]`` in A's dtype. nybble accepts any number of rows in A
    (the reference reads a single vector). ``transposed_A``/``transposed_B`` are unused, as in the
    reference."""
    if state is None:
        raise ValueError("state cannot be None. gemv_4bit() requires the state from quantize_4bit()")
    _check_tensor("gemv_4bit", "A", A)
    _check_tensor("gemv_4bit", "B", B)
    # The fused op with the state's quant type and nested scales as they are: the gemv_4bit op
    # would read the type from the code table (a host sync on the GPU) after a separate pass
    # dequantizing a nested absmax.
    result = _gemm_4bit(A, B, state)
    if out is None:
        return result
    if out.shape != result.shape:
        raise ValueError(f"gemv_4bit: out has shape {list(out.shape)}, the result {list(result.shape)}")
    return out.copy_(result)


# ---- LLM.int8 ------------------------------------------------------------------------------------


def int8_vectorwise_quant(A: Tensor, threshold=0.0):
    """Row-wise int8 quantization (LLM.int8, spec §2.1): ``CA = round(A * 127 / row_max)``.
    With ``threshold > 0`` values with ``|x| >= threshold`` are outliers: excluded from the row
    maxima, their columns zeroed in CA and returned as ``outlier_cols`` (int64).

    Returns ``(CA int8 like A, row_stats fp32 [rows], outlier_cols or None)``. nybble quantizes
    fp16, bf16 and fp32 natively (the reference needs fp16 on CUDA)."""
    _check_float_input("int8_vectorwise_quant", A, "int8 quantization")
    if not threshold >= 0.0:
        raise ValueError(f"int8_vectorwise_quant: threshold = {threshold} must be >= 0 (0 disables outliers)")
    return torch.ops.nybble.int8_vectorwise_quant.default(A, threshold)


def int8_vectorwise_dequant(A: Tensor, stats: Tensor):
    """``A * stats[:, None] / 127`` in float32."""
    _check_dtype("int8_vectorwise_dequant", "A", A, torch.int8)
    return torch.ops.nybble.int8_vectorwise_dequant.default(A, stats)


def int8_linear_matmul(A: Tensor, B: Tensor, out: Optional[Tensor] = None, dtype=torch.int32):
    """``A @ B.T`` for int8 A ``[..., K]`` and B ``[N, K]``, accumulated in int32. ``dtype`` is
    unused (the result is always int32)."""
    _check_dtype("int8_linear_matmul", "A", A, torch.int8)
    _check_dtype("int8_linear_matmul", "B", B, torch.int8)
    if out is not None:
        torch.ops.nybble.int8_linear_matmul.out(A, B, out)
        return out
    return torch.ops.nybble.int8_linear_matmul.default(A, B)


def int8_mm_dequant(A: Tensor, row_stats: Tensor, col_stats: Tensor, out: Optional[Tensor] = None,
                    bias: Optional[Tensor] = None):
    """``A * row_stats[:, None] * col_stats[None, :] / (127 * 127) + bias`` for the int32 result of
    ``int8_linear_matmul``, as float16 (copied into ``out`` if given)."""
    _check_dtype("int8_mm_dequant", "A", A, torch.int32)
    _check_dtype("int8_mm_dequant", "row_stats", row_stats, torch.float32)
    _check_dtype("int8_mm_dequant", "col_stats", col_stats, torch.float32)
    result = torch.ops.nybble.int8_mm_dequant.default(A, row_stats, col_stats, dtype=torch.float16, bias=bias)
    if out is not None:
        return out.copy_(result)
    return result


def int8_double_quant(A: Tensor, col_stats: Optional[Tensor] = None, row_stats: Optional[Tensor] = None,
                      out_col: Optional[Tensor] = None, out_row: Optional[Tensor] = None, threshold=0.0):
    """Row-wise and column-wise int8 quantization of A (LLM.int8 training path).

    Returns ``(CA row-quantized, CAt column-quantized (same shape, not transposed), row_stats,
    col_stats, outlier_cols or None)``. Preallocated outputs are not supported (ValueError)."""
    for name, value in (("row_stats", row_stats), ("col_stats", col_stats), ("out_col", out_col),
                        ("out_row", out_row)):
        if value is not None:
            raise ValueError(f"{name} must be None. int8_double_quant() does not support pre-allocated {name}.")
    _check_float_input("int8_double_quant", A, "int8 quantization")
    return torch.ops.nybble.int8_double_quant.default(A, threshold=threshold)


# ---- optimizers ----------------------------------------------------------------------------------


def optimizer_update_32bit(
    optimizer_name: str,
    g: Tensor,
    p: Tensor,
    state1: Tensor,
    beta1: float,
    eps: float,
    step: int,
    lr: float,
    state2: Optional[Tensor] = None,
    beta2: float = 0.0,
    beta3: float = 0.0,
    alpha: float = 0.0,
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    unorm_vec: Optional[Tensor] = None,
    max_unorm: float = 0.0,
    skip_zeros=False,
) -> None:
    """One in-place optimizer step with fp32 states (spec §4.3) for the optimizer
    ``optimizer_name`` (adam, ademamix, lamb, lion, momentum, lars, rmsprop, adagrad). With
    ``max_unorm > 0`` the parameter's norm is read on the host (a GPU sync), as in the reference."""
    param_norm = float(_ops.fp32_norm(p)) if max_unorm > 0.0 else 0.0
    is_on_gpu([g, p, state1, state2, unorm_vec])
    torch.ops.nybble.optimizer_update_32bit.default(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm,
                                                    param_norm, beta1, beta2, beta3, alpha, eps, weight_decay, step,
                                                    lr, gnorm_scale, skip_zeros)


def optimizer_update_8bit_blockwise(
    optimizer_name: str,
    g: Tensor,
    p: Tensor,
    state1: Tensor,
    state2: Optional[Tensor],
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    eps: float,
    step: int,
    lr: float,
    qmap1: Tensor,
    qmap2: Optional[Tensor],
    absmax1: Tensor,
    absmax2: Optional[Tensor],
    weight_decay: float = 0.0,
    gnorm_scale: float = 1.0,
    skip_zeros=False,
) -> None:
    """One in-place optimizer step with 8-bit blockwise states (blocksize 256, spec §4.3)."""
    is_on_gpu([p, g, state1, state2, qmap1, qmap2, absmax1, absmax2])
    torch.ops.nybble.optimizer_update_8bit_blockwise.default(optimizer_name, g, p, state1, state2, beta1, beta2, beta3,
                                                             alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2,
                                                             weight_decay, gnorm_scale, skip_zeros)


# ---- paged memory --------------------------------------------------------------------------------

_paging_warned = False


def _warn_no_paging(device) -> None:
    global _paging_warned
    if not _paging_warned:
        warnings.warn(f"Paged (unified) memory is not available in nybble for device {device}; "
                      f"get_paged returns an ordinary tensor (prefetching is a no-op).", UserWarning, stacklevel=3)
        _paging_warned = True


def get_paged(*shape, dtype=torch.float32, device=FIRST_CUDA_DEVICE):
    """A zero-filled paged buffer of ``shape`` and ``dtype``: CUDA managed memory that the driver
    moves between the GPU and the host on demand, so paged buffers together may exceed the GPU's
    memory. Unlike the reference (a CPU-typed tensor over the managed pointer), nybble returns a
    tensor of the CUDA ``device``, which every kernel and torch op takes as is; the memory is
    freed when the tensor (and every view of it) is released. Without a GPU, or in a build without
    CUDA, it warns once and returns an ordinary tensor (on the CPU where the device does not
    exist). Carries ``is_paged = True``, ``is_managed`` and ``page_deviceid`` like the
    reference's."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and _C.cuda_built():
        index = torch.cuda.current_device() if device.index is None else device.index
        numel = math.prod(shape)
        out = _C.managed_empty(numel * dtype.itemsize, index).view(dtype).view(shape)
        out.is_paged, out.is_managed, out.page_deviceid = True, True, index
        return out
    if device.type == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")
    _warn_no_paging(device)
    out = torch.zeros(shape, dtype=dtype, device=device)
    out.is_paged = True
    out.is_managed = False
    out.page_deviceid = device.index
    return out


def prefetch_tensor(A: Tensor, to_cpu=False):
    """Asks the driver to migrate a paged tensor to its GPU (or, ``to_cpu``, to the host),
    asynchronously on torch's current stream. Ordinary tensors standing in for paged ones (see
    ``get_paged``) need no migration."""
    if not getattr(A, "is_paged", False):
        raise ValueError("Only paged tensors can be prefetched!")
    if getattr(A, "is_managed", False):
        stream = torch._C._cuda_getCurrentRawStream(A.device.index)
        _C.managed_prefetch(A.view(-1).view(torch.uint8), -1 if to_cpu else A.page_deviceid, stream=stream)


def elementwise_func(func_name, A, B, value, prefetch=True):
    """The reference's paged-buffer helpers: ``"fill"`` sets A to ``value``, ``"_mul"`` multiplies
    A by B in place. Only float32 and uint8 tensors, as the reference."""
    if A.dtype not in (torch.float32, torch.uint8) or func_name not in ("fill", "_mul"):
        raise NotImplementedError(f"Function not implemented: {func_name}")
    if prefetch and getattr(A, "is_managed", False):
        prefetch_tensor(A)
        if B is not None:
            prefetch_tensor(B)
    if func_name == "fill":
        A.fill_(value)
    else:
        A.mul_(B)


def fill(A, value, device=None, prefetch=True):
    elementwise_func("fill", A, None, value)


def _mul(A, B, device=None):
    elementwise_func("_mul", A, B, 0)


# ---- deprecated ----------------------------------------------------------------------------------

_DEPRECATED = "This function is deprecated and will be removed in a future release."


def _matmul_output_shape(sA, sB, tA: bool, tB: bool):
    """Output shape of ``op(A) @ op(B)`` (op = transpose of the last two dims when flagged) for
    2-D x 2-D, 3-D x 2-D and batched 3-D x 3-D, or None if the inner dimensions differ."""
    if len(sA) not in (2, 3) or len(sB) not in (2, 3) or (len(sA), len(sB)) == (2, 3):
        raise ValueError(f"Only 2-D x 2-D, 3-D x 2-D and 3-D x 3-D int8 matmuls are supported, got A x B: {sA} x {sB}")
    a = list(sA[:-2]) + ([sA[-1], sA[-2]] if tA else [sA[-2], sA[-1]])
    b = [sB[-1], sB[-2]] if tB else [sB[-2], sB[-1]]
    if len(sB) == 3:
        b = [sB[0]] + b
    if a[-1] != b[-2]:
        return None
    return tuple(a[:-1] + [b[-1]])


@deprecated(_DEPRECATED, category=FutureWarning)
def check_matmul(A, B, out, transposed_A, transposed_B, expected_type=torch.int8):
    if A.dtype != expected_type or B.dtype != expected_type:
        raise TypeError(f"Expected torch.int8 input tensors A and B, but got {A.dtype} and {B.dtype}")
    sA, sB = tuple(A.shape), tuple(B.shape)
    sout = _matmul_output_shape(sA, sB, transposed_A, transposed_B)
    if out is not None:
        # The backprop special case "bsi,bso->io" of the reference.
        if sout is None and len(sA) == 3 and len(sB) == 3 and tuple(out.shape) == (sA[2], sB[2]) \
                and sA[:2] == sB[:2]:
            return tuple(out.shape)
        if sout is not None:
            sout = tuple(out.shape)
    if sout is None:
        raise ValueError(f"Tensor dimensions incorrect for matrix mulitiplication: A x B: {sA} x {sB} with "
                         f"transpose for A x B: {transposed_A} x {transposed_B}.")
    return sout


def _igemm(A: Tensor, B: Tensor, out: Optional[Tensor], transposed_A: bool, transposed_B: bool) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        check_matmul(A, B, out, transposed_A, transposed_B)
    if A.dim() == 3 and B.dim() == 3 and out is not None and out.dim() == 2 and A.shape[:2] == B.shape[:2] \
            and (A.shape[2], B.shape[2]) == tuple(out.shape):
        # "bsi,bso->io": contract over batch and sequence.
        lhs, rhs = A.reshape(-1, A.shape[2]).t(), B.reshape(-1, B.shape[2]).t()
        return out.copy_(int8_linear_matmul(lhs.contiguous(), rhs.contiguous()))
    lhs = A.transpose(-1, -2) if transposed_A else A
    rhs = B.transpose(-1, -2) if transposed_B else B
    if rhs.dim() == 2:  # int8_linear_matmul computes lhs @ weight.T with weight [N, K]
        result = int8_linear_matmul(lhs.contiguous(), rhs.t().contiguous())
    else:
        result = torch.stack([int8_linear_matmul(lhs[i].contiguous(), rhs[i].t().contiguous())
                              for i in range(lhs.shape[0])])
    return result if out is None else out.copy_(result)


@deprecated(_DEPRECATED, category=FutureWarning)
def igemm(A: Tensor, B: Tensor, out: Optional[Tensor] = None, transposed_A=False, transposed_B=False):
    """int32 ``op(A) @ op(B)`` of int8 matrices (legacy; use int8_linear_matmul)."""
    return _igemm(A, B, out, transposed_A, transposed_B)


@deprecated(_DEPRECATED, category=FutureWarning)
def batched_igemm(A: Tensor, B: Tensor, out: Optional[Tensor] = None, transposed_A=False, transposed_B=False):
    """int32 ``A[i] @ B[i]`` for 3-D int8 tensors (legacy; use int8_linear_matmul)."""
    if A.dim() != 3 or B.dim() != 3:
        raise ValueError(f"Expected 3-dimensional tensors for bmm, but got shapes A and B: {A.shape} and {B.shape}")
    return _igemm(A, B, out, transposed_A, transposed_B)


__all__ = [
    "C",
    "CUBLAS_Context",
    "FIRST_CUDA_DEVICE",
    "GlobalPageManager",
    "QuantState",
    "batched_igemm",
    "check_matmul",
    "create_dynamic_map",
    "create_fp8_map",
    "create_linear_map",
    "create_normal_map",
    "dequantize_4bit",
    "dequantize_blockwise",
    "dequantize_fp4",
    "dequantize_nf4",
    "elementwise_func",
    "fill",
    "gemv_4bit",
    "get_4bit_type",
    "get_paged",
    "get_ptr",
    "has_avx512bf16",
    "igemm",
    "int8_double_quant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "int8_vectorwise_dequant",
    "int8_vectorwise_quant",
    "is_on_gpu",
    "lib",
    "name2qmap",
    "optimizer_update_32bit",
    "optimizer_update_8bit_blockwise",
    "pack_dict_to_tensor",
    "prefetch_tensor",
    "quantize_4bit",
    "quantize_blockwise",
    "quantize_fp4",
    "quantize_nf4",
    "unpack_tensor_to_dict",
]
