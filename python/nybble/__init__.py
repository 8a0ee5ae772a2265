"""nybble: bitsandbytes' formats, kernels and API in C++20/CUDA (see README.md)."""

from . import _C, _ops  # noqa: F401  (_ops registers torch.ops.nybble.*)

__version__ = "0.1.0"
