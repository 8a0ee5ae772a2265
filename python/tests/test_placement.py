"""nybble.place_modules: named modules of a loaded (quantized) model moved to devices of their own,
with accelerate hooks so the model runs across them (docs/usage.md, placing a quantized model).

On the CPU: every rule of the input check, and a small Llama-shaped model (4-bit and 8-bit through
BitsAndBytesConfig and the drop-in) whose modules are all placed on the CPU computing exactly what
it computed before. On a GPU: half of the decoder layers of a model loaded on the GPU moved to the
CPU, against the all-GPU model (logits, greedy generation with the KV cache, memory), and back."""

import copy
import gc

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("accelerate", reason="accelerate is not installed")

import bitsandbytes as bnb  # noqa: E402  (the drop-in: nybble under the reference's name)
from accelerate.hooks import AlignDevicesHook  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

import nybble  # noqa: E402
from nybble import _C  # noqa: E402

requires_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and _C.cuda_built()),
    reason="CUDA: no GPU (torch.cuda.is_available() is False) or nybble built without CUDA",
)

QUANT = {
    "nf4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
               "bnb_4bit_compute_dtype": torch.float32},
    "nf4-dq-bf16": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                    "bnb_4bit_compute_dtype": torch.bfloat16},
    "int8": {"load_in_8bit": True},
}


def save_llama(path, **config):
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(max_position_embeddings=128, **config)).save_pretrained(path)
    return path


def load(path, name, device):
    dtype = torch.bfloat16 if name.endswith("bf16") else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(**QUANT[name]),
                                                device_map=device, dtype=dtype)


def cache_of(output):
    """The KV cache a forward or generate() returns (``cache`` in transformers 5, before that
    ``past_key_values``)."""
    return output.cache if "cache" in output else output.past_key_values


def run(model, tokens):
    """Logits of a forward with the cache, the cache's per-layer devices, greedy generation."""
    with torch.no_grad():
        out = model(tokens.to(model.device), use_cache=True)
    devices = [layer.keys.device.type for layer in cache_of(out).layers]
    prompt = tokens[:, :6].to(model.device)
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8,
                               do_sample=False, return_dict_in_generate=True)
    gen_devices = [layer.keys.device.type for layer in cache_of(generated).layers]
    return out.logits.float().cpu(), devices, generated.sequences.cpu(), gen_devices


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_llama(tmp_path_factory.mktemp("tiny-llama"), hidden_size=128, intermediate_size=256,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=256)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


# ---- the input check ----------------------------------------------------------------------------------


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])
        self.head = torch.nn.Linear(8, 16)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def state(model):
    """What place_modules may change: tensor devices and hooks."""
    tensors = {n: t.device for n, t in model.state_dict(keep_vars=True).items()}
    return tensors, {n: repr(getattr(m, "_hf_hook", None)) for n, m in model.named_modules()}


NO_SUCH_GPU = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: "does not exist" everywhere

BAD_MAPS = [
    # (device_map, exception, words of the message: the argument, the value, the rule)
    ({"blocks.2": "cpu"}, ValueError, ["no module named 'blocks.2'", "close names", "'blocks.1'"]),
    ([("head", "cpu"), ("head", "cpu")], ValueError, ["'head' is given twice"]),
    ({"blocks": "cpu", "blocks.0": "cpu"}, ValueError, ["'blocks.0' lies inside 'blocks'"]),
    ({"": "cpu", "head": "cpu"}, ValueError, ["lies inside ''"]),
    ({"blocks.0": NO_SUCH_GPU}, ValueError, [f"device_map['blocks.0']: device '{NO_SUCH_GPU}' does not exist"]),
    ({"head": "gpu"}, ValueError, ["device_map['head']: 'gpu' is not a device"]),
    ({"head": "meta"}, ValueError, ["device_map['head']: device 'meta' holds no data"]),
    ({"head": "disk"}, ValueError, ["device_map['head']: device 'disk' is accelerate's offload"]),
    ({"head": 1.5}, TypeError, ["device_map['head']: a device is a torch.device, a string or a GPU index, got 1.5"]),
    ({"head": True}, TypeError, ["device_map['head']", "got True"]),
    ({0: "cpu"}, TypeError, ["module names must be strings, got 0"]),
    ("cpu", TypeError, ["device_map: must be a dict", "got str"]),
    ([("head",)], TypeError, ["sequence of (name, device) pairs"]),
]


@pytest.mark.parametrize("device_map, error, words", BAD_MAPS, ids=[repr(m) for m, _, _ in BAD_MAPS])
def test_bad_maps_are_refused_and_change_nothing(device_map, error, words):
    model = Net()
    before = state(model)
    with pytest.raises(error) as e:
        nybble.place_modules(model, {"emb": "cpu", **device_map} if isinstance(device_map, dict) else device_map)
    for w in words:
        assert w in str(e.value), str(e.value)
    assert state(model) == before


def test_one_module_under_two_names_is_given_once():
    shared = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(shared, shared)
    with pytest.raises(ValueError, match="'0' and '1' are the same module"):
        nybble.place_modules(model, {"0": "cpu", "1": "cpu"})


def test_a_module_with_weights_on_the_meta_device_is_refused():
    model = Net()
    model.head = torch.nn.Linear(8, 16, device="meta")  # as accelerate leaves an offloaded module
    with pytest.raises(ValueError, match=r"device_map\['head'\]: 'weight' is on the meta device"):
        nybble.place_modules(model, {"emb": "cpu", "head": "cpu"})
    assert not hasattr(model.emb, "_hf_hook")


def test_a_container_that_holds_tensors_itself_is_refused():
    model = Net()
    model.scales = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(8))])
    with pytest.raises(ValueError, match=r"device_map\['scales'\]: ParameterList has no forward and holds tensors"):
        nybble.place_modules(model, {"scales": "cpu"})


def test_the_model_argument_is_checked():
    with pytest.raises(TypeError, match="model: must be a torch.nn.Module, got dict"):
        nybble.place_modules({}, {"": "cpu"})


# ---- hooks, containers, placing again -----------------------------------------------------------------------


def test_a_container_stands_for_its_elements_and_hooks_follow_placements():
    model = Net()
    ids = torch.randint(0, 16, (3, 5))
    want = model(ids)
    assert nybble.place_modules(model, {"blocks": "cpu", "head": torch.device("cpu")}) is model
    for m in (*model.blocks, model.head):
        assert isinstance(m._hf_hook, AlignDevicesHook)
        assert m._hf_hook.execution_device == torch.device("cpu") and m._hf_hook.io_same_device
    assert not hasattr(model.blocks, "_hf_hook")  # a ModuleList's forward never runs
    # The rest of the model (emb) is on one device: the model moves its inputs there.
    assert model._hf_hook.execution_device == torch.device("cpu")
    assert torch.equal(model(ids), want)
    # A submodule placed earlier loses its pin when a module holding it is placed; placing a module
    # again replaces its hook instead of stacking another.
    outer = torch.nn.Sequential(model)
    nybble.place_modules(outer, {"0.head": "cpu"})
    nybble.place_modules(outer, {"0": "cpu"})
    assert not hasattr(model.head, "_hf_hook") and not hasattr(model.blocks[0], "_hf_hook")
    nybble.place_modules(outer, {"0": "cpu"})
    assert type(model._hf_hook) is AlignDevicesHook
    assert torch.equal(outer(ids), want)


def test_hf_device_map_is_updated():
    model = Net()
    model.hf_device_map = {"": "cpu", "blocks.1": "cpu"}
    nybble.place_modules(model, {"blocks": "cpu"})
    assert model.hf_device_map == {"": "cpu", "blocks.0": "cpu", "blocks.1": "cpu"}


def test_the_drop_in_offers_the_same_function():
    import bitsandbytes.placement

    assert bnb.place_modules is nybble.place_modules is bitsandbytes.placement.place_modules


# ---- a quantized Llama placed on the CPU ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["every module", "half the layers"])
@pytest.mark.parametrize("name", ["nf4-dq", "int8"])
def test_modules_of_a_quantized_model_placed_on_the_cpu_compute_the_same(tiny_dir, tokens, name, which):
    model = load(tiny_dir, name, "cpu")
    want = run(model, tokens)
    if which == "every module":
        device_map = {f"model.{n}": "cpu" for n, _ in model.model.named_children()}  # "model.layers": each layer
        device_map["lm_head"] = "cpu"
    else:
        device_map = {"model.layers.1": "cpu", "model.layers.3": "cpu"}
    nybble.place_modules(model, device_map)
    for layer in model.model.layers[1::2]:
        hook = layer._hf_hook
        assert hook.execution_device == torch.device("cpu") and hook.io_same_device
        assert "cache" in hook.skip_keys and "past_key_values" in hook.skip_keys
    # The parts not placed sit on one device: the model itself moves its inputs there (and hands
    # its outputs, a CausalLMOutputWithPast with the cache untouched, back).
    assert (getattr(model, "_hf_hook", None) is None) == (which == "every module")
    got = run(model, tokens)
    assert torch.equal(got[0], want[0])
    assert got[1] == ["cpu"] * 4 and got[3] == ["cpu"] * 4
    assert torch.equal(got[2], want[2])


# ---- GPU and CPU in one model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    # Large enough that a layer's bytes (~6 MiB in 4-bit) dwarf the allocator's 512-byte rounding.
    return save_llama(tmp_path_factory.mktemp("llama"), hidden_size=1024, intermediate_size=2816,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, vocab_size=1024)


def cuda_bytes(modules) -> int:
    """Bytes the caching allocator holds for the modules' GPU tensors: parameters, buffers and
    the tensors of 4-bit quant states and 8-bit row scales (rounded up to its 512-byte blocks)."""
    tensors = []
    for module in modules:
        tensors += [*module.parameters(), *module.buffers()]
        for m in module.modules():
            qs = getattr(getattr(m, "weight", None), "quant_state", None)
            if qs is not None:
                tensors += [qs.absmax, qs.code, qs.offset]
                if getattr(qs, "state2", None) is not None:
                    tensors += [qs.state2.absmax, qs.state2.code]
            if isinstance(m, bnb.nn.Linear8bitLt):
                tensors += [m.state.SCB, m.weight.SCB, m.state.CB, getattr(m.weight, "CB", None)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors if isinstance(t, torch.Tensor) and t.is_cuda}
    return sum(-(-n // 512) * 512 for n in storages.values())


def allocated() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


@requires_cuda
@pytest.mark.parametrize("name", ["nf4-dq", "nf4-dq-bf16", "int8"])
def test_half_the_layers_on_the_cpu_compute_what_the_gpu_computes(llama_dir, name):
    tokens = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(1))
    model = load(llama_dir, name, "cuda")
    layers = model.model.layers
    want = run(model, tokens)
    assert want[1] == ["cuda"] * 4
    moved = {f"model.layers.{i}": "cpu" for i in (1, 3)}  # GPU, CPU, GPU, CPU, then the GPU's norm and head
    expected_drop = cuda_bytes([layers[1], layers[3]])
    before = allocated()

    nybble.place_modules(model, moved)
    drop = before - allocated()
    # Everything the moved layers hold leaves the GPU (small slack for the NF4 code table, which
    # layers may share, and for the allocator's bookkeeping).
    assert drop >= expected_drop - 64 * 1024, (name, drop, expected_drop)
    for i, layer in enumerate(layers):
        assert {p.device.type for p in layer.parameters()} == {"cpu" if i % 2 else "cuda"}
    linear = layers[1].mlp.down_proj
    if name == "int8":
        assert linear.state.SCB is None or linear.state.SCB.device.type == "cpu"
        assert linear.weight.SCB is None or linear.weight.SCB.device.type == "cpu"
    else:
        assert linear.weight.quant_state.absmax.device.type == "cpu"
        assert linear.weight.quant_state.state2.absmax.device.type == "cpu"

    got = run(model, tokens)
    # The KV cache holds each layer's keys and values where that layer computes.
    assert got[1] == ["cuda", "cpu", "cuda", "cpu"] and got[3] == ["cuda", "cpu", "cuda", "cpu"]
    ref = want[0]
    if name == "nf4-dq":
        # fp32 throughout; the CPU and GPU 4-bit kernels dequantize the same codes and scales exactly and
        # differ only in the order of their fp32 sums (test_cuda: 1e-4 against dequantize + linear),
        # as do the CPU and GPU attention and norms: ~1e-6 relative per op, well inside 1e-4 of the
        # logits' scale after 4 layers. Greedy tokens then agree: no top-2 margin of a random model's
        # logits is that thin.
        torch.testing.assert_close(got[0], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        assert torch.equal(got[2], want[2])
    else:
        # bf16: above 8 rows the GPU's tensor-core kernel rounds the dequantized weight to bf16, the CPU
        # keeps it in fp32 (docs/ARCHITECTURE.md), and every activation is bf16 (2^-8 relative steps).
        # int8: activation codes are rounded from fp32 values that differ in their last bits between
        # the devices, so a code here and there is one step (1/127 of its row's absmax) apart.
        # Either way per-element differences of ~1 %, a few in the logits' norm; a greedy token may
        # flip where two logits are that close, so generation is checked for its shape only.
        rel = float((got[0] - ref).norm() / ref.norm())
        assert rel < 3e-2, rel
        assert got[2].shape == want[2].shape == (2, 14)

    nybble.place_modules(model, {n: "cuda" for n in moved})
    # Back on the GPU, the layers hold what they held before, once (no tensor left behind or doubled).
    assert cuda_bytes([layers[1], layers[3]]) == expected_drop
    back = run(model, tokens)
    assert back[1] == ["cuda"] * 4
    assert torch.equal(back[0], want[0]) and torch.equal(back[2], want[2])


@requires_cuda
def test_a_cpu_model_can_run_layers_on_the_gpu(tiny_dir, tokens):
    model = load(tiny_dir, "nf4-dq", "cpu")
    want = run(model, tokens)
    nybble.place_modules(model, {"model.layers.0": "cuda", "model.layers.2": 0})
    got = run(model, tokens)
    assert got[1] == ["cuda", "cpu", "cuda", "cpu"]
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4 * float(want[0].abs().max()))
    assert torch.equal(got[2], want[2])


@requires_cuda
def test_tied_weights_must_end_on_one_device():
    model = Net()
    model.emb.weight = model.head.weight  # tied, as lm_head and embed_tokens with tie_word_embeddings
    before = state(model)
    with pytest.raises(ValueError, match=r"'emb.weight' and 'head.weight' are one tensor \(tied weights\)"):
        nybble.place_modules(model, {"head": "cuda"})
    assert state(model) == before
    nybble.place_modules(model, {"emb": "cuda", "head": "cuda"})
    assert model.emb.weight.is_cuda and model.emb.weight is model.head.weight


@requires_cuda
def test_a_gpu_index_past_the_last_is_refused():
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"this machine has {n} cuda device"):
        nybble.place_modules(Net(), {"head": n})


@requires_cuda
def test_an_8bit_layer_moved_with_its_parent_before_its_first_forward():
    # Right after quantization the codes' alias and the row scales sit on the weight (CB, SCB); a
    # parent's .to reaches the layer through _apply only, and they must follow the weight there.
    layer = bnb.nn.Linear8bitLt(256, 64, has_fp16_weights=False)
    on_gpu = copy.deepcopy(layer).to("cuda")  # the same weights quantized on the GPU
    layer.to("cpu")  # quantized on the CPU (the codes and scales are the same bits)
    model = torch.nn.Sequential(layer)
    nybble.place_modules(model, {"0": "cuda"})
    assert layer.weight.is_cuda and layer.weight.CB.data_ptr() == layer.weight.data_ptr()
    assert layer.weight.SCB.is_cuda
    x = torch.randn(5, 256)
    y = model(x)
    assert y.device.type == "cpu" and layer.state.SCB.is_cuda
    # The moved codes and scales compute what the layer quantized on the GPU computes.
    torch.testing.assert_close(y, on_gpu(x.cuda()).cpu(), rtol=0, atol=0)
