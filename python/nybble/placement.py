"""Placing the modules of a loaded (quantized) model on devices of their own: ``place_modules``.

transformers judges a ``device_map`` at ``from_pretrained`` before bitsandbytes is involved: a map
that mixes a GPU and the CPU is refused for 4-bit and 8-bit, or, with
``llm_int8_enable_fp32_cpu_offload=True``, loads the CPU part unquantized. nybble's layers compute
on either device and move as they are (their packed bytes and quant states), so this module takes
the other road: load the model on one device, then move named modules and install accelerate's
``AlignDevicesHook`` on each, so that every module runs where its weights are and hands its
outputs back on its caller's device.

accelerate is imported when ``place_modules`` is called, not with nybble.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Mapping

import torch

__all__ = ["place_modules"]

# Keyword arguments that carry a KV cache (transformers names it "cache" since 5.x and
# "past_key_values" before; models list theirs in _skip_keys_device_placement, added to these).
# A cache is one object for all layers whose per-layer tensors are created on the device of the
# layer that fills them (DynamicLayer.lazy_initialization), so a hook must hand it on untouched.
_CACHE_KEYS = ("cache", "past_key_values")


def place_modules(model: torch.nn.Module, device_map) -> torch.nn.Module:
    """Moves the named modules of ``model`` to the given devices and makes the model run there.

    ``device_map`` is a dict (or a sequence of pairs) ``{qualified module name: device}``; a device
    is a ``torch.device``, a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or a GPU index. For each
    entry the module moves with ``Module.to`` (a 4-bit or 8-bit layer keeps its packed bytes and
    quant state) and gets an ``accelerate.hooks.AlignDevicesHook`` that moves its inputs to that
    device and its outputs back to the device the inputs came from (``io_same_device``), so CPU
    modules compute with nybble's CPU kernels in a model that otherwise runs on the GPU, or the
    other way round. A KV cache passed as ``cache``/``past_key_values`` is handed on as it is: the
    cache tensors of a CPU layer live on the CPU, those of a GPU layer on the GPU. Modules bound
    for the CPU move first, so that a swap fits in GPU memory.

    Rules, checked before anything changes (``ValueError``/``TypeError`` naming the entry):
    every name is a module of ``model`` (``""`` is the model itself), given once, and no name lies
    inside another; a device exists on this machine (``meta`` and accelerate's ``"disk"`` are not
    places to compute); a mapped module holds no weights on the meta device (accelerate offload);
    a parameter shared by several modules (tied weights) ends up on one device.

    A container without a ``forward`` of its own (``ModuleList``, ``ModuleDict``, e.g.
    ``"model.layers"``) stands for its elements. The parts of the model not named keep their
    devices; when they sit on one device the model itself also gets a hook that moves its inputs
    there. Modules placed by an earlier call can be placed again (back to the GPU, say); the
    hooks that pinned submodules of a newly placed module to a device are removed. A cache filled
    before a placement keeps its tensors where they were: start a new one (``generate`` does).
    ``model.hf_device_map``, if the model has one, is updated. ``model`` is returned.
    """
    try:
        from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_module
    except ImportError as e:
        raise ImportError("place_modules needs accelerate (pip install accelerate) for its module hooks") from e

    placed = _plan(model, device_map)
    skip_keys = sorted(set(getattr(model, "_skip_keys_device_placement", None) or ()) | set(_CACHE_KEYS))

    def pins(module):
        hook = getattr(module, "_hf_hook", None)
        return isinstance(hook, AlignDevicesHook) and hook.execution_device is not None

    # Module.to, not model-class overrides: PreTrainedModel.to refuses 8-bit models for the
    # reference's sake; nybble's layers move their own state in _apply, which a parent's .to reaches.
    for _, module, device in sorted(placed, key=lambda p: p[2].type != "cpu"):
        torch.nn.Module.to(module, device)

    for _, module, device in placed:
        for sub in itertools.islice(module.modules(), 1, None):
            if pins(sub):  # it would send its inputs to where the submodule no longer is
                remove_hook_from_module(sub)
        hook = AlignDevicesHook(io_same_device=True, skip_keys=skip_keys)
        old = getattr(module, "_hf_hook", None)
        # With an execution_device, init_hook would place the weights itself through accelerate's
        # set_module_tensor_to_device, which rebuilds bitsandbytes parameter classes from their
        # data; the module is already where it belongs, so the device is set after init.
        add_hook_to_module(module, hook, append=old is not None and not isinstance(old, AlignDevicesHook))
        hook.execution_device = device

    if not any(name == "" for name, _, _ in placed):
        rest = _unplaced_devices(model, pins)
        old = getattr(model, "_hf_hook", None)
        if len(rest) == 1 and (old is None or (isinstance(old, AlignDevicesHook) and not old.offload)):
            if old is None:
                old = AlignDevicesHook(io_same_device=True, skip_keys=skip_keys)
                add_hook_to_module(model, old)
            old.execution_device, old.io_same_device = rest.pop(), True

    hf_map = getattr(model, "hf_device_map", None)
    if isinstance(hf_map, dict):
        kept = {k: v for k, v in hf_map.items() if not any(_inside(k, name) for name, _, _ in placed)}
        # accelerate's convention: a GPU index for CUDA devices, the type name otherwise.
        model.hf_device_map = {**kept, **{name: d.index if d.type == "cuda" else str(d) for name, _, d in placed}}
    return model


def _inside(name: str, prefix: str) -> bool:
    """Whether module (or tensor) ``name`` is ``prefix`` or lies inside it."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _entries(device_map) -> list[tuple[str, object]]:
    if isinstance(device_map, Mapping):
        entries = list(device_map.items())
    elif isinstance(device_map, Iterable) and not isinstance(device_map, (str, bytes)):
        entries = list(device_map)
        if not all(isinstance(e, (tuple, list)) and len(e) == 2 for e in entries):
            raise TypeError("device_map: must be a dict {module name: device} or a sequence of (name, device) "
                            f"pairs, got a {type(device_map).__name__} holding {entries[:3]!r}")
    else:
        raise TypeError(f"device_map: must be a dict {{module name: device}}, got {type(device_map).__name__}")
    for name, _ in entries:
        if not isinstance(name, str):
            raise TypeError(f"device_map: module names must be strings, got {name!r} ({type(name).__name__})")
    return entries


def _device(name: str, value) -> torch.device:
    """``value`` as a device that exists here, with its index filled in."""
    where = f"device_map[{name!r}]"
    if isinstance(value, bool) or not isinstance(value, (str, int, torch.device)):
        raise TypeError(f"{where}: a device is a torch.device, a string or a GPU index, got {value!r} "
                        f"({type(value).__name__})")
    if value == "disk":
        raise ValueError(f"{where}: device 'disk' is accelerate's offload, not a device to compute on; "
                         "place_modules puts modules on the CPU or a GPU")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{where}: {value!r} is not a device ({e})") from None
    if device.type == "meta":
        raise ValueError(f"{where}: device 'meta' holds no data; place_modules puts modules on the CPU or a GPU")
    if device.type == "cpu":
        return torch.device("cpu")
    backend = getattr(torch, device.type, None)
    if backend is None or not backend.is_available():
        raise ValueError(f"{where}: device {value!r} does not exist: no {device.type} device is available")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None:
        index = device.index
    else:
        index = backend.current_device() if hasattr(backend, "current_device") else 0
    if index >= count:
        raise ValueError(f"{where}: device {value!r} does not exist: this machine has {count} {device.type} "
                         f"device(s), indices 0..{count - 1}")
    return torch.device(device.type, index)


def _has_forward(module: torch.nn.Module) -> bool:
    return type(module).forward is not torch.nn.Module.forward


def _expand(name: str, module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """A module whose forward is called, or a container's elements: a hook on a ModuleList would
    never run (its parent iterates it and calls the elements)."""
    if _has_forward(module):
        return [(name, module)]
    if any(True for _ in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))):
        raise ValueError(f"device_map[{name!r}]: {type(module).__name__} has no forward and holds tensors of its own, "
                         "which its parent uses directly; map the module that uses them")
    prefix = f"{name}." if name else ""
    return [p for child_name, child in module.named_children() for p in _expand(prefix + child_name, child)]


def _plan(model, device_map) -> list[tuple[str, torch.nn.Module, torch.device]]:
    """The validated placement: (name, module, device) for each module to move and hook."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: must be a torch.nn.Module, got {type(model).__name__}")
    entries = _entries(device_map)
    modules = dict(model.named_modules(remove_duplicate=False))

    seen: dict[str, object] = {}
    owner: dict[int, str] = {}
    for name, value in entries:
        if name in seen:
            raise ValueError(f"device_map: module name {name!r} is given twice (as {seen[name]!r} and {value!r})")
        seen[name] = value
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            hint = f"; close names: {', '.join(map(repr, close))}" if close else ""
            raise ValueError(f"device_map: {type(model).__name__} has no module named {name!r} "
                             f"(names are those of model.named_modules(), '' is the model itself){hint}")
        first = owner.setdefault(id(modules[name]), name)
        if first != name:
            raise ValueError(f"device_map: {first!r} and {name!r} are the same module (registered under both "
                             "names); give it once")
    for name in seen:
        parts = name.split(".") if name else []
        outer = next((a for a in ["", *(".".join(parts[:i]) for i in range(1, len(parts)))] if a in seen), None)
        if outer is not None:
            raise ValueError(f"device_map: {name!r} lies inside {outer!r}; a module and one inside it cannot both be "
                             "placed in one call (place the outer one, or list the inner modules one by one)")

    placed = [(sub_name, sub, device) for name, value in entries
              for device in [_device(name, value)] for sub_name, sub in _expand(name, modules[name])]

    for name, module, _ in placed:
        for tensor_name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
            if t.device.type == "meta":
                raise ValueError(f"device_map[{name!r}]: {tensor_name!r} is on the meta device (offloaded by "
                                 "accelerate, or not loaded); place_modules moves loaded weights only")
    _check_shared_tensors(model, placed)
    return placed


def _check_shared_tensors(model, placed) -> None:
    """A tensor held by several modules (tied weights) must end on one device: a move takes the
    tensor with it, and the module on the other side would then compute with it off its device."""
    final: dict[int, tuple[str, torch.device]] = {}
    tensors = itertools.chain(model.named_parameters(remove_duplicate=False),
                              model.named_buffers(remove_duplicate=False))
    for tensor_name, t in tensors:
        device = next((d for name, _, d in placed if _inside(tensor_name, name)), t.device)
        other = final.setdefault(id(t), (tensor_name, device))
        if other[1] != device:
            raise ValueError(f"device_map: {other[0]!r} and {tensor_name!r} are one tensor (tied weights) that would "
                             f"end on {other[1]} and on {device}; map the modules holding it to one device")


def _unplaced_devices(model, pins) -> set[torch.device]:
    """The devices of the model's tensors outside the modules pinned to a device by a hook."""
    devices, stack = set(), [model]
    while stack:
        module = stack.pop()
        for t in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)):
            if t.device.type != "meta":
                devices.add(t.device)
        stack.extend(child for child in module.children() if not pins(child))
    return devices
