#!/usr/bin/env python3
"""The nybble demo: a real pretrained model through transformers + peft, quantized by nybble's
drop-in `bitsandbytes`, exactly as a bitsandbytes user would write it.

On the default model (SmolLM2-135M-Instruct, demo/default_model.py), on the GPU when there is one,
else the CPU:
  1. load it in full precision, int8 (LLM.int8), NF4, NF4 + double quant and FP4 through
     transformers' BitsAndBytesConfig; print each one's memory footprint, perplexity on a fixed
     slice of Pride and Prejudice and a generated sample;
  2. QLoRA: fine-tune LoRA adapters on the NF4 + double-quant model for a few dozen steps on
     Persuasion, printing the loss, save the adapter, reload it on a freshly loaded 4-bit base and
     show the perplexity on held-out Persuasion text before and after;
  3. write demo.png (loss curve, perplexity bars) and results.json beside the printed table.

Usage: python3 demo/demo.py [--quick] [--out DIR] [--device cpu|cuda]
       --quick: small token budget and few steps (what CI runs, ~1-2 min on 2 cores).
       --perplexity-only --json FILE: only the perplexity table (used to run the same measurement
       with the reference bitsandbytes 0.50.2 in a subprocess: --with-reference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import default_model  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "It is a truth universally acknowledged, that"


def settings(quick: bool) -> dict:
    if quick:
        return {"ctx": 128, "eval_tokens": 512, "steps": 8, "batch": 2, "train_ctx": 96, "new_tokens": 16}
    return {"ctx": 256, "eval_tokens": 4096, "steps": 40, "batch": 4, "train_ctx": 128, "new_tokens": 32}


def quant_configs():
    from transformers import BitsAndBytesConfig

    return {
        "full precision": None,
        "int8": BitsAndBytesConfig(load_in_8bit=True),
        "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
        "nf4 + double quant": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32),
        "fp4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float32),
    }


def load(path: Path, name: str, device: str):
    from transformers import AutoModelForCausalLM

    q = quant_configs()[name]
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=q, device_map=device, dtype=torch.float32)


def token_ids(tokenizer, file: str, start_frac: float, count: int) -> torch.Tensor:
    """`count` tokens of demo/data/`file` starting at `start_frac` of its characters."""
    text = (HERE / "data" / file).read_text(encoding="utf-8")
    text = text[int(len(text) * start_frac):]
    ids = tokenizer(text[: count * 8], return_tensors="pt").input_ids[0]
    if ids.numel() < count:
        raise RuntimeError(f"{file}: only {ids.numel()} tokens from {start_frac:.0%}, {count} needed")
    return ids[:count]


def perplexity(model, ids: torch.Tensor, ctx: int, desc: str) -> float:
    """exp(mean next-token loss) over non-overlapping windows of `ctx` tokens."""
    from tqdm import tqdm

    windows = ids[: ids.numel() // ctx * ctx].view(-1, ctx).to(model.device)
    total, count = 0.0, 0
    with torch.no_grad():
        for w in tqdm(windows, desc=desc, leave=False, file=sys.stderr):
            loss = model(w[None], labels=w[None]).loss
            total += float(loss) * (ctx - 1)
            count += ctx - 1
    return math.exp(total / count)


def sample(model, tokenizer, new_tokens: int) -> str:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().replace("\n", " ")


def measure_formats(path: Path, device: str, cfg: dict, with_samples: bool) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = token_ids(tokenizer, "pride_and_prejudice.txt", 0.1, cfg["eval_tokens"])
    rows = {}
    for name in quant_configs():
        t0 = time.perf_counter()
        model = load(path, name, device)
        load_s = time.perf_counter() - t0
        rows[name] = {"footprint_mb": model.get_memory_footprint() / 1e6, "load_s": load_s,
                      "perplexity": perplexity(model, ids, cfg["ctx"], f"perplexity ({name})")}
        if with_samples:
            rows[name]["sample"] = sample(model, tokenizer, cfg["new_tokens"])
        del model
    return rows


def qlora(path: Path, device: str, cfg: dict, out: Path) -> dict:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from tqdm import tqdm
    from transformers import AutoTokenizer

    import bitsandbytes as bnb

    tokenizer = AutoTokenizer.from_pretrained(path)
    n_train = cfg["steps"] * cfg["batch"] * cfg["train_ctx"]
    train = token_ids(tokenizer, "persuasion.txt", 0.05, n_train).view(-1, cfg["train_ctx"])
    held_out = token_ids(tokenizer, "persuasion.txt", 0.8, cfg["eval_tokens"])

    torch.manual_seed(0)
    model = prepare_model_for_kbit_training(load(path, "nf4 + double quant", device))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                             task_type="CAUSAL_LM"))
    before = perplexity(model, held_out, cfg["ctx"], "perplexity before fine-tuning")
    optimizer = bnb.optim.PagedAdamW8bit if hasattr(bnb.optim, "PagedAdamW8bit") else torch.optim.AdamW
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses = []
    model.train()
    bar = tqdm(range(cfg["steps"]), desc="QLoRA", file=sys.stderr)
    for step in bar:
        batch = train[step * cfg["batch"]:(step + 1) * cfg["batch"]].to(model.device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        print(f"  step {step + 1:3d}  loss {losses[-1]:.4f}", flush=True)
    model.eval()
    adapter = out / "adapter"
    model.save_pretrained(adapter)
    reloaded = PeftModel.from_pretrained(load(path, "nf4 + double quant", device), adapter)
    after = perplexity(reloaded, held_out, cfg["ctx"], "perplexity after fine-tuning (reloaded adapter)")
    return {"losses": losses, "perplexity_before": before, "perplexity_after": after, "adapter": str(adapter),
            "optimizer": f"{optimizer.__module__}.{optimizer.__name__}",
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def reference_perplexities(path: Path, device: str, quick: bool, out: Path) -> dict | None:
    """The same perplexity table with bitsandbytes 0.50.2 (from .ref/bnb) in a subprocess."""
    ref_dir = Path(os.environ.get("NYBBLE_REFERENCE_DIR", ROOT / ".ref" / "bnb"))
    if not (ref_dir / "bitsandbytes" / "__init__.py").is_file():
        print(f"(no reference in {ref_dir}: skipping the side-by-side table)")
        return None
    result = out / "reference.json"
    cmd = [sys.executable, __file__, "--perplexity-only", "--json", str(result), "--device", device]
    cmd += ["--quick"] if quick else []
    env = dict(os.environ, PYTHONPATH=str(ref_dir))
    subprocess.run(cmd, env=env, check=True)
    return json.loads(result.read_text())


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    losses = results["qlora"]["losses"]
    ax1.plot(range(1, len(losses) + 1), losses, marker="o", markersize=3)
    ax1.set(xlabel="step", ylabel="training loss", title="QLoRA on NF4 + double quant (nybble)")
    names = list(results["formats"])
    ax2.bar(names, [results["formats"][n]["perplexity"] for n in names], color="tab:blue", label="nybble")
    if results.get("reference"):
        ax2.scatter(names, [results["reference"][n]["perplexity"] for n in names], color="tab:red", zorder=3,
                    label="bitsandbytes 0.50.2")
        ax2.legend()
    ax2.set(ylabel="perplexity", title="Pride and Prejudice slice")
    ax2.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results: dict) -> str:
    ref = results.get("reference") or {}
    lines = [f"nybble demo — {results['model']} on {results['device']} "
             f"({results['settings']['eval_tokens']} tokens, context {results['settings']['ctx']})", "",
             f"{'format':<20} {'footprint':>10} {'perplexity':>11} {'reference':>10}  sample",
             f"{'-' * 20} {'-' * 10} {'-' * 11} {'-' * 10}  {'-' * 40}"]
    for name, row in results["formats"].items():
        r = ref.get(name, {}).get("perplexity")
        lines.append(f"{name:<20} {row['footprint_mb']:>7.1f} MB {row['perplexity']:>11.3f} "
                     f"{'' if r is None else f'{r:.3f}':>10}  {row.get('sample', '')[:70]}")
    q = results["qlora"]
    lines += ["", f"QLoRA ({len(q['losses'])} steps, {q['trainable_params']:,} trainable parameters, {q['optimizer']}): "
              f"loss {q['losses'][0]:.3f} -> {q['losses'][-1]:.3f}; held-out Persuasion perplexity "
              f"{q['perplexity_before']:.3f} -> {q['perplexity_after']:.3f} (adapter saved and reloaded: {q['adapter']})"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="nybble demo (see the module docstring)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--with-reference", action="store_true", help="also measure bitsandbytes 0.50.2 (.ref/bnb)")
    ap.add_argument("--perplexity-only", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = settings(args.quick)
    path = default_model.model_dir()
    if args.perplexity_only:
        args.json.write_text(json.dumps(measure_formats(path, args.device, cfg, with_samples=False)))
        return 0

    import bitsandbytes as bnb

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"bitsandbytes {bnb.__version__} from {Path(bnb.__file__).parent}; model {path}", flush=True)
    results = {"model": default_model.NAME, "device": args.device, "settings": cfg}
    results["formats"] = measure_formats(path, args.device, cfg, with_samples=True)
    results["qlora"] = qlora(path, args.device, cfg, args.out)
    if args.with_reference:
        results["reference"] = reference_perplexities(path, args.device, args.quick, args.out)
    text = report(results)
    print("\n" + text)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.txt").write_text(text + "\n")
    plot(results, args.out / "demo.png")
    print(f"\nwrote {args.out / 'results.txt'}, {args.out / 'results.json'} and {args.out / 'demo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
