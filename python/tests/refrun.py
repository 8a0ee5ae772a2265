"""Runs code against the reference, bitsandbytes==0.50.2, in a subprocess.

The reference is installed (not by nybble) into ``.ref/bnb`` at the repository root:
``pip install --no-deps --target .ref/bnb bitsandbytes==0.50.2``. It has the import name
``bitsandbytes`` like nybble's drop-in, so it runs in its own process with ``.ref/bnb`` first on
the path. Tensors go in and out through ``torch.save`` files, so CUDA tensors arrive in the
subprocess as CUDA tensors (the reference then runs its CUDA kernels) and come back as CUDA
tensors; ``tree_to`` moves nested results to one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
REF_DIR = Path(os.environ.get("NYBBLE_REFERENCE_DIR", ROOT / ".ref" / "bnb"))

requires_reference = pytest.mark.skipif(
    not (REF_DIR / "bitsandbytes" / "__init__.py").exists(),
    reason=f"bitsandbytes==0.50.2 not installed in {REF_DIR} "
    "(pip install --no-deps --target .ref/bnb bitsandbytes==0.50.2)",
)

_PRELUDE = """
import sys, warnings
import torch
inputs = torch.load(sys.argv[1], weights_only=False)
outputs = {}
warnings.simplefilter("ignore")
import bitsandbytes as bnb
assert bnb.__version__.startswith("0.50"), bnb.__version__
"""
_EPILOGUE = """
torch.save(outputs, sys.argv[2])
"""


def run_reference(code: str, **inputs) -> dict:
    """Executes ``code`` with ``bitsandbytes`` = the reference, ``inputs`` (a dict) and ``bnb``
    defined; returns the dict the code filled into ``outputs``. Raises with the reference's stderr
    if the code fails."""
    with tempfile.TemporaryDirectory() as tmp:
        src, inp, out = Path(tmp, "ref.py"), Path(tmp, "in.pt"), Path(tmp, "out.pt")
        src.write_text(_PRELUDE + textwrap.dedent(code) + _EPILOGUE)
        torch.save(inputs, inp)
        env = dict(os.environ, PYTHONPATH=str(REF_DIR))
        env.pop("BNB_CUDA_VERSION", None)  # the reference picks its library from torch's CUDA version
        proc = subprocess.run([sys.executable, str(src), str(inp), str(out)], env=env, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"reference run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return torch.load(out, weights_only=False)


def tree_to(obj, device):
    """``obj`` with every tensor in it (through dicts, lists and tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: tree_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_to(v, device) for v in obj)
    return obj
