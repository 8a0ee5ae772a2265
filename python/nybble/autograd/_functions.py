"""Autograd functions of LLM.int8 and 4-bit matmuls (spec §2.2–2.3, §3.2).

Every element-wise step (quantizing activations and weights, int8 GEMM, dequantizing, the fused
4-bit GEMM) is one ``torch.ops.nybble`` op; this file only keeps the bookkeeping: which op, which
state, which gradient.

Where nybble differs from the reference (spec "Decisions"):

* LLM.int8 quantizes fp16, bf16 and fp32 activations and weights in their own dtype (the
  reference casts both to fp16, so bf16 values above 65504 overflow); the output has the input's
  dtype.
* The deprecated weight gradient of ``MatMul8bitLt`` uses the column-quantized output gradient
  with its column scales (the reference pairs the row-quantized codes with the column scales).
* The 4-bit input gradient dequantizes the weight straight into the gradient's dtype (one pass
  instead of dequantize-then-cast).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional

import torch

from .. import _ops

if TYPE_CHECKING:
    from ..functional import QuantState

_is_compiling = torch.compiler.is_compiling

# Packed 4-bit data of double-quantized scales is decoded in the kernels with this nested
# blocksize only (spec §1.6: quantize_4bit always uses 256).
_NESTED_BLOCKSIZE = 256


class GlobalOutlierPooler:
    """Pools outlier dimensions across layers (vestigial in the reference: set, never read)."""

    _instance = None

    def __init__(self):
        raise RuntimeError("Call get_instance() instead")

    def initialize(self):
        self.outliers = set()
        self.model_dim = None

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def add_outliers(self, outlier_idx, feature_dim):
        if self.model_dim is None:
            self.model_dim = feature_dim
        if feature_dim != self.model_dim:
            return  # outliers of the second FFN layer are not pooled
        self.outliers.update(outlier_idx.tolist())

    def get_current_outlier_idx(self):
        return torch.tensor(sorted(self.outliers), dtype=torch.int64)


@dataclass
class MatmulLtState:
    """The LLM.int8 state of one layer: the int8 weight ``CB`` [N, K] with its per-row scales
    ``SCB`` [N] (fp32), the outlier threshold and the mode flags. SB, SBt, CBt, subB,
    outlier_pool, use_pool and force_no_igemmlt are kept for compatibility and not used."""

    force_no_igemmlt: bool = False
    CB: Optional[torch.Tensor] = None
    SB: Optional[torch.Tensor] = None
    SCB: Optional[torch.Tensor] = None
    SBt: Optional[torch.Tensor] = None
    CBt: Optional[torch.Tensor] = None
    subB: Optional[torch.Tensor] = None
    outlier_pool: Optional[GlobalOutlierPooler] = None
    idx: Optional[torch.Tensor] = None
    # Plain class attributes, not dataclass fields: the constructor's positional parameters are
    # the reference's (..., outlier_pool, idx).
    has_accumulated_gradients = False
    threshold = 0.0
    is_training = True
    has_fp16_weights = True
    use_pool = False

    # Attributes of the removed col32/turing/ampere layouts; TGI and vLLM still read `.CxB`.
    _deprecated_fields: ClassVar[frozenset] = frozenset({"CxB", "CxBt", "formatB", "_tile_indices"})

    def __getattr__(self, name):
        if name in MatmulLtState._deprecated_fields:
            warnings.warn(
                f"MatmulLtState.{name} is deprecated and will be removed in the next bitsandbytes release.",
                FutureWarning,
                stacklevel=2,
            )
            return None
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def reset_grads(self):
        self.CB = None
        self.SB = None
        self.SCB = None
        self.SBt = None
        self.CBt = None


# ---- LLM.int8 ---------------------------------------------------------------------------------


def _int8_weight(B: torch.Tensor, state: MatmulLtState) -> None:
    """Fills state.CB/state.SCB from B when needed (spec §2.3 step 4). B is the weight [N, K]:
    floating point (quantized here, per output row) or already int8 (then its scales come from
    state.SCB or B.SCB)."""
    if not (state.has_fp16_weights or state.CB is None):
        return
    if B.dtype == torch.int8:
        if state.CB is None or state.SCB is None:
            scb = state.SCB if state.SCB is not None else getattr(B, "SCB", None)
            if scb is None:
                raise ValueError(
                    "matmul: B is an int8 (already quantized) weight but neither state.SCB nor B.SCB holds "
                    "its row scales; quantize the weight with Int8Params(...).to(device) or set state.CB/state.SCB"
                )
            state.CB, state.SCB = B.data, scb
        return
    has_grad = getattr(B, "grad", None) is not None
    if (state.is_training and not has_grad) or state.CB is None or state.SCB is None:
        state.reset_grads()
        state.CB, state.SCB, _ = _ops.call("int8_vectorwise_quant", B.detach(), 0.0)


def _int8_weight_dequantized(state: MatmulLtState, dtype: torch.dtype) -> torch.Tensor:
    if state.CB is None or state.SCB is None:
        raise RuntimeError("State must contain CB matrix for backward")
    return _ops.call("int8_vectorwise_dequant", state.CB, state.SCB).to(dtype)


def _empty_output(A: torch.Tensor, n_out: int) -> torch.Tensor:
    return torch.empty((*A.shape[:-1], n_out), dtype=A.dtype, device=A.device)


def _bias_grad(grad_output: torch.Tensor, dtype) -> torch.Tensor:
    return grad_output.reshape(-1, grad_output.shape[-1]).sum(0, dtype=dtype)


def _copy_out(out: Optional[torch.Tensor], result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


class MatMul8bitLt(torch.autograd.Function):
    """``A @ B.T + bias`` with LLM.int8: A quantized row-wise, B per output row, int8 GEMM, and with
    ``state.threshold > 0`` the outlier columns of A (|a| >= threshold) in A's precision."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state: Optional[MatmulLtState] = None):
        state = state or MatmulLtState()
        ctx.is_empty = A.numel() == 0
        if ctx.is_empty:
            ctx.A_shape, ctx.A_dtype, ctx.bias_shape = A.shape, A.dtype, None if bias is None else bias.shape
            n_out = B.shape[1] if A.shape[-1] == B.shape[0] else B.shape[0]
            return _copy_out(out, _empty_output(A, n_out))

        input_shape = A.shape
        A2 = A if A.dim() == 2 else A.reshape(-1, A.shape[-1])
        if ctx.needs_input_grad[1]:
            # Deprecated trainable int8 weight: the weight gradient needs A quantized column-wise too.
            CA, CAt, SCA, SCAt, outlier_cols = _ops.call("int8_double_quant", A2, float(state.threshold))
        else:
            CA, SCA, outlier_cols = _ops.call("int8_vectorwise_quant", A2, float(state.threshold))
            CAt = SCAt = None

        _int8_weight(B, state)
        if bias is not None and bias.dtype != A.dtype:
            bias = bias.to(A.dtype)

        subA = None
        if state.threshold > 0.0:
            state.idx = outlier_cols
            output, subA = _ops.call(
                "int8_mixed_scaled_mm", A2, CA, state.CB, SCA, state.SCB, outlier_cols, bias
            )
        else:
            output = _ops.call("int8_scaled_mm", CA, state.CB, SCA, state.SCB, bias=bias, dtype=A.dtype)

        ctx.state = state
        ctx.grad_shape = input_shape
        ctx.dtype_A = A.dtype
        ctx.dtype_B = B.dtype
        ctx.dtype_bias = None if bias is None else bias.dtype
        if ctx.needs_input_grad[1]:
            ctx.tensors = (CAt, subA, SCAt, state.idx)
        output = output.reshape(*input_shape[:-1], state.CB.shape[0])
        return _copy_out(out, output)

    @staticmethod
    def backward(ctx, grad_output):
        req_gradA, req_gradB, _, req_gradBias, _ = ctx.needs_input_grad
        if ctx.is_empty:
            grad_A = torch.zeros(ctx.A_shape, dtype=ctx.A_dtype, device=grad_output.device) if req_gradA else None
            grad_bias = torch.zeros(ctx.bias_shape, device=grad_output.device) if req_gradBias else None
            return grad_A, None, None, grad_bias, None

        state: MatmulLtState = ctx.state
        grad2 = grad_output.reshape(-1, grad_output.shape[-1])
        grad_A = grad_B = grad_bias = None
        if req_gradBias:
            grad_bias = _bias_grad(grad2, ctx.dtype_bias)
        if req_gradB:
            CAt, subA, SCAt, idx = ctx.tensors
            # grad_B [N, K] = grad^T @ A: both operands quantized column-wise, so the int8 GEMM of
            # their transposes has one scale per output row (SCgradt) and per output column (SCAt).
            _, Cgradt, _, SCgradt, _ = _ops.call("int8_double_quant", grad2.contiguous(), 0.0)
            grad_B = _ops.call(
                "int8_scaled_mm", Cgradt.t().contiguous(), CAt.t().contiguous(), SCgradt, SCAt, dtype=grad_output.dtype
            )
            if subA is not None and subA.numel() > 0:
                grad_B[:, idx] += grad2.t().to(subA.dtype) @ subA
        if req_gradA:
            W = _int8_weight_dequantized(state, ctx.dtype_A)
            grad_A = torch.matmul(grad2.to(ctx.dtype_A), W).view(ctx.grad_shape)
        return grad_A, grad_B, None, grad_bias, None


class MatMul8bitFp(torch.autograd.Function):
    """``A @ dequant(B).T + bias``: the int8 weight dequantized, the activations not quantized.
    ``matmul`` uses it for training on CPU/XPU (as the reference does), where it is the cheaper
    path; the weight gradient (deprecated trainable int8 weights) is the exact ``grad^T @ A``."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, state: Optional[MatmulLtState] = None):
        state = state or MatmulLtState()
        _int8_weight(B, state)
        W = _int8_weight_dequantized(state, A.dtype)
        if bias is not None and bias.dtype != A.dtype:
            bias = bias.to(A.dtype)
        output = torch.nn.functional.linear(A, W, bias)
        ctx.state = state
        ctx.dtype_A = A.dtype
        ctx.grad_shape = A.shape
        ctx.dtype_bias = None if bias is None else bias.dtype
        ctx.A = A if ctx.needs_input_grad[1] else None
        return _copy_out(out, output)

    @staticmethod
    def backward(ctx, grad_output):
        req_gradA, req_gradB, _, req_gradBias, _ = ctx.needs_input_grad
        grad2 = grad_output.reshape(-1, grad_output.shape[-1])
        grad_A = grad_B = grad_bias = None
        if req_gradBias:
            grad_bias = _bias_grad(grad2, ctx.dtype_bias)
        if req_gradB:
            A2 = ctx.A.reshape(-1, ctx.A.shape[-1])
            grad_B = grad2.t().to(A2.dtype) @ A2
        if req_gradA:
            W = _int8_weight_dequantized(ctx.state, ctx.dtype_A)
            grad_A = torch.matmul(grad2.to(ctx.dtype_A), W).view(ctx.grad_shape)
        return grad_A, grad_B, None, grad_bias, None


def matmul(
    A: torch.Tensor,
    B: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    state: Optional[MatmulLtState] = None,
    threshold=0.0,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """LLM.int8 ``A @ B.T + bias`` (B: the weight [N, K], float or int8 with its state)."""
    state = state or MatmulLtState()
    if threshold > 0.0:
        state.threshold = threshold
    if state.is_training and A.device.type in ("cpu", "xpu"):
        return MatMul8bitFp.apply(A, B, out, bias, state)
    return MatMul8bitLt.apply(A, B, out, bias, state)


# ---- 4-bit ------------------------------------------------------------------------------------


def _nested_args(quant_state: QuantState):
    """(absmax, absmax_8bit, absmax_code, absmax_offset) as the 4-bit ops take them (spec §3.2
    step 7): with double quantization the ops get the fp32 per-256 scales as ``absmax`` and decode
    the uint8 block scales themselves."""
    if not quant_state.nested:
        return quant_state.absmax, None, None, None
    state2 = quant_state.state2
    if state2.blocksize != _NESTED_BLOCKSIZE:
        raise NotImplementedError(
            f"nested quantization with state2.blocksize != {_NESTED_BLOCKSIZE} is not supported "
            f"(got {state2.blocksize})"
        )
    return state2.absmax, quant_state.absmax, state2.code, quant_state.offset


def gemm_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, bias=None) -> torch.Tensor:
    """``A @ dequant(B).T + bias`` through the fused op; B is the packed weight in any view."""
    absmax, absmax_8bit, code, offset = _nested_args(quant_state)
    return _ops.call(
        "gemm_4bit", A, _ops.plain(B).view(-1, 1), quant_state.shape, absmax, quant_state.blocksize, quant_state.quant_type,
        bias, absmax_8bit, code, offset,
    )


def gemm_4bit_grad(G: torch.Tensor, B: torch.Tensor, quant_state: QuantState) -> torch.Tensor:
    """``G @ dequant(B)``: the gradient of gemm_4bit's A for the output gradient G."""
    absmax, absmax_8bit, code, offset = _nested_args(quant_state)
    return _ops.call(
        "gemm_4bit_grad", G, _ops.plain(B).view(-1, 1), quant_state.shape, absmax, quant_state.blocksize,
        quant_state.quant_type, absmax_8bit, code, offset,
    )


def dequantize_4bit(B: torch.Tensor, quant_state: QuantState, dtype: torch.dtype) -> torch.Tensor:
    """The weight [N, K] of packed B, decoded straight into ``dtype``."""
    absmax, absmax_8bit, code, offset = _nested_args(quant_state)
    return _ops.call(
        "dequantize_4bit", B, absmax, quant_state.blocksize, quant_state.quant_type, list(quant_state.shape), dtype,
        absmax_8bit, code, offset,
    )


def _dequantizer_4bit(B: torch.Tensor, quant_state: QuantState):
    """``dequantize_4bit(B, quant_state, dtype)`` prepared now as a function of dtype, or None where
    it cannot run eagerly (``_ops.dequantizer_4bit``)."""
    absmax, absmax_8bit, code, offset = _nested_args(quant_state)
    return _ops.dequantizer_4bit(_ops.plain(B), absmax, quant_state.blocksize, quant_state.quant_type,
                                 list(quant_state.shape), absmax_8bit, code, offset)


class MatMul4Bit(torch.autograd.Function):
    """``A @ dequant(B).T + bias`` with a frozen 4-bit weight: gradients for A and bias only."""

    @staticmethod
    def forward(ctx, A, B, out=None, bias=None, quant_state: Optional[QuantState] = None):
        ctx.is_empty = A.numel() == 0
        if ctx.is_empty:
            ctx.A_shape, ctx.A_dtype, ctx.bias_shape = A.shape, A.dtype, None if bias is None else bias.shape
            N, K = quant_state.shape
            return _copy_out(out, _empty_output(A, K if A.shape[-1] == N and N != K else N))
        # The backward's dequantize, checked and converted here on the caller's thread, where the
        # backward will dequantize: not where gemm_4bit_grad's rule takes the fused kernel (the
        # output's gradient has A's rows and dtype), nor where the call is traced. Where gemm_4bit's
        # rule dequantizes too, the forward uses it (one conversion of the weight's arguments).
        N, K = quant_state.shape
        bs, rows, on_gpu = quant_state.blocksize, A.numel() // max(K, 1), A.is_cuda
        ctx.dequantize = None
        if ctx.needs_input_grad[0] and _ops.eager(A) and not _ops._grad_rule(rows, A.dtype, on_gpu, N, K, bs):
            ctx.dequantize = _dequantizer_4bit(B, quant_state)
        if ctx.dequantize is not None and A.shape[-1] == K and not _ops._fused_rule(rows, A.dtype, on_gpu, N, K, bs):
            output = _ops.linear_dequantized(A, ctx.dequantize, bias)
        else:
            output = gemm_4bit(A, B, quant_state, bias)
        ctx.state = quant_state
        ctx.dtype_bias = None if bias is None else bias.dtype
        ctx.B = B if ctx.needs_input_grad[0] else None
        return _copy_out(out, output)

    @staticmethod
    def backward(ctx, grad_output):
        req_gradA, _, _, req_gradBias, _ = ctx.needs_input_grad
        if ctx.is_empty:
            grad_A = torch.zeros(ctx.A_shape, dtype=ctx.A_dtype, device=grad_output.device) if req_gradA else None
            grad_bias = torch.zeros(ctx.bias_shape, device=grad_output.device) if req_gradBias else None
            return grad_A, None, None, grad_bias, None
        grad_A = grad_bias = None
        if req_gradBias:
            grad_bias = _bias_grad(grad_output, ctx.dtype_bias)
        if req_gradA:
            if ctx.dequantize is not None and _ops.eager(grad_output):
                grad_A = torch.matmul(grad_output, ctx.dequantize(grad_output.dtype))
            else:  # gemm_4bit_grad's fused kernel, or traced (compiled autograd) or a subclass: the op
                grad_A = gemm_4bit_grad(grad_output, ctx.B, ctx.state)
        return grad_A, None, None, grad_bias, None


def matmul_4bit(
    A: torch.Tensor,
    B: torch.Tensor,
    quant_state: QuantState,
    out: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``A @ W.T + bias`` for the 4-bit weight W = dequant(B, quant_state) of shape [N, K].

    B may be the packed weight or any view of it (``B.t()`` as TGI passes it); quant_state.shape
    says N and K. A weight quantized as [K, N] still works (deprecated, dequantize + linear)."""
    if quant_state is None:
        raise ValueError("quant_state is required")
    if quant_state.shape is None or len(quant_state.shape) != 2:
        raise ValueError(
            f"matmul_4bit: quant_state.shape must be 2D [N, K], got {None if quant_state.shape is None else list(quant_state.shape)}"
        )
    N, K = quant_state.shape
    B = _ops.plain(B)
    if A.shape[-1] == N and N != K:
        if not _is_compiling():
            warnings.warn(
                f"matmul_4bit: weight was quantized from a [K, N] tensor (quant_state.shape={list(quant_state.shape)}). "
                "Re-quantize from the weight in [N, K] (out_features, in_features) orientation. "
                "This will be an error in a future version.",
                DeprecationWarning,
                stacklevel=2,
            )
        W = dequantize_4bit(B.view(-1, 1), quant_state, A.dtype)
        return _copy_out(out, torch.nn.functional.linear(A, W.t(), bias))

    if torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad)):
        return MatMul4Bit.apply(A, B, out, bias, quant_state)
    if A.numel() == 0:
        return _copy_out(out, _empty_output(A, N))
    return _copy_out(out, gemm_4bit(A, B, quant_state, bias))
