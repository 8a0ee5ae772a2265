"""nybble's layers and optimizers under PyTorch FSDP2 (``fully_shard``), on the CPU: two processes
with the gloo backend, each a rank of a 1-D device mesh. Every check compares the sharded run with
the same computation in one process (bit for bit where the arithmetic is the same).

The GPU run (NCCL, 2 GPUs, the QLoRA example) is separate; these are the single-machine checks CI
can run."""

import functools
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank, port, case, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # (spawned with the test's sys.path)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (WORLD,))
        torch.manual_seed(0)  # the same model and inputs on every rank
        fn = CASES[case]
        result = fn(mesh, rank, out_dir) if case == "checkpoint_resume" else fn(mesh, rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def run_sharded(case: str) -> list:
    """Runs CASES[case] on WORLD gloo ranks; returns each rank's result."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_run, args=(_free_port(), case, tmp), nprocs=WORLD, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]


# ---- the cases (run inside each rank) -----------------------------------------------------------


def linear4bit(mesh, rank, quant_storage):
    import bitsandbytes as bnb
    from torch.distributed.fsdp import fully_shard

    layer = torch.nn.Linear(256, 96)
    model = torch.nn.Sequential(bnb.nn.Linear4bit(256, 96, compute_dtype=torch.bfloat16, quant_type="nf4",
                                                  compress_statistics=True, quant_storage=quant_storage))
    model[0].load_state_dict(layer.state_dict())
    model = model.to("cpu")
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    want, packed = model(x), model[0].weight.detach().clone()
    fully_shard(model, mesh=mesh)
    local = model[0].weight.to_local().detach().clone()
    gathered = model[0].weight.full_tensor().detach()
    got = model(x)
    return {"want": want, "got": got, "packed": packed, "gathered": gathered, "local": local}


def mixed_precision(mesh, rank):
    """FSDP2 with MixedPrecisionPolicy(param_dtype=bf16) casts every floating-point parameter of
    another dtype, so an fp32-packed 4-bit weight reaches the layer converted to bf16 number by
    number; integer parameters (uint8 storage) and bf16 ones are gathered as they are."""
    import bitsandbytes as bnb
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    results = {}
    for storage in (torch.bfloat16, torch.uint8, torch.float32):
        layer = torch.nn.Linear(256, 96)
        model = torch.nn.Sequential(bnb.nn.Linear4bit(256, 96, compute_dtype=torch.bfloat16, quant_storage=storage))
        model[0].load_state_dict(layer.state_dict())
        model = model.to("cpu")
        x = torch.randn(5, 256, dtype=torch.bfloat16)
        want = model(x)
        fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16))
        try:
            results[str(storage)] = {"want": want, "got": model(x)}
        except RuntimeError as e:
            results[str(storage)] = {"error": str(e)}
    return results


def linear8bit(mesh, rank):
    import bitsandbytes as bnb
    from torch.distributed.fsdp import fully_shard

    layer = torch.nn.Linear(256, 96)
    model = torch.nn.Sequential(bnb.nn.Linear8bitLt(256, 96, has_fp16_weights=False, threshold=6.0))
    model[0].load_state_dict(layer.state_dict())
    model = model.to("cpu")
    x = torch.randn(5, 256)
    x[:, 3] = 8.0  # an outlier column
    want, codes = model(x), model[0].weight.detach().clone()
    fully_shard(model, mesh=mesh)
    gathered = model[0].weight.full_tensor().detach()
    return {"want": want, "got": model(x), "codes": codes, "gathered": gathered}


def qlora_grads(mesh, rank):
    import bitsandbytes as bnb
    from torch.distributed.fsdp import fully_shard

    base = torch.nn.Linear(256, 256)
    model = torch.nn.Sequential(
        bnb.nn.Linear4bit(256, 256, compute_dtype=torch.bfloat16, quant_storage=torch.bfloat16),
        torch.nn.Linear(256, 8).bfloat16(),
    )
    model[0].load_state_dict(base.state_dict())
    model = model.to("cpu").requires_grad_(False)
    model[1].requires_grad_(True)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    model(x).float().square().sum().backward()
    want = model[1].weight.grad.clone()
    model.zero_grad()
    fully_shard(model, mesh=mesh)
    model(x).float().square().sum().backward()
    return {"want": want, "got": model[1].weight.grad.full_tensor()}


def optimizer_on_shards(mesh, rank):
    import bitsandbytes as bnb
    from torch.distributed.fsdp import fully_shard

    results = {}
    for name in ("AdamW8bit", "AdamW", "Lion8bit"):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(300, 520), torch.nn.Linear(520, 7))
        fully_shard(model, mesh=mesh)
        opt = getattr(bnb.optim, name)(model.parameters(), lr=1e-2, min_8bit_size=0)
        # The same update of each local shard as an ordinary tensor in this process.
        shards = [torch.nn.Parameter(p.to_local().detach().clone()) for p in model.parameters()]
        twin = getattr(bnb.optim, name)(shards, lr=1e-2, min_8bit_size=0)
        for _ in range(3):
            model(torch.randn(4, 300)).square().sum().backward()
            for s, p in zip(shards, model.parameters()):
                s.grad = p.grad.to_local().clone()
            opt.step()
            twin.step()
            opt.zero_grad()
        results[name] = {
            "sharded": [p.to_local().detach().clone() for p in model.parameters()],
            "twin": [s.detach().clone() for s in shards],
            "state_shapes": [tuple(opt.state[p]["state1"].shape) for p in model.parameters()],
            "local_shapes": [tuple(p.to_local().shape) for p in model.parameters()],
        }
    return results


def checkpoint_resume(mesh, rank, out_dir):
    import bitsandbytes as bnb
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                           set_optimizer_state_dict)
    from torch.distributed.fsdp import fully_shard

    def build(name):
        torch.manual_seed(2)
        model = torch.nn.Sequential(torch.nn.Linear(300, 520), torch.nn.Linear(520, 7))
        fully_shard(model, mesh=mesh)
        return model, getattr(bnb.optim, name)(model.parameters(), lr=1e-2, min_8bit_size=0)

    def train(model, opt, seed, steps):
        torch.manual_seed(seed)
        for _ in range(steps):
            model(torch.randn(4, 300)).square().sum().backward()
            opt.step()
            opt.zero_grad()

    results = {}
    for name in ("AdamW8bit", "AdEMAMix8bit"):
        for full in (False, True):
            model, opt = build(name)
            train(model, opt, 3, 2)
            options = StateDictOptions(full_state_dict=full)
            path = str(Path(out_dir) / f"ckpt-{name}-{full}")
            dcp.save({"optim": get_optimizer_state_dict(model, opt, options=options)}, checkpoint_id=path)
            # A fresh run with the trained weights and the checkpoint's optimizer states.
            again, opt2 = build(name)
            again.load_state_dict(model.state_dict())
            target = {"optim": get_optimizer_state_dict(again, opt2, options=options)}
            dcp.load(target, checkpoint_id=path)
            set_optimizer_state_dict(again, opt2, target["optim"], options=options)
            train(model, opt, 4, 2)
            train(again, opt2, 4, 2)
            results[f"{name}/{'full' if full else 'sharded'}"] = (
                [p.to_local().detach().clone() for p in model.parameters()],
                [p.to_local().detach().clone() for p in again.parameters()])
    return results


def integer_parameter(mesh, rank):
    """Whether fully_shard takes a module with a uint8 parameter (frozen)."""
    from torch.distributed.fsdp import fully_shard

    module = torch.nn.Linear(4, 8)
    module.codes = torch.nn.Parameter(torch.zeros(8, 4, dtype=torch.uint8), requires_grad=False)
    try:
        fully_shard(module, mesh=mesh)
    except RuntimeError as e:
        if "only Tensors of floating point dtype can require gradients" not in str(e):
            raise
        return {"ok": False}
    return {"ok": True}


CASES = {
    "integer_parameter": integer_parameter,
    "linear4bit_bf16": lambda mesh, rank: linear4bit(mesh, rank, torch.bfloat16),
    "linear4bit_uint8": lambda mesh, rank: linear4bit(mesh, rank, torch.uint8),
    "mixed_precision": mixed_precision,
    "linear8bit": linear8bit,
    "qlora_grads": qlora_grads,
    "optimizer_on_shards": optimizer_on_shards,
    "checkpoint_resume": checkpoint_resume,
}


# ---- the tests ----------------------------------------------------------------------------------


@functools.cache
def _shards_integer_parameters() -> bool:
    return all(r["ok"] for r in run_sharded("integer_parameter"))


def _require_integer_parameters() -> None:
    """Skips where this torch's FSDP2 cannot shard an integer parameter at all: torch 2.11 wraps each
    shard in an nn.Parameter that requires grad, which an integer tensor cannot (torch 2.15 keeps
    the parameter's requires_grad). Packed 4-bit weights in uint8 storage and int8 codes need it."""
    if not _shards_integer_parameters():
        pytest.skip(f"torch {torch.__version__}'s fully_shard cannot shard an integer parameter "
                    "(RuntimeError: only Tensors of floating point dtype can require gradients)")


@pytest.mark.parametrize("storage", ["bf16", "uint8"])
def test_linear4bit_shards_gather_every_byte_and_compute_the_same(storage):
    if storage == "uint8":
        _require_integer_parameters()
    results = run_sharded(f"linear4bit_{storage}")
    for r in results:
        assert torch.equal(r["gathered"].view(torch.uint8), r["packed"].view(torch.uint8))
        assert torch.equal(r["got"], r["want"])
    # The shards are disjoint pieces of the packed bytes, together all of them.
    joined = torch.cat([r["local"].view(torch.uint8).reshape(-1) for r in results])
    assert torch.equal(joined, results[0]["packed"].view(torch.uint8).reshape(-1))


def test_mixed_precision_converting_packed_bytes_is_a_clear_error():
    # bf16 and uint8 storage reach the layer untouched under a bf16 param_dtype; fp32 storage would
    # be converted value by value into garbage weights: nybble refuses, naming the fix.
    _require_integer_parameters()
    for r in run_sharded("mixed_precision"):
        for storage in ("torch.bfloat16", "torch.uint8"):
            assert torch.equal(r[storage]["got"], r[storage]["want"]), storage
        message = r["torch.float32"].get("error", "")
        assert "quant_storage=torch.float32" in message and "quant_storage=torch.bfloat16" in message, message


def test_linear8bitlt_shards_gather_its_codes_and_compute_the_same():
    # The all-gathered weight is a plain int8 tensor; the layer keeps its row scales (the reference
    # multiplies the int8 codes as floats here: silently wrong outputs).
    _require_integer_parameters()
    for r in run_sharded("linear8bit"):
        assert r["codes"].dtype == torch.int8 and torch.equal(r["gathered"], r["codes"])
        assert torch.equal(r["got"], r["want"])


def test_qlora_gradients_match_the_single_process_run():
    for r in run_sharded("qlora_grads"):
        torch.testing.assert_close(r["got"], r["want"], rtol=0, atol=0)


def test_optimizers_update_each_shard_as_its_own_tensor():
    for r in run_sharded("optimizer_on_shards"):
        for name, res in r.items():
            assert res["state_shapes"] == res["local_shapes"], name  # states per shard
            for got, want in zip(res["sharded"], res["twin"]):
                assert torch.equal(got, want), name


def test_8bit_optimizer_checkpoint_resumes_with_identical_steps():
    # torch.distributed.checkpoint, sharded and full state dicts: a run resumed from the checkpoint
    # takes the same next steps as the run that wrote it (the states are DTensors in the state
    # dict, absmax padded per rank: optimizer.py, Note [Sharded states]).
    for r in run_sharded("checkpoint_resume"):
        for key, (original, resumed) in r.items():
            for a, b in zip(original, resumed):
                assert torch.equal(a, b), key


def test_the_fsdp_qlora_example_trains_like_one_process(tmp_path):
    # examples/fsdp_qlora.py (transformers' BitsAndBytesConfig, peft LoRA, PagedAdamW8bit,
    # fully_shard per decoder layer) with torchrun on 2 gloo ranks against one process: the same
    # losses within bf16 tolerance, and each rank holds half of the frozen 4-bit base. Both runs
    # save a torch.distributed.checkpoint after step 2 (adapters, 8-bit optimizer states) and, from
    # it, a fresh model and optimizer take steps 3 and 4 again with the same losses, bit for bit.
    import subprocess

    root = Path(__file__).resolve().parents[2]
    small = ["--device", "cpu", "--steps", "4", "--resume-at", "2", "--hidden", "128", "--layers", "2", "--seq", "64"]
    # The subprocesses import nybble and its drop-in from where this test does.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), PYTHONWARNINGS="ignore")
    example = str(root / "examples" / "fsdp_qlora.py")
    subprocess.run([sys.executable, example, *small, "--losses", str(tmp_path / "one.json")], env=env, check=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(_free_port()), example, *small, "--losses", str(tmp_path / "two.json")],
                   env=env, check=True)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["world"] == 2 and len(two["losses"]) == len(one["losses"]) == 4
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=2e-2, atol=0)
    assert two["base_bytes_rank0"] <= 0.55 * one["base_bytes_rank0"]
    for run in (one, two):
        assert run["resume_identical"] and run["resumed_losses"] == run["losses"][2:], run
