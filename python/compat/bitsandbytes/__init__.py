"""bitsandbytes, provided by nybble: ``import bitsandbytes`` gives nybble's API under the
reference's (bitsandbytes 0.50) names, so transformers, peft and accelerate run unchanged.

This package adds no behaviour. Every name it offers is nybble's own object:

* top-level names (``matmul``, ``matmul_4bit``, ``MatmulLtState``, ``features``,
  ``supported_torch_devices``, the submodules ``nn``, ``functional``, ...) are looked up on
  ``nybble`` when first asked for (module ``__getattr__``, PEP 562), so names nybble gains later
  appear here without a list to keep in step;
* submodules are aliases: ``import bitsandbytes.nn.modules`` puts the module object
  ``nybble.nn.modules`` into ``sys.modules`` under that name too (see ``_AliasFinder``). Classes
  are therefore identical under both names and isinstance checks work across them; pickles name
  ``nybble.*``, which loads wherever this package does.

Only ``__version__`` and ``__main__`` (``python -m bitsandbytes``) are this package's own.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

import nybble

# The reference release whose API this mirrors; the local label says which implementation runs.
# Downstream version gates (transformers >= 0.46.1, accelerate >= 0.39.0) compare the release part.
# Also the distribution's version (python/compat/pyproject.toml reads it from here).
__version__ = "0.50.2+nybble"


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``bitsandbytes.X.Y`` as the module object ``nybble.X.Y``.

    Why a finder rather than copying nybble's submodules into ``sys.modules`` once: a copy misses
    submodules that nybble imports later (or never imports itself, e.g. ``nybble.diagnostics``),
    and for those the ordinary path finder would search the aliased parent's ``__path__`` (which
    is nybble's directory) and execute nybble's file a second time as a different module, with
    classes that isinstance would not recognise. This finder sits first on ``sys.meta_path`` and
    answers for every ``bitsandbytes.*`` name that exists in nybble, with the one module object.
    """

    _OWN = frozenset({f"{__name__}.__main__"})  # files of this package, found the ordinary way

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(__name__ + ".") or fullname in self._OWN:
            return None
        target_name = "nybble" + fullname[len(__name__):]
        try:
            target_spec = importlib.util.find_spec(target_name)
        except ModuleNotFoundError:  # a parent of target_name does not exist either
            return None
        if target_spec is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, loader_state=target_name,
                                              is_package=target_spec.submodule_search_locations is not None)

    def create_module(self, spec):
        module = importlib.import_module(spec.loader_state)
        spec.loader_state = module.__spec__  # kept for exec_module, see there
        return module

    def exec_module(self, module):
        # The import system has just set module.__spec__ to the alias spec (it always does, in
        # importlib._bootstrap._init_module_attrs); give the nybble module its own spec back.
        module.__spec__ = module.__spec__.loader_state


sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name):
    if name.startswith("__"):  # nybble's dunders (its __version__, __file__, ...) are not ours
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(nybble, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (nybble provides no such name)") from None


def __dir__():
    return sorted(set(globals()) | {n for n in dir(nybble) if not n.startswith("__")})
