"""QuantState (spec §1.7): fields, as_dict (unpacked and packed, key order, JSON bytes), from_dict
(packed, unpacked, prefixed; every malformed input a ValueError naming the key), the FSDP getattr
hook, the legacy list view, to(), equality, copying, and the golden states of the reference.

Tests that quantize take the ``device`` fixture (conftest.py) and build their states there;
QuantState's own bookkeeping (constants, constructor, 8-bit states) runs on the CPU only."""

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch

import nybble.functional as F
from nybble.functional import QuantState

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "data" / "golden" / "golden_bnb_0_50_2.safetensors"


def make_state(quant_type="nf4", dq=True, dtype=torch.bfloat16, shape=(64, 48), blocksize=64, device="cpu"):
    x = torch.randn(shape).to(dtype).to(device)
    return F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=dq)


def packed_json(d: dict) -> dict:
    key = next(k for k in d if k.startswith("quant_state."))
    return json.loads(bytes(d[key].tolist()))


# ---- fields and constants --------------------------------------------------------------------------


def test_class_constants():
    assert QuantState.valid_quant_types == ("fp4", "nf4")
    assert QuantState.valid_qs_type_keys == ["bitsandbytes__fp4", "bitsandbytes__nf4"]
    assert QuantState.valid_qs_keys == [
        "absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type", "blocksize",
        "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset",
    ]


def test_constructor_fields():
    absmax = torch.ones(3)
    s = QuantState(absmax, shape=torch.Size([3, 64]), code=torch.zeros(16), blocksize=64, quant_type="nf4",
                   dtype=torch.float16)
    assert (s.absmax is absmax and s.shape == (3, 64) and s.blocksize == 64 and s.quant_type == "nf4"
            and s.dtype == torch.float16 and s.offset is None and s.state2 is None and s.nested is False)
    s2 = QuantState(torch.ones(1), state2=s, offset=torch.tensor(0.5))
    assert s2.nested is True and s2.shape is None and s2.code is None


# ---- as_dict ---------------------------------------------------------------------------------------


def test_as_dict_unpacked(device):
    _, s = make_state(dq=False, device=device)
    d = s.as_dict()
    assert list(d) == ["quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape"]
    assert d["quant_type"] == "nf4" and d["absmax"] is s.absmax and d["blocksize"] == 64
    assert d["quant_map"] is s.code and d["dtype"] == "bfloat16" and d["shape"] == (64, 48)


def test_as_dict_unpacked_nested(device):
    _, s = make_state(dq=True, device=device)
    d = s.as_dict()
    assert list(d) == ["quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape", "nested_absmax",
                       "nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset"]
    assert d["nested_absmax"] is s.state2.absmax and d["nested_blocksize"] == 256
    assert torch.equal(d["nested_quant_map"], s.state2.code)
    assert d["nested_quant_map"].data_ptr() != s.state2.code.data_ptr()  # a copy (safetensors)
    assert d["nested_dtype"] == "float32" and d["nested_offset"] == s.offset.item()
    assert isinstance(d["nested_offset"], float)


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_as_dict_packed(device, dq, quant_type):
    _, s = make_state(quant_type=quant_type, dq=dq, dtype=torch.float16, shape=(10, 3, 64), device=device)
    d = s.as_dict(packed=True)
    tensors = ["absmax", "quant_map"] + (["nested_absmax", "nested_quant_map"] if dq else [])
    key = "quant_state.bitsandbytes__" + quant_type
    assert list(d) == tensors + [key]
    assert all(isinstance(v, torch.Tensor) for v in d.values())
    packed = d[key]
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    plain = {"quant_type": quant_type, "blocksize": 64, "dtype": "float16", "shape": [10, 3, 64]}
    if dq:
        plain.update(nested_blocksize=256, nested_dtype="float32", nested_offset=s.offset.item())
    # json.dumps with its default separators, keys in this order: the checkpoint's exact bytes.
    assert bytes(packed.tolist()) == json.dumps(plain).encode("utf-8")
    assert bytes(packed.tolist()).startswith(b'{"quant_type": "' + quant_type.encode() + b'", "blocksize": 64, ')


def test_as_dict_packed_without_quant_type_stays_unpacked():
    s = QuantState(torch.ones(2), code=torch.zeros(256), blocksize=4096, dtype=torch.float32)
    d = s.as_dict(packed=True)
    assert d["quant_type"] is None and d["shape"] is None and d["dtype"] == "float32"


def test_getattr_returns_the_packed_tensor(device):
    _, s = make_state("fp4", device=device)
    assert torch.equal(s.bitsandbytes__fp4, s.as_dict(packed=True)["quant_state.bitsandbytes__fp4"])
    with pytest.raises(AttributeError, match="bitsandbytes__nf4"):
        s.bitsandbytes__nf4
    with pytest.raises(AttributeError, match="no attribute 'foo'"):
        s.foo
    assert not hasattr(s, "packing_format_for_cpu")


def test_getitem_legacy_list(device):
    _, s = make_state(dq=True, device=device)
    assert s[0] is s.absmax and s[1] == s.shape and s[2] == s.dtype and s[3] == 64 and s[5] == "nf4"
    assert s[4][0] is s.offset and s[4][1] is s.state2
    _, plain = make_state(dq=False, device=device)
    assert plain[4] is None and plain[-1] == "nf4"
    with pytest.raises(IndexError):
        plain[6]


# ---- from_dict -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dq", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("prefix", ["", "model.layers.0.mlp.weight."])
def test_from_dict_round_trip(device, dq, packed, prefix):
    p, s = make_state(dq=dq, device=device)
    d = {prefix + k: v for k, v in s.as_dict(packed=packed).items()}
    given = dict(d)
    r = QuantState.from_dict(d, device=device)
    assert d == given  # the caller's dict is left alone
    tensors = [r.absmax, r.code] + ([r.offset, r.state2.absmax, r.state2.code] if dq else [])
    assert all(t.device.type == device for t in tensors)
    assert r == s and r.nested == dq and r.shape == torch.Size([64, 48]) and isinstance(r.shape, torch.Size)
    assert r.dtype == torch.bfloat16 and r.blocksize == 64 and r.quant_type == "nf4"
    if dq:
        assert r.offset.dtype == torch.float32 and r.offset.dim() == 0 and r.offset.item() == s.offset.item()
        assert r.state2.blocksize == 256 and r.state2.dtype == torch.float32
    assert torch.equal(F.dequantize_4bit(p, r), F.dequantize_4bit(p, s))


def test_from_dict_8bit_state():
    s = QuantState(torch.rand(4), code=F.create_dynamic_map(), blocksize=4096, dtype=torch.float16)
    r = QuantState.from_dict(s.as_dict(), device="cpu")
    assert r == s and r.quant_type is None and r.shape is None


def packed_state(dq=True, device="cpu"):
    _, s = make_state(dq=dq, device=device)
    return s.as_dict(packed=True)


def with_json(d: dict, raw: bytes) -> dict:
    d = dict(d)
    d["quant_state.bitsandbytes__nf4"] = torch.tensor(list(raw), dtype=torch.uint8)
    return d


@pytest.mark.parametrize("raw, match", [
    (b"\xff\xfe{", "'quant_state.bitsandbytes__nf4' does not hold UTF-8 JSON"),
    (b'{"quant_type": "nf4", "blocksize": 64', "does not hold UTF-8 JSON"),
    (b"", "does not hold UTF-8 JSON"),
    (b"[1, 2]", "must hold a JSON object, got list"),
    (b'{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 48], "absmax": [1]}',
     "holds tensor entries \\['absmax'\\] as JSON"),
])
def test_from_dict_corrupt_json(device, raw, match):
    with pytest.raises(ValueError, match=match):
        QuantState.from_dict(with_json(packed_state(dq=False, device=device), raw), device=device)


def test_from_dict_packed_tensor_of_wrong_type(device):
    d = packed_state(dq=False, device=device)
    d["quant_state.bitsandbytes__nf4"] = d["quant_state.bitsandbytes__nf4"].float()
    with pytest.raises(ValueError, match="must be a 1-D uint8 tensor of JSON bytes, got torch.float32"):
        QuantState.from_dict(d, device=device)


@pytest.mark.parametrize("key, what", [
    ("quant_type", "quant_type"), ("blocksize", "blocksize"), ("dtype", "dtype"), ("shape", "shape"),
    ("nested_offset", "nested_offset"), ("nested_blocksize", "nested_blocksize"), ("nested_dtype", "nested_dtype"),
])
def test_from_dict_missing_json_key(device, key, what):
    d = packed_state(dq=True, device=device)
    plain = packed_json(d)
    del plain[key]
    with pytest.raises(ValueError, match=f"missing '{what}'"):
        QuantState.from_dict(with_json(d, json.dumps(plain).encode()), device=device)


@pytest.mark.parametrize("key", ["absmax", "quant_map", "nested_quant_map"])
def test_from_dict_missing_tensor(device, key):
    d = packed_state(dq=True, device=device)
    del d[key]
    with pytest.raises(ValueError, match=f"missing '{key}'"):
        QuantState.from_dict(d, device=device)


def test_from_dict_nested_keys_without_nested_absmax(device):
    d = packed_state(dq=True, device=device)
    del d["nested_absmax"]
    with pytest.raises(ValueError, match="given without 'nested_absmax'"):
        QuantState.from_dict(d, device=device)


def test_from_dict_extra_keys(device):
    d = packed_state(dq=False, device=device)
    d["weight.SCB"] = torch.ones(2, device=device)
    with pytest.raises(ValueError, match="unexpected keys \\['SCB'\\]"):
        QuantState.from_dict(d, device=device)
    plain = packed_json(d)
    plain["compute_dtype"] = "float16"
    d.pop("weight.SCB")
    with pytest.raises(ValueError, match="unexpected keys \\['compute_dtype'\\]"):
        QuantState.from_dict(with_json(d, json.dumps(plain).encode()), device=device)


def test_from_dict_two_packed_keys(device):
    d = packed_state(dq=False, device=device)
    d["quant_state.bitsandbytes__fp4"] = d["quant_state.bitsandbytes__nf4"].clone()
    with pytest.raises(ValueError, match="exactly one `quant_state` item"):
        QuantState.from_dict(d, device=device)


def test_from_dict_wrong_packed_suffix_and_nothing(device):
    d = packed_state(dq=False, device=device)
    d["quant_state.bitsandbytes__int4"] = d.pop("quant_state.bitsandbytes__nf4")
    with pytest.raises(ValueError, match="exactly one `quant_state` item"):
        QuantState.from_dict(d, device=device)
    with pytest.raises(ValueError, match="Expected packed or unpacked quant_state items, found neither"):
        QuantState.from_dict({"absmax": torch.ones(1, device=device)}, device=device)


def test_from_dict_duplicate_after_prefix_stripping(device):
    d = packed_state(dq=False, device=device)
    d["other.absmax"] = d["absmax"]
    with pytest.raises(ValueError, match="more than one entry for 'absmax'"):
        QuantState.from_dict(d, device=device)


@pytest.mark.parametrize("field, value, match", [
    ("dtype", "float99", "dtype = 'float99' is not the name of a torch dtype"),
    ("dtype", "Tensor", "dtype = 'Tensor' is not the name of a torch dtype"),
    ("blocksize", "64", "blocksize = '64' must be a positive int"),
    ("blocksize", 0, "blocksize = 0 must be a positive int"),
    ("quant_type", "int4", "quant_type = 'int4' is not one of"),
    ("shape", [4, -1], "shape = \\[4, -1\\] must be a list of non-negative ints"),
    ("shape", "64x48", "shape = '64x48' must be a list"),
    ("nested_offset", "0.5", "nested_offset = '0.5' must be a number"),
])
def test_from_dict_bad_values(device, field, value, match):
    d = packed_state(dq=True, device=device)
    plain = packed_json(d)
    plain[field] = value
    with pytest.raises(ValueError, match=match):
        QuantState.from_dict(with_json(d, json.dumps(plain).encode()), device=device)


def test_from_dict_unpacked_bad_tensor(device):
    d = make_state(dq=False, device=device)[1].as_dict()
    d["absmax"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="'absmax' must be a tensor, got list"):
        QuantState.from_dict(d, device=device)
    with pytest.raises(TypeError, match="qs_dict must be a dict"):
        QuantState.from_dict([("absmax", torch.ones(1, device=device))], device=device)


# ---- to, equality, copying -------------------------------------------------------------------------


def test_to_moves_every_tensor(device):
    _, s = make_state(dq=True, device=device)
    assert s.to("meta") is None
    tensors = [s.absmax, s.code, s.offset, s.state2.absmax, s.state2.code]
    assert all(t.device.type == "meta" for t in tensors)


def test_equality(device):
    _, a = make_state(dq=True, device=device)
    b = copy.deepcopy(a)
    assert a == b and not (a != b)
    assert a != "not a state"
    b.offset = b.offset + 1
    assert a != b
    c = copy.deepcopy(a)
    c.state2.absmax = c.state2.absmax * 2
    assert a != c
    d = copy.deepcopy(a)
    d.shape = torch.Size([48, 64])
    assert a != d
    _, plain = make_state(dq=False, device=device)
    assert a != plain and plain != a  # nested vs not: False, no exception
    e = copy.deepcopy(plain)
    e.absmax = e.absmax + 1e-7  # within allclose(atol=1e-6)
    assert e == plain


def test_pickle_and_copy_do_not_recurse(device):
    _, s = make_state(dq=True, device=device)
    for clone in [pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)]:
        assert clone == s and clone.bitsandbytes__nf4.dtype == torch.uint8


# ---- golden states of the reference -------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    safetensors = pytest.importorskip("safetensors.torch")
    return safetensors.load_file(str(GOLDEN))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dq", [0, 1])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("blocksize", [32, 64, 4096])
def test_golden_quant_state_loads_and_dequantizes(golden, device, quant_type, dq, dtype, blocksize):
    key = f"q4.{quant_type}.bs{blocksize}.dq{dq}.{dtype}"
    qs = {k.removeprefix(key + ".qs."): v for k, v in golden.items() if k.startswith(key + ".qs.")}
    state = QuantState.from_dict({"weight." + k: v for k, v in qs.items()}, device=device)
    assert state.quant_type == quant_type and state.blocksize == blocksize and state.dtype == getattr(torch, dtype)
    assert state.nested == bool(dq) and state.shape == golden["input.x_" + dtype].shape
    # Serializing it again gives the reference's bytes back.
    again = state.as_dict(packed=True)
    assert sorted(again) == sorted(qs)  # (safetensors files keep keys sorted)
    for k, v in qs.items():
        assert torch.equal(again[k].cpu().view(torch.uint8), v.view(torch.uint8)), k
    # code * absmax is one fp32 product (and, nested, absmax one product and one sum): bit exact.
    out = F.dequantize_4bit(golden[key + ".packed"].to(device), state)
    assert torch.equal(out.cpu().reshape(-1).view(torch.uint8), golden[key + ".dequant"].reshape(-1).view(torch.uint8))
