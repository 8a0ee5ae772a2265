"""nybble.functional against the reference, bitsandbytes 0.50.2: its golden data (made by its CUDA
build, tests/data/golden) and the reference itself, run in one subprocess per device: with
``device`` = "cpu" the reference's CPU backend, with "cuda" its CUDA kernels (the compatibility
contract), fed the same inputs as CUDA tensors.

What "the same" means, and the known differences between the reference's own backends:

* 4-bit packed bytes, absmax, QuantState tensors and JSON bytes: identical. Two exceptions of the
  reference's CPU (default) backend are handled explicitly: its FP4 quantizer gives tiny values
  the wrong sign bit (0b1000 for x > 0, 0b0000 for x < 0; both decode to zero), and it stores an
  all-zero LAST block's absmax as 1e-38 (hit by double quantization of a single block).
* The golden data and the reference's CUDA run come from CUDA, whose fast reciprocal can land a
  value within two ulps of a decision threshold on the other side (4-bit codes, 8-bit codes, the
  8-bit codes of a double-quantized absmax); such elements are checked to be exactly that case
  and counted (golden data: at most 4 per 4-bit and 8 per 8-bit tensor). For the reference's
  CUDA run, whose 16-bit inputs put many more values exactly on thresholds, each block is checked
  to use one such reciprocal and those blocks are counted (``check_against_cuda_reference``).
* The double-quantization offset is torch's mean of the absmax, as in the reference, so it is the
  reference's bit for bit on the same device; the golden data's (CUDA on another machine) can
  differ by an ulp or two.
* 8-bit codes: the reference's CPU kernel uses a 65,536-bin lookup table that is not exactly
  nearest (spec §1.3); nybble is exactly nearest on every device. Inside the subprocess the
  reference's CPU kernel is therefore replaced by its own default backend kernel (bucketize over
  the fp32 midpoints: exactly nearest, like its CUDA kernel), and nybble's codes must equal that;
  the lookup table's own codes are only checked to be within one code. CUDA has no lookup table:
  its codes are compared with the reciprocal allowance above.

Tests about the reference's CPU backend alone (its lookup table, its dequantize bug), and those
with no nybble kernel in them (code maps, error types, signatures), use the CPU run only.
"""

import ast
import inspect
import json
import math
from pathlib import Path

import pytest
import torch
from refrun import requires_reference, run_reference, tree_to
from test_functional import block_absmax, codes_4bit, nearest_8bit, normalized

import nybble.functional as F
import nybble.utils as U

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "data" / "golden" / "golden_bnb_0_50_2.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BLOCKSIZES_4BIT = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def nibbles(packed: torch.Tensor) -> torch.Tensor:
    b = packed.reshape(-1).view(torch.uint8)
    return torch.stack([b >> 4, b & 0xF], 1).reshape(-1)


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    return abs(int(a.view(torch.int32)) - int(b.view(torch.int32)))


def nudged(s: torch.Tensor):
    """s moved by one and two ulps either way (the CUDA reciprocal's rounding)."""
    up, down = s.clone(), s.clone()
    for _ in range(2):
        up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-2.0))
        yield up
        yield down


def reciprocal_cases(ours, theirs, s, rule) -> int:
    """Counts positions where the codes differ, asserting each one is a value within two ulps of a
    threshold that the reference's reciprocal put on the other side."""
    idx = (ours != theirs).nonzero().view(-1)
    for i in idx.tolist():
        assert any(int(rule(v[i:i + 1])) == int(theirs[i]) for v in nudged(s)), f"element {i}: not a rounding case"
    return idx.numel()


# ---- golden data (CUDA build of the reference) --------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    safetensors = pytest.importorskip("safetensors.torch")
    return safetensors.load_file(str(GOLDEN))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("blocksize", BLOCKSIZES_4BIT)
def test_golden_4bit(golden, device, quant_type, dtype, blocksize):
    x = golden["input.x_" + dtype]
    key = f"q4.{quant_type}.bs{blocksize}.dq0.{dtype}"
    packed, state = F.quantize_4bit(x.to(device), blocksize=blocksize, quant_type=quant_type)
    assert same_bits(state.absmax.cpu(), golden[key + ".qs.absmax"])
    n = x.numel()
    s = normalized(x, blocksize)
    cases = reciprocal_cases(nibbles(packed.cpu())[:n], nibbles(golden[key + ".packed"])[:n], s,
                             lambda v: codes_4bit(v, quant_type))
    assert cases <= 4
    d = tree_to(state.as_dict(packed=True), "cpu")
    for k in ["absmax", "quant_map", "quant_state.bitsandbytes__" + quant_type]:
        assert same_bits(d[k], golden[key + ".qs." + k]), k
    # Double quantization: same packed bytes; offset = torch mean on this test's device (the
    # golden data's is CUDA's on another machine: within two ulps); with an equal offset, every
    # nested tensor and the JSON are identical.
    dq = f"q4.{quant_type}.bs{blocksize}.dq1.{dtype}"
    packed_dq, state_dq = F.quantize_4bit(x.to(device), blocksize=blocksize, quant_type=quant_type,
                                          compress_statistics=True)
    assert torch.equal(packed_dq, packed)
    golden_json = json.loads(bytes(golden[dq + ".qs.quant_state.bitsandbytes__" + quant_type].tolist()))
    golden_offset = torch.tensor(golden_json["nested_offset"], dtype=torch.float32)
    offset = state_dq.offset.cpu()
    assert ulps(offset, golden_offset) <= 2
    d = tree_to(state_dq.as_dict(packed=True), "cpu")
    assert sorted(d) == sorted(k.removeprefix(dq + ".qs.") for k in golden if k.startswith(dq + ".qs."))
    ours_json = json.loads(bytes(d["quant_state.bitsandbytes__" + quant_type].tolist()))
    assert list(ours_json) == list(golden_json)
    assert {k: v for k, v in ours_json.items() if k != "nested_offset"} == \
        {k: v for k, v in golden_json.items() if k != "nested_offset"}
    if torch.equal(offset, golden_offset):
        for k in d:
            assert same_bits(d[k], golden[dq + ".qs." + k]), k
    else:
        assert same_bits(d["nested_quant_map"], golden[dq + ".qs.nested_quant_map"])
        torch.testing.assert_close(d["nested_absmax"], golden[dq + ".qs.nested_absmax"], rtol=1e-5, atol=0)
        assert (d["absmax"].int() - golden[dq + ".qs.absmax"].int()).abs().max() <= 1


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("blocksize", [64, 128, 256, 512, 1024, 2048, 4096])
def test_golden_8bit(golden, device, dtype, blocksize):
    x = golden["input.x_" + dtype]
    key = f"q8.bs{blocksize}.{dtype}"
    codes, state = F.quantize_blockwise(x.to(device), blocksize=blocksize)
    codes = codes.cpu()
    assert same_bits(state.absmax.cpu(), golden[key + ".absmax"])
    code = golden["map.dynamic_signed"]
    s = normalized(x, blocksize)
    zero_block = torch.isnan(s)  # elements 128..191: CUDA's 0 * inf; the code is irrelevant (x 0)
    theirs = golden[key + ".codes"]
    cases = reciprocal_cases(torch.where(zero_block, theirs, codes), theirs, s, lambda v: nearest_8bit(v, code))
    assert cases <= 8
    out = F.dequantize_blockwise(theirs.to(device), absmax=golden[key + ".absmax"].to(device), blocksize=blocksize)
    assert same_bits(out.to(DTYPES[dtype]).cpu(), golden[key + ".dequant"])


def test_golden_maps(golden):
    assert same_bits(F.create_dynamic_map(True), golden["map.dynamic_signed"])
    assert same_bits(F.create_dynamic_map(False), golden["map.dynamic_unsigned"])
    assert same_bits(F._build_dynamic_map(True, 7, 8), golden["map.dynamic_signed"])
    assert same_bits(F._build_dynamic_map(False, 7, 8), golden["map.dynamic_unsigned"])


def test_golden_int8(golden, device):
    A, W = golden["int8.A_f16"].to(device), golden["int8.W_f16"].to(device)
    for thr in ["0.0", "6.0"]:
        CA, stats, cols = tree_to(F.int8_vectorwise_quant(A, float(thr)), "cpu")
        assert same_bits(stats, golden[f"int8.vq.thr{thr}.row_stats"])
        diff = (CA.int() - golden[f"int8.vq.thr{thr}.CA"].int()).abs()
        assert diff.max() <= 1 and int(diff.sum()) <= A.numel() // 500  # rounding ties only
        if thr == "6.0":
            assert torch.equal(cols, golden["int8.vq.thr6.0.outlier_cols"])
        else:
            assert cols is None
    CB, SCB, _ = F.int8_vectorwise_quant(W)
    # The golden product used the reference's CB, which may differ from nybble's by one at a
    # rounding tie: each such code changes a column of the product by at most 127.
    acc = F.int8_linear_matmul(golden["int8.vq.thr0.0.CA"].to(device), CB).cpu()
    diff = (acc - golden["int8.mm.acc_i32"]).abs()
    assert diff.max() <= 127 * 2 and int((diff.amax(0) > 0).sum()) <= max(2, W.shape[0] // 10)
    out = F.int8_mm_dequant(golden["int8.mm.acc_i32"].to(device), golden["int8.vq.thr0.0.row_stats"].to(device),
                            SCB).cpu()
    # The reference's CUDA constant 6.200012e-05 vs nybble's exact 1/16129: fp16 rounding apart.
    torch.testing.assert_close(out, golden["int8.mm.dequant_f16"], rtol=2e-3, atol=1e-3)


# ---- the reference itself, one subprocess ---------------------------------------------------------

REFERENCE_CODE = r'''
import inspect
# The reference's default backend wraps some kernels in torch.compile (recompiled for every shape):
# run them eagerly, the same computation without minutes of compiling.
torch._dynamo.config.disable = True
F = bnb.functional
device = inputs["device"]
if device == "cpu":
    # Exactly nearest 8-bit codes in the reference: its default-backend kernel instead of its CPU LUT.
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    outputs["lut"] = op(inputs["lut"], F.create_dynamic_map(), 256)
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    # The reference registered its CPU kernel from Python; some torch versions (2.11) refuse a
    # second one for the same key unless the first is forgotten (2.15 replaces it).
    torch.library._impls.discard("bitsandbytes/quantize_blockwise/CPU")
    torch.library.register_kernel("bitsandbytes::quantize_blockwise", "cpu",
                                  lambda A, code, bs: op.redispatch(keys, A, code, bs))

q4 = {}
for key, (x, bs, qt, dq) in inputs["q4"].items():
    packed, state = F.quantize_4bit(x, blocksize=bs, quant_type=qt, compress_statistics=dq)
    q4[key] = (packed, state.as_dict(packed=True), F.dequantize_4bit(packed, state))
outputs["q4"] = q4

q8 = {}
for key, (x, bs, signed, nested) in inputs["q8"].items():
    codes, state = F.quantize_blockwise(x, code=F.create_dynamic_map(signed), blocksize=bs, nested=nested)
    q8[key] = (codes, state.absmax, state.offset, state.state2.absmax if nested else None,
               F.dequantize_blockwise(codes, state))
outputs["q8"] = q8

# States serialized by nybble, loaded and dequantized by the reference.
outputs["load"] = {key: F.dequantize_4bit(packed, F.QuantState.from_dict(d, device=device))
                   for key, (packed, d) in inputs["nybble_states"].items()}

A, W = inputs["int8"]
int8 = {}
for thr in [0.0, 2.0]:
    int8[thr] = F.int8_vectorwise_quant(A.clone(), thr)
CA, SCA, _ = F.int8_vectorwise_quant(A.clone())
CB, SCB, _ = F.int8_vectorwise_quant(W.clone())
acc = F.int8_linear_matmul(CA, CB)
int8["mm"] = (CA, CB, SCA, SCB, acc, F.int8_mm_dequant(acc, SCA, SCB), F.int8_vectorwise_dequant(CB, SCB))
outputs["int8"] = int8

def device_independent():
    """Code maps, error types and signatures: taken from the CPU run only."""
    def attempt(f):
        try:
            return f()
        except Exception as e:
            return type(e).__name__
    maps = {}
    for args in inputs["linear"]:
        maps[("linear",) + args] = attempt(lambda: F.create_linear_map(*args))
    for args in inputs["fp8"]:
        maps[("fp8",) + args] = attempt(lambda: F.create_fp8_map(*args))
    for args in inputs["dynamic"]:
        maps[("dynamic",) + args] = attempt(lambda: F.create_dynamic_map(*args))
    for name in ["nf4", "fp4", "af4"]:
        maps[("4bit", name)] = F.get_4bit_type(name, device="cpu")
    outputs["maps"] = maps

    errors = {}
    x = inputs["bad_x"]
    errors["4bit int32"] = attempt(lambda: F.quantize_4bit(x.int()))
    errors["4bit bs48"] = attempt(lambda: F.quantize_4bit(x, blocksize=48))
    errors["4bit int4"] = attempt(lambda: F.quantize_4bit(x, quant_type="int4"))
    errors["8bit float64"] = attempt(lambda: F.quantize_blockwise(x.double()))
    errors["8bit bs0"] = attempt(lambda: F.quantize_blockwise(x, blocksize=0))
    errors["dequant8 float"] = attempt(lambda: F.dequantize_blockwise(x, absmax=torch.ones(1)))
    errors["dequant8 nothing"] = attempt(lambda: F.dequantize_blockwise(x.to(torch.uint8)))
    errors["dequant4 no out"] = attempt(lambda: F.dequantize_4bit(x.to(torch.uint8), absmax=torch.ones(1)))
    errors["from_dict neither"] = attempt(lambda: F.QuantState.from_dict({"absmax": x}, device="cpu"))
    errors["gemv no state"] = attempt(lambda: F.gemv_4bit(x, x))
    errors["double_quant out"] = attempt(lambda: F.int8_double_quant(x.half().view(4, -1), out_row=x))
    outputs["errors"] = errors

    sigs = {}
    for modname, mod in [("functional", F), ("utils", bnb.utils)]:
        for name in dir(mod):
            obj = getattr(mod, name)
            if name.startswith("_") or inspect.ismodule(obj) or getattr(obj, "__module__", "").startswith("typing"):
                continue
            if not callable(obj):
                sigs[(modname, name)] = "<value>"
            elif getattr(obj, "__module__", "").startswith("bitsandbytes"):  # not a re-export (prod, Tensor, ...)
                try:
                    sigs[(modname, name)] = str(inspect.signature(obj))
                except (TypeError, ValueError):
                    sigs[(modname, name)] = None
    outputs["sigs"] = sigs


if device == "cpu":
    device_independent()
'''

LINEAR_ARGS = [(s, b, z) for s in (True, False) for b in (2, 3, 4, 8) for z in (True, False)]
FP8_ARGS = [(True, 5, 2, 8), (True, 4, 3, 8), (True, 2, 1, 4), (False, 4, 4, 8), (True, 3, 2, 6), (False, 2, 2, 4),
            (True, 3, 3, 8)]
DYNAMIC_ARGS = [(True, 7, 8), (False, 7, 8), (True, 7, 4), (True, 4, 8), (True, 6, 8), (False, 3, 8), (False, 7, 4),
                (True, 8, 8), (True, 2, 3)]


def q4_cases():
    """(input, blocksize, quant_type, double quant) by key. Single-block inputs are left out of
    double quantization (the reference's CPU 1e-38 quirk, see the module docstring)."""
    gen = torch.Generator().manual_seed(2024)
    inputs = {"randn": torch.randn(12291, generator=gen), "odd2d": torch.randn(33, 67, generator=gen) * 3,
              "uniform": torch.rand(4 * 4096 + 5, generator=gen) - 0.3,
              "transposed": torch.randn(96, 64, generator=gen).t()}
    cases = {}
    for name, x in inputs.items():
        for dtype in DTYPES.values():
            for bs in BLOCKSIZES_4BIT:
                for qt in ["nf4", "fp4"]:
                    for dq in [False, True]:
                        if dq and x.numel() <= bs:
                            continue
                        if name == "transposed" and bs not in (64, 4096):
                            continue
                        cases[(name, str(dtype), bs, qt, dq)] = (x.to(dtype), bs, qt, dq)
    return cases


def q8_cases(device):
    """The blocksizes 100 and 16384 are the CPU's only (CUDA takes the powers of two 64..4096)."""
    gen = torch.Generator().manual_seed(2025)
    inputs = {"randn": torch.randn(12291, generator=gen), "uniform": torch.rand(64, 513, generator=gen)}
    cases = {}
    for name, x in inputs.items():
        for dtype in DTYPES.values():
            for bs in [64, 256, 1024, 4096] + ([100, 16384] if device == "cpu" else []):
                for nested in [False, True]:
                    if nested and x.numel() <= bs:
                        continue
                    cases[(name, str(dtype), bs, name == "randn", nested)] = (x.to(dtype), bs, name == "randn", nested)
    return cases


def run_reference_on(device: str) -> dict:
    """Runs everything the reference tests need in one subprocess (about 5 s on the CPU), with the
    inputs on ``device``; returns its outputs on the CPU, and the inputs (CPU) under "inputs"."""
    gen = torch.Generator().manual_seed(7)
    q4, q8 = q4_cases(), q8_cases(device)
    states = {}
    for key in [("randn", "torch.bfloat16", 64, "nf4", True), ("randn", "torch.float16", 128, "fp4", False),
                ("odd2d", "torch.float32", 32, "nf4", False), ("uniform", "torch.float32", 4096, "fp4", True)]:
        packed, state = F.quantize_4bit(q4[key][0].to(device), blocksize=key[2], quant_type=key[3],
                                        compress_statistics=key[4])
        states[key] = (packed, {"weight." + k: v for k, v in state.as_dict(packed=True).items()})
    int8_A = torch.randn(17, 96, generator=gen).half()
    int8_A[:, 5] *= 4
    int8_W = torch.randn(40, 96, generator=gen).half()
    lut_x = torch.randn(8192, generator=gen)
    tensors = dict(q4=q4, q8=q8, nybble_states=states, int8=(int8_A, int8_W), bad_x=torch.randn(64), lut=lut_x)
    out = run_reference(REFERENCE_CODE, device=device, linear=LINEAR_ARGS, fp8=FP8_ARGS, dynamic=DYNAMIC_ARGS,
                        **tree_to(tensors, device))
    out = tree_to(out, "cpu")
    out["inputs"] = {"q4": q4, "q8": q8, "states": tree_to(states, "cpu"), "int8": (int8_A, int8_W), "lut": lut_x}
    return out


@pytest.fixture(scope="module")
def ref_cpu():
    """The reference's CPU run, for the tests about its CPU backend or without nybble kernels."""
    return run_reference_on("cpu")


@pytest.fixture(scope="module")
def ref(request, device):
    """The reference's run on ``device`` (the CPU run is shared with ``ref_cpu``)."""
    return request.getfixturevalue("ref_cpu") if device == "cpu" else run_reference_on(device)


def cpu_normalized(x: torch.Tensor, bs: int) -> torch.Tensor:
    """The reference's CPU (default backend) normalization: full blocks times the reciprocal of the
    absmax (clamped to 1e-38), the last partial block DIVIDED by its absmax; clamped to [-1, 1]."""
    flat = x.reshape(-1).float()
    full = flat.numel() - flat.numel() % bs
    absmax = block_absmax(x, bs).clamp(min=1e-38)
    head = flat[:full].view(-1, bs) * (1.0 / absmax[: full // bs]).view(-1, 1)
    tail = flat[full:] / absmax[-1] if full < flat.numel() else flat[:0]
    return torch.cat([head.reshape(-1), tail]).clamp(-1, 1)


def cpu_rule_4bit(x: torch.Tensor, bs: int, quant_type: str) -> torch.Tensor:
    """The reference's CPU 4-bit codes: bucketize over the fp32 midpoints of the sorted table."""
    code = F.get_4bit_type(quant_type, device="cpu")
    order = torch.argsort(code)
    q = torch.bucketize(cpu_normalized(x, bs), (code[order[:-1]] + code[order[1:]]) / 2)
    return order[q] if quant_type == "fp4" else q


def cpu_rule_8bit(x: torch.Tensor, bs: int, code: torch.Tensor) -> torch.Tensor:
    """The reference's default-backend 8-bit codes (ties to the lower index)."""
    return torch.bucketize(cpu_normalized(x, bs), (code[:-1] + code[1:]) / 2)


def check_against_cpu_reference(ours, theirs, cuda_rule, cpu_rule, what, zero_sign=False):
    """nybble's codes follow the reference's CUDA rule (exactly: test_functional); the reference
    run here is its CPU backend. They may differ only where those two rules of the reference
    differ: FP4 decision thresholds (CUDA's fp32 literals vs exact fp32 midpoints), 8-bit values
    exactly on a midpoint (CUDA: even index, CPU: lower), the divided last block; with
    ``zero_sign`` also the sign bit of FP4 zeros (module docstring)."""
    ours, theirs, cuda_rule, cpu_rule = (t.reshape(-1).long() for t in (ours, theirs, cuda_rule, cpu_rule))
    if zero_sign:
        zero = (theirs & 0b0111) == 0
        ours, theirs, cpu_rule = (torch.where(zero, t & 0b0111, t) for t in (ours, theirs, cpu_rule))
        cuda_rule = torch.where(zero, cuda_rule & 0b0111, cuda_rule)
    explained = cuda_rule != cpu_rule
    unexplained = (ours != theirs) & ~explained
    assert not unexplained.any(), f"{what}: codes differ at {unexplained.nonzero().view(-1)[:10].tolist()}"
    assert int(explained.sum()) <= max(4, ours.numel() // 20), f"{what}: the two rules differ too often"


def check_against_cuda_reference(ours, theirs, x, bs: int, rule, what) -> int:
    """nybble's codes of ``x`` (blocks of ``bs``) against the reference's CUDA kernel's; returns
    how many differ.

    The kernel multiplies every element of a block by one fast-math reciprocal of the block's
    absmax (spec §1.4), nybble by the correctly rounded 1/absmax. So: nybble's codes must be
    ``rule(x * (1/absmax))`` exactly; each block of the reference's codes must be ``rule(x * r)``
    for one r within two ulps of 1/absmax (each differing code is then a value within two ulps
    of a threshold, as ``reciprocal_cases`` allows for the golden data); and the blocks whose r is
    not 1/absmax, among those where r changes a code, are counted and bounded (a quarter, at
    least 2; the golden data has 2 of 107 such 8-bit blocks and 11 of 83 FP4 ones). Counting
    codes instead would not do: with 16-bit inputs many values sit exactly on a threshold, and
    one block with a reciprocal one ulp off moves up to ~1,000 codes of the uniform bf16 case.
    All-zero blocks are left out: 0 * inf, and their codes decode to zero whatever they are."""
    ours, theirs, flat = ours.reshape(-1).long(), theirs.reshape(-1).long(), x.reshape(-1).float()
    n, absmax = flat.numel(), block_absmax(x, bs)
    pad, zero = (-n) % bs, absmax == 0

    def by_block(codes: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(codes, (0, pad)).view(absmax.numel(), bs)

    candidates = []
    for k in (0, -1, 1, -2, 2):  # the reciprocal moved by k ulps
        r = 1.0 / absmax
        for _ in range(abs(k)):
            r = torch.nextafter(r, torch.full_like(r, math.inf if k > 0 else -math.inf))
        candidates.append(by_block(rule(flat * r.repeat_interleave(bs)[:n]).reshape(-1).long()))
    assert torch.equal(by_block(ours)[~zero], candidates[0][~zero]), f"{what}: nybble's codes are not those of 1/absmax"
    explains = torch.stack([(c == by_block(theirs)).all(1) | zero for c in candidates])  # [reciprocal, block]
    unexplained = ~explains.any(0)
    assert not unexplained.any(), (f"{what}: in blocks {unexplained.nonzero().view(-1)[:10].tolist()} the "
                                   "reference's codes are not those of one reciprocal within two ulps of 1/absmax")
    matters = torch.stack([(c != candidates[0]).any(1) for c in candidates[1:]]).any(0) & ~zero
    off, informative = int((~explains[0]).sum()), int(matters.sum())
    assert off <= max(2, informative // 4), (f"{what}: the reference's reciprocal is not 1/absmax in {off} of the "
                                             f"{informative} blocks where it changes a code")
    return int((by_block(ours) != by_block(theirs))[~zero].sum())


@requires_reference
def test_reference_4bit_bytes_and_quant_state(ref, device):
    checked = 0
    for key, (x, bs, qt, dq) in ref["inputs"]["q4"].items():
        packed_ref, dict_ref, dequant_ref = ref["q4"][key]
        packed, state = F.quantize_4bit(x.to(device), blocksize=bs, quant_type=qt, compress_statistics=dq)
        assert packed.shape == packed_ref.shape and packed.dtype == packed_ref.dtype, key
        n = x.numel()
        ours, theirs = nibbles(packed.cpu())[:n], nibbles(packed_ref)[:n]
        if device == "cpu":
            check_against_cpu_reference(ours, theirs, codes_4bit(normalized(x, bs), qt), cpu_rule_4bit(x, bs, qt), key,
                                        zero_sign=qt == "fp4")
        else:
            check_against_cuda_reference(ours, theirs, x, bs, lambda v: codes_4bit(v, qt), key)
        d = tree_to(state.as_dict(packed=True), "cpu")
        assert list(d) == list(dict_ref), key
        for k in d:  # absmax, quant_map, nested absmax and map, the JSON bytes (offset included)
            if k == "absmax" and dq:
                centered = block_absmax(x, bs) - state.offset.cpu()
                dynamic = F.create_dynamic_map()
                if device == "cpu":
                    check_against_cpu_reference(d[k], dict_ref[k], nearest_8bit(normalized(centered, 256), dynamic),
                                                cpu_rule_8bit(centered, 256, dynamic), (key, k))
                else:
                    check_against_cuda_reference(d[k], dict_ref[k], centered, 256, lambda v: nearest_8bit(v, dynamic),
                                                 (key, k))
            else:
                assert same_bits(d[k], dict_ref[k]), (key, k)
        if (device != "cpu" or cpu_dequant_is_right(x.shape, bs)) and torch.equal(packed.cpu(), packed_ref) \
                and torch.equal(d["absmax"], dict_ref["absmax"]):
            assert torch.equal(F.dequantize_4bit(packed, state).cpu(), dequant_ref), key  # +0 == -0
        checked += 1
    assert checked == len(ref["q4"]) > 300


def cpu_dequant_is_right(shape, bs: int) -> bool:
    """The reference's native CPU dequantize_4bit reads the input as rows of shape[-1] and gets
    the absmax of blocks that straddle two rows wrong (e.g. [64, 96] at blocksize 64); it falls
    back to a correct torch version for an odd last dimension or blocksize >= 2048 (with
    AVX-512). nybble's blocks run over the flat tensor, as on CUDA (golden data)."""
    return len(shape) == 1 or shape[-1] % bs == 0 or shape[-1] % 2 == 1 or bs >= 2048


@requires_reference
def test_reference_cpu_dequantize_4bit_bug_is_not_copied(ref_cpu):
    ref = ref_cpu
    for key, (x, bs, qt, dq) in ref["inputs"]["q4"].items():
        if cpu_dequant_is_right(x.shape, bs) or dq:
            continue
        packed_ref, dict_ref, dequant_ref = ref["q4"][key]
        state = F.QuantState.from_dict(dict_ref, device="cpu")
        flat = F.QuantState.from_dict(dict_ref | {"quant_state.bitsandbytes__" + qt: U.pack_dict_to_tensor(
            {"quant_type": qt, "blocksize": bs, "dtype": str(x.dtype)[6:], "shape": [x.numel()]})}, device="cpu")
        ours = F.dequantize_4bit(packed_ref, state)
        assert torch.equal(ours.reshape(-1), F.dequantize_4bit(packed_ref, flat)), key
        assert not torch.equal(ours, dequant_ref), key  # the reference's CPU result is the wrong one


@requires_reference
def test_reference_dequantizes_nybble_states_and_vice_versa(ref, device):
    # Numerically equal (torch.equal: the reference's CPU kernel decodes FP4 0b1000 as +0.0).
    for key, (packed, d) in ref["inputs"]["states"].items():
        ours = F.dequantize_4bit(packed.to(device), F.QuantState.from_dict(d, device=device))
        assert ours.dtype == ref["load"][key].dtype and torch.equal(ref["load"][key], ours.cpu()), key
    for key, (packed_ref, dict_ref, dequant_ref) in ref["q4"].items():
        if device == "cpu" and not cpu_dequant_is_right(ref["inputs"]["q4"][key][0].shape, key[2]):
            continue
        out = F.dequantize_4bit(packed_ref.to(device), F.QuantState.from_dict(dict_ref, device=device))
        assert out.dtype == dequant_ref.dtype and torch.equal(out.cpu(), dequant_ref), key


@requires_reference
def test_reference_8bit_blockwise(ref, device):
    for key, (x, bs, signed, nested) in ref["inputs"]["q8"].items():
        codes_ref, absmax_ref, offset_ref, nested_ref, dequant_ref = ref["q8"][key]
        code = F.create_dynamic_map(signed)
        codes, state = F.quantize_blockwise(x.to(device), code=code, blocksize=bs, nested=nested)
        assert codes.shape == codes_ref.shape, key
        if device == "cpu":
            check_against_cpu_reference(codes.cpu(), codes_ref, nearest_8bit(normalized(x, bs), code),
                                        cpu_rule_8bit(x, bs, code), key)
        else:
            check_against_cuda_reference(codes.cpu(), codes_ref, x, bs, lambda v: nearest_8bit(v, code), key)
        if not nested:
            assert same_bits(state.absmax.cpu(), absmax_ref), key
            if torch.equal(codes.cpu(), codes_ref):
                assert same_bits(F.dequantize_blockwise(codes, state).cpu(), dequant_ref), key
            continue
        # Nested (quirk: same blocksize, dynamic map): offset and nested absmax identical.
        assert same_bits(state.offset.cpu(), offset_ref) and same_bits(state.state2.absmax.cpu(), nested_ref), key
        centered = block_absmax(x, bs) - state.offset.cpu()
        dynamic = F.create_dynamic_map()
        if device == "cpu":
            check_against_cpu_reference(state.absmax.cpu(), absmax_ref, nearest_8bit(normalized(centered, bs), dynamic),
                                        cpu_rule_8bit(centered, bs, dynamic), key)
        else:
            check_against_cuda_reference(state.absmax.cpu(), absmax_ref, centered, bs, lambda v: nearest_8bit(v, dynamic),
                                         key)


@requires_reference
def test_reference_cpu_lookup_table_is_within_one_code(ref_cpu):
    # The reference's own CPU kernel (65,536-bin table) against nybble's exactly nearest codes.
    x = ref_cpu["inputs"]["lut"]
    codes_lut, absmax = ref_cpu["lut"]
    codes, state = F.quantize_blockwise(x, blocksize=256)
    assert same_bits(state.absmax, absmax)
    diff = (codes.int() - codes_lut.int()).abs()
    assert diff.max() <= 1 and 0 < int((diff > 0).sum()) < x.numel() // 100
    assert torch.equal(codes, nearest_8bit(normalized(x, 256), F.create_dynamic_map()).to(torch.uint8))


@requires_reference
def test_reference_code_maps(ref_cpu):
    for key, want in ref_cpu["maps"].items():
        kind, args = key[0], key[1:]
        build = {"linear": F.create_linear_map, "fp8": F.create_fp8_map, "dynamic": F.create_dynamic_map,
                 "4bit": lambda name: F.get_4bit_type(name, device="cpu")}[kind]
        if isinstance(want, str):  # the reference fails (an assert) for these arguments
            with pytest.raises(ValueError):
                build(*args)
        else:
            assert same_bits(build(*args), want), key


@requires_reference
def test_reference_int8(ref, device):
    A, W = (t.to(device) for t in ref["inputs"]["int8"])
    for thr in [0.0, 2.0]:
        CA_ref, stats_ref, cols_ref = ref["int8"][thr]
        CA, stats, cols = tree_to(F.int8_vectorwise_quant(A, thr), "cpu")
        assert same_bits(stats, stats_ref)
        diff = (CA.int() - CA_ref.int()).abs()
        assert diff.max() <= 1 and int(diff.sum()) <= max(1, A.numel() // 500)  # rounding ties only
        assert (cols is None and cols_ref is None) or torch.equal(cols, cols_ref)
    CA_ref, CB_ref, SCA_ref, SCB_ref, acc_ref, out_ref, deq_ref = ref["int8"]["mm"]
    assert same_bits(F.int8_vectorwise_quant(W)[1].cpu(), SCB_ref)
    CA_dev, CB_dev, SCA_dev, SCB_dev, acc_dev = (t.to(device) for t in (CA_ref, CB_ref, SCA_ref, SCB_ref, acc_ref))
    assert torch.equal(F.int8_linear_matmul(CA_dev, CB_dev).cpu(), acc_ref)
    # The reference's constant (CPU 6.200124e-05, CUDA 6.200012e-05) vs nybble's exact 1/16129:
    # fp16 rounding apart.
    torch.testing.assert_close(F.int8_mm_dequant(acc_dev, SCA_dev, SCB_dev).cpu(), out_ref, rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(F.int8_vectorwise_dequant(CB_dev, SCB_dev).cpu(), deq_ref)


@requires_reference
def test_reference_error_types(ref_cpu):
    ref = ref_cpu
    x = torch.randn(64)
    ours = {
        "4bit int32": lambda: F.quantize_4bit(x.int()),
        "4bit bs48": lambda: F.quantize_4bit(x, blocksize=48),
        "4bit int4": lambda: F.quantize_4bit(x, quant_type="int4"),
        "8bit float64": lambda: F.quantize_blockwise(x.double()),
        "8bit bs0": lambda: F.quantize_blockwise(x, blocksize=0),
        "dequant8 float": lambda: F.dequantize_blockwise(x, absmax=torch.ones(1)),
        "dequant8 nothing": lambda: F.dequantize_blockwise(x.to(torch.uint8)),
        "dequant4 no out": lambda: F.dequantize_4bit(x.to(torch.uint8), absmax=torch.ones(1)),
        "from_dict neither": lambda: F.QuantState.from_dict({"absmax": x}, device="cpu"),
        "gemv no state": lambda: F.gemv_4bit(x, x),
        "double_quant out": lambda: F.int8_double_quant(x.half().view(4, -1), out_row=x),
    }
    assert set(ours) == set(ref["errors"])
    for name, call in ours.items():
        assert ref["errors"][name] == "ValueError", name
        with pytest.raises(ValueError):
            call()


@requires_reference
def test_reference_public_names_and_signatures(ref_cpu):
    compared = 0
    for (modname, name), sig in ref_cpu["sigs"].items():
        mod = {"functional": F, "utils": U}[modname]
        assert hasattr(mod, name), f"nybble.{modname}.{name} is missing"
        if sig not in (None, "<value>"):
            ours = str(inspect.signature(getattr(mod, name)))
            assert _params(ours) == _params(sig), f"{modname}.{name}{ours} != reference {sig}"
            compared += 1
    assert compared >= 40  # 44 functions and classes in 0.50.2


def _params(sig: str) -> str:
    """A signature's parameters without annotations: the names, kinds and defaults callers use."""
    args = ast.parse(f"def f{sig}: pass").body[0].args
    for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
        if a is not None:
            a.annotation = None
    return ast.unparse(args)
