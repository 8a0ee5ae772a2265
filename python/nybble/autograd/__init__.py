"""nybble.autograd: the LLM.int8 and 4-bit matmul autograd functions (see _functions.py)."""

from . import _functions
from ._functions import (
    GlobalOutlierPooler,
    MatMul4Bit,
    MatMul8bitFp,
    MatMul8bitLt,
    MatmulLtState,
    matmul,
    matmul_4bit,
)

__all__ = ["GlobalOutlierPooler", "MatMul4Bit", "MatMul8bitFp", "MatMul8bitLt", "MatmulLtState", "matmul", "matmul_4bit"]
