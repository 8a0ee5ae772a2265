#!/usr/bin/env python3
"""QLoRA training step and batch-1 decode: nybble against bitsandbytes 0.50.2 and a bf16 base.

Usage (from the repository root, on the GPU machine):
    python3 bench/run_qlora_bench.py                  # writes docs/benchmarks/qlora.md and qlora.json
    python3 bench/run_qlora_bench.py --out-dir DIR    # writes them to DIR instead
    python3 bench/run_qlora_bench.py --quick --device cpu --out-dir /tmp/q   # tiny model, a smoke test
    python3 bench/run_qlora_bench.py --from-json docs/benchmarks/qlora.json  # re-render only
    python3 bench/run_qlora_bench.py --parts train --rounds 3 --name qlora-train  # the step only, each lib
                                       # 3 times in turn (the H200 machine's host speed drifts by up to 40 %)

The model: a Llama-shaped causal LM built from a transformers LlamaConfig (TinyLlama-1.1B's shape:
hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 KV heads, vocab 32000; --quick: hidden 256,
2 layers), random weights (seed 0), saved once per run as bf16 safetensors into a temporary folder
that every worker loads from. One worker subprocess per "lib" (the pattern of run_optim_bench.py):
  - nybble:    nybble's drop-in ``bitsandbytes`` (PYTHONPATH=python:python/compat);
  - reference: bitsandbytes 0.50.2 (NYBBLE_REFERENCE_DIR, default .ref/bnb-cuda on a GPU and
               .ref/bnb on the CPU);
  - bf16:      plain torch, no quantization: the unquantized base that QLoRA is measured against.
The two 4-bit libs load with BitsAndBytesConfig(load_in_4bit, NF4, double quant, bf16 compute).

1. Training step (the QLoRA recipe): 4-bit libs get peft's prepare_model_for_kbit_training (which
   also casts every parameter that is not 4-bit, norms, embeddings, lm_head, to fp32; --no-kbit-prepare
   skips it), then all libs get the same LoRA (r 16, alpha 32, dropout 0, on q, k, v, o, gate, up and
   down projections) and torch.optim.AdamW (lr 1e-4) on the LoRA parameters. Batch 4 x 512 random
   tokens, labels = inputs; a step is forward with loss, backward, optimizer step, zero_grad.
   Gradient checkpointing is off by default (--gradient-checkpointing turns it on for every lib), so
   the step times the 4-bit matmul's forward and backward, not a recomputation. Reported: median
   step time over the timed steps after warm-up (CUDA events), tokens/s, peak memory
   (torch.cuda.max_memory_allocated since before the first step, the weights included).
2. Decode at batch 1: model.generate(prompt, do_sample=False, cache_implementation="static") on the
   base model (no LoRA, no prepare). transformers 5.x compiles the decode step itself for a static
   cache (torch.compile, mode "reduce-overhead": CUDA graphs), but not for a bitsandbytes-quantized
   model (its quantizer says is_compileable = False). So that every lib runs the same way, the
   bench turns transformers' own compilation off (disable_compile=True) and does what it would do:
   the one-token decode calls go through torch.compile(model.forward, mode="reduce-overhead"), the
   prefill stays eager. If compiling fails, the failure is recorded and the lib is measured eager.
   Per-token time = (t(N) - t(N/2)) / (N - N/2), t(n) the median time of a generate of n new tokens:
   the difference removes the prefill and every per-call cost (cache allocation, CUDA-graph
   re-recording for the new cache's addresses). End-to-end tokens/s = N / t(N) is reported too.
Counts: 5 warm-up + 20 timed steps; decode N = 256 new tokens after a 32-token prompt, 3 generates
of N and of N/2. A full run on one H200 takes about 3-4 minutes, most of it torch.compile's warm-up.
Needs torch, transformers (>= 5), peft, accelerate and safetensors.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import ROOT, add_worker_arguments, git_commit, lib_env, log, run_worker, serve_worker

LIBS = ("nybble", "reference", "bf16")
SAVE = "save"  # the worker role that writes the random model
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# spec/performance.md: QLoRA step <= 0.8x the reference's and <= 1.15x the bf16-base LoRA step.
TARGET_VS_REF = 0.8
TARGET_VS_BF16 = 1.15
SHAPE_FULL = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
              "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000}
SHAPE_QUICK = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32000}


def make_config(args) -> dict:
    quick = args.quick
    return {"device": args.device, "quick": quick, "shape": SHAPE_QUICK if quick else SHAPE_FULL,
            "batch": 2 if quick else 4, "seq": 64 if quick else 512,
            "warmup": 1 if quick else 5, "steps": 3 if quick else 20,
            "gradient_checkpointing": args.gradient_checkpointing, "kbit_prepare": not args.no_kbit_prepare,
            "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": LORA_TARGETS},
            "lr": 1e-4, "parts": args.parts, "rounds": args.rounds,
            "host_profile": str(args.host_profile.resolve()) if args.host_profile else None,
            "decode": {"prompt": 8 if quick else 32, "new_tokens": 16 if quick else 256,
                       "reps": 3,
                       "mode": args.decode_mode or ("graph" if args.device == "cuda" else "eager")}}


# ------------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------------

def save_model(cfg: dict) -> dict:
    """Builds the random model in bf16 on the device (seed 0) and saves it to cfg["model_dir"]."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    t = time.perf_counter()
    torch.manual_seed(0)
    # No end-of-sequence token: a random model would otherwise stop generate early at random.
    config = LlamaConfig(**cfg["shape"], max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=None, pad_token_id=0)
    with torch.device(cfg["device"]):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(cfg["model_dir"])
    params = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in LORA_TARGETS)
    log(f"  saved a {params / 1e9:.3f} B parameter model in {time.perf_counter() - t:.1f} s")
    return {"info": {"lib": SAVE, "params": params, "quantized_params": linear,
                     "seconds": time.perf_counter() - t}, "rows": {}}


def load_model(lib: str, cfg: dict):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.bfloat16, "device_map": cfg["device"]}
    if lib != "bf16":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(cfg["model_dir"], **kwargs)


def device_timer(device: str):
    """(start, stop): stop() returns the seconds since start(), the device's work included."""
    import torch

    if device != "cuda":
        box = []
        return (lambda: box.append(time.perf_counter())), (lambda: time.perf_counter() - box.pop())
    events = []

    def start():
        events.append(torch.cuda.Event(enable_timing=True))
        events[-1].record()

    def stop():
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return events.pop().elapsed_time(end) / 1e3

    return start, stop


def memory_now(device: str) -> int | None:
    import torch

    return torch.cuda.memory_allocated() if device == "cuda" else None


def train(lib: str, cfg: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    device, gc = cfg["device"], cfg["gradient_checkpointing"]
    t = time.perf_counter()
    model = load_model(lib, cfg)
    row = {"load_s": time.perf_counter() - t, "memory_after_load": memory_now(device)}
    gc_kwargs = {"use_reentrant": False}
    if lib != "bf16" and cfg["kbit_prepare"]:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    row["4bit_layers"] = sum(type(getattr(m, "weight", None)).__name__ == "Params4bit" for m in model.modules())
    row["lm_head_dtype"] = str(model.get_output_embeddings().weight.dtype).replace("torch.", "")
    model = get_peft_model(model, LoraConfig(bias="none", task_type="CAUSAL_LM", **cfg["lora"]))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    row["trainable_params"] = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=cfg["lr"])
    gen = torch.Generator(device=device).manual_seed(1)
    tokens = torch.randint(0, cfg["shape"]["vocab_size"], (cfg["batch"], cfg["seq"]), device=device,
                           generator=gen)
    losses = []

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(cfg["warmup"]):
        step()
    start, stop = device_timer(device)
    times = []
    for _ in range(cfg["steps"]):
        start()
        step()
        times.append(stop())
    step_s = statistics.median(times)
    if device == "cuda":
        # The GPU's own time per step (its kernels and copies, profiled over 2 more steps): a step much
        # longer than this waits on the host (Python, launches), not on the GPU.
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if cfg["host_profile"] else [])
        with profile(activities=activities) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        gpu = [e for e in prof.events() if e.device_type == DeviceType.CUDA]  # each kernel or copy once
        row["gpu_busy_s"] = sum(e.device_time_total for e in gpu) / 2e6  # us over 2 steps
        if cfg["host_profile"]:  # where the host's time goes (the CPU-side events, 2 steps)
            out = Path(cfg["host_profile"]) / f"{lib}-train-host.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=60, max_name_column_width=70))
    row.update({"step_s": step_s, "step_min_s": min(times), "step_max_s": max(times),
                "tokens_per_s": cfg["batch"] * cfg["seq"] / step_s,
                "peak_memory": torch.cuda.max_memory_allocated() if device == "cuda" else None,
                "loss_first": float(losses[0]), "loss_last": float(losses[-1])})
    log(f"  {lib} train: {step_s * 1e3:.1f} ms/step, loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}")
    return row


def compile_decode_step(model):
    """Routes the one-token (decode) calls of model.forward through torch.compile's CUDA-graph
    mode; the prefill stays eager, as in transformers' own generate-time compilation."""
    import torch

    eager = model.forward
    compiled = torch.compile(eager, mode="reduce-overhead")

    @functools.wraps(eager)  # generate reads forward's signature (attention_mask, logits_to_keep, ...)
    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        return compiled(*args, **kwargs) if ids is not None and ids.shape[-1] == 1 else eager(*args, **kwargs)

    model.forward = forward
    return eager


def decode(lib: str, cfg: dict) -> dict:
    import torch
    from torch._dynamo.utils import counters

    device, dc = cfg["device"], cfg["decode"]
    model = load_model(lib, cfg)
    model.eval()
    gen = torch.Generator(device=device).manual_seed(2)
    prompt = torch.randint(3, cfg["shape"]["vocab_size"], (1, dc["prompt"]), device=device, generator=gen)
    long_n, short_n = dc["new_tokens"], dc["new_tokens"] // 2
    start, stop = device_timer(device)

    def generate(n: int) -> float:
        start()
        out = model.generate(prompt, max_new_tokens=n, do_sample=False, cache_implementation="static",
                             disable_compile=True, pad_token_id=0)
        seconds = stop()
        if out.shape[1] != dc["prompt"] + n:
            raise RuntimeError(f"generate made {out.shape[1] - dc['prompt']} tokens, not {n}")
        return seconds

    row = {"mode": dc["mode"]}
    if dc["mode"] == "graph":
        counters.clear()
        eager = compile_decode_step(model)
        try:
            t = time.perf_counter()
            generate(long_n), generate(short_n)  # compiles, warms up and records the CUDA graphs
            row["warmup_s"] = time.perf_counter() - t
            row["graph_breaks"] = sum(counters["graph_break"].values())
            row["graph_break_reasons"] = [k[:160] for k in list(counters["graph_break"])[:3]]
            row["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
        except Exception as e:  # noqa: BLE001 - recorded, then measured eager
            row["compile_error"] = f"{type(e).__name__}: {e}"[:600]
            row["mode"] = "eager (compile failed)"
            log(f"  {lib} decode: compile failed, measuring eager: {row['compile_error'][:200]}")
            model.forward = eager
            torch._dynamo.reset()
    if row["mode"] != "graph":
        generate(short_n)  # warm-up
    t_long = statistics.median(generate(long_n) for _ in range(dc["reps"]))
    t_short = statistics.median(generate(short_n) for _ in range(dc["reps"]))
    per_token = (t_long - t_short) / (long_n - short_n)
    if per_token <= 0:  # noise larger than the decode time of N/2 tokens (a loaded CPU, --quick)
        per_token = None
    row.update({"s_per_token": per_token, "tokens_per_s": per_token and 1 / per_token, "generate_s": t_long,
                "generate_half_s": t_short, "end_to_end_tokens_per_s": long_n / t_long})
    log(f"  {lib} decode ({row['mode']}): {fmt(per_token, ' ms/token', 1e3, 2)}")
    return row


def worker(lib: str, cfg: dict) -> dict:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if lib == SAVE:
        return save_model(cfg)
    import peft

    info = {"lib": lib, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}
    if cfg["device"] == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    if lib != "bf16":
        import bitsandbytes

        info["version"] = bitsandbytes.__version__
        info["path"] = str(Path(bitsandbytes.__file__).resolve().parent)
    rows = {}
    for part, fn in ((part, {"train": train, "decode": decode}[part]) for part in cfg["parts"]):
        try:
            rows[part] = fn(lib, cfg)
        except Exception as e:  # noqa: BLE001 - one part failing leaves the other to run
            rows[part] = {"error": f"{type(e).__name__}: {e}"[:600]}
            log(f"  {lib} {part} failed:\n{traceback.format_exc()}")
        if cfg["device"] == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return {"info": info, "rows": rows}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def fmt(value, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
    return "—" if value is None else f"{value * scale:,.{digits}f}{unit}"


def render(data: dict, name: str) -> str:
    cfg, res, model = data["config"], data["results"], data.get("model", {})
    shape, dc = cfg["shape"], cfg["decode"]
    first = next((r["info"] for r in res.values() if "torch" in r["info"]), {})
    versions = ", ".join(f"{lib} {r['info']['version']}" for lib, r in res.items() if "version" in r["info"])
    options = (("--quick", cfg["quick"]), ("--libs " + " ".join(res), list(res) != list(LIBS)),
               ("--gradient-checkpointing", cfg["gradient_checkpointing"]),
               ("--no-kbit-prepare", not cfg["kbit_prepare"]),
               ("--parts " + " ".join(cfg.get("parts", ())), cfg.get("parts", PARTS) != PARTS),
               (f"--rounds {cfg.get('rounds', 1)}", cfg.get("rounds", 1) > 1))
    flags = "".join(f" {flag}" for flag, on in options if on)
    errors = []

    def cell(row: dict, key: str, text) -> str:
        """text for a measured row; for a failed part a footnote mark."""
        if "error" not in row:
            return text if row.get(key) is not None else "—"
        if row["error"] not in errors:
            errors.append(row["error"])
        return f"failed [{errors.index(row['error']) + 1}]"

    def round_times(row: dict, key: str) -> str:
        """A lib's times in every round (with --rounds), e.g. " (rounds: 146.0, 151.2, 160.3 ms)"."""
        times = row.get("rounds") or []
        return "" if len(times) < 2 else " (rounds: " + ", ".join(f"{t * 1e3:.1f}" for t in times) + " ms)"

    def quotient(a, b):
        return a / b if a and b else None

    gc = "on" if cfg["gradient_checkpointing"] else "off"
    prep = (f"prepare_model_for_kbit_training(use_gradient_checkpointing={cfg['gradient_checkpointing']}) "
            "for the 4-bit libs (it casts the non-4-bit parameters, norms, embeddings and lm_head, to fp32)"
            if cfg["kbit_prepare"] else "no prepare_model_for_kbit_training")
    lines = [
        "# QLoRA training step and batch-1 decode: nybble, bitsandbytes 0.50.2 and a bf16 base", "",
        (f"Generated by `python3 bench/run_qlora_bench.py --device {cfg['device']}{flags}` on {data['date']} "
        f"at commit {data['commit']}; {first.get('gpu', cfg['device'].upper())}, torch {first.get('torch')}, "
        f"transformers {first.get('transformers')}, peft {first.get('peft')}; {versions}. "
        f"Raw results: [{name}.json]({name}.json)."), "",
        (f"Model: Llama-shaped, hidden {shape['hidden_size']}, intermediate {shape['intermediate_size']}, "
        f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']} heads, "
        f"{shape['num_key_value_heads']} KV heads, vocab {shape['vocab_size']}, untied embeddings: "
        f"{fmt(model.get('params'), ' M', 1e-6)} parameters ({fmt(model.get('quantized_params'), ' M', 1e-6)} "
        "in the projections that the 4-bit libs quantize), random weights (seed 0) saved once as bf16 "
        "safetensors. 4-bit libs: NF4, double quantization, bf16 compute; bf16: the same weights unquantized.")]
    parts = cfg.get("parts", PARTS)
    rounds = ("" if cfg.get("rounds", 1) == 1 else
              f" Every lib ran {cfg['rounds']} times, the libs in turn (a slow spell of the host hits them all); "
              "each row is the lib's median round, every round's time beside its name.")
    if "train" in parts:
        lines += ["",
            (f"**Training step**: {prep}; LoRA r {cfg['lora']['r']}, alpha {cfg['lora']['lora_alpha']}, dropout "
            f"{cfg['lora']['lora_dropout']} on {', '.join(cfg['lora']['target_modules'])}; torch AdamW (lr "
            f"{cfg['lr']}) on the LoRA parameters; batch {cfg['batch']} × {cfg['seq']} random tokens, labels = "
            f"inputs; gradient checkpointing {gc}. Step = forward with loss + backward + optimizer step; median of "
            f"{cfg['steps']} steps after {cfg['warmup']} warm-up. Peak memory: max_memory_allocated over "
            "the steps, weights included. GPU busy: the GPU's kernel and copy time per step (torch.profiler, 2 "
            "more steps); the rest of a step is the host's. The ratios below: nybble's step time over theirs "
            "(lower is better)." + rounds), "",
            ("| lib | step | GPU busy | tokens/s | peak memory | after load | 4-bit layers | lm_head | trainable "
             "| loss first → last | load |"),
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|"]
        train_rows = {lib: r["rows"].get("train", {"error": r["info"].get("failed", "not run")})
                      for lib, r in res.items()}
        for lib, row in train_rows.items():
            loss = f"{row['loss_first']:.3f} → {row['loss_last']:.3f}" if "loss_first" in row else ""
            lines.append(
                f"| {lib}{round_times(row, 'step_s')} | {cell(row, 'step_s', fmt(row.get('step_s'), ' ms', 1e3))} | "
                f"{cell(row, 'gpu_busy_s', fmt(row.get('gpu_busy_s'), ' ms', 1e3))} | "
                f"{cell(row, 'tokens_per_s', fmt(row.get('tokens_per_s'), '', 1, 0))} | "
                f"{cell(row, 'peak_memory', fmt(row.get('peak_memory'), ' GiB', 2**-30, 2))} | "
                f"{cell(row, 'memory_after_load', fmt(row.get('memory_after_load'), ' GiB', 2**-30, 2))} | "
                f"{cell(row, '4bit_layers', str(row.get('4bit_layers')))} | "
                f"{cell(row, 'lm_head_dtype', row.get('lm_head_dtype'))} | "
                f"{cell(row, 'trainable_params', fmt(row.get('trainable_params'), ' M', 1e-6, 2))} | "
                f"{cell(row, 'loss_first', loss)} | "
                f"{cell(row, 'load_s', fmt(row.get('load_s'), ' s'))} |")
        ours = train_rows.get("nybble", {}).get("step_s")
        lines += ["", "| nybble step ÷ | ratio | target |", "|---|---:|---|"]
        for what, lib, target in (("reference step", "reference", TARGET_VS_REF),
                                  ("bf16-base step", "bf16", TARGET_VS_BF16)):
            value = quotient(ours, train_rows.get(lib, {}).get("step_s"))
            verdict = "—" if value is None else ("met" if value <= target else "**not met**")
            lines.append(f"| {what} | {fmt(value, '×', 1, 2)} | ≤ {target}×: {verdict} |")
    if "decode" in parts:
        lines += [
            "", (f"**Decode, batch 1** (base model, no LoRA): generate of N = {dc['new_tokens']} new tokens after a "
            f"{dc['prompt']}-token random prompt, greedy, static cache. Mode graph: the decode step compiled with "
            "torch.compile(mode=\"reduce-overhead\") (CUDA graphs), the prefill eager (transformers' own "
            "generate-time compilation, turned off so that all libs run the same way; transformers does not "
            "apply it to bitsandbytes models). Decode time per token = (t(N) − t(N/2)) / (N/2), medians of "
            f"{dc['reps']} generates each: prefill and per-call costs cancel. End to end = N / t(N), prefill "
            "and per-call costs included. Graph breaks and CUDA-graph skips: torch.compile's counters over the "
            "warm-up generates (mode graph). × = nybble's tokens/s over theirs (higher is better)."), "",
            "| lib | mode | ms/token | tokens/s | end-to-end tokens/s | graph breaks / CUDA-graph skips | nybble × |",
            "|---|---|---:|---:|---:|---:|---:|"]
        dec_rows = {lib: r["rows"].get("decode", {"error": r["info"].get("failed", "not run")})
                    for lib, r in res.items()}
        ours = dec_rows.get("nybble", {}).get("tokens_per_s")
        for lib, row in dec_rows.items():
            if "compile_error" in row and row["compile_error"] not in errors:
                errors.append(row["compile_error"])
            breaks = f"{row.get('graph_breaks')} / {row.get('cudagraph_skips')}"
            mode = row.get("mode", "—")
            if "compile_error" in row:
                mode += f" [{errors.index(row['compile_error']) + 1}]"
            lines.append(
                f"| {lib}{round_times(row, 's_per_token')} | {cell(row, 'mode', mode)} | "
                f"{cell(row, 's_per_token', fmt(row.get('s_per_token'), '', 1e3, 2))} | "
                f"{cell(row, 'tokens_per_s', fmt(row.get('tokens_per_s'), '', 1, 0))} | "
                f"{cell(row, 'end_to_end_tokens_per_s', fmt(row.get('end_to_end_tokens_per_s'), '', 1, 0))} | "
                f"{cell(row, 'graph_breaks', breaks)} | "
                f"{'—' if lib == 'nybble' else fmt(quotient(ours, row.get('tokens_per_s')), '×', 1, 2)} |")
    lines += [""] + [f"[{i + 1}] {e}" for i, e in enumerate(errors)]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------

# Per part, the quantity whose median round is reported.
ROUND_KEYS = {"train": "step_s", "decode": "s_per_token"}
PARTS = list(ROUND_KEYS)


def median_round(results: list) -> dict:
    """One lib's rounds as one result: per part, the row of the round with the median time (the
    lower middle one for an even count), and every round's time beside it."""
    merged = {"info": results[0]["info"], "rows": {}}
    for part, key in ROUND_KEYS.items():
        rows = [r["rows"][part] for r in results if r["rows"].get(part, {}).get(key) is not None]
        if not rows:
            failed = next((r["rows"][part] for r in results if part in r["rows"]), None)
            if failed is not None:
                merged["rows"][part] = failed
            continue
        rows.sort(key=lambda row: row[key])
        merged["rows"][part] = dict(rows[(len(rows) - 1) // 2], rounds=[row[key] for row in rows])
    return merged


def run_all(args) -> dict:
    cfg = make_config(args)
    reference = ROOT / ".ref" / ("bnb-cuda" if args.device == "cuda" else "bnb")
    model_dir = Path(tempfile.mkdtemp(prefix="nybble-qlora-"))
    cfg["model_dir"] = str(model_dir)
    data = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(), "config": cfg, "results": {}}
    try:
        saved = run_worker(__file__, SAVE, cfg, lib_env("bf16", reference))
        data["model"] = saved["info"]
        rounds = {lib: [] for lib in args.libs}
        for _ in range(cfg["rounds"]):  # the libs in turn, so that a slow spell of the host hits all of them
            for lib in args.libs:
                if "failed" in saved["info"]:
                    rounds[lib].append({"info": {"lib": lib, "failed": "the model was not saved"}, "rows": {}})
                    continue
                t = time.perf_counter()
                result = run_worker(__file__, lib, cfg, lib_env(lib, reference))
                result["info"]["worker_s"] = time.perf_counter() - t
                if "failed" in result["info"]:
                    log(f"{lib}: {result['info']['failed']}")
                rounds[lib].append(result)
        data["results"] = {lib: median_round(results) for lib, results in rounds.items()}
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    del cfg["model_dir"]
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--quick", action="store_true", help="a tiny model and few steps: a smoke test")
    ap.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS))
    ap.add_argument("--gradient-checkpointing", action="store_true", help="for every lib (default off)")
    ap.add_argument("--no-kbit-prepare", action="store_true",
                    help="skip prepare_model_for_kbit_training (keeps norms, embeddings, lm_head in bf16)")
    ap.add_argument("--decode-mode", choices=["graph", "eager"],
                    help="graph: the decode step compiled with CUDA graphs (default on cuda); eager (default on cpu)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                    help="what to measure (default both)")
    ap.add_argument("--host-profile", type=Path, metavar="DIR",
                    help="on cuda: also profile the host over the 2 profiled training steps, tables into DIR")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every lib this many times, in turn, and report each one's median round")
    ap.add_argument("--name", default="qlora", help="the results' file names: NAME.md and NAME.json")
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--from-json", type=Path)
    add_worker_arguments(ap, (SAVE,) + LIBS)
    args = ap.parse_args()
    if serve_worker(args, worker):
        return 0
    out_dir = args.out_dir or (Path(tempfile.mkdtemp()) if args.quick else ROOT / "docs" / "benchmarks")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        t = time.perf_counter()
        data = run_all(args)
        data["wall_s"] = time.perf_counter() - t
        (out_dir / f"{args.name}.json").write_text(json.dumps(data, indent=1))
    md = render(data, args.name)
    (out_dir / f"{args.name}.md").write_text(md)
    print(md, end="")
    log(f"wrote {out_dir / args.name}.md" + ("" if args.from_json else " and .json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
