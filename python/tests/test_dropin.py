"""The drop-in distribution ``bitsandbytes`` (python/compat): the reference's API surface (spec §7)
under the reference's module paths, every name the same object as nybble's, a version that
downstream gates accept, ``python -m nybble`` / ``python -m bitsandbytes``, and a comparison of
names and signatures with the real bitsandbytes 0.50.2.

The optimizers' behaviour is left to test_optim.py; here only their module paths, names and
signatures.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from refrun import ROOT, requires_reference, run_reference

import nybble

bnb = pytest.importorskip("bitsandbytes", reason="the drop-in is neither installed (pip install ./python/compat) "
                          "nor on the path (PYTHONPATH=python/compat)")

# ---- (a) the surface of spec §7 ----------------------------------------------------------------------

# Module paths downstream imports; each must be nybble's module of the same path.
MODULES = ["functional", "nn", "nn.modules", "optim", "autograd", "autograd._functions", "utils"]

# Names downstream uses (spec §7, §1.7, §2.2-2.5, §3.4-3.5, §4.4), by module.
SURFACE = {
    "": ["matmul", "matmul_4bit", "MatmulLtState", "nn", "optim", "functional", "utils", "autograd", "features",
         "supported_torch_devices"],
    "functional": ["QuantState", "quantize_4bit", "dequantize_4bit", "quantize_blockwise", "dequantize_blockwise",
                   "int8_vectorwise_quant", "int8_vectorwise_dequant", "int8_linear_matmul", "int8_mm_dequant",
                   "gemv_4bit"],
    "nn": ["Linear4bit", "LinearNF4", "LinearFP4", "Params4bit", "Linear8bitLt", "Int8Params"],
    "autograd._functions": ["MatmulLtState", "MatMul8bitLt", "MatMul4Bit", "matmul", "matmul_4bit"],
    "optim": ["GlobalOptimManager"],
}

# How transformers, peft, accelerate, TGI and vLLM call them (§7): (path, args, kwargs). Checked by
# binding to the signature, so nothing runs; `W` stands for any tensor.
W = torch.zeros(1)
CALLS = [
    ("nn.Linear4bit", (64, 32, True, torch.bfloat16),
     dict(compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8)),
    ("nn.Linear8bitLt", (64, 32, True), dict(has_fp16_weights=False, threshold=6.0)),
    ("nn.Params4bit", (W,), dict(requires_grad=False)),
    ("nn.Params4bit.from_prequantized", (), dict(data=W, quantized_stats={}, requires_grad=False, device="cpu",
                                                 module=None)),
    ("nn.Int8Params", (W,), dict(requires_grad=False, has_fp16_weights=False)),
    ("functional.quantize_4bit", (W,), dict(quant_type="nf4", compress_statistics=True, quant_storage=torch.uint8,
                                            blocksize=64)),
    ("functional.dequantize_4bit", (W, None), {}),
    ("functional.dequantize_blockwise", (W, None), {}),
    ("functional.int8_vectorwise_dequant", (W, W), {}),
    ("functional.QuantState", (), dict(absmax=W, shape=(2, 2), code=W, blocksize=64, quant_type="nf4",
                                       dtype=torch.float16)),
    ("functional.QuantState.from_dict", (), dict(qs_dict={}, device="cpu")),
    ("matmul", (W, W), dict(bias=None, state=None)),
    ("matmul_4bit", (W, W), dict(bias=None, quant_state=None)),
    ("MatmulLtState", (), {}),
    ("optim.GlobalOptimManager.get_instance", (), {}),
]


def _resolve(root, dotted: str):
    obj = root
    for part in filter(None, dotted.split(".")):
        obj = getattr(obj, part)
    return obj


def _module(path: str):
    return importlib.import_module("bitsandbytes" + ("." + path if path else ""))


def _missing(pairs) -> list[str]:
    """The dotted names among (module path, name) pairs that the drop-in lacks."""
    missing = []
    for path, name in pairs:
        try:
            present = hasattr(_module(path), name)
        except ImportError:
            present = False
        if not present:
            missing.append(f"bitsandbytes{'.' + path if path else ''}.{name}")
    return missing


def test_is_nybbles_dropin():
    assert "nybble" in bnb.__version__, f"`import bitsandbytes` loads {bnb.__file__}, not nybble's drop-in"
    assert Path(bnb.__file__).parent.name == "bitsandbytes"


@pytest.mark.parametrize("path", MODULES)
def test_module_is_nybbles(path):
    ours = importlib.import_module(f"bitsandbytes.{path}")
    assert ours is importlib.import_module(f"nybble.{path}")
    assert _resolve(bnb, path) is ours  # attribute access reaches the same module
    assert sys.modules[f"bitsandbytes.{path}"] is ours


def test_from_import():
    from bitsandbytes.functional import QuantState
    from bitsandbytes.nn.modules import Linear4bit, Params4bit

    assert QuantState is nybble.functional.QuantState
    assert (Linear4bit, Params4bit) == (nybble.nn.Linear4bit, nybble.nn.Params4bit)


def test_surface_names():
    missing = _missing((m, n) for m, names in SURFACE.items() for n in names)
    assert not missing, f"missing from the drop-in: {missing}"


@pytest.mark.parametrize("module", SURFACE)
def test_names_are_nybbles_objects(module):
    ours, theirs = _module(module), importlib.import_module("nybble" + ("." + module if module else ""))
    present = [n for n in SURFACE[module] if hasattr(ours, n)]
    assert all(getattr(ours, n) is getattr(theirs, n) for n in present)


def test_top_level_matches_autograd():
    # The reference re-exports these from autograd._functions; vLLM mixes both spellings.
    for name in ("matmul", "matmul_4bit", "MatmulLtState"):
        if hasattr(bnb, name) and hasattr(bnb.autograd._functions, name):
            assert getattr(bnb, name) is getattr(bnb.autograd._functions, name), name


def test_feature_flags():
    # transformers' validate_bnb_backend_availability reads both through getattr.
    assert bnb.features == {"multi_backend"}
    assert bnb.supported_torch_devices == {"cpu", "cuda", "xpu", "hpu", "npu", "mps"}


def test_class_names():
    # accelerate recognises parameters and layers by class name.
    for name in ("Int8Params", "Params4bit", "Linear8bitLt", "Linear4bit"):
        assert getattr(bnb.nn, name).__name__ == name


@pytest.mark.parametrize("path,args,kwargs", CALLS, ids=[c[0] for c in CALLS])
def test_downstream_call_binds(path, args, kwargs):
    fn = _resolve(bnb, path)
    inspect.signature(fn).bind(*args, **kwargs)


def test_params4bit_attributes():
    # transformers: Params4bit(value, requires_grad=False, **old.__dict__); peft and accelerate read these.
    p = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4", compress_statistics=True)
    assert p.quant_state is None and p.bnb_quantized is False
    assert (p.quant_type, p.compress_statistics, p.quant_storage) == ("nf4", True, torch.uint8)
    assert isinstance(p.blocksize, int)
    again = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, **p.__dict__)
    assert isinstance(again, nybble.nn.Params4bit) and again.quant_type == "nf4"


def test_int8params_attributes():
    p = bnb.nn.Int8Params(torch.randn(8, 16), requires_grad=False, has_fp16_weights=False)
    assert p.SCB is None and p.has_fp16_weights is False
    assert hasattr(p, "CB")
    again = bnb.nn.Int8Params(torch.randn(8, 16), requires_grad=False, **p.__dict__)
    assert isinstance(again, nybble.nn.Int8Params)


def test_layer_attributes():
    lin4 = bnb.nn.Linear4bit(64, 32, True, torch.bfloat16, quant_type="nf4")
    assert isinstance(lin4.weight, bnb.nn.Params4bit) and lin4.compute_dtype == torch.bfloat16
    assert isinstance(lin4, nybble.nn.Linear4bit) and isinstance(lin4, torch.nn.Linear)
    lin8 = bnb.nn.Linear8bitLt(64, 32, True, has_fp16_weights=False, threshold=6.0)
    assert isinstance(lin8.weight, bnb.nn.Int8Params) and isinstance(lin8, torch.nn.Linear)
    assert isinstance(lin8.state, bnb.MatmulLtState) and lin8.state.threshold == 6.0
    assert lin8.state.has_fp16_weights is False and callable(lin8.state.reset_grads)
    assert hasattr(lin8, "index")


def test_matmul_lt_state_fields():
    state = bnb.MatmulLtState()
    with warnings.catch_warnings():  # CxB is deprecated (always None) in the reference too, with a FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        for field in ("threshold", "has_fp16_weights", "is_training", "use_pool", "CB", "SCB", "CxB"):
            assert hasattr(state, field), field


def test_quant_state_fields():
    QS = bnb.functional.QuantState
    qs = QS(absmax=torch.ones(4), shape=torch.Size([16, 16]), code=torch.zeros(16), blocksize=64, quant_type="nf4",
            dtype=torch.float16)
    for field in ("absmax", "shape", "code", "blocksize", "dtype", "quant_type", "nested", "state2", "offset"):
        assert hasattr(qs, field), field
    assert qs.nested is False and qs.state2 is None
    assert QS.valid_quant_types == ("fp4", "nf4")
    assert QS.valid_qs_type_keys == ["bitsandbytes__fp4", "bitsandbytes__nf4"]
    for method in ("from_dict", "as_dict", "to"):
        assert callable(getattr(QS, method)), method


def test_global_optim_manager():
    manager = bnb.optim.GlobalOptimManager.get_instance()
    assert manager is bnb.optim.GlobalOptimManager.get_instance()
    assert callable(manager.register_module_override)


def test_submodule_imported_later_is_aliased():
    # A nybble submodule that nothing has imported yet must still come out as the one module
    # object, not a second execution of its file (fresh interpreter: nothing imported before).
    code = ("import sys, bitsandbytes, bitsandbytes.diagnostics as d; import nybble.diagnostics as n; "
            "assert d is n, (d, n); assert n.__spec__.name == 'nybble.diagnostics', n.__spec__; "
            "import bitsandbytes.nn.modules as m, nybble.nn.modules as nm; assert m is nm\n"
            "try:\n  import bitsandbytes.no_such_module\nexcept ModuleNotFoundError: pass\n"
            "else: raise AssertionError('imported a module nybble does not have')")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---- (b) the reference's public names and signatures --------------------------------------------------

# Compared module by module: the five of the brief, the two module paths downstream imports from, and
# the optimizer modules.
OPTIM_MODULES = ["optim", "optim.optimizer", "optim.adagrad", "optim.adam", "optim.adamw", "optim.ademamix",
                 "optim.lamb", "optim.lars", "optim.lion", "optim.rmsprop", "optim.sgd"]
REFERENCE_MODULES = ["", "functional", "nn", "nn.modules", "autograd", "autograd._functions", "utils",
                     *OPTIM_MODULES]

# Names of the reference that nybble deliberately does not provide, with the reason.
NOT_PROVIDED = {
    ("", "cextension"): "the reference's ctypes loader of libbitsandbytes_*.so; nybble's native code is nybble._C",
    ("", "cuda_specs"): "picks which libbitsandbytes_cuda*.so the ctypes loader opens; nybble links its CUDA code",
    ("", "consts"): "paths and URLs of the reference's own package",
    ("", "backends"): "the reference's per-device kernel registration; nybble registers its kernels in nybble._ops",
    ("nn.modules", "INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING"): "the reference's nn.modules only imports it from "
    "utils (data, so the filter above cannot tell); bitsandbytes.utils has it",
}

# Runs in the reference's process: for each module, its public names (without what it merely
# imports from the standard library, torch, numpy, typing..., what a plain module imports from
# another bitsandbytes module, and aliases of modules such as `bitsandbytes.modules` for
# bitsandbytes.nn.modules), and for each public function
# and class (and their public methods) the signature as (name, kind, default) tuples.
_REFERENCE_SURFACE = """
import importlib, inspect, types

SIMPLE = (type(None), bool, int, float, str, torch.dtype)

def own(mod, n, v):
    if isinstance(v, types.ModuleType):  # a submodule, not an alias (autograd._functions' `F`)
        return v.__name__ == f"{mod.__name__}.{n}"
    if inspect.isclass(v) or callable(v):  # a package's re-exports count; a plain module's imports do not
        owner = getattr(v, "__module__", None) or ""
        return owner.startswith("bitsandbytes") if hasattr(mod, "__path__") else owner == mod.__name__
    module = type(v).__module__
    return module in ("builtins", "torch") or module.startswith("bitsandbytes")

def signature(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return [(p.name, p.kind.name, repr(p.default) if isinstance(p.default, SIMPLE) else
             ("<none>" if p.default is p.empty else "<object>")) for p in sig.parameters.values()]

names, signatures = {}, {}
for path in inputs["modules"]:
    mod = importlib.import_module("bitsandbytes" + ("." + path if path else ""))
    names[path] = sorted(n for n, v in vars(mod).items() if not n.startswith("_") and own(mod, n, v))
    signatures[path] = sigs = {}
    for n in names[path]:
        v = getattr(mod, n)
        if isinstance(v, types.ModuleType) or not callable(v):
            continue
        sigs[n] = signature(v)
        if inspect.isclass(v):
            for m, attr in vars(v).items():
                method = isinstance(attr, (classmethod, staticmethod)) or inspect.isfunction(attr)
                if method and not m.startswith("_"):
                    sigs[f"{n}.{m}"] = signature(getattr(v, m))
outputs["names"], outputs["signatures"] = names, signatures
outputs["features"], outputs["devices"] = bnb.features, bnb.supported_torch_devices

def added(obj, base):  # public attributes (fields, properties, methods) obj has beyond its base's
    return sorted(n for n in set(dir(obj)) - set(dir(base)) if not n.startswith("_"))

parameter = torch.nn.Parameter(torch.zeros(4, 4), requires_grad=False)
outputs["MatmulLtState"] = added(bnb.MatmulLtState(), object())
outputs["Params4bit"] = added(bnb.nn.Params4bit(torch.zeros(4, 4), requires_grad=False), parameter)
outputs["Int8Params"] = added(bnb.nn.Int8Params(torch.zeros(4, 4), requires_grad=False), parameter)
"""


@pytest.fixture(scope="module")
def reference():
    return run_reference(_REFERENCE_SURFACE, modules=REFERENCE_MODULES)


@requires_reference
@pytest.mark.reference
@pytest.mark.parametrize("module", REFERENCE_MODULES)
def test_reference_names_present(reference, module):
    expected = [n for n in reference["names"][module] if (module, n) not in NOT_PROVIDED]
    missing = _missing((module, n) for n in expected)
    assert not missing, f"{len(missing)} of the reference's {len(expected)} names are missing: {missing}"


def test_not_provided_is_current():
    # The list above names only what is really absent; a name that appears is taken off it.
    provided = [f"bitsandbytes{'.' + m if m else ''}.{n}" for m, n in NOT_PROVIDED if hasattr(_module(m), n)]
    assert not provided, f"listed in NOT_PROVIDED but present now: {provided}"


def _signature_problems(path: str, fn, ref_params) -> list[str]:
    """Ways in which a call valid against the reference's signature fails against ours: a
    parameter we lack (and no **kwargs), positional parameters in another order, another default."""
    try:
        ours = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as e:
        return [f"{path}: no signature ({e})"]
    by_name = {p.name: p for p in ours}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in ours)
    problems = []
    positional = [n for n, kind, _ in ref_params if kind in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    our_positional = [p.name for p in ours if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if our_positional[:len(positional)] != positional and not any(p.kind is p.VAR_POSITIONAL for p in ours):
        problems.append(f"{path}: positional parameters {our_positional}, reference {positional}")
    for name, kind, default in ref_params:
        if kind in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            continue
        if name not in by_name:
            if not var_kw:
                problems.append(f"{path}: no parameter {name!r}")
            continue
        mine = by_name[name].default
        if default not in ("<none>", "<object>") and mine is not inspect.Parameter.empty and repr(mine) != default:
            problems.append(f"{path}: {name}={mine!r}, reference {name}={default}")
    return problems


@requires_reference
@pytest.mark.reference
@pytest.mark.parametrize("module", REFERENCE_MODULES)
def test_reference_signatures(reference, module):
    """Every call the reference's signatures allow binds to ours, for each public function, class
    and method (a missing function or class is reported by test_reference_names_present)."""
    try:
        mod = _module(module)
    except ImportError:
        return
    problems = []
    for name, params in reference["signatures"][module].items():
        try:
            fn = _resolve(mod, name)
        except AttributeError:
            if "." in name:  # a method of a class we have (a missing class is test_reference_names_present's)
                problems.append(f"bitsandbytes{'.' + module if module else ''}.{name}: missing")
            continue
        if params is not None:
            problems += _signature_problems(f"bitsandbytes{'.' + module if module else ''}.{name}", fn, params)
    assert not problems, "\n".join(problems)


@requires_reference
@pytest.mark.reference
def test_reference_values(reference):
    assert bnb.features == reference["features"]
    assert bnb.supported_torch_devices == reference["devices"]


@requires_reference
@pytest.mark.reference
def test_reference_instance_attributes(reference):
    # Attributes downstream reads off a fresh state or parameter (accelerate rebuilds parameters
    # from __dict__ and moves .CB/.SCB; peft reads weight.__dict__ and state fields).
    fresh = {
        "MatmulLtState": bnb.MatmulLtState(),
        "Params4bit": bnb.nn.Params4bit(torch.zeros(4, 4), requires_grad=False),
        "Int8Params": bnb.nn.Int8Params(torch.zeros(4, 4), requires_grad=False),
    }
    # dir(), not hasattr: the QuantState proxies of Params4bit raise AttributeError until it is quantized.
    missing = [f"{cls}.{attr}" for cls, obj in fresh.items() for attr in reference[cls] if attr not in dir(obj)]
    assert not missing, missing


# ---- (c) the version -----------------------------------------------------------------------------------


def test_version():
    version = pytest.importorskip("packaging.version")
    parsed = version.Version(bnb.__version__)  # raises InvalidVersion if packaging cannot parse it
    assert parsed.release[:2] >= (0, 50) and parsed.local is not None and "nybble" in parsed.local
    assert parsed >= version.Version("0.46.1")  # transformers' and vLLM's minimum


def test_installed_version():
    try:
        installed = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the drop-in is not installed (running from source: pip install ./python/compat installs it)")
    assert installed == bnb.__version__, f"installed bitsandbytes {installed} is not this drop-in ({bnb.__version__})"


def test_pip_install(tmp_path):
    """A real install of python/compat into a scratch directory reports the version through
    importlib.metadata, the way transformers and accelerate read it."""
    pytest.importorskip("setuptools")
    # A copy, so that the build's by-products (build/, *.egg-info) stay out of the source tree.
    compat = shutil.copytree(ROOT / "python" / "compat", tmp_path / "compat",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--no-build-isolation", "--no-deps", "--target", str(tmp_path / "site"), str(compat)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = ("import importlib.metadata as m, bitsandbytes, packaging.version as v; "
            "ver = m.version('bitsandbytes'); assert ver == bitsandbytes.__version__, ver; "
            "assert v.Version(ver) >= v.Version('0.50'), ver; "
            f"assert bitsandbytes.__file__.startswith({str(tmp_path / 'site')!r}), bitsandbytes.__file__")
    run = subprocess.run([sys.executable, "-c", code], env=_env(first=tmp_path / "site"), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr


# ---- (d) python -m nybble / python -m bitsandbytes ------------------------------------------------------


def _env(first: Path | None = None) -> dict:
    """The environment for a child interpreter that imports the same nybble and bitsandbytes as this
    process (``first``, if given, goes before them)."""
    paths = [str(Path(m.__file__).resolve().parents[1]) for m in (nybble, bnb)]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = ([str(first)] if first else []) + paths + inherited
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


@pytest.mark.parametrize("module", ["nybble", "bitsandbytes"])
def test_python_m(module):
    proc = subprocess.run([sys.executable, "-m", module], env=_env(), capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    version = nybble.__version__ if module == "nybble" else bnb.__version__
    assert lines[0] == f" {module} v{version} ".center(60, "=")
    assert lines[1].startswith("Platform: ") and "Related packages:" in lines
    assert "=" * 60 in lines and lines[-1] == "SUCCESS!"
