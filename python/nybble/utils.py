"""nybble.utils: the helpers of ``bitsandbytes.utils`` (0.50.2).

JSON packing of QuantState metadata into a uint8 tensor (checkpoint format, spec §1.7), the legacy
8-bit weight-format mapping (spec §1.8), ``replace_linear``, device synchronization, and the
research helpers for finding outlier feature dimensions (``OutlierTracer``, ``find_outlier_dims``).
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess

import torch

logger = logging.getLogger(__name__)

# Legacy layouts of Linear8bitLt's int8 weight; only "row" (0) exists since 0.45.
LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING = {val: name for name, val in LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING.items()}


def pack_dict_to_tensor(source_dict):
    """``json.dumps(source_dict)`` (default separators) as a 1-D uint8 tensor of its UTF-8 bytes,
    so non-tensor state can live in a safetensors file."""
    data = json.dumps(source_dict).encode("utf-8")
    return torch.tensor(list(data), dtype=torch.uint8)


def unpack_tensor_to_dict(tensor_data):
    """The inverse of ``pack_dict_to_tensor``: the tensor's bytes decoded as UTF-8 JSON. Raises
    ValueError (UnicodeDecodeError, json.JSONDecodeError) if they are not."""
    raw = tensor_data.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return json.loads(bytes(raw.tolist()).decode("utf-8"))


def sync_gpu(t: torch.Tensor):
    """Waits for the device of ``t`` (CUDA or XPU) to finish its work; nothing for the CPU."""
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    elif t.device.type == "xpu":
        torch.xpu.synchronize()


def execute_and_return(command_string: str) -> tuple[str, str]:
    """Runs a command (no shell) and returns its stripped stdout and stderr."""
    proc = subprocess.Popen(shlex.split(command_string), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    return out.decode("UTF-8").strip(), err.decode("UTF-8").strip()


def replace_linear(model, linear_replacement, skip_modules=("lm_head",), copy_weights=False,
                   post_processing_function=None):
    """Replaces every ``torch.nn.Linear`` in ``model`` (recursively) whose name is not in
    ``skip_modules`` by ``linear_replacement(in_features, out_features, has_bias)``.

    ``copy_weights`` moves the old weight and bias Parameters into the new module;
    ``post_processing_function`` names a method called on the OLD module afterwards, if it has one
    (as the reference does). Returns ``model``.
    """
    for name, module in model.named_children():
        if len(list(module.children())) > 0:
            replace_linear(module, linear_replacement, skip_modules, copy_weights, post_processing_function)
        if isinstance(module, torch.nn.Linear) and name not in skip_modules:
            new = linear_replacement(module.in_features, module.out_features, module.bias is not None)
            model._modules[name] = new
            if copy_weights:
                new.weight = module.weight
                new.bias = module.bias
            if post_processing_function is not None:
                func = getattr(module, post_processing_function, None)
                if func is not None:
                    func(module)
    return model


# ---- outlier dimensions (research helpers of LLM.int8) ---------------------------------------------


def find_outlier_dims(weight, reduction_dim=0, zscore=4.0, topk=None, rdm=False):
    """Indices of dimensions whose standard deviation (over ``reduction_dim``) is an outlier: a
    z-score above ``zscore``, or the ``topk`` largest. ``rdm`` returns ``topk`` random indices."""
    if rdm:
        return torch.randint(0, weight.shape[1], size=(topk,), device=weight.device).long()
    std = weight.std(reduction_dim)
    z = (std - std.mean()) / std.std()
    if topk is not None:
        return torch.topk(std.abs(), k=topk, dim=0).indices
    return torch.where(z > zscore)[0]


def outlier_hook(module, input):
    """Forward pre-hook of ``OutlierTracer``: records the outlier dimensions for the input of
    each ``torch.nn.Linear``. The first layer is judged from its input (z-score of the hidden
    dimension's std, or any |x| > 6); later layers from the previous layer's weight. Once a
    weight is seen again, all hooks are removed."""
    if not isinstance(module, torch.nn.Linear):
        raise TypeError(f"outlier_hook: module must be a torch.nn.Linear, got {type(module).__name__}")
    tracer = OutlierTracer.get_instance()
    hvalue = tracer.get_hvalue(module.weight)
    if hvalue in tracer.hvalue2outlier_idx:
        for hook in tracer.hooks:
            hook.remove()
        return
    tracer.outliers.append(find_outlier_dims(module.weight))
    tracer.hvalues.append(hvalue)
    if len(tracer.outliers) > 1:
        # This layer's input dimensions are the previous layer's output dimensions.
        previous = tracer.outliers[-1]
        if previous.numel() > 0 and previous.max() >= module.weight.shape[1]:
            raise ValueError(f"outlier_hook: outlier index {int(previous.max())} is out of range for "
                             f"in_features = {module.weight.shape[1]}")
        tracer.hvalue2outlier_idx[hvalue] = previous
    else:
        x = input[0]
        by_std = find_outlier_dims(x.view(-1, x.shape[-1]), reduction_dim=1, zscore=3)
        large = (torch.abs(x) > 6).sum(dim=list(range(x.dim() - 1)))
        tracer.hvalue2outlier_idx[hvalue] = torch.cat([by_std, torch.where(large > 0)[0]]).unique()


class OutlierTracer:
    """Singleton that traces outlier feature dimensions of every Linear layer of a model during a
    forward pass (``initialize(model)`` registers ``outlier_hook``; ``get_outliers(weight)``)."""

    _instance = None

    def __init__(self):
        raise RuntimeError("Call get_instance() instead")

    def initialize(self, model):
        self.last_w = None
        self.current_outlier_dims = None
        self.hvalues = []
        self.outliers = []
        self.hvalue2outlier_idx = {}
        self.initialized = True
        self.hooks = [m.register_forward_pre_hook(outlier_hook) for m in model.modules()
                      if isinstance(m, torch.nn.Linear)]

    def is_initialized(self):
        return getattr(self, "initialized", False)

    def get_hvalue(self, weight):
        return weight.data.untyped_storage().data_ptr()

    def get_outliers(self, weight):
        if not self.is_initialized():
            logger.warning("Outlier tracer is not initialized...")
            return None
        return self.hvalue2outlier_idx.get(self.get_hvalue(weight))

    @classmethod
    def get_instance(cls):
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
        return cls._instance
