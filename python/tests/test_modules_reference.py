"""Checkpoints move both ways between nybble and the reference (bitsandbytes 0.50.2): Linear4bit
(NF4/FP4, with and without double quantization, uint8 and bf16 storage) and Linear8bitLt
(threshold 0 and 6) state_dicts written by one load in the other (spec §1.8).

One reference subprocess per device serves every case (module-scoped fixture): it quantizes the
same weights on that device (``device`` = "cuda": the reference's CUDA kernels), returns its
state_dicts and outputs, and loads nybble's state_dicts.

Known differences of the reference's CPU path (spec §1.2, §2.1) that the comparisons allow for:
FP4 quantization on the CPU ("default" backend) can give -0 where the CUDA kernel and nybble give
+0 (the same value), and LLM.int8 codes may differ by one at exact .5 ties (the reference
multiplies by 127/absmax, nybble divides). On CUDA the reference's 4-bit quantizer multiplies by a
fast reciprocal: a code may differ from nybble's exactly rounded one where the normalized value
lies within two ulps of a decision threshold (checked block by block, as in
test_functional_reference.py: ``check_against_cuda_reference``); the comparisons that need
identical weights are made when the two quantizations are identical."""

import json

import pytest
import torch
from refrun import requires_reference, run_reference, tree_to
from test_functional import block_absmax, codes_4bit, nearest_8bit
from test_functional_reference import check_against_cuda_reference, nibbles

import nybble as bnb

pytestmark = [requires_reference, pytest.mark.reference]

CASES_4BIT = [(qt, nested, storage) for qt in ("nf4", "fp4") for nested in (False, True)
              for storage in ("uint8", "bfloat16")]
THRESHOLDS = (0.0, 6.0)

_REFERENCE = """
device = inputs["device"]

def clone(sd):
    return {k: v.detach().clone() for k, v in sd.items()}

for qt in ("nf4", "fp4"):
    for nested in (False, True):
        for storage in ("uint8", "bfloat16"):
            key = f"{qt}-{nested}-{storage}"
            q = bnb.nn.Linear4bit(128, 48, quant_type=qt, compress_statistics=nested,
                                  quant_storage=getattr(torch, storage))
            q.load_state_dict({"weight": inputs["W"], "bias": inputs["b"]})
            q = q.to(device)  # training mode: the reference's CPU forward is dequantize + linear
            outputs[key + "/sd"] = clone(q.state_dict())
            outputs[key + "/out"] = q(inputs["x"]).detach()
            outputs[key + "/deq"] = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state)
            # nybble's checkpoint, loaded the way transformers does it
            sd = dict(inputs["nyb4"][key])
            data, bias = sd.pop("weight"), sd.pop("bias")
            m = bnb.nn.Linear4bit(128, 48, quant_type=qt, compress_statistics=nested, quant_storage=data.dtype,
                                  device="meta")
            m.weight = bnb.nn.Params4bit.from_prequantized(data=data, quantized_stats=sd, requires_grad=False,
                                                           device=device, module=m)
            m.bias = torch.nn.Parameter(bias)
            outputs[key + "/nyb_out"] = m(inputs["x"]).detach()
            outputs[key + "/nyb_resaved"] = clone(m.state_dict())

for thr in (0.0, 6.0):
    key = f"int8-{thr}"
    l = bnb.nn.Linear8bitLt(64, 96, has_fp16_weights=False, threshold=thr)
    l.load_state_dict({"weight": inputs["W8"], "bias": inputs["b8"]})
    l = l.to(device)
    l.eval()
    outputs[key + "/sd"] = clone(l.state_dict())
    outputs[key + "/out"] = l(inputs["x8"]).detach()
    m = bnb.nn.Linear8bitLt(64, 96, has_fp16_weights=False, threshold=thr).to(device)
    m.eval()
    m.load_state_dict(inputs["nyb8"][key])
    outputs[key + "/nyb_resaved"] = clone(m.state_dict())
    outputs[key + "/nyb_out"] = m(inputs["x8"]).detach()
"""


def _same(a, b) -> bool:
    """Bitwise equality, on any devices."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.cpu(), b.cpu()
    if a.is_floating_point():
        a, b = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    return torch.equal(a, b)


def _same_sd(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert _same(a[k], b[k]), k


def _positive_zero_fp4(packed: torch.Tensor) -> torch.Tensor:
    """FP4 codes with -0 (0b1000) written as +0: the reference's CPU quantizer picks either."""
    b = packed.contiguous().view(torch.uint8).view(-1)
    hi, lo = b >> 4, b & 0xF
    hi = torch.where(hi == 8, torch.zeros_like(hi), hi)
    lo = torch.where(lo == 8, torch.zeros_like(lo), lo)
    return (hi << 4) | lo


def _nybble_4bit(W, b, qt, nested, storage, device):
    q = bnb.nn.Linear4bit(128, 48, quant_type=qt, compress_statistics=nested, quant_storage=getattr(torch, storage))
    q.load_state_dict({"weight": W, "bias": b})
    return q.to(device)


def _nybble_8bit(W, b, thr, device):
    q = bnb.nn.Linear8bitLt(64, 96, has_fp16_weights=False, threshold=thr)
    q.load_state_dict({"weight": W, "bias": b})
    q = q.to(device)
    q.eval()
    return q


@pytest.fixture(scope="module")
def data(device):
    """The inputs (CPU), nybble's state_dicts quantized on ``device`` and the reference's results
    on ``device`` (all on the CPU here)."""
    g = torch.Generator().manual_seed(1234)
    W = torch.randn(48, 128, generator=g) / 128**0.5  # fp32: no exact quantization ties
    b = torch.randn(48, generator=g)
    x = torch.randn(5, 128, generator=g)
    W8 = (torch.rand(96, 64, generator=g) * 2 - 1).half() * 0.1
    b8 = torch.randn(96, generator=g).half()
    x8 = torch.randn(4, 64, generator=g).half()
    x8[:, [5, 40]] = 8.0  # outlier columns for threshold 6
    nyb4 = {f"{qt}-{n}-{s}": _nybble_4bit(W, b, qt, n, s, device).state_dict() for qt, n, s in CASES_4BIT}
    nyb8 = {f"int8-{t}": _nybble_8bit(W8, b8, t, device).state_dict() for t in THRESHOLDS}
    ref = run_reference(_REFERENCE, device=device,
                        **tree_to(dict(W=W, b=b, x=x, W8=W8, b8=b8, x8=x8, nyb4=nyb4, nyb8=nyb8), device))
    return dict(W=W, b=b, x=x, W8=W8, b8=b8, x8=x8, nyb4=tree_to(nyb4, "cpu"), nyb8=tree_to(nyb8, "cpu"),
                ref=tree_to(ref, "cpu"))


def _weight_rounding_cases(data, key, qt, nested) -> int:
    """On CUDA: the codes where the reference's 4-bit weight (and, nested, the 8-bit codes of its
    absmax) differ from nybble's, checked block by block to come from the reference's fast
    reciprocal (module docstring). Returns their number (0: the same quantization)."""
    ref_sd, nyb_sd = data["ref"][key + "/sd"], data["nyb4"][key]
    W = data["W"]
    n = W.numel()
    cases = check_against_cuda_reference(nibbles(nyb_sd["weight"])[:n], nibbles(ref_sd["weight"])[:n], W, 64,
                                         lambda v: codes_4bit(v, qt), key)
    if nested:
        packed_json = json.loads(bytes(nyb_sd[f"weight.quant_state.bitsandbytes__{qt}"].tolist()))
        offset = torch.tensor(packed_json["nested_offset"], dtype=torch.float32)
        centered = block_absmax(W, 64) - offset
        dynamic = bnb.functional.create_dynamic_map()
        cases += check_against_cuda_reference(nyb_sd["weight.absmax"], ref_sd["weight.absmax"], centered, 256,
                                              lambda v: nearest_8bit(v, dynamic), (key, "absmax"))
    return cases


def _same_quantization(data, key, qt, nested, device) -> bool:
    """Whether nybble and the reference quantized the weight identically (always on the CPU, up to
    the FP4 sign of zero; on CUDA unless a reciprocal rounding case occurred)."""
    if device == "cpu":
        return True
    return _weight_rounding_cases(data, key, qt, nested) == 0


@pytest.mark.parametrize("qt, nested, storage", CASES_4BIT)
def test_linear4bit_same_quantization(data, device, qt, nested, storage):
    key = f"{qt}-{nested}-{storage}"
    ref_sd, nyb_sd = data["ref"][key + "/sd"], data["nyb4"][key]
    assert list(ref_sd) == list(nyb_sd)
    same = _same_quantization(data, key, qt, nested, device)  # on CUDA: checks the codes that differ
    for k in ref_sd:
        if k == "weight" and qt == "fp4" and device == "cpu":
            assert torch.equal(_positive_zero_fp4(ref_sd[k]), _positive_zero_fp4(nyb_sd[k]))
        elif k in ("weight", "weight.absmax") and not same:
            continue  # compared code by code in _weight_rounding_cases
        else:
            assert _same(ref_sd[k], nyb_sd[k]), k
    q = _nybble_4bit(data["W"], data["b"], qt, nested, storage, device)
    deq = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).cpu()
    if same:
        assert torch.equal(deq, data["ref"][key + "/deq"])


@pytest.mark.parametrize("qt, nested, storage", CASES_4BIT)
def test_linear4bit_reference_checkpoint_loads_in_nybble(data, device, qt, nested, storage):
    key = f"{qt}-{nested}-{storage}"
    ref_sd = data["ref"][key + "/sd"]
    m = bnb.nn.Linear4bit(128, 48, quant_type=qt, compress_statistics=nested, device=device)  # not quantized yet
    m.load_state_dict(ref_sd, strict=True)
    assert m.weight.device.type == device
    _same_sd(m.state_dict(), ref_sd)
    x = data["x"].to(device)
    out = m(x)
    if _same_quantization(data, key, qt, nested, device):
        own = _nybble_4bit(data["W"], data["b"], qt, nested, storage, device)(x)
        assert torch.equal(out, own)  # same dequantized weight, same kernel
    torch.testing.assert_close(out.cpu(), data["ref"][key + "/out"], atol=1e-5, rtol=1e-5)
    # transformers' path: Params4bit.from_prequantized
    sd = dict(ref_sd)
    data_, bias = sd.pop("weight"), sd.pop("bias")
    w = bnb.nn.Params4bit.from_prequantized(data_, sd, device=device)
    assert torch.equal(bnb.matmul_4bit(x, w, w.quant_state, bias=bias.to(device)), out)


@pytest.mark.parametrize("qt, nested, storage", CASES_4BIT)
def test_linear4bit_nybble_checkpoint_loads_in_reference(data, device, qt, nested, storage):
    key = f"{qt}-{nested}-{storage}"
    _same_sd(data["ref"][key + "/nyb_resaved"], data["nyb4"][key])
    if _same_quantization(data, key, qt, nested, device):
        assert torch.equal(data["ref"][key + "/nyb_out"], data["ref"][key + "/out"])


@pytest.mark.parametrize("thr", THRESHOLDS)
def test_linear8bitlt_quantization_matches(data, thr):
    key = f"int8-{thr}"
    ref_sd, nyb_sd = data["ref"][key + "/sd"], data["nyb8"][key]
    assert list(ref_sd) == list(nyb_sd) == ["weight", "bias", "SCB", "weight_format"]
    for k in ("bias", "SCB", "weight_format"):
        assert _same(ref_sd[k], nyb_sd[k]), k
    diff = (ref_sd["weight"].int() - nyb_sd["weight"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).sum() <= diff.numel() // 500


@pytest.mark.parametrize("thr", THRESHOLDS)
def test_linear8bitlt_checkpoints_both_ways(data, device, thr):
    key = f"int8-{thr}"
    ref_sd = data["ref"][key + "/sd"]
    m = bnb.nn.Linear8bitLt(64, 96, has_fp16_weights=False, threshold=thr).to(device)
    m.eval()
    m.load_state_dict(ref_sd, strict=True)
    _same_sd(m.state_dict(), ref_sd)
    x8 = data["x8"].to(device)
    out = m(x8)
    assert out.dtype == torch.float16 and out.device.type == device
    # The reference dequantizes with 6.200124e-05 (CPU) or 6.200012e-05 (CUDA) instead of 1/127^2
    # (spec §2.1): ~2e-5 relative, then fp16 rounding of both.
    torch.testing.assert_close(out.cpu(), data["ref"][key + "/out"], atol=2e-3, rtol=2e-3)
    # nybble's checkpoint in the reference
    _same_sd(data["ref"][key + "/nyb_resaved"], data["nyb8"][key])
    nyb = _nybble_8bit(data["W8"], data["b8"], thr, device)
    torch.testing.assert_close(data["ref"][key + "/nyb_out"], nyb(x8).cpu(), atol=2e-3, rtol=2e-3)
