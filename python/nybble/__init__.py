"""nybble: bitsandbytes' formats, kernels and API in C++20/CUDA (see README.md)."""

from . import _C, _ops  # noqa: F401  (_ops registers torch.ops.nybble.*)
from . import autograd, functional, nn, optim, utils  # noqa: F401
from .autograd._functions import MatmulLtState, matmul, matmul_4bit
from .nn import modules  # noqa: F401  (the reference exposes bitsandbytes.modules too)
from .placement import place_modules  # noqa: F401  (nybble's own: 4-bit layers on the CPU in a GPU model)

# Integrations read these (spec §7): transformers/diffusers check "multi_backend" and which torch
# devices the package supports.
features = {"multi_backend"}
supported_torch_devices = {
    "cpu",
    "cuda",  # NVIDIA/AMD GPU
    "xpu",  # Intel GPU
    "hpu",  # Intel Gaudi
    "npu",  # Ascend NPU
    "mps",  # Apple Silicon
}

__version__ = "0.1.0"
