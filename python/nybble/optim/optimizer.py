"""The optimizer base classes of ``bitsandbytes.optim.optimizer`` (spec §4.2): Optimizer8bit,
Optimizer2State (Adam, AdamW, LAMB, AdEMAMix) and Optimizer1State (SGD, LARS, RMSprop, Adagrad,
Lion), on nybble's optimizer ops (``torch.ops.nybble.optimizer_update_*_multi``).

State layout, config overlays (``GlobalOptimManager``) and the state_dict format are the
reference's, so state_dicts move both ways. The step differs in how it is issued, not in what it
computes:

* Parameters that share a step's hyperparameters (normally: all of a param group), the state
  kind (fp32 or 8-bit) and the device are updated by one multi-tensor op call; each parameter
  gets exactly what the single-tensor op would give it. The reference issues one call per
  parameter and synchronizes the device after each; nybble never synchronizes, except that a
  clipped step (``max_unorm > 0``: LAMB, LARS) reads the parameters' norms on the host, once per
  call (the kernels take the norm as a float).
* ``max_unorm`` clips 8-bit steps too (the reference's 8-bit kernels ignore it; its GPU build
  rejects LAMB8bit/LARS8bit).
* Paged states live in managed memory (``F.get_paged``) and are prefetched on the current
  stream before their update; nothing waits for the copies, since the kernels run on that stream.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from copy import deepcopy
from itertools import chain
from typing import Optional

import torch

from .. import _ops
from .. import functional as F
from .manager import GlobalOptimManager

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor a kernel updates: a DTensor's local shard (FSDP2 parameters and gradients), else t.
    Each shard then has its own states, blockwise from the shard's first element."""
    return t.to_local() if isinstance(t, DTensor) else t


# Note [Sharded states]: in a state_dict, the states of a DTensor parameter are DTensors too, so
# torch.distributed.checkpoint saves and loads each rank's piece. state1/state2 have the local
# shard's shape (AdEMAMix: one leading dimension more) and take the parameter's placements. The
# per-block absmax of a shard has no such form (a rank's block count follows its shard's size), so
# each rank's absmax is padded to the largest count of any rank and the padded pieces form an even
# Shard(-1) tensor; loading trims them back. Only 1-D meshes with the parameter sharded on dim 0
# (FSDP2's layout) are supported.
def _shard_numels(p) -> list:
    from torch.distributed.tensor import Shard

    if p.device_mesh.ndim != 1 or list(p.placements) != [Shard(0)]:
        raise NotImplementedError(
            f"8-bit optimizer states of a DTensor with placements {list(p.placements)} on a {p.device_mesh.ndim}-D mesh: "
            "only Shard(0) on a 1-D mesh (FSDP2's layout) is supported")
    rows, world = p.shape[0], p.device_mesh.size()
    per = -(rows // -world)
    row_numel = p.numel() // rows if rows else 0
    return [max(0, min(per, rows - r * per)) * row_numel for r in range(world)]


def _as_dtensor(key, value, p):
    if not isinstance(value, torch.Tensor) or key not in ("state1", "state2", "absmax1", "absmax2"):
        return value
    from torch.distributed.tensor import Shard

    numels = _shard_numels(p)  # (checks the layout)
    if key.startswith("state"):  # the shard's shape, after AdEMAMix's leading dimension
        dim = value.dim() - p.dim()
        shape = (*value.shape[:dim], *p.shape)
    else:  # absmax: padded to the most blocks of any shard
        most = max(-(n // -BLOCKSIZE) for n in numels)
        value = torch.nn.functional.pad(value, (0, most - value.shape[-1]))
        dim = value.dim() - 1
        shape = (*value.shape[:-1], most * p.device_mesh.size())
    return DTensor.from_local(value, p.device_mesh, [Shard(dim)], run_check=False, shape=shape,
                              stride=torch.empty(shape, device="meta").stride())


def _from_dtensor(key, value, p):
    local = value.to_local()
    if key in ("absmax1", "absmax2") and isinstance(p, DTensor):
        return local[..., : -(p.to_local().numel() // -BLOCKSIZE)].contiguous()
    return local

__all__ = ["GlobalOptimManager", "MockArgs", "Optimizer1State", "Optimizer2State", "Optimizer8bit"]

# 8-bit states are quantized in blocks of this many elements (spec §4.1).
BLOCKSIZE = 256
# States of fewer elements are never paged (the reference's threshold, about 1 MB of fp32 states).
PAGED_MIN_NUMEL = 100_000


class MockArgs:
    """The ``args`` object of an optimizer built without one: each key of ``initial_data`` as an
    attribute."""

    def __init__(self, initial_data):
        for key, value in initial_data.items():
            setattr(self, key, value)


def _check_hyperparameters(lr, eps, betas, weight_decay):
    """The reference's constructor checks; betas may be a string "(b1, b2)". Returns betas."""
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if isinstance(betas, str):
        betas = [float(b) for b in betas.replace("(", "").replace(")", "").strip().split(",")]
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return betas


def _check_8bit_variant(name: str, amsgrad=False, optim_bits=32) -> None:
    """The reference's guards of the 8-bit Adam variants: amsgrad and optim_bits are accepted for
    signature compatibility only."""
    if amsgrad:
        raise ValueError(f"{name} does not support amsgrad=True")
    if optim_bits != 32:
        raise ValueError(f"{name} only supports optim_bits=32 (default value for compatibility)")


def _optimizer_args(args, optim_bits, min_8bit_size, max_unorm, skip_zeros):
    if args is not None:
        return args
    return MockArgs(dict(optim_bits=optim_bits, min_8bit_size=min_8bit_size, max_unorm=max_unorm,
                         skip_zeros=skip_zeros))


class Optimizer8bit(torch.optim.Optimizer):
    """Base of nybble's optimizers: per-parameter 32-bit or 8-bit blockwise states, config
    overrides through ``GlobalOptimManager``, paged states, the reference's state_dict format."""

    _FSDP_WRAPPED_QUANT_STATE_KEY = "__bnb_optimizer_quant_state__"
    _two_states = False  # whether the kernel keeps state2 (Optimizer2State)
    _emas = 1  # EMAs in state1 (AdEMAMix: 2, as [2, *p.shape])

    def __init__(self, params, defaults, optim_bits=32, is_paged=False):
        super().__init__(params, defaults)
        self.initialized = False
        self.name2qmap = {}
        self.is_paged = is_paged
        self.page_mng = F.GlobalPageManager.get_instance()
        self.mng = GlobalOptimManager.get_instance()
        # State entries that keep their dtype when a state_dict is loaded (moved, never cast).
        self.non_castable_tensor_keys = {"qmap1", "qmap2", "max1", "max2", "new_max1", "new_max2", "state1",
                                         "state2", "gnorm_vec", "absmax1", "absmax2", "unorm_vec"}
        if optim_bits == 8:
            self.fill_qmap()

    def fill_qmap(self):
        self.name2qmap["dynamic"] = F.create_dynamic_map(signed=True)
        self.name2qmap["udynamic"] = F.create_dynamic_map(signed=False)

    def _qmap(self, name: str, device) -> torch.Tensor:
        """The optimizer's code map ``name`` on ``device``: one tensor that all states there share."""
        if name not in self.name2qmap:
            self.fill_qmap()
        self.name2qmap[name] = self.name2qmap[name].to(device)
        return self.name2qmap[name]

    # ---- state_dict ------------------------------------------------------------------------------

    def state_dict(self):
        """torch's optimizer state_dict with each parameter's quantization entries (states,
        qmaps, absmax, unorm_vec) moved under ``"__bnb_optimizer_quant_state__"``, so FSDP does
        not try to gather tensors shaped unlike the parameter."""
        state_dict = super().state_dict()
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        wrapped = {}
        for index, param_state in state_dict["state"].items():
            if isinstance(param_state, dict) and isinstance(params[index], DTensor):
                param_state = {k: _as_dtensor(k, v, params[index]) for k, v in param_state.items()}
            if isinstance(param_state, dict):
                plain = {k: v for k, v in param_state.items() if k not in self.non_castable_tensor_keys}
                if isinstance(plain.get("step"), torch.Tensor):  # a device count (Note [Capturable steps])
                    plain["step"] = int(plain["step"].item())
                quant = {k: v for k, v in param_state.items() if k in self.non_castable_tensor_keys}
                if quant:
                    plain[self._FSDP_WRAPPED_QUANT_STATE_KEY] = quant
                param_state = plain
            wrapped[index] = param_state
        state_dict["state"] = wrapped
        return state_dict

    def load_state_dict(self, state_dict, move_to_device=True):
        """Loads a state_dict of ``state_dict()`` (nybble's or the reference's). Quantization
        entries keep their dtype (moved to the parameter's device if ``move_to_device``); other
        floating-point tensors are cast to the parameter's dtype."""
        state_dict = deepcopy(state_dict)
        for param_state in state_dict["state"].values():
            if isinstance(param_state, dict) and self._FSDP_WRAPPED_QUANT_STATE_KEY in param_state:
                param_state.update(param_state.pop(self._FSDP_WRAPPED_QUANT_STATE_KEY))

        groups, saved_groups = self.param_groups, state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group")

        id_map = dict(zip(chain.from_iterable(s["params"] for s in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))

        def cast(param, value, key=None):
            if isinstance(value, DTensor):
                value = _from_dtensor(key, value, param)
            if key in self.non_castable_tensor_keys and isinstance(value, torch.Tensor):
                return value.to(param.device) if move_to_device else value
            if isinstance(value, torch.Tensor):
                if param.is_floating_point() and value.dtype != torch.uint8:
                    return value.to(param.dtype)
                return value
            if isinstance(value, dict):
                return {k: cast(param, v, k) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(cast(param, v) for v in value)
            return value

        state = defaultdict(dict)
        for index, value in state_dict["state"].items():
            if index in id_map:
                state[id_map[index]] = cast(id_map[index], value)
            else:
                state[index] = value
        param_groups = [dict(saved, params=group["params"]) for group, saved in zip(groups, saved_groups)]
        self.__setstate__({"state": state, "param_groups": param_groups})
        self._share_qmaps()
        self._page_states()

    def _page_states(self):
        """A paged optimizer's loaded states go back into managed memory (load_state_dict's copies
        are ordinary device tensors), so a resumed run can still exceed the GPU's memory."""
        if not self.is_paged:
            return
        for p, param_state in self.state.items():
            if not (isinstance(p, torch.Tensor) and isinstance(param_state, dict)):
                continue
            for key in ("state1", "state2"):
                value = param_state.get(key)
                if isinstance(value, torch.Tensor) and value.is_cuda:
                    param_state[key] = self._state_buffer(p, value.shape, value.dtype).copy_(value)

    def _share_qmaps(self):
        """Points loaded qmaps that equal this optimizer's maps at its shared tensors, so that
        parameters keep being updated together (a multi-tensor call takes one map)."""
        for param_state in self.state.values():
            for key, name in (("qmap1", "dynamic"), ("qmap2", "udynamic")):
                qmap = param_state.get(key) if isinstance(param_state, dict) else None
                if isinstance(qmap, torch.Tensor) and torch.equal(qmap, self._qmap(name, qmap.device)):
                    param_state[key] = self.name2qmap[name]

    # ---- first step ------------------------------------------------------------------------------

    def to_gpu(self):
        """Moves every state tensor except paged ones to its parameter's device."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.device.type == "cpu" or p not in self.state:
                    continue
                values = self.state[p]
                for key, value in values.items():
                    if isinstance(value, torch.Tensor) and not getattr(value, "is_paged", False):
                        values[key] = value.to(p.device)

    def check_overrides(self):
        """Resolves ``GlobalOptimManager.register_module_override`` entries to this optimizer's
        (group, index) positions."""
        positions = {id(p): (gindex, pindex) for gindex, group in enumerate(self.param_groups)
                     for pindex, p in enumerate(group["params"])}
        for module, attr, config in self.mng.module_weight_config_triple:
            param = getattr(module, attr)
            if not isinstance(param, torch.Tensor):
                raise TypeError(f"register_module_override: {type(module).__name__}.{attr} is "
                                f"{type(param).__name__}, not a parameter")
            if id(param) in positions:
                self.mng.pid2config[id(param)] = config
                self.mng.index2config[positions[id(param)]] = config

    # ---- the step --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """One optimization step for every parameter with a gradient.

        Arguments:
            closure (`Callable`, *optional*, defaults to `None`):
                A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.initialized:
            self.check_overrides()
            self.to_gpu()  # fairseq's pure fp16 training moves parameters after building the optimizer
            self.initialized = True
        items = []
        for gindex, group in enumerate(self.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if len(self.state[p]) == 0:
                    self.init_state(group, p, gindex, pindex)
                items.append((group, p, gindex, pindex))
        self._update(items)
        return loss

    @torch.no_grad()
    def update_step(self, group, p, gindex, pindex):
        """The step of one parameter whose state exists (``step`` updates all parameters
        together, with the same result)."""
        self._update([(group, p, gindex, pindex)])

    def _update(self, items):
        """Advances the step count of each (group, p, gindex, pindex) and updates the parameters
        in one op call per set of identical step arguments, state kind and device.

        Note [Capturable steps]: when a group's lr is a tensor on its parameters' device, each of
        its parameters keeps its step count in an fp32 tensor there (as torch's capturable
        optimizers do), advanced by one foreach op, and the kernels read both values when they run
        (Note [Device scalars] in nybble/optim.hpp): the step launches the same kernels on the same
        addresses every time, so ``torch.cuda.graph`` can capture it and its replays see the new
        lr and counts. A step that clips (max_unorm > 0) still reads the parameter norms on the
        host and cannot be captured; AdEMAMix's t_alpha/t_beta3 schedules need the count on the
        host and are refused with a tensor lr."""
        calls = defaultdict(list)
        counts = []  # the step tensors of parameters with a tensor lr
        # Without GlobalOptimManager overrides every parameter of a group has the group's config.
        overridden = bool(self.mng.index2config or self.mng.pid2config)
        group_configs = {}
        for group, p, gindex, pindex in items:
            if not _local(p).is_contiguous():
                p.data = p.data.contiguous()
            if not _local(p.grad).is_contiguous():
                p.grad = p.grad.contiguous()
            if overridden:
                config = self.get_config(gindex, pindex, group)
            elif (config := group_configs.get(gindex)) is None:
                config = group_configs[gindex] = self.get_config(gindex, pindex, group)
            _ops.refuse_clipped_capture(p, config["max_unorm"])  # before anything is captured
            state = self.state[p]
            lr = config["lr"]
            if isinstance(lr, torch.Tensor) and lr.device == _local(p).device:
                if not isinstance(state["step"], torch.Tensor):
                    state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32, device=lr.device)
                counts.append(state["step"])
                step = None  # on the device
            else:
                state["step"] += 1
                step = state["step"]
            eight_bit = state["state1"].dtype == torch.uint8
            args = (eight_bit, step, self._coefficients(config, step), config["eps"], config["weight_decay"],
                    lr, config["max_unorm"], config["skip_zeros"])
            calls[(p.device, id(state.get("qmap1")), id(state.get("qmap2")), args)].append(p)
        if counts:
            torch._foreach_add_(counts, 1.0)
        for (_, _, _, args), params in calls.items():
            for p in params:
                self.prefetch_state(p)
            self._launch(params, *args)

    def _launch(self, params, eight_bit, step, coefficients, eps, weight_decay, lr, max_unorm, skip_zeros):
        """One op call for params; step None: each parameter's count and lr are device tensors."""
        states = [self.state[p] for p in params]
        step_count, lr_tensor = None, None
        if step is None:
            step_count, lr_tensor, step, lr = [s["step"] for s in states], lr, 1, 0.0
        elif isinstance(lr, torch.Tensor):
            lr = lr.item()  # a tensor on another device than the parameters'

        def entries(key, present=True):
            return [s[key] for s in states] if present else None

        beta1, beta2, beta3, alpha = coefficients
        grads = [_local(p.grad) for p in params]
        params = [_local(p) for p in params]
        two = self._two_states
        unorm_vec = entries("unorm_vec", max_unorm > 0.0)
        if eight_bit:
            _ops.op("optimizer_update_8bit_blockwise_multi", grads[0])(
                self.optimizer_name, grads, params, entries("state1"), entries("state2", two), beta1, beta2, beta3,
                alpha, eps, step, lr, states[0]["qmap1"], states[0]["qmap2"] if two else None, entries("absmax1"),
                entries("absmax2", two), weight_decay, 1.0, skip_zeros, unorm_vec, max_unorm, step_count, lr_tensor)
        else:
            _ops.op("optimizer_update_32bit_multi", grads[0])(
                self.optimizer_name, grads, params, entries("state1"), entries("state2", two), unorm_vec, max_unorm,
                beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, 1.0, skip_zeros, step_count, lr_tensor)

    def _coefficients(self, config, step) -> tuple:
        """(beta1, beta2, beta3, alpha) of step ``step`` (an int, or None when the count is on the
        device) as the kernels take them."""
        raise NotImplementedError("_coefficients needs to be overridden")

    def get_config(self, gindex, pindex, group):
        """The step's settings for parameter ``pindex`` of group ``gindex``: the group's
        hyperparameters, the optimizer's args, then GlobalOptimManager's overrides on top."""
        config = {
            "betas": group["betas"],
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "lr": group["lr"],
            "alpha": group.get("alpha", 0.0),
            "t_alpha": group.get("t_alpha", None),
            "t_beta3": group.get("t_beta3", None),
            "optim_bits": self.args.optim_bits,
            "min_8bit_size": self.args.min_8bit_size,
            "max_unorm": self.args.max_unorm,
            "skip_zeros": self.args.skip_zeros,
        }
        config.update(self.mng.index2config.get((gindex, pindex), {}))
        # By id too, so that override_config works before or after register_parameters.
        config.update(self.mng.pid2config.get(id(self.param_groups[gindex]["params"][pindex]), {}))
        return config

    # ---- states ----------------------------------------------------------------------------------

    @torch.no_grad()
    def init_state(self, group, p, gindex, pindex):
        """Step 0 of parameter p: state1 and, for a 2-state optimizer, state2, in fp32 or, for
        optim_bits 8 and at least min_8bit_size elements, as 8-bit codes with their qmap and
        per-block absmax (AdEMAMix: state1 [2, *p.shape], absmax1 [2, blocks])."""
        config = self.get_config(gindex, pindex, group)
        bits = config["optim_bits"]
        if bits not in (8, 32):
            raise NotImplementedError(f"Amount of optimizer bits not supported: {bits}")
        # 8-bit or not by the whole parameter's size (the same choice on every shard of a DTensor),
        # the states by the shard this process updates.
        dtype = torch.uint8 if bits == 8 and p.numel() >= config["min_8bit_size"] else torch.float32
        shard = _local(p)
        lead = (self._emas,) if self._emas > 1 else ()
        blocks = (shard.numel() + BLOCKSIZE - 1) // BLOCKSIZE
        state = self.state[p]
        state["step"] = 0
        state["state1"] = self._state_buffer(p, (*lead, *shard.shape), dtype)
        if dtype == torch.uint8:
            state["qmap1"] = self._qmap("dynamic", p.device)
            state["absmax1"] = torch.zeros((*lead, blocks), dtype=torch.float32, device=p.device)
        if self._two_states:
            state["state2"] = self._state_buffer(p, shard.shape, dtype)
            if dtype == torch.uint8:
                state["qmap2"] = self._qmap("udynamic", p.device)
                state["absmax2"] = torch.zeros((blocks,), dtype=torch.float32, device=p.device)
        if config["max_unorm"] > 0.0:
            state["unorm_vec"] = torch.zeros((1,), device=p.device)

    def get_state_buffer(self, p, dtype=torch.float32):
        """A zero state of p's shape: paged (managed memory) for a paged optimizer on a GPU when it
        has at least 1e5 elements, else an ordinary tensor on p's device."""
        return self._state_buffer(p, p.shape, dtype)

    def _state_buffer(self, p, shape, dtype):
        if p.device.type == "cpu":
            if self.is_paged and not getattr(self, "_cpu_paged_warned", False):
                warnings.warn("Paged optimizers are not supported on CPU. Falling back to non-paged optimizer "
                              "behavior.", stacklevel=2)
                self._cpu_paged_warned = True
            return torch.zeros(shape, dtype=dtype, device=p.device)
        if not self.is_paged or p.numel() < PAGED_MIN_NUMEL:
            return torch.zeros(shape, dtype=dtype, device=p.device)
        # Zero-filled managed memory, freed with the tensor (so not kept in the page manager).
        return F.get_paged(*shape, dtype=dtype, device=p.device)

    def prefetch_state(self, p):
        """Starts moving p's paged states to its GPU, on the current stream (not while the stream
        is captured in a CUDA graph, which cannot hold a prefetch: the kernels then fault the
        pages in)."""
        if not self.is_paged or (p.is_cuda and torch.cuda.is_current_stream_capturing()):
            return
        for key in ("state1", "state2"):
            buffer = self.state[p].get(key)
            if getattr(buffer, "is_paged", False):
                F.prefetch_tensor(buffer)


class Optimizer2State(Optimizer8bit):
    """Base of the optimizers with two states per element (Adam, AdamW, LAMB, AdEMAMix).

    Arguments:
        optimizer_name (`str`): the kernel's name ("adam", "lamb", "ademamix").
        params: the parameters or param groups to optimize.
        lr (`float`, defaults to 1e-3): the learning rate.
        betas (`tuple`, defaults to (0.9, 0.999)): the decay rates (AdEMAMix: a third, beta3).
        eps (`float`, defaults to 1e-8): added to the denominator.
        weight_decay (`float`, defaults to 0.0): decoupled weight decay.
        optim_bits (`int`, defaults to 32): 32 or 8 (blockwise 8-bit states).
        args (`object`, defaults to `None`): overrides optim_bits, min_8bit_size, max_unorm and skip_zeros.
        min_8bit_size (`int`, defaults to 4096): smaller parameters keep 32-bit states.
        max_unorm (`float`, defaults to 0.0): > 0 clips the update norm to max_unorm times the parameter's norm.
        skip_zeros (`bool`, defaults to `False`): leave elements with a zero gradient untouched.
        is_paged (`bool`, defaults to `False`): keep large states in paged (managed) memory.
        alpha (`float`, defaults to 0.0): AdEMAMix's weight of the slow EMA.
        t_alpha, t_beta3 (`int`, *optional*): AdEMAMix's warm-up steps of alpha and beta3.
    """

    def __init__(
        self,
        optimizer_name,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        optim_bits=32,
        args=None,
        min_8bit_size=4096,
        max_unorm=0.0,
        skip_zeros=False,
        is_paged=False,
        alpha=0.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
    ):
        betas = _check_hyperparameters(lr, eps, betas, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, alpha=alpha, t_alpha=t_alpha,
                        t_beta3=t_beta3)
        super().__init__(params, defaults, optim_bits, is_paged)
        self.args = _optimizer_args(args, optim_bits, min_8bit_size, max_unorm, skip_zeros)
        self.optimizer_name = optimizer_name

    _two_states = True

    def _coefficients(self, config, step):
        betas = config["betas"]
        return betas[0], betas[1], betas[2] if len(betas) >= 3 else 0.0, config.get("alpha", 0.0)


class Optimizer1State(Optimizer8bit):
    """Base of the optimizers with one state per element (SGD, LARS, RMSprop, Adagrad, Lion).

    Arguments as Optimizer2State's (without alpha, t_alpha, t_beta3); betas (defaults to
    (0.9, 0.0)) carry the kernel's coefficients: (momentum, dampening) for SGD and LARS,
    (alpha, momentum) for RMSprop, (beta1, beta2) for Lion, (0, 0) for Adagrad.
    """

    def __init__(
        self,
        optimizer_name,
        params,
        lr=1e-3,
        betas=(0.9, 0.0),
        eps=1e-8,
        weight_decay=0.0,
        optim_bits=32,
        args=None,
        min_8bit_size=4096,
        max_unorm=0.0,
        skip_zeros=False,
        is_paged=False,
    ):
        betas = _check_hyperparameters(lr, eps, betas, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, optim_bits, is_paged)
        self.args = _optimizer_args(args, optim_bits, min_8bit_size, max_unorm, skip_zeros)
        self.optimizer_name = optimizer_name

    def _coefficients(self, config, step):
        betas = config["betas"]
        return betas[0], betas[1], 0.0, 0.0
