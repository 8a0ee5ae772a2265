#!/usr/bin/env python3
"""QLoRA under PyTorch FSDP2 with nybble: a Llama-shaped model with 4-bit (NF4 + double quant,
bf16 quant_storage) base weights, LoRA adapters from peft, PagedAdamW8bit, sharded with
``fully_shard`` across the processes of ``torchrun``.

    torchrun --nproc_per_node 2 examples/fsdp_qlora.py                  # 2 GPUs (NCCL)
    torchrun --nproc_per_node 2 examples/fsdp_qlora.py --device cpu     # 2 CPU processes (gloo)
    python3 examples/fsdp_qlora.py --device cpu                         # one process, the baseline

The model is built from a LlamaConfig with random weights (no download), saved once, and loaded by
every rank through transformers' ``BitsAndBytesConfig`` as a user's model would be. Training text:
demo/data/pride_and_prejudice.txt, tokenized bytewise (vocabulary 256), the same batches on every
rank (each rank computes the same loss; FSDP2 shards parameters, gradients and optimizer states).
Prints the loss of every step on rank 0 and, with --losses FILE, writes them as JSON. With NCCL,
NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
TEXT = HERE.parent / "demo" / "data" / "pride_and_prejudice.txt"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--losses", type=Path, help="write the per-step losses here (rank 0)")
    return ap.parse_args()


def setup(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return rank, world, dev


def base_model_dir(args, rank: int, world: int) -> str:
    """A random Llama-shaped model saved as a checkpoint (by rank 0, seen by every rank)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = os.path.join(tempfile.gettempdir(), f"nybble-fsdp-llama-{args.hidden}x{args.layers}")
    if rank == 0 and not os.path.isfile(os.path.join(path, "config.json")):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                             num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                             num_key_value_heads=max(1, args.hidden // 128), max_position_embeddings=args.seq)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    if world > 1:
        dist.barrier()
    return path


def build(args, path: str, dev: torch.device, world: int):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.bfloat16,
                                                 device_map={"": dev})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(1)  # the same adapters on every rank
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    for p in model.parameters():  # one dtype per FSDP group: the adapters in bf16 like the base
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(dev.type, (world,))
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def batches(args, dev: torch.device):
    data = torch.tensor(list(TEXT.read_bytes()[: 1 << 20]), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    while True:
        starts = torch.randint(0, data.numel() - args.seq - 1, (args.batch,), generator=g)
        yield torch.stack([data[s: s + args.seq] for s in starts.tolist()]).to(dev)


def main() -> int:
    args = parse_args()
    rank, world, dev = setup(args.device)
    import bitsandbytes as bnb  # nybble's drop-in

    model = build(args, base_model_dir(args, rank, world), dev, world)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.PagedAdamW8bit(trainable, lr=args.lr)
    data = batches(args, dev)
    losses = []
    for step in range(args.steps):
        tokens = next(data)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach().item())
        if rank == 0:
            print(f"step {step + 1:3d}  loss {losses[-1]:.4f}", flush=True)
    if rank == 0:
        local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if not p.requires_grad]
        base = sum(t.numel() * t.element_size() for t in local)
        print(f"world {world}: frozen base parameters {base / 2**20:.1f} MiB on this rank")
        if args.losses:
            args.losses.write_text(json.dumps({"world": world, "losses": losses, "base_bytes_rank0": base}))
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
