"""AdEMAMix (arXiv 2409.03137; spec §4.1, §4.3): Adam's update plus a slow EMA (beta3) of the
gradient mixed in with weight alpha, with optional warm-up schedules of alpha (t_alpha steps) and
beta3 (t_beta3 steps). state1 holds both EMAs as [2, *p.shape]; in 8-bit, both are coded with
the signed map and scaled by the rows of a [2, ceil(n / 256)] absmax."""

import math
from collections.abc import Iterable
from typing import Literal, Optional

import torch

from .optimizer import Optimizer2State

__all__ = ["AdEMAMix", "AdEMAMix8bit", "AdEMAMix32bit", "PagedAdEMAMix", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit"]


class AdEMAMix(Optimizer2State):
    """AdEMAMix; ``optim_bits`` 32 or 8, ``is_paged`` for paged states."""

    _emas = 2

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        optim_bits: Literal[8, 32] = 32,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ):
        super().__init__("ademamix", params=params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         optim_bits=optim_bits, args=None, min_8bit_size=min_8bit_size, is_paged=is_paged,
                         alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3)

    def _coefficients(self, config, step):
        """betas and alpha of step ``step``: alpha ramps up linearly over t_alpha steps; beta3
        rises from beta1 to its value over t_beta3 steps along the paper's log-space schedule."""
        beta1, beta2, beta3 = config["betas"]
        alpha, t_alpha, t_beta3 = config["alpha"], config["t_alpha"], config["t_beta3"]
        if step is None and (t_alpha or t_beta3):
            raise ValueError(f"t_alpha = {t_alpha}, t_beta3 = {t_beta3}: AdEMAMix's schedules need the step count on "
                             "the host, so they cannot be used with a tensor lr (a step on device scalars); pass lr "
                             "as a float or leave both schedules unset")
        if t_alpha:
            alpha = min(step * alpha / t_alpha, alpha)
        if t_beta3:
            ln_beta1, ln_beta3 = math.log(beta1), math.log(beta3)
            scale = step / t_beta3
            beta3 = min(math.exp((ln_beta1 * ln_beta3) / ((1 - scale) * ln_beta3 + scale * ln_beta1)), beta3)
        return beta1, beta2, beta3, alpha


class AdEMAMix8bit(AdEMAMix):
    """AdEMAMix with 8-bit states."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ):
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                         weight_decay=weight_decay, optim_bits=8, min_8bit_size=min_8bit_size, is_paged=is_paged)


class PagedAdEMAMix8bit(AdEMAMix8bit):
    """AdEMAMix with paged 8-bit states."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
    ):
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                         weight_decay=weight_decay, min_8bit_size=min_8bit_size, is_paged=True)


class PagedAdEMAMix(AdEMAMix):
    """AdEMAMix with paged states."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        optim_bits: Literal[8, 32] = 32,
        min_8bit_size: int = 4096,
    ):
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                         weight_decay=weight_decay, optim_bits=optim_bits, min_8bit_size=min_8bit_size, is_paged=True)


class AdEMAMix32bit(AdEMAMix):
    """AdEMAMix with 32-bit states. (The reference derives it from Optimizer2State directly, so it
    allocates a single EMA and its steps fail; here it is AdEMAMix with optim_bits=32.)"""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
    ):
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                         weight_decay=weight_decay, optim_bits=32, min_8bit_size=min_8bit_size, is_paged=is_paged)


class PagedAdEMAMix32bit(AdEMAMix32bit):
    """AdEMAMix with paged 32-bit states."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: Optional[int] = None,
        t_beta3: Optional[int] = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
    ):
        super().__init__(params, lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3, eps=eps,
                         weight_decay=weight_decay, min_8bit_size=min_8bit_size, is_paged=True)
