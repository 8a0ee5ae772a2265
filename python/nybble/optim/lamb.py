"""LAMB (spec §4.1): Adam's update clipped to ``max_unorm`` times the parameter's norm (trust
ratio), in 32-bit and, unlike the reference, 8-bit too. ``bias_correction``, ``amsgrad`` and
``adam_w_mode`` are accepted and ignored, as in the reference."""

from .optimizer import Optimizer2State

__all__ = ["LAMB", "LAMB8bit", "LAMB32bit"]


class LAMB(Optimizer2State):
    """LAMB; ``optim_bits`` 32 or 8."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, optim_bits=32, args=None, min_8bit_size=4096, max_unorm=1.0):
        super().__init__("lamb", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size,
                         max_unorm=max_unorm)


class LAMB8bit(Optimizer2State):
    """LAMB with 8-bit states (``amsgrad`` False and ``max_unorm`` 1.0, as the reference requires)."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, args=None, min_8bit_size=4096, max_unorm=1.0):
        if amsgrad:
            raise ValueError("LAMB8bit does not support amsgrad=True")
        if max_unorm != 1.0:
            raise ValueError("LAMB8bit only supports max_unorm=1.0 (default value for compatibility)")
        super().__init__("lamb", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, max_unorm=max_unorm)


class LAMB32bit(Optimizer2State):
    """LAMB with 32-bit states."""

    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, adam_w_mode=True, args=None, min_8bit_size=4096, max_unorm=1.0):
        super().__init__("lamb", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, max_unorm=max_unorm)
