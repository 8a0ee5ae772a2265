"""Adagrad (spec §4.1): s += g^2, p -= lr g / (sqrt(s) + eps), weight decay added to the gradient.
lr_decay and initial_accumulator_value must be 0, as in the reference."""

from .optimizer import Optimizer1State

__all__ = ["Adagrad", "Adagrad8bit", "Adagrad32bit"]


def _check_adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps) -> None:
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if initial_accumulator_value != 0.0:
        raise ValueError("Initial accumulator value != 0.0 not supported!")
    if lr_decay != 0.0:
        raise ValueError("Lr Decay != 0.0 not supported!")


class Adagrad(Optimizer1State):
    """Adagrad; ``optim_bits`` 32 or 8."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 optim_bits=32, args=None, min_8bit_size=4096):
        _check_adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        super().__init__("adagrad", params, lr, (0.0, 0.0), eps, weight_decay, optim_bits, args, min_8bit_size)


class Adagrad8bit(Optimizer1State):
    """Adagrad with 8-bit states (``optim_bits`` must stay 8)."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 optim_bits=8, args=None, min_8bit_size=4096):
        _check_adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        if optim_bits != 8:
            raise ValueError("Adagrad8bit only supports optim_bits=8 (default value for compatibility)")
        super().__init__("adagrad", params, lr, (0.0, 0.0), eps, weight_decay, 8, args, min_8bit_size)


class Adagrad32bit(Optimizer1State):
    """Adagrad with 32-bit states (``optim_bits`` is ignored)."""

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 optim_bits=32, args=None, min_8bit_size=4096):
        _check_adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
        super().__init__("adagrad", params, lr, (0.0, 0.0), eps, weight_decay, 32, args, min_8bit_size)
