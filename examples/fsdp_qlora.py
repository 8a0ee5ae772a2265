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
Prints the loss of every step on rank 0 and, with --losses FILE, writes them as JSON (on CUDA with
rank 0's peak of allocated memory from building the model to the last step). With NCCL, NVLink
multicast stays off (NCCL_NVLS_ENABLE=0).

With --resume-at K the run also checks that a checkpoint resumes exactly: after step K it saves the
adapters and the optimizer states with torch.distributed.checkpoint (each rank its shards), and
after the last step a fresh model and optimizer load that checkpoint and take steps K+1.. again on
the same batches; their losses must equal the first run's bit for bit (else the exit status is 1).

    python3 examples/fsdp_qlora.py --device cpu --steps 4 --resume-at 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                       get_optimizer_state_dict, set_model_state_dict,
                                                       set_optimizer_state_dict)

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
    ap.add_argument("--resume-at", type=int, default=0, metavar="K",
                    help="save a checkpoint after step K and check that resuming from it repeats steps K+1.. exactly")
    args = ap.parse_args()
    if not 0 <= args.resume_at < args.steps:
        ap.error(f"--resume-at {args.resume_at}: needs 0 (off) or a step before the last (--steps {args.steps})")
    return args


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


def start(args, path: str, dev: torch.device, world: int):
    """The model and its optimizer as a run starts them."""
    import bitsandbytes as bnb  # nybble's drop-in

    model = build(args, path, dev, world)
    return model, bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=args.lr)


def batches(args, dev: torch.device):
    data = torch.tensor(list(TEXT.read_bytes()[: 1 << 20]), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    while True:
        starts = torch.randint(0, data.numel() - args.seq - 1, (args.batch,), generator=g)
        yield torch.stack([data[s: s + args.seq] for s in starts.tolist()]).to(dev)


def train(model, opt, data, steps: range, rank: int, label: str = "step") -> list[float]:
    """Steps ``steps`` (numbered from 1), one batch of ``data`` each; returns their losses."""
    losses = []
    for step in steps:
        tokens = next(data)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach().item())
        if rank == 0:
            print(f"{label} {step:3d}  loss {losses[-1]:.4f}", flush=True)
    return losses


# The checkpoint holds what training changes: the adapters and the optimizer, not the frozen base
# (so loading it leaves the base's parameters missing: strict=False).
CHECKPOINT = StateDictOptions(ignore_frozen_params=True, strict=False)


def training_state(model, opt) -> dict:
    """The adapters and optimizer states of this rank, as the checkpoint stores them."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # ignore_frozen_params leaves out frozen parameters but not what the 4-bit layers add to a state
    # dict besides their weight (weight.absmax, weight.quant_map, ...): the base's too.
    weights = get_model_state_dict(model, options=CHECKPOINT)
    return {"model": {k: v for k, v in weights.items() if k in trainable},
            "optim": get_optimizer_state_dict(model, opt, options=CHECKPOINT)}


def checkpoint_dir(rank: int, world: int) -> str:
    """A new directory, the same on every rank (rank 0 makes it), for each rank's part of a checkpoint."""
    path = [tempfile.mkdtemp(prefix="nybble-fsdp-ckpt-") if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(path, src=0)
    return path[0]


def resume(args, path: str, dev: torch.device, rank: int, world: int, ckpt: str) -> list[float]:
    """Steps K+1.. (K = --resume-at) of a fresh model and optimizer that load the checkpoint written
    after step K, on the batches of those steps; returns their losses."""
    model, opt = start(args, path, dev, world)
    state = training_state(model, opt)
    dcp.load(state, checkpoint_id=ckpt)
    set_model_state_dict(model, state["model"], options=CHECKPOINT)
    set_optimizer_state_dict(model, opt, state["optim"], options=CHECKPOINT)
    data = islice(batches(args, dev), args.resume_at, None)
    return train(model, opt, data, range(args.resume_at + 1, args.steps + 1), rank, label="resumed")


def frozen_bytes(model) -> int:
    """The bytes of the frozen base's parameters on this rank (its shards under FSDP)."""
    local = (p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if not p.requires_grad)
    return sum(t.numel() * t.element_size() for t in local)


def main() -> int:
    args = parse_args()
    rank, world, dev = setup(args.device)
    path = base_model_dir(args, rank, world)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    model, opt = start(args, path, dev, world)
    data = batches(args, dev)
    saved_at = args.resume_at or args.steps
    losses = train(model, opt, data, range(1, saved_at + 1), rank)
    if args.resume_at:
        ckpt = checkpoint_dir(rank, world)
        dcp.save(training_state(model, opt), checkpoint_id=ckpt)
    losses += train(model, opt, data, range(saved_at + 1, args.steps + 1), rank)
    result = {"world": world, "losses": losses, "base_bytes_rank0": frozen_bytes(model)}
    if rank == 0:
        print(f"world {world}: frozen base parameters {result['base_bytes_rank0'] / 2**20:.1f} MiB on this rank")
    if dev.type == "cuda":
        result["peak_mem_bytes_rank0"] = torch.cuda.max_memory_allocated(dev)
        if rank == 0:
            print(f"world {world}: peak allocated memory {result['peak_mem_bytes_rank0'] / 2**20:.1f} MiB on this rank")
    del model, opt

    identical = True
    if args.resume_at:
        resumed = resume(args, path, dev, rank, world, ckpt)
        original = losses[args.resume_at:]
        identical = resumed == original  # bit for bit
        result.update(resumed_losses=resumed, resume_identical=identical)
        if rank == 0:
            worst = max(abs(a - b) for a, b in zip(resumed, original))
            verdict = "identical" if identical else f"differ by up to {worst:.3g}"
            print(f"resume at step {args.resume_at}: steps {args.resume_at + 1}..{args.steps} {verdict}", flush=True)
        if world > 1:
            dist.barrier()  # every rank has read the checkpoint
        if rank == 0:
            shutil.rmtree(ckpt)
    if rank == 0 and args.losses:
        args.losses.write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
