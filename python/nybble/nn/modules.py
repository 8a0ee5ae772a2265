"""The quantized modules: Linear4bit/Params4bit (QLoRA, spec §3.4–3.5), Linear8bitLt/Int8Params
(LLM.int8, §2.4–2.5), the 4- and 8-bit embeddings (§3.7) and the 32-bit-optimizer embeddings.

Weights quantize when the module moves: ``Linear4bit(...).to(device)`` (``.cuda()``, ``.cpu()``)
turns the float weight into packed 4-bit data plus a ``QuantState``; ``Linear8bitLt(...,
has_fp16_weights=False).to(device)`` into int8 rows plus their scales ``SCB``. The state_dict keys
are the reference's (§1.8), so checkpoints move both ways.

Where nybble differs from the reference (spec "Decisions", and small fixes noted inline):

* 4-bit runs natively on the CPU; the reference's AVX512 repacking (``packing_format_for_cpu``)
  does not exist here, so state_dicts are always in the reference format.
* ``load_state_dict`` of a 4-bit state_dict (``weight`` plus ``weight.absmax``, ``weight.quant_map``,
  ``weight.quant_state.bitsandbytes__*`` ...) rebuilds the quantized weight, into a quantized or
  a not yet quantized layer; missing, extra or inconsistent entries are errors.
* Embedding4bit/Embedding8bit save and load, with the Linear4bit/Linear8bitLt keys.
* Int8Params quantizes fp16, bf16 and fp32 weights in their own dtype (the reference casts to
  fp16 first).
* Pickling keeps the Params4bit/Int8Params class (the reference's come back as plain Parameters).
* ``.to(dtype)`` leaves an already-quantized parameter alone: its dtype is the storage of packed
  data, not a number format.
* A Linear8bitLt's codes and row scales (``CB``/``SCB`` on the weight and in ``state``) follow its
  weight to another device also when a module holding the layer moves (the reference's
  ``Linear8bitLt.to`` covers only the layer's own ``.to``, and only ``state``).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional
from .._ops import BLOCKSIZES_4BIT
from ..autograd._functions import MatmulLtState, dequantize_4bit, matmul, matmul_4bit
from ..optim import GlobalOptimManager

logger = logging.getLogger(__name__)

_QUANT_TYPES_4BIT = ("nf4", "fp4")


# ---- 32-bit-optimizer embeddings ------------------------------------------------------------------


class StableEmbedding(torch.nn.Embedding):
    """An embedding for stable training with 8-bit optimizers: Xavier-uniform initialization,
    a LayerNorm after the lookup (computed in the default dtype), and 32-bit optimizer state for
    its weight (registered with GlobalOptimManager)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
                         sparse, _weight, device, dtype)
        self.norm = torch.nn.LayerNorm(embedding_dim, device=device)
        GlobalOptimManager.get_instance().register_module_override(self, "weight", {"optim_bits": 32})

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor) -> Tensor:
        emb = F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)
        # The layer norm always runs in full precision.
        return self.norm(emb.to(torch.get_default_dtype())).to(self.weight.dtype)


class Embedding(torch.nn.Embedding):
    """``torch.nn.Embedding`` with Xavier-uniform initialization and 32-bit optimizer state for
    its weight (registered with GlobalOptimManager)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
                         sparse, _weight, device=device)
        GlobalOptimManager.get_instance().register_module_override(self, "weight", {"optim_bits": 32})

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor) -> Tensor:
        return F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


# ---- Params4bit -----------------------------------------------------------------------------------


def _rebuild_param(cls, data, requires_grad):
    """Unpickles a Params4bit/Int8Params as its own class (Parameter's reduction would return a
    plain Parameter); pickle then restores the attributes through ``__setstate__``."""
    return torch.Tensor._make_subclass(cls, data, requires_grad)


def _parse_to(*args, **kwargs):
    device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
    return device, dtype, non_blocking


class Params4bit(torch.nn.Parameter):
    """A 4-bit weight: before quantization the float weight, after it the packed data (shape
    [(n+1)//(2*itemsize), 1], dtype ``quant_storage``) with its ``quant_state``.

    Quantizes on the first ``.to(device)``/``.cuda()``/``.cpu()``. Rebuild it with
    ``Params4bit(data, requires_grad=..., **old.__dict__)`` (PEFT, accelerate and transformers do);
    ``torch.chunk``/``torch.split`` keep the class and metadata (FSDP2 sharding)."""

    def __new__(
        cls,
        data: Optional[torch.Tensor] = None,
        requires_grad=False,  # quantized weights are frozen by default
        quant_state: Optional[functional.QuantState] = None,
        blocksize: Optional[int] = None,
        compress_statistics: bool = True,
        quant_type: str = "fp4",
        quant_storage: torch.dtype = torch.uint8,
        module: Optional[torch.nn.Module] = None,
        bnb_quantized: bool = False,
        **kwargs,
    ) -> Params4bit:
        if data is None:
            data = torch.empty(0)
        if blocksize is None:
            blocksize = 64
        if blocksize not in BLOCKSIZES_4BIT:
            raise ValueError(f"Params4bit: blocksize = {blocksize} is not supported (must be one of {BLOCKSIZES_4BIT})")
        if quant_type not in _QUANT_TYPES_4BIT:
            raise ValueError(f"Params4bit: quant_type = {quant_type!r} is not supported (must be 'nf4' or 'fp4')")
        self = torch.Tensor._make_subclass(cls, data, requires_grad)
        self.blocksize = blocksize
        self.compress_statistics = compress_statistics
        self.quant_type = quant_type
        self.quant_state = quant_state
        self.quant_storage = quant_storage
        self.bnb_quantized = bnb_quantized
        self.module = module
        return self

    # -- pickling and copies -------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["data"] = self.data
        state["requires_grad"] = self.requires_grad
        return state

    def __setstate__(self, state):
        state = dict(state)
        if "data" in state:
            self.data = state.pop("data")
        if "requires_grad" in state:
            self.requires_grad = state.pop("requires_grad")
        self.blocksize = state["blocksize"]
        self.compress_statistics = state["compress_statistics"]
        self.quant_type = state["quant_type"]
        self.quant_state = state["quant_state"]
        self.quant_storage = state["quant_storage"]
        self.bnb_quantized = state["bnb_quantized"]
        self.module = state["module"]

    def __reduce_ex__(self, protocol):
        # The attributes go in the reduction's state (restored after the object exists), so the
        # module <-> weight cycle of a pickled Linear4bit resolves through pickle's memo.
        return _rebuild_param, (type(self), self.data, self.requires_grad), self.__dict__.copy()

    def __copy__(self):
        new = type(self).__new__(type(self), bnb_quantized=self.bnb_quantized)
        new.__setstate__(self.__getstate__())
        return new

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        new = torch.Tensor._make_subclass(type(self), copy.deepcopy(self.data, memo), self.requires_grad)
        memo[id(self)] = new
        state = self.__dict__.copy()
        state["quant_state"] = copy.deepcopy(self.quant_state, memo)
        # Point at the module's copy when the module is being copied; else keep the original.
        state["module"] = memo.get(id(self.module), self.module)
        new.__setstate__(state)
        return new

    # -- QuantState proxies (FSDP's state_dict traversal resolves "weight.absmax" by getattr;
    #    properties, not __getattr__, keep torch.compile from breaking the graph) -----------------

    def _state(self, name: str, nested: bool = False):
        qs = self.__dict__.get("quant_state")
        if qs is None or (nested and qs.state2 is None):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return qs

    @property
    def absmax(self):
        return self._state("absmax").absmax

    @property
    def code(self):
        return self._state("code").code

    @property
    def quant_map(self):
        return self._state("quant_map").code

    @property
    def offset(self):
        return self._state("offset").offset

    @property
    def state2(self):
        return self._state("state2").state2

    @property
    def nested_absmax(self):
        return self._state("nested_absmax", nested=True).state2.absmax

    @property
    def nested_blocksize(self):
        return self._state("nested_blocksize", nested=True).state2.blocksize

    @property
    def nested_quant_map(self):
        return self._state("nested_quant_map", nested=True).state2.code

    @property
    def nested_dtype(self):
        return self._state("nested_dtype", nested=True).state2.dtype

    @property
    def nested_offset(self):
        return self._state("nested_offset").offset

    # -- quantization and movement -------------------------------------------------------------------

    @classmethod
    def from_prequantized(
        cls,
        data: torch.Tensor,
        quantized_stats: dict[str, Any],
        requires_grad: bool = False,
        device="cuda",
        module: Optional[torch.nn.Module] = None,
        **kwargs,
    ) -> Params4bit:
        """A quantized Params4bit from packed ``data`` and its state_dict entries
        (``absmax``, ``quant_map``, ``quant_state.bitsandbytes__nf4`` ...; key prefixes allowed)."""
        quant_state = functional.QuantState.from_dict(qs_dict=dict(quantized_stats), device=device)
        _check_prequantized(data, quant_state)
        self = torch.Tensor._make_subclass(cls, data.to(device))
        self.requires_grad = requires_grad
        self.quant_state = quant_state
        self.blocksize = quant_state.blocksize
        self.compress_statistics = quant_state.nested
        self.quant_type = quant_state.quant_type
        self.bnb_quantized = True
        self.quant_storage = data.dtype
        self.module = module
        if module is not None:
            module.quant_state, module.quant_storage = quant_state, self.quant_storage
        return self

    def _quantize(self, device):
        w = self.data.contiguous().to(device)
        packed, quant_state = functional.quantize_4bit(
            w,
            blocksize=self.blocksize,
            compress_statistics=bool(self.compress_statistics),
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
        )
        self.data = packed
        self.quant_state = quant_state
        if self.module is not None:
            self.module.quant_state, self.module.quant_storage = quant_state, self.quant_storage
        self.bnb_quantized = True
        return self

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self, device: Optional[Union[int, torch.device, str]] = None, non_blocking: bool = False):
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Optional[Union[int, torch.device, str]] = None, non_blocking: bool = False):
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    def to(self, *args, **kwargs):
        device, dtype, non_blocking = _parse_to(*args, **kwargs)
        if device is not None and device.type != "meta" and not self.bnb_quantized:
            return self._quantize(device)
        if self.bnb_quantized:
            dtype = None  # packed data: the dtype is its storage, never converted
            if device is not None and self.quant_state is not None:
                self.quant_state.to(device)
        return Params4bit(
            super().to(device=device, dtype=dtype, non_blocking=non_blocking),
            requires_grad=self.requires_grad,
            quant_state=self.quant_state,
            blocksize=self.blocksize,
            compress_statistics=self.compress_statistics,
            quant_type=self.quant_type,
            quant_storage=self.quant_storage,
            module=self.module,
            bnb_quantized=self.bnb_quantized,
        )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        result = super().__torch_function__(func, types, args, kwargs)
        if func in _SPLIT_FUNCTIONS:
            src = args[0]

            def wrap(chunk):
                return cls(
                    data=chunk,
                    requires_grad=src.requires_grad,
                    quant_state=src.quant_state,
                    blocksize=src.blocksize,
                    compress_statistics=src.compress_statistics,
                    quant_type=src.quant_type,
                    quant_storage=src.quant_storage,
                    module=src.module,
                    bnb_quantized=src.bnb_quantized,
                )

            return tuple(wrap(c) for c in result) if isinstance(result, (tuple, list)) else wrap(result)
        return result


_SPLIT_FUNCTIONS = frozenset({torch.chunk, torch.split, torch.Tensor.chunk, torch.Tensor.split})


def _check_prequantized(data: torch.Tensor, qs) -> None:
    """Raises ValueError when packed data and its QuantState do not describe the same weight."""
    if qs.quant_type not in _QUANT_TYPES_4BIT:
        raise ValueError(f"4-bit quant_state: quant_type = {qs.quant_type!r} is not supported (must be 'nf4' or 'fp4')")
    if qs.blocksize not in BLOCKSIZES_4BIT:
        raise ValueError(f"4-bit quant_state: blocksize = {qs.blocksize} is not supported (must be one of {BLOCKSIZES_4BIT})")
    if qs.shape is None:
        raise ValueError("4-bit quant_state: shape is missing")
    if qs.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"4-bit quant_state: dtype = {qs.dtype} is not supported (must be float16, bfloat16 or float32)")
    n = math.prod(qs.shape)
    need, have, item = (n + 1) // 2, data.numel() * data.element_size(), data.element_size()
    if not need <= have < need + item:
        raise ValueError(
            f"4-bit weight: packed data {data.dtype} {list(data.shape)} holds {have} bytes, but quant_state.shape "
            f"{list(qs.shape)} needs {need} bytes ((n+1)//2 for n = {n})"
        )
    nblocks = -(n // -qs.blocksize)
    if qs.code is None or qs.code.numel() != 16:
        raise ValueError(f"4-bit quant_state: quant_map must have 16 entries, got {None if qs.code is None else qs.code.numel()}")
    want_absmax = torch.uint8 if qs.nested else torch.float32
    if qs.absmax.dtype != want_absmax or qs.absmax.numel() != nblocks:
        raise ValueError(
            f"4-bit quant_state: absmax must be {want_absmax} [{nblocks}] (ceil({n}/{qs.blocksize})"
            f"{', double-quantized' if qs.nested else ''}), got {qs.absmax.dtype} {list(qs.absmax.shape)}"
        )
    if qs.nested:
        s2 = qs.state2
        nblocks2 = -(nblocks // -s2.blocksize)
        if s2.absmax.dtype != torch.float32 or s2.absmax.numel() != nblocks2:
            raise ValueError(
                f"4-bit quant_state: nested_absmax must be float32 [{nblocks2}] (ceil({nblocks}/{s2.blocksize})), "
                f"got {s2.absmax.dtype} {list(s2.absmax.shape)}"
            )
        if s2.code is None or s2.code.numel() != 256:
            raise ValueError(f"4-bit quant_state: nested_quant_map must have 256 entries, got {None if s2.code is None else s2.code.numel()}")


def fix_4bit_weight_quant_state_from_module(module: Union[Embedding4bit, Linear4bit]):
    """Restores ``module.weight.quant_state`` from ``module.quant_state`` when the weight lost it
    (FSDP flattening turns it into a plain tensor), after checking that the gathered packed data
    still has the layer's storage dtype."""
    if getattr(module.weight, "quant_state", None) is not None:
        return
    if getattr(module, "quant_state", None) is None:
        raise RuntimeError(
            f"{type(module).__name__} is not quantized: its weight has no quant_state. Call .cuda(), .cpu() or "
            ".to(device) on the layer first (or load a quantized state_dict)."
        )
    storage = getattr(module, "quant_storage", None)
    if storage is not None and module.weight.dtype != storage:
        raise RuntimeError(
            f"{type(module).__name__}: the packed 4-bit weight arrived as {module.weight.dtype}, but the layer "
            f"stores it as quant_storage={storage}: its bytes were converted as numbers (FSDP2's "
            f"MixedPrecisionPolicy(param_dtype={module.weight.dtype}) converts every floating-point parameter of "
            f"another dtype). Quantize with quant_storage={module.weight.dtype} or torch.uint8 "
            "(BitsAndBytesConfig(bnb_4bit_quant_storage=...)), which FSDP gathers as they are."
        )
    if module.weight.dim() != 2 or module.weight.shape[1] != 1:
        raise RuntimeError(
            f"{type(module).__name__}: cannot restore the quant_state of a weight of shape {list(module.weight.shape)} "
            "(packed 4-bit data has shape [n, 1])"
        )
    if not isinstance(module.weight, Params4bit):
        module.weight = Params4bit(module.weight, quant_storage=module.quant_storage, bnb_quantized=True)
    module.weight.quant_state = module.quant_state


# ---- 4-bit state_dict (shared by Linear4bit and Embedding4bit) --------------------------------------


def _save_4bit(module: nn.Module, destination, prefix: str, keep_vars: bool) -> None:
    qs = getattr(module.weight, "quant_state", None)
    if qs is not None:
        for key, value in qs.as_dict(packed=True).items():
            destination[prefix + "weight." + key] = value if keep_vars else value.detach()


def _load_4bit_weight(module: nn.Module, state_dict, prefix: str, missing_keys, error_msgs) -> list[str]:
    """When ``state_dict`` holds a quantized weight (``weight`` and ``weight.*`` entries), replaces
    ``module.weight`` by it, on the device the module's weight is on; nn.Module then loads the
    rest (bias; the weight again, now of matching shape). Returns the ``weight.*`` keys that are
    not part of a 4-bit state (unexpected keys)."""
    wkey = prefix + "weight"
    sub = wkey + "."
    stats = {k[len(sub):]: v for k, v in state_dict.items() if k.startswith(sub)}
    if not stats:
        return []
    if wkey not in state_dict:  # nn.Module reports the weight missing; its statistics are unexpected
        return [sub + k for k in stats]
    valid = set(functional.QuantState.valid_qs_keys)
    extra = [k for k in stats if not k.startswith("quant_state.") and k not in valid]
    for k in extra:
        del stats[k]
    packed = [k for k in stats if k.startswith("quant_state.")]
    if "quant_type" in stats:
        pass  # the unpacked form (QuantState.as_dict(packed=False) entries): QuantState.from_dict checks it
    elif len(packed) != 1 or packed[0] not in ("quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4"):
        if not packed:
            missing_keys.append(sub + "quant_state.bitsandbytes__nf4")
        error_msgs.append(
            f"While loading the 4-bit weight {wkey!r}: expected exactly one of "
            f"'{sub}quant_state.bitsandbytes__nf4' or '{sub}quant_state.bitsandbytes__fp4', found {[sub + k for k in packed]}"
        )
        return [sub + k for k in extra]
    for required in ("absmax", "quant_map"):
        if required not in stats:
            missing_keys.append(sub + required)
            error_msgs.append(f"While loading the 4-bit weight {wkey!r}: missing {sub + required!r}")
            return [sub + k for k in extra]
    data = state_dict[wkey]
    device = data.device if module.weight.device.type == "meta" else module.weight.device
    try:
        weight = Params4bit.from_prequantized(data, stats, requires_grad=False, device=device, module=None)
    except (ValueError, KeyError, TypeError) as e:
        error_msgs.append(f"While loading the 4-bit weight {wkey!r}: {e}")
        return [sub + k for k in extra]
    if isinstance(module, Linear4bit):
        expected = (module.out_features, module.in_features)
    else:
        expected = (module.num_embeddings, module.embedding_dim)
    if tuple(weight.quant_state.shape) != expected:
        error_msgs.append(
            f"While loading the 4-bit weight {wkey!r}: quant_state.shape {list(weight.quant_state.shape)} does not "
            f"match the layer's weight shape {list(expected)}"
        )
        return [sub + k for k in extra]
    if weight.data_ptr() == data.data_ptr():
        weight.data = weight.data.clone()  # like any load_state_dict: do not alias the source tensor
    weight.module = module
    module.weight = weight
    module.quant_state = weight.quant_state
    module.quant_storage = weight.quant_storage
    return [sub + k for k in extra]


def _load_4bit_module(module: nn.Module, load_rest, state_dict, prefix, missing_keys, unexpected_keys, error_msgs):
    extra = _load_4bit_weight(module, state_dict, prefix, missing_keys, error_msgs)
    load_rest()
    # nn.Module reports every dotted key below a parameter ("weight.absmax") as unexpected.
    sub = prefix + "weight."
    unexpected_keys[:] = [k for k in unexpected_keys if not k.startswith(sub)] + extra


# ---- Linear4bit -----------------------------------------------------------------------------------


class Linear4bit(nn.Linear):
    """A linear layer with a 4-bit (NF4/FP4) weight, QLoRA's base layer.

    Load the float weights, then ``.to(device)`` (or ``.cuda()``/``.cpu()``) to quantize::

        q = Linear4bit(64, 64, quant_type="nf4", compute_dtype=torch.bfloat16)
        q.load_state_dict(fp_linear.state_dict())
        q = q.to("cuda")   # quantization happens here
    """

    def __init__(
        self,
        input_features,
        output_features,
        bias=True,
        compute_dtype=None,
        compress_statistics=True,
        quant_type="fp4",
        quant_storage=torch.uint8,
        device=None,
    ):
        super().__init__(input_features, output_features, bias, device)
        self.weight = Params4bit(
            self.weight.data,
            requires_grad=False,
            compress_statistics=compress_statistics,
            quant_type=quant_type,
            quant_storage=quant_storage,
            module=self,
        )
        self.compute_dtype = compute_dtype
        self.compute_type_is_set = compute_dtype is not None
        self.quant_state = None
        self.quant_storage = quant_storage
        # The reference's AVX512-BF16 CPU repacking; nybble's CPU kernels use the standard layout.
        self.support_avx512bf16_for_cpu = False

    def set_compute_type(self, x):
        if x.dtype in (torch.float32, torch.bfloat16):
            # An input dtype that is safe to compute in: use it.
            self.compute_dtype = x.dtype
        elif x.dtype == torch.float16 and self.compute_dtype in (None, torch.float32):
            if x.numel() == x.shape[-1]:
                logger.warning(
                    "Input type into Linear4bit is torch.float16, but bnb_4bit_compute_dtype=torch.float32 (default). "
                    "This will lead to slow inference.",
                )
            else:
                logger.warning(
                    "Input type into Linear4bit is torch.float16, but bnb_4bit_compute_dtype=torch.float32 (default). "
                    "This will lead to slow inference or training speed.",
                )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight and bias
        _save_4bit(self, destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        load_rest = functools.partial(super()._load_from_state_dict, state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        _load_4bit_module(self, load_rest, state_dict, prefix, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor):
        fix_4bit_weight_quant_state_from_module(self)
        if not self.compute_type_is_set:
            self.set_compute_type(x)
            self.compute_type_is_set = True
        inp_dtype = x.dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias.data = bias.data.to(x.dtype)  # once: the bias follows the compute dtype (as the reference)
        return matmul_4bit(x, self.weight, bias=bias, quant_state=self.weight.quant_state).to(inp_dtype)


class LinearFP4(Linear4bit):
    """Linear4bit with the FP4 data type."""

    def __init__(self, input_features, output_features, bias=True, compute_dtype=None, compress_statistics=True,
                 quant_storage=torch.uint8, device=None):
        super().__init__(input_features, output_features, bias, compute_dtype, compress_statistics, "fp4",
                         quant_storage, device)


class LinearNF4(Linear4bit):
    """Linear4bit with the NF4 data type (QLoRA's NormalFloat: equal-area bins of N(0, 1),
    normalized to [-1, 1])."""

    def __init__(self, input_features, output_features, bias=True, compute_dtype=None, compress_statistics=True,
                 quant_storage=torch.uint8, device=None):
        super().__init__(input_features, output_features, bias, compute_dtype, compress_statistics, "nf4",
                         quant_storage, device)


# ---- Int8Params -----------------------------------------------------------------------------------


class Int8Params(torch.nn.Parameter):
    """An LLM.int8 weight: the float weight until ``.to(device)`` quantizes it (when
    ``has_fp16_weights`` is False) into int8 rows ``CB`` (= data) with fp32 row scales ``SCB``."""

    def __new__(
        cls,
        data: Optional[torch.Tensor] = None,
        requires_grad=True,
        has_fp16_weights=False,
        CB: Optional[torch.Tensor] = None,
        SCB: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        if data is None:
            data = torch.empty(0)
        obj = torch.Tensor._make_subclass(cls, data, requires_grad)
        obj.CB = CB
        obj.SCB = SCB
        obj.has_fp16_weights = has_fp16_weights
        return obj

    def __setstate__(self, state):
        state = dict(state)
        if isinstance(state.get("CB"), str) and state["CB"] == _CB_IS_DATA:
            state["CB"] = self.data
        self.__dict__.update(state)

    def __reduce_ex__(self, protocol):
        state = self.__dict__.copy()
        if _is_data(state.get("CB"), self.data):
            state["CB"] = _CB_IS_DATA  # keep CB an alias of the data after unpickling
        return _rebuild_param, (type(self), self.data, self.requires_grad), state

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        data = copy.deepcopy(self.data, memo)
        shares = _is_data(self.CB, self.data)
        new = type(self).__new__(
            type(self),
            data=data,
            requires_grad=self.requires_grad,
            has_fp16_weights=self.has_fp16_weights,
            CB=data if shares else copy.deepcopy(self.CB, memo),
            SCB=copy.deepcopy(self.SCB, memo),
        )
        memo[id(self)] = new
        return new

    def _quantize(self, device):
        if self.has_fp16_weights:
            return super().to(device)
        B = self.data.contiguous().to(device)
        if B.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            B = B.float()
        CB, SCB, _ = torch.ops.nybble.int8_vectorwise_quant.default(B, 0.0)
        self.data = CB
        self.CB = CB
        self.SCB = SCB
        return self

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self, device: Optional[Union[int, torch.device, str]] = None, non_blocking: bool = False):
        return self.to(device="cuda" if device is None else device, non_blocking=non_blocking)

    def xpu(self, device: Optional[Union[int, torch.device, str]] = None, non_blocking: bool = False):
        return self.to(device="xpu" if device is None else device, non_blocking=non_blocking)

    def to(self, *args, **kwargs):
        device, dtype, non_blocking = _parse_to(*args, **kwargs)
        is_quantized = self.data.dtype == torch.int8
        if not is_quantized and device is not None and device.type != "meta" and self.data.device.type == "cpu":
            return self._quantize(device)
        if is_quantized:
            dtype = None  # int8 codes are never converted
        new = Int8Params(
            super().to(device=device, dtype=dtype, non_blocking=non_blocking),
            requires_grad=self.requires_grad,
            has_fp16_weights=self.has_fp16_weights,
        )
        if is_quantized:
            new.CB = new.data
            if self.SCB is not None:
                new.SCB = self.SCB if device is None or self.SCB.device.type == "meta" else self.SCB.to(device)
        return new


_CB_IS_DATA = "__CB_is_data__"


def _is_data(t: Optional[torch.Tensor], data: torch.Tensor) -> bool:
    return t is not None and t.data_ptr() == data.data_ptr() and t.shape == data.shape and t.dtype == data.dtype


def maybe_rearrange_weight(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load pre-hook of the 8-bit layers: consumes ``weight_format`` (only "row" = 0 exists now)."""
    from ..utils import INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING

    if state_dict.get(f"{prefix}weight") is None:
        return  # no weight for this layer in the state_dict (e.g. a LoRA adapter checkpoint)
    weight_format = state_dict.pop(f"{prefix}weight_format", "row")
    if isinstance(weight_format, torch.Tensor):
        weight_format = weight_format.item()
    if isinstance(weight_format, int):
        if weight_format not in INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING:
            raise ValueError(f"Expected supported weight format - got {weight_format}")
        weight_format = INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING[weight_format]
    if weight_format != "row":
        raise ValueError(f"Only 'row' weight format is supported, got {weight_format}")


def _save_scb(destination, prefix: str, scb: Optional[torch.Tensor], keep_vars: bool) -> None:
    if scb is not None:
        destination[prefix + "SCB"] = scb if keep_vars else scb.detach()
        destination[prefix + "weight_format"] = torch.tensor(0, dtype=torch.uint8)  # "row"


def _load_scb(state_dict, prefix: str, targets, unexpected_keys, error_msgs) -> bool:
    """Copies ``prefix + "SCB"`` into the first non-None tensor of ``targets``. False when the
    layer holds no scales to load into."""
    key = prefix + "SCB"
    if key not in unexpected_keys:
        return True
    unexpected_keys.remove(key)
    src = state_dict[key]
    dst = next((t for t in targets if t is not None), None)
    if dst is None:
        return False
    if src.shape != dst.shape:
        error_msgs.append(f"size mismatch for {key}: copying a param with shape {src.shape} from checkpoint, "
                          f"the shape in current model is {dst.shape}.")
        return True
    with torch.no_grad():
        dst.copy_(src)
    return True


class Linear8bitLt(nn.Linear):
    """A linear layer with LLM.int8 (vector-wise int8 with mixed-precision outlier columns).

    ``has_fp16_weights=False`` quantizes the weight on ``.to(device)``; ``threshold`` > 0 computes
    activation columns with any |value| >= threshold in the input's precision::

        q = Linear8bitLt(64, 64, has_fp16_weights=False, threshold=6.0)
        q.load_state_dict(fp_linear.state_dict())
        q = q.to("cuda")   # quantization happens here
    """

    def __init__(
        self,
        input_features: int,
        output_features: int,
        bias=True,
        has_fp16_weights=True,
        threshold=0.0,
        index=None,
        device=None,
    ):
        super().__init__(input_features, output_features, bias, device)
        self.state = MatmulLtState()
        self.index = index
        self.state.threshold = threshold
        self.state.has_fp16_weights = has_fp16_weights
        if threshold > 0.0 and not has_fp16_weights:
            self.state.use_pool = True
        self.weight = Int8Params(self.weight.data, has_fp16_weights=has_fp16_weights, requires_grad=has_fp16_weights)
        self._register_load_state_dict_pre_hook(maybe_rearrange_weight)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.state.has_fp16_weights:
            scb = getattr(self.weight, "SCB", None)
            _save_scb(destination, prefix, scb if scb is not None else self.state.SCB, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        weight_scb = getattr(self.weight, "SCB", None)
        if not _load_scb(state_dict, prefix, (weight_scb, self.state.SCB), unexpected_keys, error_msgs):
            raise RuntimeError(
                "Loading a quantized checkpoint into non-quantized Linear8bitLt is "
                "not supported. Please call module.cuda() before module.load_state_dict()",
            )
        if weight_scb is not None and self.state.SCB is not None:
            self.state.SCB = weight_scb

    def init_8bit_state(self):
        self.state.CB = self.weight.CB
        self.state.SCB = self.weight.SCB
        self.weight.CB = None
        self.weight.SCB = None

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.cpu() of this layer and of any module holding it (a parent's .to calls its
        # children's _apply, never their .to): Module._apply moves the weight by assigning
        # weight.data, which leaves behind the tensors that are no parameters, the codes' alias CB
        # and the row scales SCB on the weight and in self.state. They follow the weight here.
        super()._apply(fn, recurse)
        weight = self.weight
        if weight.device.type == "meta":
            return self
        for holder in (weight, self.state):
            cb, scb = getattr(holder, "CB", None), getattr(holder, "SCB", None)
            if cb is not None and cb.device != weight.device:
                same = cb.shape == weight.shape and cb.dtype == weight.dtype  # CB is the int8 weight itself
                holder.CB = weight.data if same else cb.to(weight.device)
            if scb is not None and scb.device != weight.device:
                holder.SCB = scb.to(weight.device)
        return self

    def forward(self, x: torch.Tensor):
        self.state.is_training = self.training
        if not isinstance(self.weight, Int8Params):
            if self.weight.dtype == torch.int8:
                return self._forward_plain_int8(x)
            # A tied float weight (e.g. lm_head sharing the embedding): quantizing it in place
            # would overwrite the embedding, so it runs unquantized.
            return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if self.weight.CB is not None:
            self.init_8bit_state()
        # Int8Params casts the weight; the bias follows the input dtype (permanently, as the reference).
        if self.bias is not None and self.bias.dtype != x.dtype:
            self.bias.data = self.bias.data.to(x.dtype)
        out = matmul(x, self.weight, bias=self.bias, state=self.state)
        if not self.state.has_fp16_weights and self.state.CB is not None:
            self.weight.data = self.state.CB
        return out

    def _forward_plain_int8(self, x: torch.Tensor):
        """The int8 codes handed over as a plain tensor (FSDP all-gathers a sharded Int8Params into
        a new ordinary Parameter): they are the current codes, the row scales stay the module's."""
        if self.state.SCB is None:
            raise RuntimeError(
                f"{type(self).__name__}: the weight is a plain int8 tensor {list(self.weight.shape)} and the layer holds "
                "no row scales (state.SCB): quantize the layer (.to(device)) or load its state_dict before wrapping it"
            )
        if self.bias is not None and self.bias.dtype != x.dtype:
            self.bias.data = self.bias.data.to(x.dtype)
        self.state.CB = self.weight.data
        return matmul(x, self.weight, bias=self.bias, state=self.state)


class OutlierAwareLinear(nn.Linear):
    """Research helper: a linear layer whose subclass quantizes the weight around the outlier
    dimensions found by ``utils.OutlierTracer``."""

    def __init__(self, input_features, output_features, bias=True, device=None):
        super().__init__(input_features, output_features, bias, device)
        self.outlier_dim = None
        self.is_quantized = False

    def forward_with_outliers(self, x, outlier_idx):
        raise NotImplementedError("Please override the `forward_with_outliers(self, x, outlier_idx)` function")

    def quantize_weight(self, w, outlier_idx):
        raise NotImplementedError("Please override the `quantize_weights(self, w, outlier_idx)` function")

    def forward(self, x):
        from ..utils import OutlierTracer

        if self.outlier_dim is None:
            tracer = OutlierTracer.get_instance()
            if not tracer.is_initialized():
                logger.warning("Please use OutlierTracer.initialize(model) before using the OutlierAwareLinear layer")
            self.outlier_dim = tracer.get_outliers(self.weight)
        if not self.is_quantized:
            w = self.quantize_weight(self.weight, self.outlier_dim)
            self.weight.data.copy_(w)
            self.is_quantized = True
        return self.forward_with_outliers(x, self.outlier_dim)


# ---- quantized embeddings -------------------------------------------------------------------------


class Embedding8bit(nn.Embedding):
    """An embedding with LLM.int8 rows: each embedding row in int8 with one fp32 scale.

    ``Embedding8bit(n, d).load_state_dict(fp_embedding.state_dict())``, then ``.to(device)``
    quantizes. Saves ``weight`` (int8), ``SCB`` and ``weight_format`` like Linear8bitLt."""

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Int8Params(self.weight.data, has_fp16_weights=False, requires_grad=False)
        self._register_load_state_dict_pre_hook(maybe_rearrange_weight)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        _save_scb(destination, prefix, getattr(self.weight, "SCB", None), keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        src = state_dict.get(prefix + "weight")
        if (prefix + "SCB") in state_dict and src is not None and src.dtype == torch.int8 and self.weight.SCB is None:
            # A quantized checkpoint into a layer not quantized yet: become quantized (on the
            # layer's device), then load the codes and scales below.
            device = src.device if self.weight.device.type == "meta" else self.weight.device
            CB = torch.empty((self.num_embeddings, self.embedding_dim), dtype=torch.int8, device=device)
            self.weight = Int8Params(CB, requires_grad=False, has_fp16_weights=False, CB=CB,
                                     SCB=torch.empty(self.num_embeddings, dtype=torch.float32, device=device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        _load_scb(state_dict, prefix, (self.weight.SCB,), unexpected_keys, error_msgs)

    def forward(self, input: Tensor) -> Tensor:
        if self.weight.SCB is None or self.weight.dtype != torch.int8:
            raise RuntimeError("Embedding layer is not quantized. Please call .cuda() or .to(device) first.")
        rows = F.embedding(input, self.weight.data)
        scales = F.embedding(input, self.weight.SCB.view(self.num_embeddings, 1))
        return torch.ops.nybble.int8_vectorwise_dequant.default(rows, scales).to(self.dtype)


class Embedding4bit(nn.Embedding):
    """An embedding with 4-bit (NF4/FP4) rows, quantized like Linear4bit's weight (no double
    quantization) on ``.to(device)``. When ``embedding_dim`` is a multiple of the blocksize (64)
    only the looked-up rows are decoded. Saves the Linear4bit keys (``weight``, ``weight.absmax``...)."""

    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_type="fp4", quant_storage=torch.uint8,
                 device=None):
        super().__init__(num_embeddings, embedding_dim, device=device, dtype=dtype)
        self.dtype = self.weight.data.dtype
        self.weight = Params4bit(
            self.weight.data,
            requires_grad=False,
            compress_statistics=None,
            quant_type=quant_type,
            quant_storage=quant_storage,
            module=self,
        )
        self.quant_state = None
        self.quant_storage = quant_storage
        blocksize = self.weight.blocksize
        if embedding_dim % blocksize != 0:
            logger.warning(
                f"Embedding size {embedding_dim} is not divisible by block size {blocksize}. "
                "This will lead to slow inference.",
            )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        _save_4bit(self, destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        load_rest = functools.partial(super()._load_from_state_dict, state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        _load_4bit_module(self, load_rest, state_dict, prefix, missing_keys, unexpected_keys, error_msgs)

    def _forward_with_partial_dequantize(self, input: Tensor) -> Tensor:
        qs = self.weight.quant_state
        D = self.embedding_dim
        packed = self.weight.data.view(torch.uint8).view(self.num_embeddings, D // 2)
        rows = F.embedding(input, packed)
        absmax = F.embedding(input, qs.absmax.view(self.num_embeddings, D // qs.blocksize))
        return torch.ops.nybble.dequantize_4bit.default(
            rows.reshape(-1), absmax.reshape(-1), qs.blocksize, qs.quant_type, [*input.shape, D], self.dtype
        )

    def forward(self, input: Tensor) -> Tensor:
        fix_4bit_weight_quant_state_from_module(self)
        qs = self.weight.quant_state
        if self.embedding_dim % qs.blocksize == 0 and not qs.nested:
            return self._forward_with_partial_dequantize(input)
        return F.embedding(input, dequantize_4bit(self.weight.data, qs, self.dtype))


class EmbeddingFP4(Embedding4bit):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_storage=torch.uint8, device=None):
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="fp4", quant_storage=quant_storage,
                         device=device)


class EmbeddingNF4(Embedding4bit):
    def __init__(self, num_embeddings, embedding_dim, dtype=None, quant_storage=torch.uint8, device=None):
        super().__init__(num_embeddings, embedding_dim, dtype=dtype, quant_type="nf4", quant_storage=quant_storage,
                         device=device)
