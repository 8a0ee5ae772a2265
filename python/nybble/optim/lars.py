"""LARS (spec §4.1): SGD with momentum whose update is clipped to ``max_unorm`` times the
parameter's norm (trust ratio), in 32-bit and, unlike the reference, 8-bit too; and PytorchLARS,
the reference's plain-torch LARS that the tests compare against. ``dampening`` and ``nesterov``
are accepted and ignored by LARS, as in the reference; momentum 0 is not supported."""

import torch

from .optimizer import Optimizer1State

__all__ = ["LARS", "LARS8bit", "LARS32bit", "PytorchLARS"]


def _check_momentum(momentum) -> None:
    if momentum == 0:
        raise NotImplementedError("LARS without momentum is not supported!")


class LARS(Optimizer1State):
    """LARS; ``optim_bits`` 32 or 8."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, optim_bits=32, args=None,
                 min_8bit_size=4096, max_unorm=0.02):
        _check_momentum(momentum)
        super().__init__("lars", params, lr, (momentum, dampening), 0.0, weight_decay, optim_bits, args,
                         min_8bit_size, max_unorm=max_unorm)


class LARS8bit(Optimizer1State):
    """LARS with 8-bit states."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, max_unorm=0.02):
        _check_momentum(momentum)
        super().__init__("lars", params, lr, (momentum, dampening), 0.0, weight_decay, 8, args, min_8bit_size,
                         max_unorm=max_unorm)


class LARS32bit(Optimizer1State):
    """LARS with 32-bit states."""

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False, args=None,
                 min_8bit_size=4096, max_unorm=0.02):
        _check_momentum(momentum)
        super().__init__("lars", params, lr, (momentum, dampening), 0.0, weight_decay, 32, args, min_8bit_size,
                         max_unorm=max_unorm)


class PytorchLARS(torch.optim.Optimizer):
    """LARS in plain torch: torch's SGD (weight decay on the gradient, momentum with dampening,
    optional Nesterov) with the update scaled down to ``max_unorm * ||p||`` when its norm exceeds
    that (fp32 parameters)."""

    def __init__(self, params, lr=0.01, momentum=0, dampening=0, weight_decay=0, nesterov=False, max_unorm=0.02):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        max_unorm=max_unorm)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    @torch.no_grad()
    def step(self, closure=None):
        """One step for every parameter with a gradient; returns the closure's loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum, max_unorm = group["momentum"], group["max_unorm"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"] != 0:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                update = d_p
                if momentum != 0:
                    buf = self.state[p].get("momentum_buffer")
                    if buf is None:
                        buf = self.state[p]["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - group["dampening"])
                    update = d_p + momentum * buf if group["nesterov"] else buf
                scale = 1.0
                if max_unorm > 0.0:
                    if p.dtype != torch.float32:
                        raise TypeError(f"PytorchLARS with max_unorm > 0 needs float32 parameters, got {p.dtype}")
                    limit = max_unorm * torch.norm(p)
                    unorm = torch.norm(update)
                    if unorm > limit:
                        scale = limit / unorm
                p.add_(update * scale, alpha=-group["lr"])
        return loss
