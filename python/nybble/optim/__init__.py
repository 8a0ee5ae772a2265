"""nybble.optim: optimizers (a later issue) and the GlobalOptimManager of config overrides."""

from .manager import GlobalOptimManager

__all__ = ["GlobalOptimManager"]
