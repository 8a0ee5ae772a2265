"""The `nybble` command (C++) against the Python package: `nybble quantize` writes the tensors that
nybble.functional computes from the same weights, byte for byte, and a model folder it writes
loads with transformers' from_pretrained (through the drop-in, and in the reference) and gives the
logits of quantizing in memory with BitsAndBytesConfig.

The one value that can differ is the double-quantization offset (docs/cli.md): the command takes
nybble's fixed-order mean, the Python layer torch's fp32 mean, whose summation order is torch's
own (and depends on its thread count for large weights). The tests check that the two offsets
agree to fp32 rounding, that everything else is identical given the command's offset, and, on
weights whose absmax sums exactly (every summation order agrees), that all bytes are identical.

The binary: $NYBBLE_CLI (scripts/test.sh sets it), else the newest build*/cpp/tools/nybble in the
repository; the tests skip, saying so, when there is none."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import nybble.functional as F
from refrun import requires_reference, run_reference

ROOT = Path(__file__).resolve().parents[2]


def _find_cli() -> Path | None:
    if os.environ.get("NYBBLE_CLI"):
        return Path(os.environ["NYBBLE_CLI"])
    built = sorted(ROOT.glob("build*/cpp/tools/nybble"), key=lambda p: p.stat().st_mtime)
    return built[-1] if built else None


CLI = _find_cli()
pytestmark = pytest.mark.skipif(CLI is None or not CLI.exists(),
                                reason=f"the nybble command is not built (NYBBLE_CLI={os.environ.get('NYBBLE_CLI')!r}; "
                                       "no build*/cpp/tools/nybble; build with cmake)")


def nybble_cli(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nybble {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def weights(dyadic: bool) -> dict[str, torch.Tensor]:
    """Linear weights of awkward shapes in each float dtype, and tensors that are copied. With
    `dyadic`, values k/1024 (|k| <= 64) and block counts that are powers of two: the absmax of
    every block is a multiple of 1/1024, their sum is exact in fp32 in any order and so is the
    mean, and every implementation of the mean gives the same offset."""
    g = torch.Generator().manual_seed(int(os.environ.get("NYBBLE_TEST_SEED", "0") or 0))

    def make(shape, dtype):
        if dyadic:
            return (torch.randint(-64, 65, shape, generator=g) / 1024).to(dtype)
        return (torch.randn(shape, generator=g) * 0.05).to(dtype)

    shapes = {"a.weight": ((128, 64), torch.float32), "b.weight": ((64, 256), torch.bfloat16),
              "c.weight": ((32, 64), torch.float16)}
    if not dyadic:
        shapes["d.weight"] = ((7, 37), torch.float32)  # an odd element count: a padded last byte
    out = {name: make(shape, dtype) for name, (shape, dtype) in shapes.items()}
    out["a.bias"] = torch.randn(128, generator=g)
    out["norm.weight"] = torch.randn(64, generator=g)
    return out


def quantize_file(tmp_path, tensors, *flags) -> dict[str, torch.Tensor]:
    save_file(tensors, tmp_path / "in.safetensors", metadata={"format": "pt"})
    nybble_cli("quantize", tmp_path / "in.safetensors", "-o", tmp_path / "out", "-q", *flags)
    assert "OK" in nybble_cli("verify", tmp_path / "out").stdout
    return load_file(tmp_path / "out" / "model.safetensors")


def unpack_json(t: torch.Tensor) -> dict:
    return json.loads(bytes(t.tolist()))


@pytest.mark.parametrize("dyadic", [False, True], ids=["random", "dyadic"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("quant_type,blocksize", [("nf4", 64), ("fp4", 128)])
def test_4bit_bytes_equal_functional(tmp_path, quant_type, blocksize, double_quant, dyadic):
    tensors = weights(dyadic)
    flags = ["--type", quant_type, "--blocksize", blocksize] + (["--double-quant"] if double_quant else [])
    out = quantize_file(tmp_path, tensors, *flags)
    for name in ("norm.weight", "a.bias"):
        assert torch.equal(out[name], tensors[name])
    for name, w in tensors.items():
        if not name.endswith(".weight") or w.dim() != 2:
            continue
        packed, state = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type)
        want = {name: packed, **{f"{name}.{k}": v for k, v in state.as_dict(packed=True).items()}}
        got = {k: v for k, v in out.items() if k == name or k.startswith(name + ".")}
        assert set(got) == set(want)
        qs_key = f"{name}.quant_state.bitsandbytes__{quant_type}"  # its length follows the offset's digits
        for key, value in want.items():
            assert got[key].dtype == value.dtype and (key == qs_key or got[key].shape == value.shape), key
        same_offset = True
        if double_quant:
            got_qs, want_qs = unpack_json(got[qs_key]), unpack_json(want[qs_key])
            mine, torchs = got_qs.pop("nested_offset"), want_qs.pop("nested_offset")
            assert got_qs == want_qs
            assert math.isclose(mine, torchs, rel_tol=2e-7), (mine, torchs)  # an ulp or so of fp32
            same_offset = mine == torchs
            # Everything that follows the offset is the Python layer's, given the command's offset.
            _, plain_state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
            codes, nested = F.quantize_blockwise(plain_state.absmax - torch.tensor(mine, dtype=torch.float32),
                                                 blocksize=256)
            assert torch.equal(got[f"{name}.absmax"], codes)
            assert torch.equal(got[f"{name}.nested_absmax"], nested.absmax)
            if dyadic:
                assert same_offset
        for key, value in want.items():
            if same_offset or key not in (qs_key, f"{name}.absmax", f"{name}.nested_absmax"):
                assert torch.equal(got[key], value), key


def test_int8_bytes_equal_functional(tmp_path):
    tensors = weights(False)
    out = quantize_file(tmp_path, tensors, "--type", "int8")
    for name, w in tensors.items():
        if not name.endswith(".weight") or w.dim() != 2:
            assert torch.equal(out[name], w)
            continue
        module = name.removesuffix(".weight")
        codes, scb, _ = F.int8_vectorwise_quant(w)  # what nybble's Int8Params stores: rows in w's own dtype
        assert torch.equal(out[name], codes)
        assert torch.equal(out[f"{module}.SCB"], scb)
        assert torch.equal(out[f"{module}.weight_format"], torch.tensor(0, dtype=torch.uint8))


# ---- through transformers ------------------------------------------------------------------------

CONFIGS = {
    "int8": (["--type", "int8"], {"load_in_8bit": True}),
    "nf4": (["--type", "nf4"], {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
    "nf4-dq": (["--type", "nf4", "--double-quant"],
               {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}),
    "fp4-bf16": (["--type", "fp4", "--compute-dtype", "bf16"],
                 {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": torch.bfloat16}),
}


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="transformers is not installed")


@pytest.fixture(scope="module")
def tiny_llama(transformers, tmp_path_factory):
    """A tiny Llama saved in fp32, with linear weights of dyadic values (see weights()): the double
    quantization offset is then the same in the command and in torch."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.weight"):
                p.copy_(torch.randint(-64, 65, p.shape) / 1024)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return path


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens.to(model.device)).logits.float().cpu()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_pretrained_equals_in_memory_quantization(transformers, tiny_llama, tokens, tmp_path, name):
    import bitsandbytes as bnb  # the drop-in

    flags, q = CONFIGS[name]
    out = tmp_path / "out"
    nybble_cli("quantize", tiny_llama, "-o", out, "-q", *flags)
    assert (out / "tokenizer_config.json").read_text() == (tiny_llama / "tokenizer_config.json").read_text()
    assert "OK" in nybble_cli("verify", out).stdout
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    layer = loaded.model.layers[1].mlp.down_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if name == "int8" else bnb.nn.Linear4bit)
    assert type(layer).__module__.startswith("nybble.")
    assert isinstance(loaded.lm_head, torch.nn.Linear) and loaded.lm_head.weight.dtype == torch.float32
    in_memory = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_llama, quantization_config=transformers.BitsAndBytesConfig(**q), dtype=torch.float32)
    assert torch.equal(logits(loaded, tokens), logits(in_memory, tokens))
    # The same state as a save_pretrained of the in-memory model, tensor for tensor.
    held, want = loaded.state_dict(), in_memory.state_dict()
    assert set(held) == set(want)
    assert all(torch.equal(held[k], want[k]) for k in want)


REFERENCE_LOAD = """
from transformers import AutoModelForCausalLM
import torch
m = AutoModelForCausalLM.from_pretrained(inputs["src"], dtype=inputs["dtype"])
assert type(m.model.layers[0].mlp.up_proj).__module__.startswith("bitsandbytes."), type(m.model.layers[0].mlp.up_proj)
with torch.no_grad():
    outputs["logits"] = m(inputs["tokens"]).logits.float().cpu()
"""


@requires_reference
@pytest.mark.parametrize("name", ["int8", "nf4-dq"])
def test_reference_loads_the_output(transformers, tiny_llama, tokens, tmp_path, name):
    flags, _ = CONFIGS[name]
    out = tmp_path / "out"
    nybble_cli("quantize", tiny_llama, "-o", out, "-q", *flags)
    # As in test_transformers: the reference computes LLM.int8 in fp16 and, on a CPU with
    # AVX512-BF16, 4-bit matmuls in bf16; the comparison allows for that.
    dtype = torch.float16 if name == "int8" else torch.float32
    theirs = run_reference(REFERENCE_LOAD, src=str(out), tokens=tokens, dtype=dtype)["logits"]
    mine = logits(transformers.AutoModelForCausalLM.from_pretrained(out, dtype=dtype), tokens)
    torch.testing.assert_close(theirs, mine, rtol=1e-2, atol=1e-2)
