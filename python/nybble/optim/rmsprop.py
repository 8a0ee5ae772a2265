"""RMSprop (spec §4.1): s = alpha * s + (1 - alpha) g^2, p -= lr g / (sqrt(s) + eps), weight decay
added to the gradient. ``momentum`` is accepted and ignored, as in the reference; alpha 0 and the
centered variant are not supported."""

from .optimizer import Optimizer1State

__all__ = ["RMSprop", "RMSprop8bit", "RMSprop32bit"]


def _check_rmsprop(alpha, centered) -> None:
    if alpha == 0:
        raise NotImplementedError("RMSprop with alpha==0.0 is not supported!")
    if centered:
        raise NotImplementedError("Centered RMSprop is not supported!")


class RMSprop(Optimizer1State):
    """RMSprop; ``optim_bits`` 32 or 8."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 optim_bits=32, args=None, min_8bit_size=4096):
        _check_rmsprop(alpha, centered)
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, optim_bits, args, min_8bit_size)


class RMSprop8bit(Optimizer1State):
    """RMSprop with 8-bit states."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, args=None,
                 min_8bit_size=4096):
        _check_rmsprop(alpha, centered)
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, 8, args, min_8bit_size)


class RMSprop32bit(Optimizer1State):
    """RMSprop with 32-bit states."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, args=None,
                 min_8bit_size=4096):
        _check_rmsprop(alpha, centered)
        super().__init__("rmsprop", params, lr, (alpha, momentum), eps, weight_decay, 32, args, min_8bit_size)
