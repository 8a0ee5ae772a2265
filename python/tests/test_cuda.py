"""What only the GPU has: paged (managed) buffers, the large-M path of gemm_4bit, CUDA graph capture
and torch.compile of the 4-bit and 8-bit layers, tensors past 2^31 elements. The rest of the
package's tests run on CUDA through the ``device`` fixture."""

import copy

import pytest
import torch

import nybble
import nybble.functional as F
from nybble import _C

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and _C.cuda_built()),
    reason="CUDA: no GPU (torch.cuda.is_available() is False) or nybble built without CUDA",
)

GiB = 1 << 30


def free_bytes() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


# ---- paged memory -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bfloat16])
def test_get_paged_is_a_zeroed_cuda_tensor_the_kernels_take(dtype):
    t = F.get_paged(3, 1000, dtype=dtype, device="cuda")
    assert t.is_cuda and t.dtype == dtype and t.shape == (3, 1000)
    assert t.is_paged and t.is_managed and t.page_deviceid == torch.cuda.current_device()
    assert int(torch.count_nonzero(t)) == 0
    F.prefetch_tensor(t)
    if dtype != torch.uint8:
        t.copy_(torch.randn(3, 1000, device="cuda"))
        packed, state = F.quantize_4bit(t, quant_type="nf4")
        expected, _ = F.quantize_4bit(t.clone(), quant_type="nf4")
        assert torch.equal(packed, expected)
    F.prefetch_tensor(t, to_cpu=True)
    if dtype in (torch.float32, torch.uint8):  # the reference's fill takes only these
        F.fill(t, 3)
    else:
        t.fill_(3)
    torch.cuda.synchronize()
    assert bool((t == 3).all())


def test_paged_memory_is_freed_with_the_tensor():
    before = free_bytes()
    t = F.get_paged(GiB, dtype=torch.uint8, device="cuda")
    F.prefetch_tensor(t)
    t.fill_(1)
    during = free_bytes()
    view = t[GiB // 2:]  # a view keeps the memory alive
    del t
    assert free_bytes() <= during + 64 * (1 << 20)
    assert int(view[-1]) == 1
    del view
    after = free_bytes()
    assert during < before - GiB // 2, "the paged buffer should have been resident on the GPU"
    assert after >= before - 64 * (1 << 20), f"{(before - after) / GiB:.2f} GiB not returned"


def test_paged_buffers_larger_than_the_free_gpu_memory():
    # Leave ~2 GiB free, then use 6 GiB of paged memory from a kernel: the driver pages it.
    hog = torch.empty(max(0, free_bytes() - 2 * GiB), dtype=torch.uint8, device="cuda")
    try:
        n = 3 * GiB // 2  # fp32 elements: 6 GiB
        t = F.get_paged(n, dtype=torch.float32, device="cuda")
        t.fill_(0.5)
        t[-1] = 4.0
        packed, state = F.quantize_4bit(t, blocksize=4096, quant_type="nf4")
        assert float(state.absmax[0]) == 0.5 and float(state.absmax[-1]) == 4.0
        F.prefetch_tensor(t, to_cpu=True)
        assert float(t[n // 2]) == 0.5
    finally:
        del hog


def test_prefetch_of_a_copied_paged_tensor_is_a_no_op():
    # A deepcopy (as of an optimizer's state_dict) keeps the paged flags but lives in ordinary
    # device memory: prefetching it must neither fail nor change it (a paged optimizer's step
    # after load_state_dict prefetches such states).
    t = F.get_paged(4096, dtype=torch.float32, device="cuda")
    t.fill_(3.0)
    c = copy.deepcopy(t)
    assert c.is_paged and c.is_managed and c.data_ptr() != t.data_ptr()
    F.prefetch_tensor(c)
    F.prefetch_tensor(c, to_cpu=True)
    torch.cuda.synchronize()
    assert bool((c == 3.0).all())


@pytest.mark.parametrize("name", ["PagedAdamW", "PagedAdamW8bit"])
def test_paged_optimizer_states_larger_than_the_free_gpu_memory(name):
    # Two parameters of 1 GiB (fp32) and their gradients on the GPU; then ~1.5 GiB left free while
    # the paged optimizer creates and updates its states (4 GiB for 32-bit Adam, 1 GiB for 8-bit):
    # the driver pages them in and out. The result equals the same optimizer's unpaged steps.
    n = 256 << 20
    params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for _ in range(2)]
    grads = [torch.randn_like(p) for p in params]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    hog = torch.empty(max(0, free_bytes() - 3 * GiB // 2), dtype=torch.uint8, device="cuda")
    try:
        paged = getattr(nybble.optim, name)(params, lr=1e-3)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g
            paged.step()
        assert all(s["state1"].is_managed for s in paged.state.values())
        torch.cuda.synchronize()
    finally:
        del hog
    unpaged = getattr(nybble.optim, name.removeprefix("Paged"))(copies, lr=1e-3)
    for _ in range(3):
        for q, g in zip(copies, grads):
            q.grad = g
        unpaged.step()
    for p, q in zip(params, copies):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("name", ["PagedAdamW", "PagedAdamW8bit"])
def test_paged_optimizer_states_stay_paged_after_a_state_dict_round_trip(name):
    p = torch.nn.Parameter(torch.randn(300_000, device="cuda"))
    opt = getattr(nybble.optim, name)([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["state1"].is_managed
    again = getattr(nybble.optim, name)([p], lr=1e-3)
    again.load_state_dict(opt.state_dict())
    for key in ("state1", "state2"):
        assert again.state[p][key].is_managed and torch.equal(again.state[p][key], opt.state[p][key])
    q = p.detach().clone()
    opt.step()
    p2 = torch.nn.Parameter(q)
    p2.grad = p.grad
    again.param_groups[0]["params"] = [p2]
    again.state[p2] = again.state.pop(p)
    again.step()  # prefetches the reloaded states and updates from them as the original did
    assert torch.equal(p2.detach(), p.detach())


# ---- gemm_4bit on the GPU: both paths ------------------------------------------------------------


@pytest.mark.parametrize("M", [1, 3, 8, 9, 16, 17, 33, 64, 257, 1024, 4096])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("N", [296, 8195])  # 296: the backward's fused kernel takes M <= 16 (N % 8 == 0 and K = 512)
@pytest.mark.parametrize("K", [512, 520])  # 512: the weight-streaming kernel's shapes; 520: not a multiple of the blocksize
@pytest.mark.parametrize("quant_type, with_bias", [("nf4", True), ("fp4", False)])
def test_matmul_4bit_every_M_against_dequantize_and_linear(M, nested, dtype, N, K, quant_type, with_bias):
    """Forward and backward (grad of A and bias) against dequantize + F.linear in fp32, whichever
    path the rows of A take; the output poisoned with NaN before the op writes it."""
    W = torch.randn(N, K, device="cuda")
    packed, state = F.quantize_4bit(W, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    A = torch.randn(M, K, device="cuda", dtype=dtype, requires_grad=True)
    bias = torch.randn(N, device="cuda", dtype=dtype, requires_grad=True) if with_bias else None
    poisoned = torch.full((M, N), float("nan"), device="cuda", dtype=dtype)
    with torch.no_grad():
        got = nybble.matmul_4bit(A, packed.t(), state, bias=bias, out=poisoned)
    assert got.dtype == dtype and got.shape == (M, N) and got.data_ptr() == poisoned.data_ptr()
    Wd = F.dequantize_4bit(packed, state).float()
    A32 = A.detach().float().requires_grad_()
    b32 = None if bias is None else bias.detach().float().requires_grad_()
    expected = torch.nn.functional.linear(A32, Wd, b32)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected.detach(), rtol=tol, atol=tol * K ** 0.5)

    out = nybble.matmul_4bit(A, packed.t(), state, bias=bias)
    torch.testing.assert_close(out, got, rtol=0, atol=0)  # the same path with grad enabled
    g = torch.randn(M, N, device="cuda", dtype=dtype)
    out.backward(g)
    expected.backward(g.float())
    assert A.grad.dtype == dtype
    torch.testing.assert_close(A.grad.float(), A32.grad, rtol=tol, atol=tol * N ** 0.5)
    if bias is not None:
        torch.testing.assert_close(bias.grad.float(), b32.grad, rtol=tol, atol=tol * M ** 0.5)


@pytest.mark.parametrize("M", [1, 3, 8, 9, 16, 17, 33, 64, 65, 257, 1024, 4096])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("N", [296, 297])  # 296: the tiled kernel's shapes (N % 8 == 0); 297 (odd): not
@pytest.mark.parametrize("K", [512, 520])  # 520: not a multiple of the blocksize or of 64
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gemm_4bit_grad_every_M_against_dequantize_and_matmul(M, nested, dtype, N, K, quant_type):
    """gemm_4bit_grad's C++ op (whichever CUDA kernel: the tiled kernel in its gradient form on its
    shapes, the exact fp32 kernel elsewhere) for every M, against the output gradient times the
    dequantized weight in fp32; the output poisoned with NaN before the op writes it."""
    from nybble import _ops

    W = torch.randn(N, K, device="cuda")
    packed, state = F.quantize_4bit(W, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    G = torch.randn(M, N, device="cuda", dtype=dtype)
    out = torch.full((M, K), float("nan"), device="cuda", dtype=dtype)
    q, nested_absmax, code, offset = _ops._scales(
        *((state.absmax, None, None, None) if not nested else
          (state.state2.absmax, state.absmax, state.state2.code, state.offset)))
    _C.gemm_4bit_grad(G, _ops._bytes(packed), q, nested_absmax, code, offset, _ops.NESTED_BLOCKSIZE, 64, quant_type,
                      out, stream=_ops._stream(G))
    expected = G.float() @ F.dequantize_4bit(packed, state).float()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol * N ** 0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matmul_4bit_backward_both_sides_of_the_grad_threshold(dtype):
    """MatMul4Bit's backward takes gemm_4bit_grad's fused kernel up to the rows its rule gives the
    weight (GPU_GRAD_TILE_MAX_ROWS) and dequantize + matmul above: both give the gradient of fp32
    dequantize + linear, and each other's row for row."""
    from nybble import _ops

    n, k = 4096, 8192
    W = torch.randn(n, k, device="cuda") / k ** 0.5
    packed, state = F.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
    rows = _ops._gpu_grad_max_rows(n, k)
    Wd = F.dequantize_4bit(packed, state).float()
    g = torch.randn(rows + 1, n, device="cuda", dtype=dtype)
    grads = []
    for m in (rows, rows + 1):
        A = torch.randn(m, k, device="cuda", dtype=dtype, requires_grad=True)
        assert _ops._gemm_4bit_grad_in_cpp(g[:m], n, k, 64) == (m == rows)
        out = nybble.matmul_4bit(A, packed.t(), state)
        assert (out.grad_fn.dequantize is None) == (m == rows)  # the forward prepares what the backward takes
        out.backward(g[:m])
        torch.testing.assert_close(A.grad.float(), g[:m].float() @ Wd, rtol=2e-2, atol=2e-2)
        grads.append(A.grad)
    torch.testing.assert_close(grads[1][:rows], grads[0], rtol=2e-2, atol=2e-2)


def test_quantized_linear4bit_moves_between_gpu_and_cpu_as_it_is():
    # A layer quantized on the GPU keeps its packed bytes and quant state on the CPU and back
    # (docs/usage.md: placing a quantized model), and computes the same on either device.
    torch.manual_seed(0)
    layer = nybble.nn.Linear4bit(256, 64, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
    packed = layer.weight.detach().clone()
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    on_gpu = layer(x.cuda()).float().cpu()
    layer = layer.to("cpu")
    assert layer.weight.device.type == "cpu" and layer.weight.quant_state.absmax.device.type == "cpu"
    assert torch.equal(layer.weight.detach().view(torch.uint8), packed.cpu().view(torch.uint8))
    torch.testing.assert_close(layer(x).float(), on_gpu, rtol=2e-2, atol=1e-2)
    layer = layer.to("cuda")
    assert torch.equal(layer(x.cuda()).float().cpu(), on_gpu)


# ---- CUDA graphs and torch.compile ---------------------------------------------------------------


def capture(fn, *args):
    """Runs fn eagerly and captured in a CUDA graph; returns (eager result, graph result)."""
    eager = fn(*args)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(*args)  # warm-up on a side stream, as torch recommends before capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = fn(*args)
    if static_out.is_floating_point():
        static_out.fill_(float("nan"))  # poisoned: the replay must write every element
    else:
        static_out.fill_(-1)
    g.replay()
    torch.cuda.synchronize()
    return eager, static_out


@pytest.mark.parametrize("M", [1, 16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_linear4bit_forward_is_graph_capturable(M, quant_type):
    layer = nybble.nn.Linear4bit(512, 384, compute_dtype=torch.bfloat16, quant_type=quant_type).to("cuda")
    x = torch.randn(M, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        eager, graphed = capture(layer, x)
    assert torch.equal(eager, graphed)


def test_nested_dequantize_is_graph_capturable():
    W = torch.randn(1000, 300, device="cuda")
    packed, state = F.quantize_4bit(W, quant_type="nf4", compress_statistics=True)
    eager, graphed = capture(lambda p: F.dequantize_4bit(p, state), packed)
    assert torch.equal(eager, graphed)


def test_int8_ops_are_graph_capturable():
    A = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    B = torch.randn(128, 256, device="cuda", dtype=torch.float16)
    CB, SCB, _ = F.int8_vectorwise_quant(B)

    def fn(a):
        CA, SCA, _ = F.int8_vectorwise_quant(a)
        return F.int8_mm_dequant(F.int8_linear_matmul(CA, CB), SCA, SCB)

    eager, graphed = capture(fn, A)
    assert torch.equal(eager, graphed)


@pytest.mark.parametrize("layer_kind", ["4bit", "8bit"])
def test_layers_compile_with_torch_compile(layer_kind):
    if layer_kind == "4bit":
        layer = nybble.nn.Linear4bit(256, 128, compute_dtype=torch.float16, quant_type="nf4")
    else:
        layer = nybble.nn.Linear8bitLt(256, 128, has_fp16_weights=False, threshold=0.0)
    layer = layer.half().to("cuda")
    x = torch.randn(4, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        eager = layer(x)
        compiled = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


# ---- past 2^31 elements ------------------------------------------------------------------------------


def test_4bit_past_2_31_elements_equals_the_cpu():
    # The codes past element 2^31 (a linspace tail, not a multiple of the blocksize) are the CPU's,
    # byte for byte; the dequantized values equal the CPU's within a bf16 rounding step (the nested
    # absmax's mean may differ in its last bit: summed in another order). Comparisons give Python
    # bools: a failing assert must not make pytest print a tensor of 2^31 elements.
    n = (1 << 31) + 4096 + 130
    x = torch.empty(n, device="cuda", dtype=torch.bfloat16)
    x[: n - 1000].fill_(1.0)
    x[n - 1000:] = torch.linspace(-2, 2, 1000, device="cuda", dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    x_cpu = x.cpu()
    del x
    packed_cpu, state_cpu = F.quantize_4bit(x_cpu, blocksize=64, quant_type="nf4", compress_statistics=True)
    del x_cpu
    assert packed.numel() == (n + 1) // 2
    same_codes = torch.equal(packed.cpu(), packed_cpu)
    assert same_codes
    y = F.dequantize_4bit(packed, state).cpu()
    del packed
    y_cpu = F.dequantize_4bit(packed_cpu, state_cpu)
    close = torch.allclose(y, y_cpu, rtol=2**-7, atol=0.0)
    assert close
