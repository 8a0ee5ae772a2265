"""GlobalOptimManager: per-parameter optimizer config overrides (spec §4.4).

A process-wide singleton (``GlobalOptimManager.get_instance()``; the constructor raises). Modules
such as ``nn.StableEmbedding`` register ``{"optim_bits": 32}`` for their weight here, and the
8-bit optimizers read the overrides when they build per-parameter state:

* ``pid2config``: ``id(param) -> config dict`` (from ``override_config``),
* ``index2config``: ``(group_index, param_index) -> config dict`` (from ``register_parameters``),
* ``module_weight_config_triple``: ``[(module, param_name, config)]``, resolved by the optimizer
  at its first step (the module's parameter may be replaced, e.g. moved, before then).
"""

from __future__ import annotations

import torch


class GlobalOptimManager:
    _instance: GlobalOptimManager | None = None

    def __init__(self):
        raise RuntimeError("Call get_instance() instead")

    def initialize(self) -> None:
        """Forgets every override (tests call this between cases)."""
        self.pid2config: dict[int, dict] = {}
        self.index2config: dict[tuple[int, int], dict] = {}
        self.optimizer = None
        self.uses_config_override = False
        self.module_weight_config_triple: list[tuple[torch.nn.Module, str, dict]] = []

    @classmethod
    def get_instance(cls) -> GlobalOptimManager:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def register_parameters(self, params) -> None:
        """Records the (group, index) position of every parameter that already has an override.

        ``params`` is an iterable of tensors or of param-group dicts (``{"params": [...]}``)."""
        groups = list(params)
        if not groups:
            return
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group_index, group in enumerate(groups):
            for param_index, p in enumerate(group["params"]):
                config = self.pid2config.get(id(p))
                if config is not None:
                    self.index2config[(group_index, param_index)] = config

    def override_config(self, parameters, key=None, value=None, key_value_dict=None) -> None:
        """Overrides optimizer hyperparameters (``lr``, ``betas``, ``optim_bits``, ...) for the
        given parameter(s): either one ``key``/``value`` pair or a ``key_value_dict``.

        Example: ``GlobalOptimManager.get_instance().override_config(model.fc1.weight, "optim_bits", 32)``.
        """
        self.uses_config_override = True
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        if key is not None and value is not None:
            if key_value_dict is not None:
                raise ValueError("override_config: pass either key/value or key_value_dict, not both")
            key_value_dict = {key: value}
        if key_value_dict is None:
            return
        for p in parameters:
            config = self.pid2config.get(id(p))
            if config is None:
                self.pid2config[id(p)] = key_value_dict
            else:
                config.update(key_value_dict)

    def register_module_override(self, module: torch.nn.Module, param_name: str, config: dict) -> None:
        """Overrides ``config`` for ``getattr(module, param_name)``, resolved at the optimizer's
        first step (used by StableEmbedding/Embedding and transformers' Trainer for embeddings)."""
        self.module_weight_config_triple.append((module, param_name, config))
