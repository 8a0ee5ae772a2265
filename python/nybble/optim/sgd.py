"""SGD with momentum (spec §4.1): m = g at the first step, then momentum * m + g; weight decay
added to the gradient. ``dampening`` and ``nesterov`` are accepted and ignored, as in the
reference; momentum 0 is not supported."""

from .optimizer import Optimizer1State

__all__ = ["SGD", "SGD8bit", "SGD32bit"]


def _check_momentum(momentum) -> None:
    if momentum == 0:
        raise NotImplementedError("SGD without momentum is not supported!")


class SGD(Optimizer1State):
    """SGD with momentum; ``optim_bits`` 32 or 8."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None,
                 min_8bit_size=4096):
        _check_momentum(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, optim_bits, args,
                         min_8bit_size)


class SGD8bit(Optimizer1State):
    """SGD with momentum, 8-bit states."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096):
        _check_momentum(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size)


class SGD32bit(Optimizer1State):
    """SGD with momentum, 32-bit states."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096):
        _check_momentum(momentum)
        super().__init__("momentum", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size)
