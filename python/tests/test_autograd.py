"""nybble.autograd: bnb.matmul (LLM.int8) and bnb.matmul_4bit, forward and gradients, against
torch on the original / dequantized weights (spec §2.2-2.3, §3.2; tolerances §8.2).

The matmul tests take the ``device`` fixture (conftest.py): inputs are drawn on the CPU and moved
to the device. Forward results are compared with fp32 torch on the CPU; gradients with torch's
autograd on the same device. As in the reference, ``bnb.matmul`` in training mode takes
MatMul8bitFp (int8 weight dequantized, activations not quantized) on the CPU and MatMul8bitLt on
CUDA."""

import warnings

import pytest
import torch

import nybble as bnb
from nybble.autograd._functions import MatMul4Bit, MatMul8bitFp, MatMul8bitLt

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _outside(a, b, atol, rtol) -> int:
    return (~torch.isclose(a.float(), b.float(), atol=atol, rtol=rtol)).sum().item()


def _assert_int8_close(out, ref, dtype):
    """§8.2 bnb.matmul: <= 1.75% (fp16) / 2.1% (bf16, fp32) outside (0.01, 0.1), <= 0.1% outside (0.035, 0.2)."""
    n = out.numel()
    assert _outside(out, ref, 0.01, 0.1) <= n * (0.0175 if dtype == torch.float16 else 0.021)
    assert _outside(out, ref, 0.035, 0.2) <= n * 0.001


# ---- MatmulLtState ------------------------------------------------------------------------------


def test_matmullt_state_defaults_and_reset():
    s = bnb.MatmulLtState()
    assert (s.force_no_igemmlt, s.CB, s.SB, s.SCB, s.SBt, s.CBt, s.subB, s.outlier_pool, s.idx) == (
        False, None, None, None, None, None, None, None, None)
    assert (s.has_accumulated_gradients, s.threshold, s.is_training, s.has_fp16_weights, s.use_pool) == (
        False, 0.0, True, True, False)
    s.CB, s.SCB, s.CBt = torch.ones(2, 2, dtype=torch.int8), torch.ones(2), torch.ones(1)
    s.reset_grads()
    assert s.CB is None and s.SCB is None and s.CBt is None
    assert bnb.MatmulLtState() == bnb.MatmulLtState()


@pytest.mark.parametrize("name", ["CxB", "CxBt", "formatB", "_tile_indices"])
def test_matmullt_state_deprecated_attributes(name):
    s = bnb.MatmulLtState()
    with pytest.warns(FutureWarning, match=f"MatmulLtState.{name} is deprecated"):
        assert getattr(s, name) is None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        s.nope


# ---- LLM.int8 matmul -----------------------------------------------------------------------------


def _int8_case(dtype, threshold, m=40, k=96, n=72, device="cpu"):
    A = torch.randn(m, k, dtype=dtype)
    if threshold > 0:
        A[:, torch.randperm(k)[: k // 8]] = 6.0  # outlier columns (>= threshold)
    B = torch.empty(n, k, dtype=dtype)
    torch.nn.init.xavier_uniform_(B)
    return A.to(device), B.to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("has_fp16_weights", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_matmul_int8_forward(device, dtype, threshold, has_fp16_weights, training):
    A, B = _int8_case(dtype, threshold, device=device)
    bias = torch.randn(B.shape[0], dtype=dtype).to(device)
    state = bnb.MatmulLtState()
    state.threshold = threshold
    state.has_fp16_weights = has_fp16_weights
    state.is_training = training
    B_arg = B
    if not has_fp16_weights:
        state.CB, state.SCB, _ = bnb.functional.int8_vectorwise_quant(B)
        B_arg = state.CB
    out = bnb.matmul(A, B_arg, state=state, bias=bias)
    assert out.device.type == device
    A, B, bias, out = A.cpu(), B.cpu(), bias.cpu(), out.cpu()
    ref = (A.float() @ B.float().t() + bias.float()).to(dtype)
    assert out.dtype == dtype and out.shape == ref.shape
    _assert_int8_close(out, ref, dtype)
    if threshold > 0 and not training:
        assert state.idx is not None and state.idx.numel() > 0
    assert state.CB is not None and state.CB.dtype == torch.int8


def test_matmul_int8_bf16_beyond_fp16_range(device):
    """nybble quantizes bf16 natively: values beyond fp16's range (65504) do not overflow."""
    A = torch.randn(8, 64, dtype=torch.bfloat16) * 1e5
    B = torch.randn(16, 64, dtype=torch.bfloat16) * 1e-2
    state = bnb.MatmulLtState()
    state.is_training = False
    out = bnb.matmul(A.to(device), B.to(device), state=state).cpu()
    ref = A.float() @ B.float().t()
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.02 * ref.abs().mean()


def test_matmul_int8_dispatch(device):
    A, B = _int8_case(torch.float32, 0.0, m=4, k=32, n=8, device=device)
    state = bnb.MatmulLtState()
    assert bnb.matmul(A, B, state=state).grad_fn is None  # nothing requires grad
    A.requires_grad_(True)
    # Training: MatMul8bitFp on the CPU (and XPU), MatMul8bitLt elsewhere, as in the reference.
    training = MatMul8bitFp if device == "cpu" else MatMul8bitLt
    assert type(bnb.matmul(A, B, state=state).grad_fn).__name__ == training.__name__ + "Backward"
    state.is_training = False
    assert type(bnb.matmul(A, B, state=state).grad_fn).__name__ == MatMul8bitLt.__name__ + "Backward"
    state2 = bnb.MatmulLtState()
    bnb.matmul(A, B, state=state2, threshold=3.0)
    assert state2.threshold == 3.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("training", [True, False])
def test_matmul_int8_backward(device, dtype, threshold, training):
    A, B = _int8_case(dtype, threshold, device=device)
    bias = torch.randn(B.shape[0], dtype=dtype).to(device)
    A1, B1, bias1 = (t.clone().requires_grad_(True) for t in (A, B, bias))
    A2, B2, bias2 = (t.clone().requires_grad_(True) for t in (A, B, bias))
    target = torch.randn(A.shape[0], B.shape[0], dtype=dtype).to(device)
    state = bnb.MatmulLtState()
    state.threshold = threshold
    state.is_training = training

    out = bnb.matmul(A1, B1, state=state, bias=bias1)
    ref = A2 @ B2.t() + bias2
    out.data.copy_(ref.data)  # same loss: compare the backward pass alone
    torch.nn.functional.mse_loss(out, target).backward()
    torch.nn.functional.mse_loss(ref, target).backward()

    torch.testing.assert_close(A1.grad, A2.grad, atol=0.015, rtol=0.1)
    torch.testing.assert_close(bias1.grad, bias2.grad)
    # Deprecated trainable int8 weight: int8 weight gradient (§8.2: <= 10% outside (0.06, 0.3),
    # <= 2% outside (0.1, 0.3), all within (0.18, 0.3)).
    n = B1.grad.numel()
    assert B1.grad.abs().sum() > 0
    assert _outside(B1.grad, B2.grad, 0.06, 0.3) <= n * 0.1
    assert _outside(B1.grad, B2.grad, 0.10, 0.3) <= n * 0.02
    torch.testing.assert_close(B1.grad.float(), B2.grad.float(), atol=0.18, rtol=0.3)


def test_matmul_int8_3d_and_frozen_int8_weight(device):
    A = torch.randn(4, 16, 64, dtype=torch.float16).to(device).requires_grad_(True)
    B = torch.empty(48, 64, dtype=torch.float16)
    torch.nn.init.xavier_uniform_(B)
    B = B.to(device)
    state = bnb.MatmulLtState()
    state.has_fp16_weights = False
    state.is_training = False
    state.CB, state.SCB, _ = bnb.functional.int8_vectorwise_quant(B)
    out = bnb.matmul(A, state.CB, state=state)
    assert out.shape == (4, 16, 48) and out.dtype == torch.float16 and out.device.type == device
    ref = A.detach().cpu().float() @ B.cpu().float().t()
    _assert_int8_close(out.detach().cpu(), ref, torch.float16)
    g = torch.randn(out.shape, dtype=out.dtype).to(device)
    out.backward(g)
    W = bnb.functional.int8_vectorwise_dequant(state.CB, state.SCB).cpu()
    torch.testing.assert_close(A.grad.cpu().float(), g.cpu().float() @ W, atol=0.015, rtol=0.1)


def test_matmul_int8_weight_without_scales_is_an_error(device):
    B = torch.randint(-127, 128, (8, 16), dtype=torch.int8, device=device)
    state = bnb.MatmulLtState()
    state.is_training = False
    with pytest.raises(ValueError, match="SCB"):
        bnb.matmul(torch.randn(2, 16, device=device), B, state=state)


@pytest.mark.parametrize("training", [True, False])
def test_matmul_int8_empty_input(device, training):
    A = torch.randn(0, 32, device=device, requires_grad=True)
    B = torch.randn(16, 32).to(device)
    bias = torch.randn(16).to(device).requires_grad_(True)
    state = bnb.MatmulLtState()
    state.is_training = training
    out = bnb.matmul(A, B, state=state, bias=bias)
    assert out.shape == (0, 16)
    out.sum().backward()
    assert A.grad.shape == A.shape and bias.grad.abs().sum() == 0


# ---- 4-bit matmul --------------------------------------------------------------------------------


def _quantized(n, k, quant_type, nested, dtype=torch.float32, blocksize=64, device="cpu"):
    """(W on the CPU, its packed data and QuantState on ``device``)."""
    W = torch.randn(n, k, dtype=dtype) / k**0.5
    packed, qs = bnb.functional.quantize_4bit(W.to(device), blocksize=blocksize, quant_type=quant_type,
                                              compress_statistics=nested)
    return W, packed, qs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("transposed", [False, True], ids=["B", "B.t()"])
def test_matmul_4bit_forward(device, dtype, quant_type, nested, transposed):
    # K=160: not a multiple of the blocksize
    W, packed, qs = _quantized(72, 160, quant_type, nested, dtype, device=device)
    A = torch.randn(3, 7, 160, dtype=dtype)
    bias = torch.randn(72, dtype=dtype)
    out = bnb.matmul_4bit(A.to(device), packed.t() if transposed else packed, qs, bias=bias.to(device))
    assert out.dtype == dtype and out.shape == (3, 7, 72) and out.grad_fn is None and out.device.type == device
    out = out.cpu()
    W_dq = bnb.functional.dequantize_4bit(packed, qs).float().cpu()
    ref = torch.nn.functional.linear(A.float(), W_dq, bias.float())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    # Against the original weight (§8.2: mean abs error < 0.115 for NF4 or bs <= 64).
    err = (out.float() - torch.nn.functional.linear(A.float(), W.float(), bias.float())).abs().mean()
    assert err < 0.115


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
def test_matmul_4bit_backward(device, dtype, quant_type, nested):
    W, packed, qs = _quantized(48, 128, quant_type, nested, dtype, device=device)
    W_dq = bnb.functional.dequantize_4bit(packed, qs)
    A1 = torch.randn(2, 5, 128, dtype=dtype).to(device).requires_grad_(True)
    bias1 = torch.randn(48, dtype=dtype).to(device).requires_grad_(True)
    A2, bias2 = A1.detach().clone().requires_grad_(True), bias1.detach().clone().requires_grad_(True)
    out = bnb.matmul_4bit(A1, packed, qs, bias=bias1)
    assert type(out.grad_fn).__name__ == MatMul4Bit.__name__ + "Backward"
    ref = torch.nn.functional.linear(A2, W_dq.to(dtype), bias2)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(A1.grad, A2.grad, atol=0.015, rtol=0.1)
    torch.testing.assert_close(bias1.grad, bias2.grad)


def test_gemm_4bit_gpu_rule_conditions():
    """The GPU rule (_ops._fused_rule, no GPU needed): bf16/fp16 take the C++ kernels up to
    GPU_FUSED_MAX_ROWS rows on any shape and, on the tiled kernel's shapes (K % 64 == 0, blocksize
    >= 64), up to the rows GPU_TILE_MAX_ROWS gives the weight's size, measured per size band; fp32
    up to GPU_STREAMING_MAX_ROWS."""
    from nybble import _ops

    rule = _ops._fused_rule
    for dt in (torch.bfloat16, torch.float16):
        for n, k in ((4096, 4096), (8192, 8192), (28672, 8192), (8192, 28672)):
            rows = _ops._gpu_tile_max_rows(n * k)
            assert rows >= _ops.GPU_FUSED_MAX_ROWS
            assert rule(rows, dt, True, n, k, 64) and not rule(rows + 1, dt, True, n, k, 64)
            assert rule(rows, dt, True, n, k, 4096)
        for k, blocksize in ((8200, 64), (8192, 32)):  # not the tiled kernel's shapes
            assert rule(_ops.GPU_FUSED_MAX_ROWS, dt, True, 28672, k, blocksize)
            assert not rule(_ops.GPU_FUSED_MAX_ROWS + 1, dt, True, 28672, k, blocksize)
    rows = _ops.GPU_STREAMING_MAX_ROWS
    assert rule(rows, torch.float32, True, 28672, 8192, 64) and not rule(rows + 1, torch.float32, True, 28672, 8192, 64)
    assert not rule(_ops.CPU_FUSED_MAX_ROWS[torch.bfloat16] + 1, torch.bfloat16, False, 28672, 8192, 64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matmul_4bit_rule_both_sides_of_the_threshold(device, dtype):
    """gemm_4bit runs nybble's kernels up to a measured number of rows and dequantize + F.linear
    above (CPU_FUSED_MAX_ROWS per dtype on the CPU; on the GPU GPU_TILE_MAX_ROWS for bf16/fp16 on
    the tiled kernel's shapes by the weight's size, GPU_STREAMING_MAX_ROWS for fp32): both paths, at the threshold and one
    row past it, with a bias and 3-D input, agree with fp32 dequantize + linear and with each other
    row for row."""
    from nybble import _ops

    n, k = (8192, 4096) if device == "cuda" else (200, 320)  # on the GPU a weight the tiled kernel takes
    if device == "cpu":
        rows = _ops.CPU_FUSED_MAX_ROWS[dtype]
    else:
        rows = _ops.GPU_STREAMING_MAX_ROWS if dtype == torch.float32 else _ops._gpu_tile_max_rows(n * k)
    W, packed, qs = _quantized(n, k, "nf4", True, dtype, device=device)
    A = torch.randn(1, rows + 1, k, dtype=dtype).to(device)
    bias = torch.randn(n, dtype=dtype).to(device)
    assert _ops._gemm_4bit_in_cpp(A[:, :rows], n, k, 64) and not _ops._gemm_4bit_in_cpp(A, n, k, 64)
    below = bnb.matmul_4bit(A[:, :rows], packed.t(), qs, bias=bias)
    above = bnb.matmul_4bit(A, packed.t(), qs, bias=bias)
    ref = torch.nn.functional.linear(A.float(), bnb.functional.dequantize_4bit(packed, qs).float(), bias.float())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert below.dtype == above.dtype == dtype and above.shape == (1, rows + 1, n)
    torch.testing.assert_close(below.float(), ref[:, :rows], atol=tol, rtol=tol)
    torch.testing.assert_close(above.float(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(above[:, :rows], below, atol=2 * tol, rtol=2 * tol)


def test_gemm_4bit_grad_gpu_rule_conditions():
    """gemm_4bit_grad's rule (_ops._grad_rule, no GPU needed): the fused kernel only on the GPU, for
    bf16/fp16 on its shapes (K % 64 == 0, N % 8 == 0, blocksize >= 64), up to the rows
    GPU_GRAD_TILE_MAX_ROWS gives the weight's size; dequantize + matmul otherwise."""
    from nybble import _ops

    rule = _ops._grad_rule
    for dt in (torch.bfloat16, torch.float16):
        for n, k in ((4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192), (8192, 28672)):
            rows = _ops._gpu_grad_max_rows(n, k)
            assert rows == (32 if n * k >= 2**25 and k >= 8192 else 16)
            assert rule(1, dt, True, n, k, 64) and rule(rows, dt, True, n, k, 4096)
            assert not rule(rows + 1, dt, True, n, k, 64)
            assert not rule(1, dt, False, n, k, 64)
        for n, k, blocksize in ((28668, 8192, 64), (28672, 8200, 64), (28672, 8192, 32)):  # not the kernel's shapes
            assert not rule(1, dt, True, n, k, blocksize)
    assert not rule(1, torch.float32, True, 28672, 8192, 64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gemm_4bit_grad_op_against_dequantize_and_matmul(device, dtype, quant_type):
    """torch.ops.nybble.gemm_4bit_grad (A @ W for the 4-bit weight W [N, K]) and its C++ op called
    directly (the oracle on the CPU) on awkward shapes (odd K, N % 8 != 0, 3-D A), plain and nested
    scales, against A @ dequantize(W) in fp32; a mismatched A is refused with the rule in the message."""
    from nybble import _C, _ops

    for n, k, nested in ((72, 160, False), (33, 77, True), (64, 128, True)):
        _, packed, qs = _quantized(n, k, quant_type, nested, dtype, device=device)
        A = torch.randn(2, 5, n, dtype=dtype).to(device)
        ref = A.float() @ bnb.functional.dequantize_4bit(packed, qs).float()
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
        absmax, absmax_8bit, code, offset = (qs.absmax, None, None, None) if not nested else \
            (qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset)
        got = torch.ops.nybble.gemm_4bit_grad(A, packed, [n, k], absmax, 64, quant_type, absmax_8bit, code, offset)
        assert got.dtype == dtype and got.shape == (2, 5, k)
        torch.testing.assert_close(got.float(), ref, atol=tol, rtol=tol)
        direct = torch.full((10, k), float("nan"), dtype=dtype, device=device)
        _C.gemm_4bit_grad(A.reshape(10, n), _ops._bytes(packed), *_ops._scales(absmax, absmax_8bit, code, offset),
                          _ops.NESTED_BLOCKSIZE, 64, quant_type, direct, stream=_ops._stream(A))
        torch.testing.assert_close(direct.float(), ref.reshape(10, k), atol=tol, rtol=tol)
    with pytest.raises(RuntimeError, match=r"A's last dimension \(63\) must equal N = shapeB\[0\] \(64\)"):
        torch.ops.nybble.gemm_4bit_grad(A[..., :63], packed, [64, 128], absmax, 64, quant_type, absmax_8bit, code, offset)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matmul_4bit_forward_with_grad_shares_the_backward_dequantize(device, dtype):
    """Above the fused kernels' rows MatMul4Bit's forward multiplies the weight that the dequantize
    prepared for its backward returns (one conversion of the weight's arguments): the output is the
    op's (no grad) bit for bit, the bias converted to A's dtype as the op converts it."""
    from nybble import _ops

    n, k, rows = 96, 320, 300  # past every fused threshold (_fused_rule, _grad_rule)
    _, packed, qs = _quantized(n, k, "nf4", True, dtype, device=device)
    A = torch.randn(rows, k, dtype=dtype).to(device)
    bias = torch.randn(n, dtype=torch.float32).to(device)
    assert not _ops._gemm_4bit_in_cpp(A, n, k, 64) and not _ops._gemm_4bit_grad_in_cpp(A[:, :n], n, k, 64)
    with torch.no_grad():
        want = bnb.matmul_4bit(A, packed.t(), qs, bias=bias)
    Ag = A.clone().requires_grad_()
    got = bnb.matmul_4bit(Ag, packed.t(), qs, bias=bias)
    assert got.grad_fn.dequantize is not None  # prepared in the forward, for the backward
    assert got.dtype == dtype and torch.equal(got, want)
    got.sum().backward()
    W = bnb.functional.dequantize_4bit(packed, qs).to(dtype)
    torch.testing.assert_close(Ag.grad, torch.ones(rows, n, dtype=dtype, device=device) @ W, rtol=0, atol=0)


@pytest.mark.parametrize("nested", [False, True])
def test_matmul_4bit_backward_prepared_dequantize(device, nested):
    """The backward's dequantize, prepared in the forward, decodes exactly as the op does; traced
    tensors (fake) get no prepared function and take the op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nybble.autograd._functions import _dequantizer_4bit, dequantize_4bit

    _, packed, qs = _quantized(40, 192, "fp4", nested, torch.float32, device=device)
    weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=qs, bnb_quantized=True)
    for B in (packed, weight):
        prepared = _dequantizer_4bit(B, qs)
        for dtype in DTYPES:
            assert torch.equal(prepared(dtype), dequantize_4bit(packed, qs, dtype))
    with FakeTensorMode() as mode:
        assert _dequantizer_4bit(mode.from_tensor(packed), qs) is None


@pytest.mark.parametrize("mode", ["checkpoint", "checkpoint-reentrant", "compile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear4bit_lora_step_under_checkpointing_and_compile(device, mode, dtype):
    # QLoRA's training path: a frozen Linear4bit plus a LoRA adapter, inside activation checkpointing
    # (recomputed in the backward) or compiled whole with torch.compile(fullgraph=True), gives the
    # gradients of the plain eager step: bit for bit when recomputed (the same kernels on the same
    # inputs), within rounding when compiled (the compiler may fuse the adapter's ops).
    import torch.utils.checkpoint as checkpoint

    torch.manual_seed(0)
    base = bnb.nn.Linear4bit(128, 48, compute_dtype=dtype, quant_type="nf4").to(device)
    lora_a = torch.nn.Parameter((0.1 * torch.randn(8, 128, dtype=dtype)).to(device))
    lora_b = torch.nn.Parameter((0.1 * torch.randn(48, 8, dtype=dtype)).to(device))
    x = torch.randn(2, 5, 128, dtype=dtype).to(device).requires_grad_(True)

    def block(x):
        return base(x) + (x @ lora_a.t()) @ lora_b.t()

    def grads(fn):
        for t in (x, lora_a, lora_b):
            t.grad = None
        fn(x).float().square().sum().backward()
        return [t.grad.clone() for t in (x, lora_a, lora_b)]

    want = grads(block)
    if mode == "compile":
        got = grads(torch.compile(block, fullgraph=True))
        tol = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **tol)
    else:
        got = grads(lambda x: checkpoint.checkpoint(block, x, use_reentrant=mode == "checkpoint-reentrant"))
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_matmul_4bit_bias_only_grad_and_out(device):
    W, packed, qs = _quantized(16, 64, "nf4", True, device=device)
    A = torch.randn(4, 64).to(device)
    bias = torch.zeros(16, device=device, requires_grad=True)
    out = torch.empty(4, 16, device=device)
    res = bnb.matmul_4bit(A, packed, qs, out=out, bias=bias)
    assert res.data_ptr() == out.data_ptr()
    res.sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((16,), 4.0, device=device))
    with torch.no_grad():
        assert bnb.matmul_4bit(A, packed, qs, bias=bias).grad_fn is None


def test_matmul_4bit_deprecated_orientation(device):
    Wt, packed, qs = _quantized(96, 32, "nf4", False, device=device)  # quantized as [K, N]: K=96, N=32
    A = torch.randn(5, 96)
    with pytest.warns(DeprecationWarning, match=r"Re-quantize from the weight in \[N, K\]"):
        out = bnb.matmul_4bit(A.to(device), packed, qs)
    ref = A @ bnb.functional.dequantize_4bit(packed, qs).cpu()
    assert out.shape == (5, 32) and out.device.type == device
    torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=1e-5)


def test_matmul_4bit_empty_input(device):
    W, packed, qs = _quantized(16, 64, "fp4", False, device=device)
    out = bnb.matmul_4bit(torch.randn(0, 64, device=device), packed, qs)
    assert out.shape == (0, 16)
    A = torch.randn(0, 64, device=device, requires_grad=True)
    out = bnb.matmul_4bit(A, packed, qs)
    out.sum().backward()
    assert A.grad.shape == (0, 64)


def test_matmul_4bit_errors(device):
    W, packed, qs = _quantized(16, 64, "nf4", True, device=device)
    with pytest.raises(ValueError, match="quant_state is required"):
        bnb.matmul_4bit(torch.randn(2, 64, device=device), packed, None)
    with pytest.raises(RuntimeError, match="last dimension"):
        bnb.matmul_4bit(torch.randn(2, 63, device=device), packed, qs)
    qs.state2.blocksize = 128
    with pytest.raises(NotImplementedError, match="state2.blocksize"):
        bnb.matmul_4bit(torch.randn(2, 64, device=device), packed, qs)
    qs.state2.blocksize = 256
    qs.shape = torch.Size([16 * 64])
    with pytest.raises(ValueError, match="2D"):
        bnb.matmul_4bit(torch.randn(2, 64, device=device), packed, qs)


def test_autograd_exports():
    import nybble.autograd as ag

    for name in ("MatmulLtState", "MatMul8bitLt", "MatMul8bitFp", "MatMul4Bit", "matmul", "matmul_4bit",
                 "GlobalOutlierPooler"):
        assert hasattr(ag._functions, name)
    assert bnb.matmul is ag._functions.matmul and bnb.matmul_4bit is ag._functions.matmul_4bit
    assert bnb.MatmulLtState is ag._functions.MatmulLtState
    with pytest.raises(RuntimeError, match="get_instance"):
        ag.GlobalOutlierPooler()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ag.GlobalOutlierPooler.get_instance() is ag.GlobalOutlierPooler.get_instance()
