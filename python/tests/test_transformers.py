"""The seed workflow through the drop-in, with transformers and peft unchanged: a small
Llama-shaped model built from a config, loaded in 8-bit and 4-bit through BitsAndBytesConfig,
generation, save/load of quantized checkpoints (both ways with the reference), QLoRA with peft."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
peft = pytest.importorskip("peft", reason="peft is not installed")

import bitsandbytes as bnb  # noqa: E402  (the drop-in: nybble under the reference's name)
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from refrun import requires_reference, run_reference  # noqa: E402

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def configs():
    return {
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        "nf4-dq-bf16": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16),
        "fp4-storage-bf16": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                               bnb_4bit_quant_storage=torch.bfloat16),
    }


def load(path, name, device, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=configs()[name], device_map=device, **kwargs)


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens.to(model.device)).logits.float().cpu()


@pytest.mark.parametrize("name", list(configs()))
def test_quantized_load_generate_and_footprint(tiny_dir, tokens, device, name):
    full = AutoModelForCausalLM.from_pretrained(tiny_dir, device_map=device)
    model = load(tiny_dir, name, device)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if name == "int8" else bnb.nn.Linear4bit)
    assert type(layer).__module__.startswith("nybble.")
    assert model.get_memory_footprint() < 0.6 * full.get_memory_footprint()
    want, got = logits(full, tokens), logits(model, tokens)
    # Relative error of the logits of a 2-layer random model: 8-bit ~1 %, 4-bit ~10 %.
    rel = float((got - want).norm() / want.norm())
    assert rel < (0.03 if name == "int8" else 0.25), rel
    out = model.generate(tokens[:, :6].to(model.device), max_new_tokens=5, do_sample=False)
    assert out.shape == (2, 11)


@pytest.mark.parametrize("name", list(configs()))
def test_save_pretrained_round_trip(tiny_dir, tokens, device, name, tmp_path):
    model = load(tiny_dir, name, device)
    want = logits(model, tokens)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, device_map=device)
    assert torch.equal(logits(again, tokens), want)


def test_skip_modules_stay_in_full_precision(tiny_dir, device):
    q = BitsAndBytesConfig(load_in_4bit=True, llm_int8_skip_modules=["lm_head", "down_proj"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=q, device_map=device)
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert isinstance(model.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)


@pytest.mark.parametrize("name", ["nf4-dq-bf16", "int8"])
def test_qlora_trains_saves_and_reloads(tiny_dir, tokens, device, name, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    torch.manual_seed(0)
    model = prepare_model_for_kbit_training(load(tiny_dir, name, device))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LINEARS, task_type="CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    batch = tokens.to(model.device)
    losses = []
    for _ in range(12):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    want = logits(model, tokens)
    model.save_pretrained(tmp_path)
    base = load(tiny_dir, name, device)
    reloaded = PeftModel.from_pretrained(base, tmp_path)
    assert torch.equal(logits(reloaded, tokens), want)
    merged = reloaded.merge_and_unload()
    # Merging requantizes the base weight with the LoRA delta added: close, not equal.
    assert float((logits(merged, tokens) - want).abs().max()) < 0.1 * float(want.abs().max())


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_qlora_gradient_checkpointing_gives_the_same_gradients(tiny_dir, tokens, device, use_reentrant):
    # The QLoRA recipe's default: prepare_model_for_kbit_training turns on gradient checkpointing,
    # which recomputes every decoder layer (and its 4-bit matmuls) in the backward. The adapters'
    # gradients must be those of the run without it: bit for bit on the CPU (the same kernels on the
    # same inputs); on CUDA within the nondeterminism of the attention's backward.
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    def lora_grads(checkpointing):
        torch.manual_seed(0)
        model = prepare_model_for_kbit_training(load(tiny_dir, "nf4-dq-bf16", device),
                                                use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        assert model.is_gradient_checkpointing == checkpointing
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=LINEARS, task_type="CAUSAL_LM"))
        model.train()
        batch = tokens.to(model.device)
        model(input_ids=batch, labels=batch).loss.backward()
        return {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.requires_grad}

    plain, recomputed = lora_grads(False), lora_grads(True)
    assert plain.keys() == recomputed.keys() and len(plain) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    for name, g in plain.items():
        if device == "cpu":
            assert torch.equal(recomputed[name], g), name
        else:
            torch.testing.assert_close(recomputed[name], g, atol=1e-4, rtol=1e-3, msg=name)


REFERENCE_SAVE = """
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
import torch
q = BitsAndBytesConfig(**inputs["config"])
m = AutoModelForCausalLM.from_pretrained(inputs["src"], quantization_config=q, device_map=inputs["device"],
                                         dtype=inputs["dtype"])
# Saved before the first forward: on an AVX512-BF16 CPU the reference repacks its 4-bit weights
# for its CPU kernel at the first forward and would then save that private layout.
m.save_pretrained(inputs["dst"])
with torch.no_grad():
    outputs["logits"] = m(inputs["tokens"].to(m.device)).logits.float().cpu()
"""

REFERENCE_LOAD = """
from transformers import AutoModelForCausalLM
import torch
m = AutoModelForCausalLM.from_pretrained(inputs["src"], device_map=inputs["device"], dtype=inputs["dtype"])
with torch.no_grad():
    outputs["logits"] = m(inputs["tokens"].to(m.device)).logits.float().cpu()
"""

EXCHANGE_CONFIGS = {
    "int8": {"load_in_8bit": True},
    "nf4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
}


@requires_reference
@pytest.mark.parametrize("name", list(EXCHANGE_CONFIGS))
def test_checkpoints_move_both_ways_with_the_reference(tiny_dir, tokens, device, name, tmp_path):
    q = EXCHANGE_CONFIGS[name]
    # LLM.int8 in fp16: the reference quantizes activations as fp16 whatever their dtype (nybble
    # quantizes them in their own precision), so fp16 is where both compute the same thing, up to
    # the reference's inexact 1/127^2 in the dequantization (spec §2.1, ~2e-5 relative per layer,
    # then fp16 rounding), which the two layers, the norms and the head amplify.
    # 4-bit on the CPU: where the CPU has AVX512-BF16 the reference computes the matmul in bf16.
    dtype = torch.float16 if name == "int8" else torch.float32
    loose = name == "int8" or device == "cpu"
    tol = {"rtol": 1e-2, "atol": 1e-2} if loose else {"rtol": 1e-4, "atol": 1e-4}
    # Reference -> nybble: the reference quantizes and saves; nybble loads and computes the same.
    ref = run_reference(REFERENCE_SAVE, config=q, src=str(tiny_dir), dst=str(tmp_path / "ref"), device=device,
                        tokens=tokens, dtype=dtype)
    mine = AutoModelForCausalLM.from_pretrained(tmp_path / "ref", device_map=device, dtype=dtype)
    torch.testing.assert_close(logits(mine, tokens), ref["logits"], **tol)
    # The loaded model holds the reference's tensors byte for byte (transformers 5 cannot re-save a
    # model loaded from a pre-quantized 8-bit checkpoint, with either library).
    saved, held = load_file(tmp_path / "ref" / "model.safetensors"), mine.state_dict()
    assert set(saved) <= set(held)
    assert all(torch.equal(saved[k].view(-1).view(torch.uint8), held[k].cpu().reshape(-1).view(torch.uint8))
               for k in saved)
    # nybble -> reference.
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=BitsAndBytesConfig(**q),
                                                 device_map=device, dtype=dtype)
    model.save_pretrained(tmp_path / "mine")
    theirs = run_reference(REFERENCE_LOAD, src=str(tmp_path / "mine"), device=device, tokens=tokens, dtype=dtype)
    torch.testing.assert_close(theirs["logits"], logits(model, tokens), **tol)


@pytest.mark.parametrize("optim", ["adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit"])
def test_trainer_uses_the_optimizers_by_name(tiny_dir, tokens, device, optim, tmp_path):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, TrainingArguments

    model = prepare_model_for_kbit_training(load(tiny_dir, "nf4-dq-bf16", device))
    model = get_peft_model(model, LoraConfig(r=8, target_modules=LINEARS, task_type="CAUSAL_LM"))
    data = [{"input_ids": row, "labels": row} for row in tokens.repeat(4, 1)]
    args = TrainingArguments(output_dir=str(tmp_path), optim=optim, max_steps=4, per_device_train_batch_size=2,
                             learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
                             use_cpu=device == "cpu")
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert type(trainer.optimizer.optimizer).__module__.startswith("nybble.optim")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
