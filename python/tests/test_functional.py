"""nybble.functional and nybble.utils against the rules of the spec, computed independently here.

The oracle of every quantizer is written out below in plain torch from the spec's text (§1.1-1.6,
§2.1): absmax per block, the normalized value ``x * (1 / absmax)`` in fp32, the nearest code with
the spec's thresholds, the nibble order. nybble's codes must equal it exactly; round-trip errors
must stay below the reference's tolerances (§8.2). Comparisons with the reference itself and its
golden data are in test_functional_reference.py.

Tests that run nybble's kernels take the ``device`` fixture (conftest.py): inputs are drawn on the
CPU and moved to the device, so both devices see the same values, and the oracle stays on the CPU
(results are compared after ``.cpu()``).
"""

import copy
import math
import warnings

import pytest
import torch

import nybble
import nybble.functional as F
import nybble.utils as U

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES_4BIT = [32, 64, 128, 256, 512, 1024, 2048, 4096]
BLOCKSIZES_8BIT = [64, 128, 256, 512, 1024, 2048, 4096]
# Awkward sizes: one element, odd, around a block, not a multiple of any block.
SIZES = [1, 2, 3, 63, 65, 127, 1001, 4097, 12291]


def dtype_id(dt):
    return str(dt).removeprefix("torch.")


# ---- the oracle (spec text, plain torch) ---------------------------------------------------------

NF4_VALUES = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
NF4_THRESHOLDS = [
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984,
    -0.13791173323988914, -0.045525018125772476, 0.03979014977812767, 0.1202552504837513, 0.2035212516784668,
    0.2920137718319893, 0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
]
# FP4: raw magnitudes of the low 3 bits (spec §1.2), all divided by 12.
FP4_RAW = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]
# 3-bit codes by ascending magnitude, and the reference's decision thresholds between them: fp32
# literals of the CUDA quantizer (spec §1.2), not the exact fp32 midpoints (0.583333 vs 7/12).
FP4_MAG_CODES = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011]
FP4_THRESHOLDS = [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333]


def block_absmax(x: torch.Tensor, bs: int) -> torch.Tensor:
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % bs
    return torch.nn.functional.pad(flat.abs(), (0, pad)).view(-1, bs).amax(1)


def normalized(x: torch.Tensor, bs: int) -> torch.Tensor:
    """x * (1 / absmax(block)) in fp32, the value that picks the code (spec §1.4)."""
    flat = x.reshape(-1).float()
    recip = 1.0 / block_absmax(x, bs)
    return flat * recip.repeat_interleave(bs)[: flat.numel()]


def codes_4bit(s: torch.Tensor, quant_type: str) -> torch.Tensor:
    """The 4-bit code of normalized values s: strictly above a threshold goes up (spec §1.1-1.2)."""
    if quant_type == "nf4":
        # bucketize(right=False): a value equal to a threshold stays on the lower code.
        return torch.bucketize(s, torch.tensor(NF4_THRESHOLDS, dtype=torch.float32)).to(torch.uint8)
    thresholds = torch.tensor(FP4_THRESHOLDS, dtype=torch.float32)
    mag_code = torch.tensor(FP4_MAG_CODES, dtype=torch.uint8)[torch.bucketize(s.abs(), thresholds)]
    return mag_code | ((s < 0).to(torch.uint8) << 3)


def oracle_4bit_codes(x: torch.Tensor, bs: int, quant_type: str) -> torch.Tensor:
    return codes_4bit(normalized(x, bs), quant_type)


def pack_nibbles(codes: torch.Tensor, zero_code: int) -> torch.Tensor:
    if codes.numel() % 2:
        codes = torch.cat([codes, torch.tensor([zero_code], dtype=torch.uint8)])
    return (codes[0::2] << 4) | codes[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    b = packed.reshape(-1).view(torch.uint8)
    return torch.stack([b >> 4, b & 0xF], 1).reshape(-1)[:n]


def nearest_8bit(s: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Nearest entry of an ascending 256-entry map; a value exactly on the fp32 midpoint of two
    entries goes to the even index (what the reference's CUDA binary search does, spec §1.3;
    fp16/bf16 inputs hit midpoints often)."""
    mids = (code[:-1] + code[1:]) * 0.5
    idx = torch.bucketize(s, mids)  # a value on a midpoint gets the lower index
    tie = (idx < 255) & (s == mids[idx.clamp(max=254)])
    idx = torch.where(tie & (idx % 2 == 1), idx + 1, idx)
    # An all-zero block normalizes to 0 * inf = NaN, which the CUDA search sends to index 0
    # (its dequantized value is code[0] * 0 = 0 either way).
    return torch.where(s.isnan(), 0, idx).to(torch.uint8)


def oracle_8bit_codes(x: torch.Tensor, bs: int, code: torch.Tensor) -> torch.Tensor:
    return nearest_8bit(normalized(x, bs), code)


def gaussian(shape, dtype=torch.float32, scale=1.0, device="cpu"):
    """Drawn on the CPU (the same values for every device), then moved to ``device``."""
    return (torch.randn(shape) * scale).to(dtype).to(device)


def skip_unless_cuda_8bit_blocksize(device: str, blocksize: int) -> None:
    """On CUDA the 8-bit blockwise blocksizes are the powers of two 64..4096 (the reference's CUDA
    kernel takes no others, spec §8.1); the CPU takes any positive blocksize."""
    if device == "cuda" and blocksize not in BLOCKSIZES_8BIT:
        pytest.skip(f"CUDA: 8-bit blocksize {blocksize} is not one of {BLOCKSIZES_8BIT} (a CPU-only blocksize)")


# ---- code tables ---------------------------------------------------------------------------------


def bits(t: torch.Tensor) -> list[int]:
    return t.float().contiguous().view(torch.int32).tolist()


def test_nf4_and_fp4_tables_are_the_spec_values():
    assert bits(F.get_4bit_type("nf4", device="cpu")) == bits(torch.tensor(NF4_VALUES, dtype=torch.float32))
    fp4 = torch.tensor(FP4_RAW + [-v for v in FP4_RAW], dtype=torch.float32) / 12
    fp4[8] = 0.0  # +0.0 in the reference's quant_map (built from a Python -0)
    assert bits(F.get_4bit_type("fp4", device="cpu")) == bits(fp4)


def test_get_4bit_type_returns_fresh_tensors_on_the_device(device):
    a, b = F.get_4bit_type("nf4", device=device), F.get_4bit_type("nf4", device=device)
    assert a.data_ptr() != b.data_ptr() and a.device.type == device and a.dtype == torch.float32
    assert F.get_4bit_type("nf4").numel() == 16  # device=None works without CUDA


def test_get_4bit_type_int4_af4_and_unknown():
    int4 = F.get_4bit_type("int4", device="cpu")
    assert int4.tolist() == pytest.approx([v / 7 for v in [7, 6, 5, 4, 3, 2, 1, 0, 0, -1, -2, -3, -4, -5, -6, -7]])
    af4 = F.get_4bit_type("af4", device="cpu")
    assert af4[0] == 1.0 and af4[-1] == -1.0 and af4[8] == 0.0 and af4.numel() == 16
    with pytest.raises(NotImplementedError, match="blocksize 64"):
        F.get_4bit_type("af4", device="cpu", blocksize=128)
    with pytest.raises(NotImplementedError, match="Typename nf5 not supported"):
        F.get_4bit_type("nf5", device="cpu")


def test_dynamic_maps_anchors():
    signed, unsigned = F.create_dynamic_map(True), F.create_dynamic_map(False)
    assert signed.dtype == unsigned.dtype == torch.float32 and signed.numel() == unsigned.numel() == 256
    assert torch.all(signed[1:] >= signed[:-1]) and torch.all(unsigned[1:] >= unsigned[:-1])
    assert signed[127] == 0.0 and signed[255] == 1.0 and unsigned[0] == 0.0 and unsigned[255] == 1.0
    assert signed[0].item() == pytest.approx(-(1 - 0.9 / 128), rel=1e-7)
    assert signed[128].item() == pytest.approx(5.5e-7, rel=1e-6)
    assert signed[129].item() == pytest.approx(3.25e-6, rel=1e-6)
    assert unsigned[1].item() == pytest.approx(3.25e-7, rel=1e-6)
    assert unsigned[254].item() == pytest.approx(0.99648440, rel=1e-7)
    # Decade populations of the positive half (spec §1.3).
    pos = signed[128:255]
    counts = [int(((pos >= 10.0 ** (d - 1)) & (pos < 10.0**d)).sum()) for d in range(-6, 1)]
    assert counts == [1, 2, 4, 8, 16, 32, 64]


def test_create_dynamic_map_builder_reproduces_the_default_tables():
    # The defaults come from C++ (_C.code_table); every other argument is built in Python.
    for signed in [True, False]:
        assert bits(F._build_dynamic_map(signed, 7, 8)) == bits(F.create_dynamic_map(signed))
    few = F.create_dynamic_map(True, 7, 4)  # 16 values, zero-padded to 256
    assert few.numel() == 256 and int((few != 0).sum()) == 15
    with pytest.raises(ValueError, match="gives 17 values, not 2\\*\\*total_bits = 16"):
        F.create_dynamic_map(False, 7, 4)


def test_create_normal_map_reproduces_nf4():
    m = F.create_normal_map()
    assert m.numel() == 256 and m.dtype == torch.float32
    values = torch.cat([m[:7], m[7:8], m[-8:]])  # 7 negatives, a zero, 8 positives
    assert torch.all(m[7:248] == 0)
    assert bits(values) == bits(torch.tensor(NF4_VALUES, dtype=torch.float32))
    sym = F.create_normal_map(use_extra_value=False)
    assert int((sym > 0).sum()) == 7 and int((sym < 0).sum()) == 7


def test_create_fp8_map_fp4_is_the_fp4_set():
    m = F.create_fp8_map(True, 2, 1, 4)
    assert m.numel() == 256 and m.max() == 1.0
    # The normal values are FP4's; the subnormal is 0.25/12, not FP4's 0.0625/12 (the spec's
    # "same set" holds for all but that pair; the reference's function gives 0.25/12 too).
    fp4 = F.get_4bit_type("fp4", device="cpu")
    sub_m, sub_fp4 = torch.tensor(0.25) / 12, fp4[1]
    assert sorted(set(m[m.abs() != sub_m].tolist())) == sorted(set(fp4[fp4.abs() != sub_fp4].tolist()))
    assert int((m.abs() == sub_m).sum()) == 2
    with pytest.raises(ValueError, match="exponent_bits"):
        F.create_fp8_map(True, 3, 3, 8)


def test_create_linear_map():
    assert torch.equal(F.create_linear_map(True, 8, add_zero=False), torch.linspace(-1, 1, 256))
    m = F.create_linear_map(True, 8)
    assert m.numel() == 256 and int((m.abs() < 1e-6).sum()) == 2  # the linspace's middle value and one pad
    m4 = F.create_linear_map(False, 4)
    assert m4.numel() == 256 and int((m4 != 0).sum()) == 15


# ---- 4-bit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("blocksize", BLOCKSIZES_4BIT)
def test_quantize_4bit_codes_equal_the_oracle(device, quant_type, dtype, blocksize):
    zero_code = 0b0111 if quant_type == "nf4" else 0b0000
    for n in SIZES:
        x = gaussian(n, dtype, scale=2.0)
        packed, state = F.quantize_4bit(x.to(device), blocksize=blocksize, quant_type=quant_type)
        assert packed.dtype == torch.uint8 and packed.shape == ((n + 1) // 2, 1)
        assert packed.device.type == state.absmax.device.type == state.code.device.type == device
        assert state.absmax.dtype == torch.float32 and state.absmax.shape == (math.ceil(n / blocksize),)
        assert torch.equal(state.absmax.cpu(), block_absmax(x, blocksize)), n
        want = pack_nibbles(oracle_4bit_codes(x, blocksize, quant_type), zero_code)
        assert torch.equal(packed.view(-1).cpu(), want), f"n={n}"
        assert state.shape == x.shape and state.dtype == dtype and state.blocksize == blocksize
        assert state.quant_type == quant_type and not state.nested and state.offset is None
        assert bits(state.code) == bits(F.get_4bit_type(quant_type, device="cpu"))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_dequantize_4bit_is_code_times_absmax(device, quant_type, dtype, blocksize):
    code = F.get_4bit_type(quant_type, device="cpu")
    code[8] = -0.0 if quant_type == "fp4" else code[8]  # the kernels decode 0b1000 as -0.0
    for n in SIZES:
        x = gaussian(n, dtype, device=device)
        packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
        out = F.dequantize_4bit(packed, state)
        scales = state.absmax.cpu().repeat_interleave(blocksize)[:n]
        want = (code[unpack_nibbles(packed.cpu(), n).long()] * scales).to(dtype)
        assert out.dtype == dtype and out.shape == x.shape and out.device.type == device
        assert bits(out.reshape(-1)) == bits(want), n  # bit for bit, the sign of zero included


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("blocksize", BLOCKSIZES_4BIT)
def test_double_quantization_matches_its_definition(device, quant_type, dtype, blocksize):
    for n in [65, 4097, 64 * 300 + 17, 100_000]:
        x = gaussian(n, dtype, device=device)
        packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=True)
        plain_packed, plain = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
        assert torch.equal(packed, plain_packed)
        # offset = mean of the absmax (torch's, on the device); nested = 8-bit blockwise of
        # (absmax - offset), blocksize 256.
        assert state.nested and state.offset.dim() == 0 and state.offset.dtype == torch.float32
        assert state.offset.device.type == device and torch.equal(state.offset, plain.absmax.mean())
        centered = (plain.absmax - state.offset).cpu()
        dynamic = F.create_dynamic_map(True)
        assert state.absmax.dtype == torch.uint8 and state.absmax.shape == plain.absmax.shape
        assert torch.equal(state.absmax.cpu(), oracle_8bit_codes(centered, 256, dynamic))
        s2 = state.state2
        assert torch.equal(s2.absmax.cpu(), block_absmax(centered, 256)) and s2.blocksize == 256
        assert s2.dtype == torch.float32 and torch.equal(s2.code.cpu(), dynamic) and not s2.nested
        # Dequantization uses absmax' = code8[q] * nested_absmax + offset (two fp32 roundings).
        rebuilt = dynamic[state.absmax.cpu().long()] * s2.absmax.cpu().repeat_interleave(256)[: centered.numel()]
        rebuilt = (rebuilt + state.offset.cpu()).to(device)
        flat = F.QuantState(absmax=rebuilt, shape=state.shape, code=state.code, blocksize=blocksize,
                            quant_type=quant_type, dtype=dtype)
        assert torch.equal(F.dequantize_4bit(packed, state), F.dequantize_4bit(packed, flat))


def test_non_contiguous_inputs_equal_contiguous(device):
    base = gaussian((96, 130), device=device)
    for x in [base.t(), base[:, ::2], base[1:, 3:], base.t()[::3]]:
        assert not x.is_contiguous()
        for quant_type in ["nf4", "fp4"]:
            p1, s1 = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=True)
            p2, s2 = F.quantize_4bit(x.contiguous(), blocksize=64, quant_type=quant_type, compress_statistics=True)
            assert torch.equal(p1, p2) and s1 == s2 and s1.shape == x.shape
            assert torch.equal(F.dequantize_4bit(p1, s1), F.dequantize_4bit(p2, s2))
        c1, t1 = F.quantize_blockwise(x, blocksize=128)
        c2, t2 = F.quantize_blockwise(x.contiguous(), blocksize=128)
        assert torch.equal(c1, c2) and torch.equal(t1.absmax, t2.absmax)


def test_multi_dimensional_shapes_round_trip(device):
    for shape in [(3, 5, 7), (2, 1, 65), (1, 1), (4096, 1)]:
        x = gaussian(shape, device=device)
        packed, state = F.quantize_4bit(x, quant_type="nf4")
        out = F.dequantize_4bit(packed, state)
        if packed.shape[0] == 1 and len(shape) == 2:
            out = out.t()  # the [1, m] packed-shape quirk, see test_transposed_packed_quirk
        assert out.shape == x.shape
        assert (out - x).abs().max() <= x.abs().max() * 0.5


def test_empty_tensors(device):
    x = torch.empty(0, 64, dtype=torch.float16, device=device)
    for dq in [False, True]:
        packed, state = F.quantize_4bit(x, compress_statistics=dq)
        assert packed.shape == (0, 1) and state.absmax.numel() == 0
        assert F.dequantize_4bit(packed, state).shape == (0, 64)
    for nested in [False, True]:
        codes, state = F.quantize_blockwise(x, nested=nested)
        assert codes.shape == (0, 64) and F.dequantize_blockwise(codes, state).shape == (0, 64)
    CA, stats, cols = F.int8_vectorwise_quant(x)
    assert CA.shape == (0, 64) and stats.shape == (0,) and cols is None


def test_all_zero_blocks_dequantize_to_zero(device):
    x = gaussian(64 * 5, device=device)
    x[64:128] = 0
    x[-64:] = 0
    for quant_type in ["nf4", "fp4"]:
        for dq in [False, True]:
            packed, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=dq)
            out = F.dequantize_4bit(packed, state)
            if not dq:
                assert torch.all(out[64:128] == 0) and torch.all(out[-64:] == 0)
            assert torch.all(out.isfinite())
    codes, state = F.quantize_blockwise(x, blocksize=64)
    out = F.dequantize_blockwise(codes, state)
    assert torch.all(out[64:128] == 0) and torch.all(out[-64:] == 0)


# Mean + 7 std of the reference's measured errors (spec §8.2), randn(1024, 1024).
ERR_4BIT = {  # bs: (fp4 abs, fp4 rel, nf4 abs, nf4 rel) as (mean, std)
    32: ((0.088925, 0.000091), (0.242443, 0.000330), (0.067746, 0.000069), (0.189726, 0.000304)),
    64: ((0.096543, 0.000111), (0.260125, 0.000379), (0.072798, 0.000074), (0.203339, 0.000340)),
    128: ((0.102969, 0.000134), (0.275817, 0.000433), (0.076831, 0.000091), (0.215237, 0.000391)),
    256: ((0.108684, 0.000182), (0.289831, 0.000497), (0.080337, 0.000102), (0.226105, 0.000398)),
    512: ((0.114115, 0.000234), (0.302881, 0.000583), (0.083547, 0.000143), (0.236079, 0.000544)),
    1024: ((0.119333, 0.000320), (0.315000, 0.000757), (0.086610, 0.000187), (0.245370, 0.000600)),
    2048: ((0.124556, 0.000455), (0.326607, 0.000955), (0.089592, 0.000251), (0.254163, 0.000747)),
    4096: ((0.129536, 0.000612), (0.337169, 0.001239), (0.092547, 0.000360), (0.262473, 0.000999)),
}


@pytest.fixture(scope="module")
def randn_1024():
    return torch.randn(1024, 1024, generator=torch.Generator().manual_seed(1234))


def errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a.float() - b.float()).abs()
    return diff.mean().item(), (diff / (a.float().abs() + 1e-8)).mean().item()


@pytest.mark.parametrize("quant_type", ["fp4", "nf4"])
@pytest.mark.parametrize("blocksize", BLOCKSIZES_4BIT)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_4bit_round_trip_error(device, randn_1024, quant_type, blocksize, dtype):
    A = randn_1024.to(dtype).to(device)
    out = F.dequantize_4bit(*F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type))
    err, relerr = errors(A, out)
    (abs_m, abs_s), (rel_m, rel_s) = ERR_4BIT[blocksize][2:] if quant_type == "nf4" else ERR_4BIT[blocksize][:2]
    assert err < abs_m + 7 * abs_s and relerr < rel_m + 7 * rel_s
    assert err > 0.9 * abs_m  # a lossless "round trip" would mean the test compares the wrong thing


@pytest.mark.parametrize("blocksize", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("dq", [False, True])
def test_4bit_compressed_statistics_error(device, randn_1024, blocksize, dtype, dq):
    A = randn_1024[:256].to(dtype).to(device)
    for quant_type in ["nf4", "fp4"]:
        out = F.dequantize_4bit(*F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type, compress_statistics=dq))
        err, relerr = errors(A, out)
        assert err < 0.11 and relerr < 0.28


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16, torch.float32, torch.int8])
def test_quant_storage_reinterprets_the_same_bytes(device, storage):
    x = gaussian((64, 36), torch.bfloat16, device=device)
    ref, ref_state = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
    packed, state = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True, quant_storage=storage)
    assert packed.dtype == storage and packed.shape == (64 * 36 // (2 * storage.itemsize), 1)
    assert torch.equal(packed.view(-1).view(torch.uint8), ref.view(-1))
    assert torch.equal(F.dequantize_4bit(packed, state), F.dequantize_4bit(ref, ref_state))


def test_quant_storage_needs_whole_items(device):
    with pytest.raises(ValueError, match="quant_storage.*6 packed bytes of 11 elements"):
        F.quantize_4bit(gaussian(11, device=device), quant_storage=torch.float32)
    with pytest.raises(ValueError, match="quant_storage"):
        F.quantize_4bit(gaussian(16, device=device), quant_storage=torch.int32)


def test_quantize_4bit_defaults_and_wrappers(device):
    x = gaussian(300, torch.float16, device=device)
    packed, state = F.quantize_4bit(x)
    assert state.quant_type == "fp4" and state.blocksize == 64 and not state.nested
    for quantize, dequantize, qt in [(F.quantize_nf4, F.dequantize_nf4, "nf4"), (F.quantize_fp4, F.dequantize_fp4, "fp4")]:
        p1, s1 = quantize(x, blocksize=128, compress_statistics=True)
        p2, s2 = F.quantize_4bit(x, blocksize=128, compress_statistics=True, quant_type=qt)
        assert torch.equal(p1, p2) and s1 == s2 and s1.quant_type == qt
        assert torch.equal(dequantize(p1, s1), F.dequantize_4bit(p2, s2))


def test_legacy_absmax_and_out_buffers(device):
    x = gaussian(1000, device=device)
    ref_packed, ref_state = F.quantize_4bit(x, quant_type="nf4")
    out = torch.empty_like(ref_packed)
    absmax = torch.empty_like(ref_state.absmax)
    packed, state = F.quantize_4bit(x, absmax=absmax, out=out, quant_type="nf4")
    assert packed is out and state.absmax is absmax
    assert torch.equal(out, ref_packed) and torch.equal(absmax, ref_state.absmax)
    # Without a state, dequantize_4bit takes absmax and out (shape and dtype from out).
    target = torch.empty(1000, dtype=torch.bfloat16, device=device)
    res = F.dequantize_4bit(packed, absmax=absmax, out=target, quant_type="nf4", blocksize=64)
    assert res is target and torch.equal(target, F.dequantize_4bit(ref_packed, ref_state).to(torch.bfloat16))
    # out= with a state (nested too) writes into the given tensor.
    packed2, state2 = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
    dst = torch.empty(1000, device=device)
    assert F.dequantize_4bit(packed2, state2, out=dst) is dst
    assert torch.equal(dst, F.dequantize_4bit(packed2, state2))
    with pytest.raises(ValueError, match="requires both absmax and out"):
        F.dequantize_4bit(packed, absmax=absmax)


def test_transposed_packed_quirk(device):
    # BC shim of the reference: a packed tensor shaped [1, m] gets its result transposed.
    w = gaussian((4, 32), device=device)
    packed, state = F.quantize_4bit(w, quant_type="nf4")
    assert torch.equal(F.dequantize_4bit(packed.t(), state), F.dequantize_4bit(packed, state).t())
    assert F.dequantize_4bit(packed.t(), state).shape == (32, 4)


# ---- 8-bit blockwise -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("blocksize", BLOCKSIZES_8BIT + [100, 16384])
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_blockwise_codes_equal_exact_nearest(device, dtype, blocksize, signed):
    # nybble's decision: exactly nearest on every device (the reference's CPU lookup table is not).
    skip_unless_cuda_8bit_blocksize(device, blocksize)
    code = F.create_dynamic_map(signed)
    for n in SIZES:
        x = gaussian(n, dtype) if signed else torch.rand(n).to(dtype)
        codes, state = F.quantize_blockwise(x.to(device), code=code, blocksize=blocksize)
        assert codes.dtype == torch.uint8 and codes.shape == x.shape and codes.device.type == device
        assert torch.equal(state.absmax.cpu(), block_absmax(x, blocksize))
        assert torch.equal(codes.view(-1).cpu(), oracle_8bit_codes(x, blocksize, code)), n
        out = F.dequantize_blockwise(codes, state)
        want = (code[codes.view(-1).cpu().long()] * state.absmax.cpu().repeat_interleave(blocksize)[:n]).to(dtype)
        assert out.dtype == dtype and out.device.type == device and torch.equal(out.view(-1).cpu(), want)


@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_quantize_blockwise_nested_quirk(device, blocksize):
    # Nested 8-bit: offset = mean, subtracted from the absmax, nested blocksize = the outer one.
    x = gaussian(blocksize * 300 + 7, device=device)
    codes, state = F.quantize_blockwise(x, blocksize=blocksize, nested=True)
    plain_codes, plain = F.quantize_blockwise(x, blocksize=blocksize)
    assert torch.equal(codes, plain_codes) and state.nested
    assert torch.equal(state.offset, plain.absmax.mean())
    centered = (plain.absmax - state.offset).cpu()
    assert state.state2.blocksize == blocksize
    assert torch.equal(state.absmax.cpu(), oracle_8bit_codes(centered, blocksize, F.create_dynamic_map()))
    out = F.dequantize_blockwise(codes, state)
    rebuilt = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    assert torch.equal(out, F.dequantize_blockwise(codes, absmax=rebuilt, blocksize=blocksize))


def test_dequantize_blockwise_argument_forms(device):
    x = gaussian(5000, torch.float16, device=device)
    codes, state = F.quantize_blockwise(x, blocksize=256)
    by_state = F.dequantize_blockwise(codes, state)
    assert by_state.dtype == torch.float16
    by_args = F.dequantize_blockwise(codes, absmax=state.absmax, blocksize=256)
    assert by_args.dtype == torch.float32 and torch.equal(by_args.half(), by_state)
    out = torch.empty(5000, dtype=torch.float16, device=device)
    assert F.dequantize_blockwise(codes, state, out=out) is out and torch.equal(out, by_state)
    # legacy buffers of quantize_blockwise
    buf, amax = torch.empty_like(codes), torch.empty_like(state.absmax)
    c2, s2 = F.quantize_blockwise(x, blocksize=256, out=buf, absmax=amax)
    assert c2 is buf and s2.absmax is amax and torch.equal(buf, codes)
    assert F.name2qmap["dynamic"].numel() == 256


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("blocksize", BLOCKSIZES_8BIT)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_8bit_round_trip_error(device, randn_1024, nested, blocksize, dtype):
    # A quarter of the reference's 1024 x 1024 (the limits are far above the measured errors).
    A = randn_1024[:256].to(dtype).to(device)
    err, relerr = errors(A, F.dequantize_blockwise(*F.quantize_blockwise(A, blocksize=blocksize, nested=nested)))
    assert err < 0.011 and relerr < 0.018
    U01 = torch.rand(256, 1024, generator=torch.Generator().manual_seed(4321)).to(dtype).to(device)
    err, relerr = errors(U01, F.dequantize_blockwise(*F.quantize_blockwise(U01, blocksize=blocksize, nested=nested)))
    assert err < 0.0036 and relerr < 0.015
    unsigned = F.create_dynamic_map(signed=False)
    codes, state = F.quantize_blockwise(U01, code=unsigned, blocksize=blocksize, nested=nested)
    err, relerr = errors(U01, F.dequantize_blockwise(codes, state))
    assert err < 0.0023 and relerr < 0.012


@pytest.mark.parametrize("blocksize", [4096, 16384])
def test_8bit_cpu_large_blocks(blocksize):
    # CPU only: blocksizes above 4096 are the CPU's (spec §8.1, "CPU bs 4096/16384").
    A = torch.randn(128, 128, 128)
    err, _ = errors(A, F.dequantize_blockwise(*F.quantize_blockwise(A, blocksize=blocksize)))
    assert err < 0.011


# ---- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [torch.int32, torch.float64, torch.uint8])
def test_bad_dtypes(device, bad):
    x = torch.zeros(64, dtype=bad, device=device)
    for call in [lambda: F.quantize_4bit(x), lambda: F.quantize_blockwise(x), lambda: F.int8_vectorwise_quant(x)]:
        with pytest.raises(ValueError, match=f"A: .*only supports 16/32-bit floats.*{bad}"):
            call()


@pytest.mark.parametrize("blocksize", [16, 48, 8192, 0, -64, 64.0, "64", True])
def test_bad_4bit_blocksize(device, blocksize):
    with pytest.raises(ValueError, match=f"invalid blocksize {blocksize!r}: 4-bit blocksize must be one of 32, 64"):
        F.quantize_4bit(gaussian(128, device=device), blocksize=blocksize)
    packed, state = F.quantize_4bit(gaussian(128, device=device))
    state.blocksize = blocksize
    with pytest.raises(ValueError, match="invalid blocksize"):
        F.dequantize_4bit(packed, state)


def test_bad_8bit_blocksize(device):
    for bs in [0, -1]:
        with pytest.raises(ValueError, match=f"blocksize must be positive, got {bs}"):
            F.quantize_blockwise(gaussian(10, device=device), blocksize=bs)
        with pytest.raises(ValueError, match="blocksize must be positive"):
            F.dequantize_blockwise(torch.zeros(10, dtype=torch.uint8, device=device),
                                   absmax=torch.ones(1, device=device), blocksize=bs)
    with pytest.raises(TypeError, match="blocksize must be an int"):
        F.quantize_blockwise(gaussian(10, device=device), blocksize=64.0)


@pytest.mark.parametrize("quant_type", ["int4", "NF4", "", None, "af4"])
def test_bad_quant_type(device, quant_type):
    with pytest.raises(ValueError, match=f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}"):
        F.quantize_4bit(gaussian(64, device=device), quant_type=quant_type)
    packed, state = F.quantize_4bit(gaussian(64, device=device))
    with pytest.raises(ValueError, match="quant_type must be 'nf4' or 'fp4'"):
        F.dequantize_4bit(packed, absmax=state.absmax, out=torch.empty(64, device=device), quant_type=quant_type)


def test_bad_dequantize_inputs(device):
    packed, state = F.quantize_4bit(gaussian(64, device=device))
    state.dtype = torch.float64
    with pytest.raises(ValueError, match="only supports 16/32-bit floats.*float64"):
        F.dequantize_4bit(packed, state)
    state.dtype, state.shape = torch.float32, None
    with pytest.raises(ValueError, match="quant_state.shape is None"):
        F.dequantize_4bit(packed, state)
    with pytest.raises(ValueError, match="A must be uint8, got torch.float32"):
        F.dequantize_blockwise(torch.zeros(4, device=device), absmax=torch.ones(1, device=device))
    with pytest.raises(ValueError, match="requires either quant_state or absmax"):
        F.dequantize_blockwise(torch.zeros(4, dtype=torch.uint8, device=device))
    with pytest.raises(TypeError, match="A must be a torch.Tensor, got list"):
        F.quantize_4bit([1.0, 2.0])
    with pytest.raises(ValueError, match="state cannot be None"):
        F.gemv_4bit(torch.randn(1, 64, device=device), packed)


# ---- LLM.int8 ------------------------------------------------------------------------------------


def oracle_int8_rows(A: torch.Tensor, threshold: float):
    A2 = A.reshape(-1, A.shape[-1]).float()
    outliers = A2.abs() >= threshold if threshold > 0 else torch.zeros_like(A2, dtype=torch.bool)
    masked = A2.masked_fill(outliers, 0)
    stats = masked.abs().amax(1)
    CA = torch.round(masked * 127 / stats[:, None])  # round half to even
    cols = outliers.any(0).nonzero().view(-1)
    if threshold > 0:
        CA[:, cols] = 0
    return CA.to(torch.int8).reshape(A.shape), stats, cols


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1, 64), (7, 33), (2, 5, 96)])
@pytest.mark.parametrize("threshold", [0.0, 2.0, 3.0])
def test_int8_vectorwise_quant(device, dtype, shape, threshold):
    A = gaussian(shape, dtype)
    CA, stats, cols = F.int8_vectorwise_quant(A.to(device), threshold)
    assert CA.device.type == stats.device.type == device and (cols is None or cols.device.type == device)
    CA, stats, cols = CA.cpu(), stats.cpu(), None if cols is None else cols.cpu()
    want_CA, want_stats, want_cols = oracle_int8_rows(A, threshold)
    assert CA.dtype == torch.int8 and CA.shape == A.shape and stats.dtype == torch.float32
    assert torch.equal(stats, want_stats)
    # Codes within +-1 (a rounding tie can go either way with another product order), rarely off.
    diff = (CA.int() - want_CA.int()).abs()
    assert diff.max() <= 1 and diff.sum() <= max(1, CA.numel() // 500)
    if threshold == 0:
        assert cols is None
    else:
        assert cols.dtype == torch.int64 and torch.equal(cols, want_cols)


def test_int8_vectorwise_quant_bad_threshold(device):
    with pytest.raises(ValueError, match="threshold = -1.0 must be >= 0"):
        F.int8_vectorwise_quant(gaussian((2, 4), device=device), -1.0)


def test_int8_vectorwise_dequant(device):
    A = torch.randint(-127, 128, (9, 40), dtype=torch.int8)
    stats = torch.rand(9) * 4
    out = F.int8_vectorwise_dequant(A.to(device), stats.to(device))
    assert out.dtype == torch.float32 and out.device.type == device
    torch.testing.assert_close(out.cpu(), A.float() * stats[:, None] * 7.874015718698502e-3)
    with pytest.raises(ValueError, match="A must be torch.int8, got torch.float32"):
        F.int8_vectorwise_dequant(A.float().to(device), stats.to(device))


@pytest.mark.parametrize("shape", [((5, 64), (7, 64)), ((2, 3, 35), (13, 35)), ((1, 1), (1, 1))])
def test_int8_linear_matmul_is_exact(device, shape):
    A = torch.randint(-128, 128, shape[0], dtype=torch.int8)
    B = torch.randint(-128, 128, shape[1], dtype=torch.int8)
    want = (A.long() @ B.long().t()).int()  # on the CPU: CUDA has no integer matmul
    A, B = A.to(device), B.to(device)
    out = F.int8_linear_matmul(A, B)
    assert out.dtype == torch.int32 and out.device.type == device and torch.equal(out.cpu(), want)
    buf = torch.empty_like(want, device=device)
    assert F.int8_linear_matmul(A, B, out=buf) is buf and torch.equal(buf.cpu(), want)
    with pytest.raises(ValueError, match="B must be torch.int8"):
        F.int8_linear_matmul(A, B.float())


def test_int8_mm_dequant(device):
    acc = torch.randint(-(2**20), 2**20, (6, 10), dtype=torch.int32)
    row, col, bias = torch.rand(6) * 3, torch.rand(10) * 3, torch.randn(10, dtype=torch.float16)
    want = acc.double() * row.double()[:, None] * col.double()[None, :] / (127 * 127)
    acc, row, col, bias = (t.to(device) for t in (acc, row, col, bias))
    out = F.int8_mm_dequant(acc, row, col)
    assert out.dtype == torch.float16 and out.device.type == device
    torch.testing.assert_close(out.cpu(), want.half(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(F.int8_mm_dequant(acc, row, col, bias=bias).cpu(), (want + bias.cpu().double()).half(),
                               rtol=1e-3, atol=2e-3)
    dst = torch.empty(6, 10, dtype=torch.float16, device=device)
    assert F.int8_mm_dequant(acc, row, col, out=dst) is dst and torch.equal(dst, out)
    # nybble's decision: exactly 1/(127*127), not the reference's 6.200124e-05 (1.8e-5 relative off).
    exact = torch.ops.nybble.int8_mm_dequant(torch.tensor([[16129 * 1000]], dtype=torch.int32, device=device),
                                             torch.ones(1, device=device), torch.ones(1, device=device),
                                             dtype=torch.float32)
    assert exact.item() == 1000.0
    with pytest.raises(ValueError, match="A must be torch.int32"):
        F.int8_mm_dequant(acc.float(), row, col)


@pytest.mark.parametrize("threshold", [0.0, 2.5])
def test_int8_double_quant(device, threshold):
    A = gaussian((20, 48), torch.float16)
    CA, CAt, row_stats, col_stats, cols = F.int8_double_quant(A.to(device), threshold=threshold)
    assert CA.device.type == CAt.device.type == row_stats.device.type == col_stats.device.type == device
    CA, CAt, row_stats, col_stats = CA.cpu(), CAt.cpu(), row_stats.cpu(), col_stats.cpu()
    cols = None if cols is None else cols.cpu()
    want_CA, want_rows, want_cols = oracle_int8_rows(A, threshold)
    assert torch.equal(row_stats, want_rows) and (CA.int() - want_CA.int()).abs().max() <= 1
    masked = A.float().masked_fill(A.float().abs() >= threshold, 0) if threshold else A.float()
    assert torch.equal(col_stats, masked.abs().amax(0))
    want_CAt = torch.round(masked * 127 / col_stats[None, :])
    assert CAt.shape == A.shape and (CAt.int() - want_CAt.int()).abs().max() <= 1
    assert (cols is None) if threshold == 0 else torch.equal(cols, want_cols)
    for arg in ["col_stats", "row_stats", "out_col", "out_row"]:
        with pytest.raises(ValueError, match=f"{arg} must be None"):
            F.int8_double_quant(A.to(device), **{arg: torch.empty(1, device=device)})


def test_int8_quant_matmul_dequant_against_fp16(device):
    A = gaussian((32, 32), torch.float16, scale=0.5)
    B = torch.nn.init.xavier_uniform_(torch.empty(32, 32)).half()
    CA, sa, _ = F.int8_vectorwise_quant(A.to(device))
    CB, sb, _ = F.int8_vectorwise_quant(B.to(device))
    out = F.int8_mm_dequant(F.int8_linear_matmul(CA, CB), sa, sb)
    torch.testing.assert_close(out.cpu(), (A.float() @ B.float().t()).half(), atol=0.025, rtol=0.05)


# ---- gemv_4bit -------------------------------------------------------------------------------------

# Mean + 7 std of err1 / relerr1 / maxerr1 (spec §8.2) by dtype and dim <= 512 / > 512.
GEMV_LIMITS = {
    (torch.float16, True): ((5.2e-5, 6.3e-6), (2.4e-4, 3.57e-4), (4.2e-4, 6.87e-5)),
    (torch.float16, False): ((1.8e-5, 2.8e-6), (1.0e-4, 1.97e-4), (1.7e-4, 1.79e-5)),
    (torch.float32, True): ((2e-8, 2e-9), (8e-7, 1.2e-6), (6e-8, 2e-8)),
    (torch.float32, False): ((1e-8, 2e-9), (5e-7, 1.6e-7), (5e-8, 1e-8)),
    (torch.bfloat16, True): ((4.2e-4, 5.9e-5), (4.1e-3, 1.153e-2), (3.7e-3, 5.56e-4)),
    (torch.bfloat16, False): ((1.4e-4, 9.5e-6), (1.2e-3, 6.79e-4), (1.0e-3, 1.37e-4)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("dim", [128, 1024])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dq", [False, True])
def test_gemv_4bit_against_dequantize_and_linear(device, dtype, dim, quant_type, dq):
    # Both sides on the device, as in the reference's test (whose measured errors are the limits).
    errs, relerrs, maxerrs = [], [], []
    for shape in [(4 * dim, dim), (dim, 4 * dim), (dim, dim), (3 * dim, dim)]:
        A = torch.randn(1, shape[1]).to(dtype).to(device)
        B = (torch.randn(shape) / math.sqrt(shape[1])).to(dtype).to(device)
        packed, state = F.quantize_4bit(B, quant_type=quant_type, compress_statistics=dq)
        C1 = F.gemv_4bit(A, packed.t(), state=state)
        C2 = torch.nn.functional.linear(A, F.dequantize_4bit(packed, state))
        assert C1.dtype == dtype and C1.shape == (1, shape[0])
        d = (C1.float() - C2.float()).abs()
        errs.append(d.mean().item())
        relerrs.append((d / (C2.float().abs() + 1e-5)).mean().item())  # the reference's test uses + 1e-5
        maxerrs.append(d.max().item())
    limits = GEMV_LIMITS[(dtype, dim <= 512)]
    for got, (m, s) in zip([errs, relerrs, maxerrs], limits):
        assert sum(got) / len(got) / math.sqrt(dim) < m + 7 * s


def test_gemv_4bit_any_rows_and_out(device):
    # nybble's decision: any number of rows (the reference reads a single vector).
    B = gaussian((48, 256), device=device)
    packed, state = F.quantize_4bit(B, quant_type="nf4", compress_statistics=True)
    A = gaussian((2, 5, 256), device=device)
    C = F.gemv_4bit(A, packed, state=state)
    assert C.shape == (2, 5, 48)
    torch.testing.assert_close(C, torch.nn.functional.linear(A, F.dequantize_4bit(packed, state)))
    for r in range(5):
        torch.testing.assert_close(C[1, r:r + 1], F.gemv_4bit(A[1, r:r + 1], packed, state=state))
    out = torch.empty(2, 5, 48, device=device)
    assert F.gemv_4bit(A, packed, out=out, state=state) is out and torch.equal(out, C)


# ---- paging, device helpers, deprecated ------------------------------------------------------------


def test_paged_helpers_fall_back_to_ordinary_tensors(monkeypatch):
    monkeypatch.setattr(F, "_paging_warned", False)
    with pytest.warns(UserWarning, match="Paged .* not available"):
        t = F.get_paged(3, 4, dtype=torch.uint8, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t2 = F.get_paged(5, device="cpu")  # warns once only
    assert t.shape == (3, 4) and t.dtype == torch.uint8 and torch.all(t == 0)
    assert t.is_paged and t.page_deviceid is None and t2.dtype == torch.float32
    F.prefetch_tensor(t)
    F.prefetch_tensor(t, to_cpu=True)
    with pytest.raises(ValueError, match="Only paged tensors"):
        F.prefetch_tensor(torch.zeros(3))
    F.fill(t, 7)
    assert torch.all(t == 7)
    F._mul(t2, torch.full((5,), 2.0))
    assert torch.all(t2 == 0)
    with pytest.raises(NotImplementedError, match="Function not implemented: nope"):
        F.elementwise_func("nope", t2, None, 0)
    mng = F.GlobalPageManager.get_instance()
    assert mng is F.GlobalPageManager.get_instance()
    mng.paged_tensors.append(t)
    mng.prefetch_all()
    mng.paged_tensors.remove(t)
    with pytest.raises(RuntimeError, match="get_instance"):
        F.GlobalPageManager()


def test_is_on_gpu_and_get_ptr():
    a, b = torch.zeros(2), torch.zeros(3)
    assert F.is_on_gpu([a, None, b]) is True
    meta = torch.empty(2, device="meta")
    with pytest.raises(RuntimeError, match="same device"):
        F.is_on_gpu([a, meta])
    meta.is_paged = True
    assert F.is_on_gpu([a, meta]) is True
    assert F.get_ptr(None) is None and F.get_ptr(a).value == a.data_ptr()
    assert isinstance(F.has_avx512bf16(), bool)


def test_deprecated_int8_gemms(device):
    A = torch.randint(-10, 10, (3, 5), dtype=torch.int8)
    B = torch.randint(-10, 10, (5, 4), dtype=torch.int8)
    want = (A.long() @ B.long()).int()  # integer products on the CPU: CUDA has no integer matmul
    A, B = A.to(device), B.to(device)
    with pytest.warns(FutureWarning, match="This function is deprecated and will be removed in a future release."):
        out = F.igemm(A, B)
    assert out.device.type == device and torch.equal(out.cpu(), want)
    with pytest.warns(FutureWarning):
        assert torch.equal(F.igemm(A, B.t().contiguous(), transposed_B=True), out)
    A3, B3 = torch.randint(-10, 10, (2, 3, 5), dtype=torch.int8), torch.randint(-10, 10, (2, 5, 6), dtype=torch.int8)
    want3 = torch.bmm(A3.long(), B3.long()).int()
    A3, B3 = A3.to(device), B3.to(device)
    with pytest.warns(FutureWarning):
        assert torch.equal(F.batched_igemm(A3, B3).cpu(), want3)
    with pytest.warns(FutureWarning):
        assert F.check_matmul(A, B, None, False, False) == (3, 4)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="Tensor dimensions incorrect"):
        F.check_matmul(A, A, None, False, False)
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="Expected torch.int8"):
        F.check_matmul(A.float(), B, None, False, False)


def test_public_names_of_the_reference_exist():
    names = ["GlobalPageManager", "CUBLAS_Context", "FIRST_CUDA_DEVICE", "QuantState", "C", "lib", "name2qmap",
             "batched_igemm", "check_matmul", "create_dynamic_map", "create_fp8_map", "create_linear_map",
             "create_normal_map", "dequantize_4bit", "dequantize_blockwise", "dequantize_fp4", "dequantize_nf4",
             "elementwise_func", "fill", "gemv_4bit", "get_4bit_type", "get_paged", "get_ptr", "has_avx512bf16",
             "igemm", "int8_double_quant", "int8_linear_matmul", "int8_mm_dequant", "int8_vectorwise_dequant",
             "int8_vectorwise_quant", "is_on_gpu", "optimizer_update_32bit", "optimizer_update_8bit_blockwise",
             "pack_dict_to_tensor", "prefetch_tensor", "quantize_4bit", "quantize_blockwise", "quantize_fp4",
             "quantize_nf4", "unpack_tensor_to_dict"]
    assert [n for n in names if not hasattr(F, n)] == []
    assert F.C == 127.0 and nybble.functional is F


# ---- nybble.utils ----------------------------------------------------------------------------------


def test_pack_and_unpack_dict():
    d = {"quant_type": "nf4", "blocksize": 64, "shape": [3, 4], "nested_offset": 0.1, "ü": None}
    t = U.pack_dict_to_tensor(d)
    assert t.dtype == torch.uint8 and t.dim() == 1
    import json
    assert bytes(t.tolist()) == json.dumps(d).encode("utf-8")
    assert U.unpack_tensor_to_dict(t) == d
    with pytest.raises(ValueError):
        U.unpack_tensor_to_dict(torch.tensor([0xFF, 0xFE], dtype=torch.uint8))
    with pytest.raises(ValueError):
        U.unpack_tensor_to_dict(torch.tensor(list(b"{not json"), dtype=torch.uint8))


def test_utils_constants_and_helpers():
    assert U.LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING == {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
    assert U.INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING == {0: "row", 1: "col32", 2: "col_turing", 3: "col_ampere"}
    U.sync_gpu(torch.zeros(1))
    out, err = U.execute_and_return("echo hello")
    assert (out, err) == ("hello", "")


def test_replace_linear():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Sequential(torch.nn.Linear(5, 6, bias=False)))
    model.lm_head = torch.nn.Linear(6, 2)
    old = model[0].weight

    class Marked(torch.nn.Linear):
        pass

    U.replace_linear(model, Marked, copy_weights=True)
    assert type(model[0]) is Marked and type(model[1][0]) is Marked and type(model.lm_head) is torch.nn.Linear
    assert model[0].weight is old and model[1][0].bias is None


def test_find_outlier_dims_and_tracer():
    w = torch.randn(64, 32)
    w[:, 5] *= 50
    assert U.find_outlier_dims(w).tolist() == [5]
    assert U.find_outlier_dims(w, topk=2)[0].item() == 5
    assert U.find_outlier_dims(w, rdm=True, topk=3).shape == (3,)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 8))
    tracer = U.OutlierTracer.get_instance()
    tracer.initialize(model)
    x = torch.randn(4, 32)
    x[:, 7] = 20.0
    model(x)
    assert 7 in tracer.get_outliers(model[0].weight).tolist()
    assert tracer.get_outliers(model[1].weight) is not None
    model(x)  # second pass removes the hooks
    for hook in tracer.hooks:
        hook.remove()
    with pytest.raises(RuntimeError, match="get_instance"):
        U.OutlierTracer()


def test_quant_state_survives_copy(device):
    _, state = F.quantize_4bit(gaussian(256, device=device), quant_type="nf4", compress_statistics=True)
    for clone in [copy.copy(state), copy.deepcopy(state)]:
        assert clone == state


def test_4bit_functions_trace_without_graph_breaks(device):
    # torch.compile(fullgraph=True) of the 4-bit path (the reference supports it since 0.46); the
    # eager backend checks the tracing without paying for code generation.
    w = gaussian((64, 128), torch.bfloat16, device=device)

    def round_trip(w):
        packed, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        return F.dequantize_4bit(packed, state), F.gemv_4bit(w[:3], packed, state=state)

    torch._dynamo.reset()
    compiled = torch.compile(round_trip, fullgraph=True, backend="eager")
    for got, want in zip(compiled(w), round_trip(w)):
        assert torch.equal(got, want)
