"""Adam with 32-bit or 8-bit blockwise states (spec §4.1). Weight decay is decoupled, applied
after the update as in the reference's kernels, so ``Adam(weight_decay=w)`` behaves like AdamW."""

from .optimizer import Optimizer2State, _check_8bit_variant

__all__ = ["Adam", "Adam8bit", "Adam32bit", "PagedAdam", "PagedAdam8bit", "PagedAdam32bit"]


class Adam(Optimizer2State):
    """Adam; ``optim_bits`` 32 or 8, ``is_paged`` for paged states. ``amsgrad`` is accepted and
    ignored, as in the reference."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        super().__init__("adam", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size,
                         is_paged=is_paged)


class Adam8bit(Optimizer2State):
    """Adam with 8-bit states (``amsgrad`` must be False, ``optim_bits`` left at its default)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        _check_8bit_variant("Adam8bit", amsgrad, optim_bits)
        super().__init__("adam", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, is_paged=is_paged)


class Adam32bit(Optimizer2State):
    """Adam with 32-bit states."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        super().__init__("adam", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, is_paged=is_paged)


class PagedAdam(Optimizer2State):
    """Adam with paged states (``is_paged`` is ignored)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        super().__init__("adam", params, lr, betas, eps, weight_decay, optim_bits, args, min_8bit_size, is_paged=True)


class PagedAdam8bit(Optimizer2State):
    """Adam with paged 8-bit states."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        _check_8bit_variant("PagedAdam8bit", amsgrad, optim_bits)
        super().__init__("adam", params, lr, betas, eps, weight_decay, 8, args, min_8bit_size, is_paged=True)


class PagedAdam32bit(Optimizer2State):
    """Adam with paged 32-bit states."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, optim_bits=32,
                 args=None, min_8bit_size=4096, is_paged=False):
        super().__init__("adam", params, lr, betas, eps, weight_decay, 32, args, min_8bit_size, is_paged=True)
