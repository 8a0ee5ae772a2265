"""nybble.optim (spec §4) against independent references, with the tolerances of spec §8.2.

References: torch.optim Adam/AdamW/SGD/RMSprop/Adagrad, nybble.optim.PytorchLARS (plain torch),
and three written here in plain torch: Lion (as lion_pytorch), AdEMAMix (as the reference's
_ReferenceAdEMAMix) and LAMB in the reference's semantics (Adam's bias-corrected update scaled
down to max_unorm * ||p||).

* 32-bit: 20 steps; states within (fp32 1e-6/1e-5, bf16 1e-3/1e-2, fp16 1e-4/1e-3) every step,
  parameters with at most 15 elements outside; every 4 steps a state_dict round trip.
* 8-bit blockwise: 50 steps; dequantized states with fewer than 20 elements outside
  (atol 3e-3, rtol 1e-3); parameter mean abs/rel error below 6e-5/6e-4 (bf16 1.7e-4/1.6e-3); every
  10 steps a state_dict round trip keeps the uint8 states and qmaps byte-identical. After each step
  the reference's states are set to the dequantized ones and the parameters re-synced, as the
  reference's tests do.
* One step issues one multi-tensor op call per state kind and device, and equals the
  per-parameter ops bit for bit.
* state_dicts move both ways between nybble and bitsandbytes 0.50.2 (refrun.py); GlobalOptimManager
  overrides; the reference's constructor errors; paged states; the drop-in's names.

Sizes are named by role so that the GPU runs the reference's large shapes and the CPU smaller ones
of the same kind: "aligned" (a multiple of 256 elements), "unaligned", "wide" (rows of 4097) and,
in 32-bit, "column" (1024 x 1, below min_8bit_size).
"""

from __future__ import annotations

import copy
import gc
import io
import math
import warnings

import pytest
import torch
from refrun import requires_reference, run_reference, tree_to
from torch.utils._python_dispatch import TorchDispatchMode

import nybble as bnb
import nybble.functional as F
from nybble.optim.optimizer import Optimizer8bit

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]

SHAPES = {
    "aligned": {"cpu": (1024, 32), "cuda": (1024, 1024)},
    "unaligned": {"cpu": (1000, 33), "cuda": (1000, 33)},
    "wide": {"cpu": (64, 4097), "cuda": (1024, 4097)},
    "column": {"cpu": (1024, 1), "cuda": (1024, 1)},
}


# ---- references in plain torch ------------------------------------------------------------------


class ReferenceLion(torch.optim.Optimizer):
    """Lion as lion_pytorch implements it: decoupled weight decay, the sign of the interpolated
    momentum, then the momentum update (state "exp_avg")."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((m * beta1 + p.grad * (1 - beta1)).sign(), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


class ReferenceAdEMAMix(torch.optim.Optimizer):
    """AdEMAMix (arXiv 2409.03137) with the alpha and beta3 warm-ups; states "m1_m2" [2, *p]
    (fast and slow EMA) and "nu"."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, eps=1e-8, weight_decay=1e-2,
                 t_beta3=None, t_alpha=None):
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      t_beta3=t_beta3, t_alpha=t_alpha))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            group["step"] = t = group.get("step", 0) + 1
            beta1, beta2, beta3 = group["betas"]
            alpha = group["alpha"]
            if group["t_alpha"] is not None:
                alpha = min(t * alpha / group["t_alpha"], alpha)
            if group["t_beta3"] is not None:
                s = t / group["t_beta3"]
                lb1, lb3 = math.log(beta1), math.log(beta3)
                beta3 = min(math.exp(lb1 * lb3 / ((1 - s) * lb3 + s * lb1)), beta3)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["m1_m2"] = p.new_zeros((2, *p.shape))
                    state["nu"] = torch.zeros_like(p)
                m1, m2, nu = state["m1_m2"][0], state["m1_m2"][1], state["nu"]
                m1.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                m2.mul_(beta3).add_(p.grad, alpha=1 - beta3)
                nu.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = nu.sqrt() / math.sqrt(1 - beta2**t) + group["eps"]
                update = (m1 / (1 - beta1**t) + alpha * m2) / denom + group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])


class ReferenceLAMB(torch.optim.Optimizer):
    """The reference's LAMB: Adam's bias-corrected update u, scaled by max_unorm * ||p|| / ||u||
    when ||u|| exceeds max_unorm * ||p||; decoupled weight decay (states "exp_avg", "exp_avg_sq")."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_unorm=1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_unorm=max_unorm))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                u = (m / (1 - beta1**t)) / (v.sqrt() / math.sqrt(1 - beta2**t) + group["eps"])
                limit = group["max_unorm"] * torch.norm(p)
                unorm = torch.norm(u)
                scale = limit / unorm if unorm > limit else 1.0
                p.sub_(group["lr"] * scale * u)
                p.mul_(1 - group["lr"] * group["weight_decay"])


def _torch(cls, *args, **kwargs):
    return lambda params: cls(params, *args, **kwargs)


def _ours(name, *args, **kwargs):
    return lambda params: getattr(bnb.optim, name)(params, *args, **kwargs)


ADAM_STATES = [("exp_avg", "state1"), ("exp_avg_sq", "state2")]
ADEMAMIX_STATES = [("m1_m2", "state1"), ("nu", "state2")]
MOMENTUM_STATES = [("momentum_buffer", "state1")]

# name: (reference factory, nybble factory, [(reference state, nybble state)])
OPTIMIZERS_32BIT = {
    "adam": (_torch(torch.optim.Adam), _ours("Adam"), ADAM_STATES),
    "adamw": (_torch(torch.optim.AdamW), _ours("AdamW"), ADAM_STATES),
    "paged_adamw": (_torch(torch.optim.AdamW), _ours("PagedAdamW"), ADAM_STATES),
    "momentum": (_torch(torch.optim.SGD, 0.01, 0.9), _ours("SGD", 0.01, 0.9), MOMENTUM_STATES),
    "rmsprop": (_torch(torch.optim.RMSprop, 0.01, 0.9), _ours("RMSprop", 0.01, 0.9), [("square_avg", "state1")]),
    "adagrad": (_torch(torch.optim.Adagrad, 0.01), _ours("Adagrad", 0.01), [("sum", "state1")]),
    "lion": (_torch(ReferenceLion), _ours("Lion"), [("exp_avg", "state1")]),
    "paged_lion": (_torch(ReferenceLion), _ours("PagedLion"), [("exp_avg", "state1")]),
    "lars": (_torch(bnb.optim.PytorchLARS, 0.01, 0.9), _ours("LARS", 0.01, 0.9), MOMENTUM_STATES),
    "lamb": (_torch(ReferenceLAMB), _ours("LAMB"), ADAM_STATES),
    "ademamix": (_torch(ReferenceAdEMAMix), _ours("AdEMAMix"), ADEMAMIX_STATES),
    "ademamix_scheduled": (_torch(ReferenceAdEMAMix, t_alpha=20, t_beta3=20),
                           _ours("AdEMAMix", t_alpha=20, t_beta3=20), ADEMAMIX_STATES),
    "ademamix32bit": (_torch(ReferenceAdEMAMix), _ours("AdEMAMix32bit"), ADEMAMIX_STATES),
    "paged_ademamix": (_torch(ReferenceAdEMAMix), _ours("PagedAdEMAMix"), ADEMAMIX_STATES),
}

OPTIMIZERS_8BIT = {
    "adam8bit": (_torch(torch.optim.Adam), _ours("Adam8bit"), ADAM_STATES),
    "paged_adamw8bit": (_torch(torch.optim.AdamW), _ours("PagedAdamW8bit"), ADAM_STATES),
    "momentum8bit": (_torch(torch.optim.SGD, 0.01, 0.9), _ours("SGD8bit", 0.01, 0.9), MOMENTUM_STATES),
    "rmsprop8bit": (_torch(torch.optim.RMSprop, 0.01, 0.9), _ours("RMSprop8bit", 0.01, 0.9),
                    [("square_avg", "state1")]),
    "adagrad8bit": (_torch(torch.optim.Adagrad, 0.01), _ours("Adagrad8bit", 0.01), [("sum", "state1")]),
    "lion8bit": (_torch(ReferenceLion), _ours("Lion8bit"), [("exp_avg", "state1")]),
    "lars8bit": (_torch(bnb.optim.PytorchLARS, 0.01, 0.9), _ours("LARS8bit", 0.01, 0.9), MOMENTUM_STATES),
    "lamb8bit": (_torch(ReferenceLAMB), _ours("LAMB8bit"), ADAM_STATES),
    "ademamix8bit": (_torch(ReferenceAdEMAMix), _ours("AdEMAMix8bit"), ADEMAMIX_STATES),
    "ademamix8bit_scheduled": (_torch(ReferenceAdEMAMix, t_alpha=50, t_beta3=50),
                               _ours("AdEMAMix8bit", t_alpha=50, t_beta3=50), ADEMAMIX_STATES),
}


# ---- helpers ------------------------------------------------------------------------------------


def assert_most_close(actual, expected, atol, rtol, max_mismatch, what=""):
    """At most max_mismatch elements of actual outside (atol, rtol) of expected."""
    actual, expected = actual.float(), expected.float()
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol)
    count = int(bad.sum())
    if count > max_mismatch:
        worst = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: {count} of {actual.numel()} elements outside atol={atol} rtol={rtol} "
                             f"(at most {max_mismatch} allowed; largest difference {worst:.3g})")


def reload(optimizer, factory, params):
    """A fresh optimizer from factory(params) with optimizer's state_dict, through torch.save."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = factory(params)
    fresh.load_state_dict(torch.load(buffer))
    return fresh


def dequantized(state, name):
    """An 8-bit state as fp32 (AdEMAMix's state1: both EMAs, each with its row of absmax1)."""
    codes, absmax, code = state[name], state["absmax" + name[-1]], state["qmap" + name[-1]]
    if absmax.dim() == 2:
        return torch.stack([F.dequantize_blockwise(codes[i], absmax=absmax[i], code=code, blocksize=256)
                            for i in range(2)])
    return F.dequantize_blockwise(codes, absmax=absmax, code=code, blocksize=256)


def same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.fixture(autouse=True)
def _fresh_manager():
    bnb.optim.GlobalOptimManager.get_instance().initialize()
    yield
    bnb.optim.GlobalOptimManager.get_instance().initialize()


paged_on_cpu = pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")


# ---- against the references -----------------------------------------------------------------------


@paged_on_cpu
@pytest.mark.parametrize("size", ["aligned", "unaligned", "wide", "column"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS_32BIT))
def test_optimizer_32bit(device, name, dtype, size):
    ref_factory, our_factory, state_names = OPTIMIZERS_32BIT[name]
    shape = SHAPES[size][device]
    p2 = torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * 0.1)
    p1 = torch.nn.Parameter(p2.detach().float())
    reference, ours = ref_factory([p1]), our_factory([p2])
    atol, rtol = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-3, 1e-2), torch.float16: (1e-4, 1e-3)}[dtype]
    steps = 20
    for i in range(steps):
        g = torch.randn(shape, device=device, dtype=dtype) * 0.01
        p1.grad, p2.grad = g.float(), g.clone()
        ours.step()
        reference.step()
        for ref_name, our_name in state_names:
            torch.testing.assert_close(ours.state[p2][our_name], reference.state[p1][ref_name], atol=atol, rtol=rtol)
        assert_most_close(p2, p1, atol, rtol, 15, f"step {i} p")
        if i % (steps // 5) == 0 and i > 0:
            p_saved = p2.detach().clone()
            saved = {our_name: ours.state[p2][our_name].clone() for _, our_name in state_names}
            ours = reload(ours, our_factory, [p2])
            assert torch.equal(p2, p_saved), f"step {i}: the reload changed the parameter"
            for our_name, value in saved.items():  # the states come back bit for bit
                assert torch.equal(ours.state[p2][our_name], value), f"step {i} {our_name} after reload"
        if dtype != torch.float32:  # 16-bit parameters drift apart; keep them equal
            p1.data = p1.data.to(dtype).float()
            p2.data.copy_(p1.data)
        if name in ("lars", "lamb"):
            assert ours.state[p2]["unorm_vec"].item() > 0.0


@paged_on_cpu
@pytest.mark.parametrize("size", ["aligned", "unaligned", "wide"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS_8BIT))
def test_optimizer_8bit(device, name, dtype, size):
    ref_factory, our_factory, state_names = OPTIMIZERS_8BIT[name]
    shape = SHAPES[size][device]
    p2 = torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * 0.1)
    p1 = torch.nn.Parameter(p2.detach().float())
    reference, ours = ref_factory([p1]), our_factory([p2])
    atol, rtol = 3e-3, 1e-3
    patol, prtol = {torch.float32: (1e-5, 1e-3), torch.bfloat16: (1e-4, 1e-2), torch.float16: (1e-5, 1e-3)}[dtype]
    max_err, max_relerr = (1.7e-4, 1.6e-3) if dtype == torch.bfloat16 else (6e-5, 6e-4)
    for i in range(50):
        g = torch.randn(shape, device=device, dtype=dtype) * 0.01
        p1.grad, p2.grad = g.float(), g.clone()
        reference.step()
        ours.step()
        assert_most_close(p2, p1, patol, prtol, int(p1.numel() * 5e-4), f"step {i} p")
        states = {}
        for ref_name, our_name in state_names:
            assert ours.state[p2][our_name].dtype == torch.uint8
            states[ref_name] = dequantized(ours.state[p2], our_name)
            assert_most_close(states[ref_name], reference.state[p1][ref_name], atol, rtol, 19, f"step {i} {our_name}")
        err = (p1 - p2.float()).abs()
        relerr = err / (p1.abs() + 1e-9)
        assert err.mean() < max_err and relerr.mean() < max_relerr, (i, err.mean().item(), relerr.mean().item())
        if i % 10 == 0 and i > 0:
            saved = {k: v.clone() for k, v in ours.state[p2].items() if torch.is_tensor(v)}
            p_saved = p2.detach().clone()
            ours = reload(ours, our_factory, [p2])
            for key, value in saved.items():  # uint8 states, qmaps, absmax: byte-identical
                assert same(ours.state[p2][key], value), key
            for ref_name, our_name in state_names:
                assert torch.equal(dequantized(ours.state[p2], our_name), states[ref_name])
            assert torch.equal(p2, p_saved), f"step {i}: the reload changed the parameter"
        # The parameters and states diverge quickly; keep comparing one step's error.
        p1.data = p1.data.to(dtype).float()
        p2.data.copy_(p1.data)
        for ref_name, value in states.items():
            reference.state[p1][ref_name].copy_(value)


def test_train_small_model_8bit_close_to_torch_adamw():
    """200 steps of a small MLP regression: AdamW8bit's loss within 1 % of torch AdamW's."""
    data_gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 64, generator=data_gen)
    y = torch.sin(x @ torch.randn(64, 8, generator=data_gen))
    losses = {}
    for label, factory in (("torch", lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
                           ("nybble", lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3, min_8bit_size=1024))):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
        optimizer = factory(model.parameters())
        for step in range(200):
            batch = slice((step * 64) % 512, (step * 64) % 512 + 64)
            loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses[label] = torch.nn.functional.mse_loss(model(x), y).item()
    assert any(s["state1"].dtype == torch.uint8 for s in optimizer.state.values())
    assert abs(losses["nybble"] - losses["torch"]) <= 0.01 * losses["torch"], losses


# ---- one call per group, equal to the per-parameter ops -----------------------------------------------


class OpCalls(TorchDispatchMode):
    """Records the nybble ops called inside it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "nybble":
            self.calls.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


# (class, constructor kwargs, max_unorm of the optimizer); optim_bits is added by the test.
STEP_CASES = {
    "adam": ("Adam", {}),
    "ademamix": ("AdEMAMix", {}),
    "ademamix_scheduled": ("AdEMAMix", {"t_alpha": 3, "t_beta3": 3}),
    "momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "rmsprop": ("RMSprop", {}),
    "adagrad": ("Adagrad", {}),
    "lion": ("Lion", {}),
    "lamb": ("LAMB", {}),
    "lars": ("LARS", {"lr": 0.01, "momentum": 0.9}),
}
PARAM_SPECS = [((64, 80), torch.float32), ((300, 17), torch.float16), ((40, 40), torch.bfloat16),
               ((4097,), torch.float32)]  # (40, 40) is below min_8bit_size: fp32 states in an 8-bit optimizer


def _coefficients(optimizer, group, step):
    """(beta1, beta2, beta3, alpha) as the reference's update_step passes them, with AdEMAMix's
    schedules."""
    betas = group["betas"]
    if not isinstance(optimizer, bnb.optim.optimizer.Optimizer2State):
        return betas[0], betas[1], 0.0, 0.0
    beta3, alpha = (betas[2] if len(betas) > 2 else 0.0), group["alpha"]
    if group["t_alpha"]:
        alpha = min(step * alpha / group["t_alpha"], alpha)
    if group["t_beta3"]:
        s = step / group["t_beta3"]
        lb1, lb3 = math.log(betas[0]), math.log(beta3)
        beta3 = min(math.exp(lb1 * lb3 / ((1 - s) * lb3 + s * lb1)), beta3)
    return betas[0], betas[1], beta3, alpha


def _per_parameter_step(optimizer):
    """The reference's step: one single-tensor op call per parameter (the 8-bit op has no
    max_unorm, so clipped 8-bit steps go through the multi op with one parameter)."""
    max_unorm = optimizer.args.max_unorm
    for gindex, group in enumerate(optimizer.param_groups):
        for pindex, p in enumerate(group["params"]):
            state = optimizer.state[p]
            if not state:
                optimizer.init_state(group, p, gindex, pindex)
            state["step"] += 1
            step = state["step"]
            beta1, beta2, beta3, alpha = _coefficients(optimizer, group, step)
            eps, lr, wd, name = group["eps"], group["lr"], group["weight_decay"], optimizer.optimizer_name
            if state["state1"].dtype == torch.float32:
                F.optimizer_update_32bit(name, p.grad, p, state["state1"], beta1, eps, step, lr, state.get("state2"),
                                         beta2, beta3, alpha, wd, 1.0, state.get("unorm_vec"), max_unorm=max_unorm)
            elif max_unorm > 0.0:
                torch.ops.nybble.optimizer_update_8bit_blockwise_multi(
                    name, [p.grad], [p], [state["state1"]], [state["state2"]] if "state2" in state else None, beta1,
                    beta2, beta3, alpha, eps, step, lr, state["qmap1"], state.get("qmap2"), [state["absmax1"]],
                    [state["absmax2"]] if "absmax2" in state else None, wd, 1.0, False, [state["unorm_vec"]],
                    max_unorm)
            else:
                F.optimizer_update_8bit_blockwise(name, p.grad, p, state["state1"], state.get("state2"), beta1, beta2,
                                                  beta3, alpha, eps, step, lr, state["qmap1"], state.get("qmap2"),
                                                  state["absmax1"], state.get("absmax2"), wd)


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_step_is_one_call_per_group_equal_to_per_parameter_ops(device, case, bits):
    cls_name, kwargs = STEP_CASES[case]
    cls = getattr(bnb.optim, cls_name)
    params = [torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * 0.1) for shape, dtype in PARAM_SPECS]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grouped, single = cls(params, optim_bits=bits, **kwargs), cls(copies, optim_bits=bits, **kwargs)
    for step in range(4):
        for p, q in zip(params, copies):
            g = torch.randn_like(p) * 0.01
            p.grad, q.grad = g, g.clone()
        with OpCalls() as ops:
            grouped.step()
        kinds = {s["state1"].dtype for s in grouped.state.values()}
        expected = (["optimizer_update_8bit_blockwise_multi"] if torch.uint8 in kinds else []) + \
                   (["optimizer_update_32bit_multi"] if torch.float32 in kinds else [])
        assert sorted(ops.calls) == sorted(expected)
        _per_parameter_step(single)
        for p, q in zip(params, copies):
            for key, value in grouped.state[p].items():
                if key == "step":
                    assert value == single.state[q][key]
                elif key == "unorm_vec" and p.is_cuda:
                    torch.testing.assert_close(value, single.state[q][key], rtol=1e-5, atol=0)
                else:
                    assert same(value, single.state[q][key]), key
            if p.is_cuda and "unorm_vec" in grouped.state[p]:
                # The GPU sums the update norm with fp32 atomics (Note [Update norm]), so the clip
                # factor, and through it p, may differ in the last bit; the states above do not.
                eps = torch.finfo(p.dtype).eps
                torch.testing.assert_close(p, q, rtol=2 * eps, atol=eps * 1e-3)
            else:
                assert same(p, q), f"step {step}: parameter {tuple(p.shape)} {p.dtype}"
    assert (torch.uint8 in kinds) == (bits == 8)


def test_groups_with_different_hyperparameters_get_separate_calls(device):
    a = [torch.nn.Parameter(torch.randn(5000, device=device)) for _ in range(3)]
    b = [torch.nn.Parameter(torch.randn(5000, device=device)) for _ in range(2)]
    optimizer = bnb.optim.AdamW8bit([{"params": a}, {"params": b, "lr": 1e-2}])
    for p in a + b:
        p.grad = torch.randn_like(p)
    with OpCalls() as ops:
        optimizer.step()
    assert ops.calls == ["optimizer_update_8bit_blockwise_multi"] * 2
    b[0].grad = None  # a parameter without a gradient keeps its step count
    for p in a + b[1:]:
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert [optimizer.state[p]["step"] for p in a + b] == [2, 2, 2, 1, 2]


def test_update_step_matches_step(device):
    p = torch.nn.Parameter(torch.randn(3000, device=device))
    q = torch.nn.Parameter(p.detach().clone())
    first, second = bnb.optim.Lion8bit([p], min_8bit_size=256), bnb.optim.Lion8bit([q], min_8bit_size=256)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
        first.step()
        group = second.param_groups[0]
        if not second.state[q]:
            second.init_state(group, q, 0, 0)
        second.update_step(group, q, 0, 0)
        assert same(p, q) and same(first.state[p]["state1"], second.state[q]["state1"])


def test_nonfinite_gradient_zeroes_8bit_states_and_keeps_the_parameter(device):
    p = torch.nn.Parameter(torch.randn(8192, device=device))
    optimizer = bnb.optim.Adam8bit([p])
    p.grad = torch.randn_like(p) * 0.01
    optimizer.step()
    before = p.detach().clone()
    g = torch.randn_like(p) * 0.01
    g[5], g[300] = float("nan"), float("inf")
    p.grad = g
    optimizer.step()
    assert torch.equal(p[[5, 300]], before[[5, 300]]) and bool(torch.isfinite(p).all())
    for name in ("state1", "state2"):
        assert dequantized(optimizer.state[p], name)[[5, 300]].abs().sum() == 0
    assert not torch.equal(p[6], before[6])


@pytest.mark.parametrize("bits", [32, 8])
def test_skip_zeros(device, bits):
    args = bnb.optim.optimizer.MockArgs({"optim_bits": bits, "min_8bit_size": 4096, "max_unorm": 0.0,
                                         "skip_zeros": True})
    p = torch.nn.Parameter(torch.randn(8192, device=device))
    optimizer = bnb.optim.Adam([p], args=args)
    p.grad = torch.randn_like(p) * 0.01
    optimizer.step()
    before, state1 = p.detach().clone(), optimizer.state[p]["state1"].clone()
    g = torch.randn_like(p) * 0.01
    g[::2] = 0
    p.grad = g
    optimizer.step()
    assert torch.equal(p[::2], before[::2]) and not torch.equal(p[1::2], before[1::2])
    if bits == 32:
        assert torch.equal(optimizer.state[p]["state1"][::2], state1[::2])


# ---- the ops --------------------------------------------------------------------------------------


def _op_args(device, eight_bit, multi):
    g, p = torch.randn(1000, device=device) * 0.01, torch.randn(1000, device=device)
    if not eight_bit:
        s1, s2 = torch.zeros(1000, device=device), torch.zeros(1000, device=device)
        if multi:
            return (torch.ops.nybble.optimizer_update_32bit_multi.default,
                    ("adam", [g], [p], [s1], [s2], None, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False))
        return (torch.ops.nybble.optimizer_update_32bit.default,
                ("adam", g, p, s1, s2, None, 0.0, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False))
    s1, s2 = torch.zeros(1000, device=device, dtype=torch.uint8), torch.zeros(1000, device=device, dtype=torch.uint8)
    q1, q2 = F.create_dynamic_map(True).to(device), F.create_dynamic_map(False).to(device)
    a1, a2 = torch.zeros(4, device=device), torch.zeros(4, device=device)
    if multi:
        return (torch.ops.nybble.optimizer_update_8bit_blockwise_multi.default,
                ("adam", [g], [p], [s1], [s2], 0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3, q1, q2, [a1], [a2], 0.0, 1.0,
                 False))
    return (torch.ops.nybble.optimizer_update_8bit_blockwise.default,
            ("adam", g, p, s1, s2, 0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3, q1, q2, a1, a2, 0.0, 1.0, False))


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("eight_bit", [False, True], ids=["32bit", "8bit"])
def test_opcheck(device, eight_bit, multi):
    op, args = _op_args(device, eight_bit, multi)
    torch.library.opcheck(op, args)


def test_op_errors(device):
    g, p = torch.randn(100, device=device), torch.randn(100, device=device, dtype=torch.float16)
    s = torch.zeros(100, device=device)
    with pytest.raises(RuntimeError, match="Expected all tensors to have the same dtype"):
        F.optimizer_update_32bit("adam", g, p, s, 0.9, 1e-8, 1, 1e-3, s.clone(), 0.999)
    with pytest.raises(RuntimeError, match="g and p must have the same number of elements"):
        F.optimizer_update_32bit("adam", g, p.float()[:50], s, 0.9, 1e-8, 1, 1e-3, s.clone(), 0.999)
    with pytest.raises(ValueError, match="'nope' is unknown"):
        F.optimizer_update_32bit("nope", g, p.float(), s, 0.9, 1e-8, 1, 1e-3, s.clone(), 0.999)
    with pytest.raises(RuntimeError, match="state1 must be uint8"):
        F.optimizer_update_8bit_blockwise("lion", g, p.float(), s, None, 0.9, 0.99, 0.0, 0.0, 0.0, 1, 1e-3,
                                          F.create_dynamic_map().to(device), None, torch.zeros(1, device=device), None)
    with pytest.raises(ValueError, match="state2 = None must be given for adam"):
        F.optimizer_update_32bit("adam", g, p.float(), s, 0.9, 1e-8, 1, 1e-3)


# ---- state_dict ------------------------------------------------------------------------------------


def test_state_dict_format(device):
    p = torch.nn.Parameter(torch.randn(70, 70, device=device))
    small = torch.nn.Parameter(torch.randn(10, device=device))
    optimizer = bnb.optim.Adam8bit([p, small])
    p.grad, small.grad = torch.randn_like(p), torch.randn_like(small)
    optimizer.step()
    sd = optimizer.state_dict()
    key = "__bnb_optimizer_quant_state__"
    assert set(sd["state"][0]) == {"step", key} and sd["state"][0]["step"] == 1
    quant = sd["state"][0][key]
    assert set(quant) == {"state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2"}
    assert quant["state1"].dtype == quant["state2"].dtype == torch.uint8 and quant["state1"].shape == (70, 70)
    assert quant["absmax1"].shape == quant["absmax2"].shape == (20,)  # ceil(4900 / 256)
    assert same(quant["qmap1"], F.create_dynamic_map(True).to(device))
    assert same(quant["qmap2"], F.create_dynamic_map(False).to(device))
    assert set(sd["state"][1][key]) == {"state1", "state2"} and sd["state"][1][key]["state1"].dtype == torch.float32
    assert {k for k in sd["param_groups"][0] if k != "params"} == {"lr", "betas", "eps", "weight_decay", "alpha",
                                                                   "t_alpha", "t_beta3"}
    assert "state1" in optimizer.state[p]  # the optimizer's own state is not wrapped
    lars = bnb.optim.LARS8bit([p], lr=0.1, momentum=0.9)
    lars.step()
    assert set(lars.state_dict()["state"][0][key]) == {"state1", "qmap1", "absmax1", "unorm_vec"}


def test_load_state_dict_casts_only_castable_entries(device):
    p = torch.nn.Parameter(torch.randn(5000, device=device, dtype=torch.float16))
    optimizer = bnb.optim.Adam8bit([p])
    p.grad = torch.randn_like(p)
    optimizer.step()
    sd = optimizer.state_dict()
    sd["state"][0]["extra"] = torch.ones(3, dtype=torch.float64)  # a castable entry: takes p's dtype
    loaded = bnb.optim.Adam8bit([p])
    loaded.load_state_dict(tree_to(sd, "cpu"))
    state = loaded.state[p]
    assert state["extra"].dtype == torch.float16
    assert state["state1"].dtype == torch.uint8 and state["state1"].device == p.device
    assert state["absmax1"].dtype == torch.float32 and state["qmap1"] is loaded.name2qmap["dynamic"]
    kept = bnb.optim.Adam8bit([p])
    kept.load_state_dict(tree_to(sd, "cpu"), move_to_device=False)
    assert kept.state[p]["state1"].device.type == "cpu"


def test_load_state_dict_of_another_optimizer_raises(device):
    a, b = (torch.nn.Parameter(torch.randn(10, device=device)) for _ in range(2))
    two_groups = bnb.optim.Adam([{"params": [a]}, {"params": [b]}])
    with pytest.raises(ValueError, match="different number of parameter groups"):
        bnb.optim.Adam([a, b]).load_state_dict(two_groups.state_dict())
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        bnb.optim.Adam([a]).load_state_dict(bnb.optim.Adam([a, b]).state_dict())


# ---- GlobalOptimManager ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_global_config_overrides(device, dtype):
    mng = bnb.optim.GlobalOptimManager.get_instance()
    # Kept alive: the manager keys overrides by id(), which a freed tensor's successor could reuse.
    originals = [torch.randn(64, 80, dtype=dtype) * 0.1 for _ in range(3)]
    mng.override_config(originals[2], "optim_bits", 8)
    mng.register_parameters(originals)  # by position: the parameters are replaced below
    p1, p2, p3 = (torch.nn.Parameter(p.to(device)) for p in originals)
    adam = bnb.optim.Adam([p1, p2, p3])
    eight = bnb.optim.Adam8bit([p1, p2, p3])
    mng.override_config(p2, key_value_dict={"optim_bits": 32})  # by id, after construction
    for _ in range(5):
        for p in (p1, p2, p3):
            p.grad = torch.randn_like(p) * 0.1 + 0.001
        adam.step()
    assert adam.state[p3]["state1"].dtype == adam.state[p3]["state2"].dtype == torch.uint8
    assert adam.state[p1]["state1"].dtype == adam.state[p2]["state1"].dtype == torch.float32
    eight.step()
    assert eight.state[p1]["state1"].dtype == torch.uint8
    assert eight.state[p2]["state1"].dtype == eight.state[p2]["state2"].dtype == torch.float32


def test_module_override_and_lr_override(device):
    mng = bnb.optim.GlobalOptimManager.get_instance()
    model = torch.nn.ModuleDict({"emb": bnb.nn.StableEmbedding(100, 64), "lin": torch.nn.Linear(64, 128)}).to(device)
    optimizer = bnb.optim.AdamW8bit(model.parameters())
    lr_param = torch.nn.Parameter(torch.randn(5000, device=device))
    twin = torch.nn.Parameter(lr_param.detach().clone())
    with_override, plain = bnb.optim.AdamW8bit([lr_param]), bnb.optim.AdamW8bit([twin], lr=0.05)
    mng.override_config(lr_param, "lr", 0.05)
    out = model["lin"](model["emb"](torch.tensor([[1, 2, 3]], device=device)))
    out.sum().backward()
    optimizer.step()
    assert optimizer.state[model["emb"].weight]["state1"].dtype == torch.float32  # 6400 elements, overridden
    assert optimizer.state[model["lin"].weight]["state1"].dtype == torch.uint8  # 8192 elements
    lr_param.grad = torch.randn_like(lr_param)
    twin.grad = lr_param.grad.clone()
    with_override.step()
    plain.step()
    assert same(lr_param, twin)


# ---- constructors ----------------------------------------------------------------------------------

# (constructor call as code, with `params` defined): the reference raises the same type and message.
INVALID = [
    "bnb.optim.Adam(params, lr=-1.0)",
    "bnb.optim.AdamW(params, eps=-1e-8)",
    "bnb.optim.Adam(params, betas=(1.0, 0.999))",
    "bnb.optim.Adam8bit(params, betas=(0.9, -0.1))",
    "bnb.optim.AdamW8bit(params, weight_decay=-0.1)",
    "bnb.optim.Adam8bit(params, amsgrad=True)",
    "bnb.optim.AdamW8bit(params, optim_bits=8)",
    "bnb.optim.PagedAdam8bit(params, amsgrad=True)",
    "bnb.optim.PagedAdamW8bit(params, optim_bits=16)",
    "bnb.optim.AdEMAMix(params, betas=(0.9, 0.999, 1.0))",
    "bnb.optim.LAMB8bit(params, amsgrad=True)",
    "bnb.optim.LAMB8bit(params, max_unorm=0.5)",
    "bnb.optim.SGD(params, 0.1)",
    "bnb.optim.SGD8bit(params, 0.1, momentum=0)",
    "bnb.optim.LARS(params, 0.1)",
    "bnb.optim.LARS32bit(params, 0.1, momentum=0.0)",
    "bnb.optim.RMSprop(params, alpha=0)",
    "bnb.optim.RMSprop8bit(params, centered=True)",
    "bnb.optim.Adagrad(params, lr=-0.1)",
    "bnb.optim.Adagrad(params, lr_decay=0.1)",
    "bnb.optim.Adagrad32bit(params, initial_accumulator_value=0.5)",
    "bnb.optim.Adagrad8bit(params, weight_decay=-1.0)",
    "bnb.optim.Adagrad8bit(params, optim_bits=32)",
    "bnb.optim.Lion(params, betas=(0.9, 1.5))",
    "bnb.optim.PytorchLARS(params, lr=-1.0)",
    "bnb.optim.PytorchLARS(params, momentum=-0.5)",
    "bnb.optim.PytorchLARS(params, weight_decay=-1.0)",
    "bnb.optim.PytorchLARS(params, momentum=0.9, dampening=0.1, nesterov=True)",
]

_ERRORS = """
def error(code):
    params = [torch.nn.Parameter(torch.zeros(4))]
    try:
        eval(code)
    except Exception as e:
        return (type(e).__name__, str(e))
    return None

outputs["errors"] = [error(code) for code in inputs["codes"]]
"""


def _error(code):
    params = [torch.nn.Parameter(torch.zeros(4))]  # noqa: F841 (used by the code)
    try:
        eval(code)
    except Exception as e:
        return (type(e).__name__, str(e))
    return None


@requires_reference
@pytest.mark.reference
def test_constructor_errors_are_the_references():
    theirs = run_reference(_ERRORS, codes=INVALID)["errors"]
    ours = [_error(code) for code in INVALID]
    assert all(e is not None for e in ours), [c for c, e in zip(INVALID, ours) if e is None]
    assert ours == theirs


def test_constructors():
    params = [torch.nn.Parameter(torch.zeros(4))]
    adam = bnb.optim.Adam(params, betas="(0.8, 0.95)")
    assert adam.param_groups[0]["betas"] == [0.8, 0.95]
    with pytest.raises(NotImplementedError, match="Amount of optimizer bits not supported: 16"):
        params[0].grad = torch.zeros(4)
        bnb.optim.Adam(params, optim_bits=16).step()
    assert bnb.optim.AdamW(params).param_groups[0]["weight_decay"] == 1e-2
    assert bnb.optim.Lion(params).param_groups[0]["eps"] == 0.0
    sgd = bnb.optim.SGD(params, 0.1, momentum=0.9, dampening=0.5)
    assert sgd.param_groups[0]["betas"] == (0.9, 0.5) and sgd.optimizer_name == "momentum"
    assert bnb.optim.RMSprop(params, alpha=0.9, momentum=0.1).param_groups[0]["betas"] == (0.9, 0.1)
    assert bnb.optim.LARS(params, 0.1, 0.9).args.max_unorm == 0.02 and bnb.optim.LAMB(params).args.max_unorm == 1.0
    assert bnb.optim.Adagrad8bit(params).args.optim_bits == 8
    assert bnb.optim.PagedLion8bit(params).is_paged and not bnb.optim.Lion8bit(params).is_paged
    ademamix = bnb.optim.PagedAdEMAMix32bit(params, t_alpha=10)
    assert ademamix.is_paged and ademamix.args.optim_bits == 32 and ademamix.param_groups[0]["t_alpha"] == 10
    args = bnb.optim.optimizer.MockArgs({"optim_bits": 8, "min_8bit_size": 1, "max_unorm": 0.0,
                                         "skip_zeros": False})
    assert bnb.optim.Adam(params, args=args).args is args


# ---- paged states -----------------------------------------------------------------------------------


def test_paged_on_cpu_warns_once_and_matches_unpaged():
    p = torch.nn.Parameter(torch.randn(400, 400))
    q = torch.nn.Parameter(p.detach().clone())
    paged, plain = bnb.optim.PagedAdamW8bit([p]), bnb.optim.AdamW8bit([q])
    with pytest.warns(UserWarning, match="Paged optimizers are not supported on CPU") as record:
        for _ in range(3):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
            paged.step()
            plain.step()
    assert len([w for w in record if "Paged optimizers" in str(w.message)]) == 1
    assert same(p, q) and not getattr(paged.state[p]["state1"], "is_paged", False)


requires_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and bnb._C.cuda_built()),
                                   reason="CUDA: no GPU (torch.cuda.is_available() is False) or nybble built "
                                   "without CUDA")


@requires_cuda
@pytest.mark.parametrize("name,plain_name", [("PagedAdamW8bit", "AdamW8bit"), ("PagedAdEMAMix32bit", "AdEMAMix32bit"),
                                             ("PagedLion", "Lion")])
def test_paged_states_on_cuda(name, plain_name):
    p = torch.nn.Parameter(torch.randn(512, 256, device="cuda") * 0.1)  # 131072 elements: paged
    small = torch.nn.Parameter(torch.randn(300, 300, device="cuda") * 0.1)  # 90000: not paged
    q, small_q = (torch.nn.Parameter(t.detach().clone()) for t in (p, small))
    paged, plain = getattr(bnb.optim, name)([p, small]), getattr(bnb.optim, plain_name)([q, small_q])
    for _ in range(3):
        for a, b in ((p, q), (small, small_q)):
            a.grad = torch.randn_like(a) * 0.01
            b.grad = a.grad.clone()
        paged.step()
        plain.step()
    state = paged.state[p]
    assert state["state1"].is_paged and state["state1"].is_managed and state["state1"].is_cuda
    assert not getattr(paged.state[small]["state1"], "is_paged", False)
    if name == "PagedAdEMAMix32bit":
        assert state["state1"].shape == (2, 512, 256)
    torch.cuda.synchronize()
    assert same(p, q) and same(small, small_q)
    for key in ("state1", "state2"):
        if key in state:
            assert same(state[key], plain.state[q][key])


@requires_cuda
@pytest.mark.parametrize("name,kwargs", [("AdamW8bit", {}), ("Adam", {}), ("Lion8bit", {}), ("AdEMAMix8bit", {}),
                                         ("SGD8bit", {"lr": 0.01, "momentum": 0.9}), ("PagedAdamW8bit", {})])
def test_unclipped_step_does_not_synchronize(name, kwargs):
    params = [torch.nn.Parameter(torch.randn(shape, device="cuda")) for shape in ((512, 256), (1000,), (77, 300))]
    optimizer = getattr(bnb.optim, name)(params, **kwargs)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()  # the first step builds the states
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@requires_cuda
def test_step_runs_on_the_current_stream():
    p = torch.nn.Parameter(torch.randn(1 << 20, device="cuda"))
    q = torch.nn.Parameter(p.detach().clone())
    on_stream, default = bnb.optim.AdamW8bit([p]), bnb.optim.AdamW8bit([q])
    stream = torch.cuda.Stream()
    for _ in range(3):
        g = torch.randn_like(p)
        q.grad = g.clone()
        default.step()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            p.grad = g.clone()
            on_stream.step()
        torch.cuda.current_stream().wait_stream(stream)
    assert same(p, q)


# ---- device scalars: a tensor lr, step counts on the device, CUDA graphs (Note [Capturable steps]) -----------

TENSOR_LR_CASES = {
    "AdamW": {}, "AdamW8bit": {}, "Lion8bit": {}, "AdEMAMix8bit": {}, "RMSprop": {},
    "SGD8bit": {"momentum": 0.9},  # momentum's first step starts from g: the count decides it
    "PagedAdamW8bit": {},
}
# PARAM_SPECS and one parameter large enough to be paged (>= 1e5 elements).
SCALAR_SPECS = PARAM_SPECS + [((512, 256), torch.bfloat16)]


def _twin_params(device):
    params = [torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * 0.1) for shape, dtype in SCALAR_SPECS]
    return params, [torch.nn.Parameter(p.detach().clone()) for p in params]


def _assert_same_states(ours, theirs, params, copies, steps):
    for p, q in zip(params, copies):
        assert same(p, q), f"parameter {tuple(p.shape)} {p.dtype}"
        for key, value in ours.state[p].items():
            if key == "step":
                assert value.dtype == torch.float32 and value.device == p.device and value.item() == steps
                assert theirs.state[q]["step"] == steps
            else:
                assert same(value, theirs.state[q][key]), key


@pytest.mark.parametrize("name", list(TENSOR_LR_CASES))
def test_tensor_lr_steps_equal_float_lr_steps(device, name):
    cls, kwargs = getattr(bnb.optim, name), TENSOR_LR_CASES[name]
    params, copies = _twin_params(device)
    lr = torch.tensor(1e-3, device=device)
    ours, theirs = cls(params, lr=lr, **kwargs), cls(copies, lr=1e-3, **kwargs)
    for step in range(1, 6):
        if step == 4:  # a new lr takes effect at the next step, as a scheduler sets it
            lr.fill_(3e-4)
            theirs.param_groups[0]["lr"] = 3e-4
        for p, q in zip(params, copies):
            p.grad = torch.randn_like(p) * 0.01
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
        _assert_same_states(ours, theirs, params, copies, step)
    # The state_dict keeps the reference's format (an int count); a loaded one resumes on the device.
    state_dict = ours.state_dict()
    assert all(s["step"] == 5 and type(s["step"]) is int for s in state_dict["state"].values())
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = cls(params2, lr=lr, **kwargs)
    resumed.load_state_dict(state_dict)
    for p, p2, q in zip(params, params2, copies):
        q.grad = torch.randn_like(q) * 0.01
        p2.grad = q.grad.clone()
    resumed.step()
    theirs.step()
    _assert_same_states(resumed, theirs, params2, copies, 6)


def test_device_scalar_errors(device):
    p = torch.nn.Parameter(torch.randn(5000, device=device))
    p.grad = torch.randn_like(p)
    with pytest.raises(ValueError, match="t_alpha = 5.*tensor lr"):
        bnb.optim.AdEMAMix8bit([p], lr=torch.tensor(1e-3, device=device), t_alpha=5).step()
    before = p.detach().clone()
    s1, s2 = torch.zeros_like(p), torch.zeros_like(p)
    op = torch.ops.nybble.optimizer_update_32bit_multi
    args = ("adam", [p.grad], [p], [s1], [s2], None, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False)
    with pytest.raises(TypeError, match=r"lr_tensor.dtype = float16 is not supported \(must be float32\)"):
        op(*args, lr_tensor=torch.tensor(1e-3, device=device, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"step_count = float32 \[2\] .* has 2 elements, must have 1"):
        op(*args, step_count=[torch.ones(2, device=device)])
    if device == "cpu":  # a GPU reads the count only when the kernel runs
        with pytest.raises(ValueError, match=r"step_count = 0\.5.* whole number >= 1"):
            op(*args, step_count=[torch.tensor(0.5)])
    assert same(p, before) and not s1.any() and not s2.any()


@requires_cuda
@pytest.mark.parametrize("name", list(TENSOR_LR_CASES))
def test_step_captured_in_a_cuda_graph_replays_eager_steps(name):
    cls, kwargs = getattr(bnb.optim, name), TENSOR_LR_CASES[name]
    params, copies = _twin_params("cuda")
    lr = torch.tensor(1e-3, device="cuda")
    captured, eager = cls(params, lr=lr, **kwargs), cls(copies, lr=1e-3, **kwargs)
    for p in params:
        p.grad = torch.zeros_like(p)  # static gradients: the graph reads these addresses

    def new_grads():
        for p, q in zip(params, copies):
            p.grad.copy_(torch.randn_like(p) * 0.01)
            q.grad = p.grad.clone()

    side = torch.cuda.Stream()  # warm-up steps (the states are built here) on a side stream, as torch advises
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            new_grads()
            captured.step()
            eager.step()
    torch.cuda.current_stream().wait_stream(side)
    # Earlier tests' dead reference cycles may hold paged (managed) states, whose cudaFree would
    # invalidate a capture if the cyclic GC ran during it (torch.cuda.graph no longer collects
    # first): collect them now, as docs/usage.md advises.
    gc.collect()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured.step()
    for replay in range(4):
        if replay == 2:
            lr.fill_(3e-4)
            eager.param_groups[0]["lr"] = 3e-4
        new_grads()
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    _assert_same_states(captured, eager, params, copies, 6)


@requires_cuda
def test_clipped_step_refuses_capture_and_changes_nothing():
    p = torch.nn.Parameter(torch.randn(5000, device="cuda"))
    p.grad = torch.randn_like(p)
    optimizer = bnb.optim.LAMB8bit([p], lr=torch.tensor(1e-3, device="cuda"))
    optimizer.step()
    torch.cuda.synchronize()
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
    weights = p.detach().clone()
    gc.collect()  # as above
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="max_unorm = 1.0.*cannot be captured"):
        with torch.cuda.graph(graph):
            optimizer.step()
    torch.cuda.synchronize()
    assert same(p, weights)
    for key, value in optimizer.state[p].items():
        assert same(value, before[key]) if isinstance(value, torch.Tensor) else value == before[key], key


# ---- state_dicts exchanged with the reference ---------------------------------------------------------------

EXCHANGE_CASES = {
    "Adam8bit": {},
    "AdamW8bit": {},
    "Lion8bit": {},
    "SGD8bit": {"lr": 0.01, "momentum": 0.9},
    "RMSprop8bit": {"lr": 0.01, "alpha": 0.9},
    "Adagrad8bit": {},
    "AdEMAMix8bit": {"t_alpha": 10, "t_beta3": 10},
    "AdamW": {},
    "Lion": {},
    "LAMB": {},
    "LARS": {"lr": 0.01, "momentum": 0.9},
    "AdEMAMix": {},
}
EXCHANGE_STEPS, EXCHANGE_MORE = 4, 3

_EXCHANGE = """
device = inputs["device"]

def run(name, kwargs, params, state_dict, grads):
    params = [torch.nn.Parameter(p.clone().to(device)) for p in params]
    optimizer = getattr(bnb.optim, name)(params, **kwargs)
    if state_dict is not None:
        optimizer.load_state_dict(state_dict)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.to(device)
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer.state_dict()

steps = inputs["steps"]
for name, kwargs in inputs["cases"].items():
    params, grads = inputs["data"][name]
    mine, theirs = run(name, kwargs, params, None, grads[:steps])
    outputs[name] = {"params": mine, "sd": theirs}
    outputs[name]["params_end"], _ = run(name, kwargs, mine, theirs, grads[steps:])
    nybble = inputs["nybble"][name]
    outputs[name]["from_nybble_end"], _ = run(name, kwargs, nybble["params"], nybble["sd"], grads[steps:])
"""


def _shapes(name, device):
    # The reference's CUDA AdEMAMix8bit reads the slow EMA's absmax wrongly unless numel % 256 == 0.
    return [(64, 256), (40, 128)] if name == "AdEMAMix8bit" and device == "cuda" else [(64, 256), (50, 100)]


def _run_nybble(name, kwargs, params, state_dict, grads, device):
    params = [torch.nn.Parameter(p.clone().to(device)) for p in params]
    optimizer = getattr(bnb.optim, name)(params, **kwargs)
    if state_dict is not None:
        optimizer.load_state_dict(state_dict)
    loaded = copy.deepcopy(optimizer.state_dict())  # state_dict() holds the live state tensors
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.to(device)
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer.state_dict(), loaded


@pytest.fixture(scope="module")
def exchange(device):
    gen = torch.Generator().manual_seed(2024)
    inputs = {}
    for name in EXCHANGE_CASES:
        shapes = _shapes(name, device)
        params = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
        grads = [[torch.randn(s, generator=gen) * 0.01 for s in shapes] for _ in range(EXCHANGE_STEPS + EXCHANGE_MORE)]
        inputs[name] = (params, grads)
    ours = {}
    for name, kwargs in EXCHANGE_CASES.items():
        params, grads = inputs[name]
        p, sd, _ = _run_nybble(name, kwargs, params, None, grads[:EXCHANGE_STEPS], device)
        p_end, _, _ = _run_nybble(name, kwargs, p, sd, grads[EXCHANGE_STEPS:], device)
        ours[name] = {"params": p, "sd": sd, "params_end": p_end}
    theirs = run_reference(_EXCHANGE, device=device, cases=EXCHANGE_CASES, data=inputs, steps=EXCHANGE_STEPS,
                           nybble={name: {"params": o["params"], "sd": o["sd"]} for name, o in ours.items()})
    return inputs, ours, tree_to(theirs, device)


def _assert_params_close(actual, expected, eight_bit, what):
    for a, e in zip(actual, expected):
        if eight_bit:  # §8.2's 8-bit parameter criterion
            err = (a - e).abs()
            assert err.mean() < 6e-5 and (err / (e.abs() + 1e-9)).mean() < 6e-4, (what, err.mean().item())
        else:
            torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-5, msg=what)


def _assert_same_tree(ours, theirs, path="sd"):
    assert type(ours) is type(theirs) or (isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple))), path
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), (path, set(ours) ^ set(theirs))
        for k in theirs:
            _assert_same_tree(ours[k], theirs[k], f"{path}[{k!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same_tree(a, b, f"{path}[{i}]")
    elif isinstance(theirs, torch.Tensor):
        assert same(ours, theirs), path
    else:
        assert ours == theirs, path


@requires_reference
@pytest.mark.reference
@pytest.mark.parametrize("name", list(EXCHANGE_CASES))
def test_state_dict_exchange_with_reference(exchange, device, name):
    inputs, ours, theirs = exchange
    kwargs, eight_bit = EXCHANGE_CASES[name], "8bit" in name
    params, grads = inputs[name]
    ref_sd, our_sd = theirs[name]["sd"], ours[name]["sd"]
    # The same layout: keys, dtypes and shapes of every entry, the same param_groups.
    for index in ref_sd["state"]:
        ref_state, our_state = ref_sd["state"][index], our_sd["state"][index]
        assert set(ref_state) == set(our_state)
        quant_ref, quant_ours = ref_state["__bnb_optimizer_quant_state__"], our_state["__bnb_optimizer_quant_state__"]
        assert {k: (v.dtype, v.shape) for k, v in quant_ref.items()} == {k: (v.dtype, v.shape)
                                                                         for k, v in quant_ours.items()}
        for key in ("qmap1", "qmap2"):
            if key in quant_ref:
                assert same(quant_ref[key], quant_ours[key])
    assert ref_sd["param_groups"] == our_sd["param_groups"]
    # The reference's checkpoint in nybble: loaded as is (saved again: identical), continued like the
    # reference continues it.
    p_end, _, loaded = _run_nybble(name, kwargs, theirs[name]["params"], ref_sd, grads[EXCHANGE_STEPS:], device)
    _assert_same_tree(loaded, ref_sd)
    if name == "LAMB" and device == "cpu":
        return  # the reference's CPU backend clips by the norm of the update without bias correction;
        # its CUDA kernels, which nybble follows, by the bias-corrected one (spec §4.3)
    _assert_params_close(p_end, theirs[name]["params_end"], eight_bit, "reference checkpoint continued by nybble")
    # nybble's checkpoint in the reference, continued like nybble continues it.
    _assert_params_close(theirs[name]["from_nybble_end"], ours[name]["params_end"], eight_bit,
                         "nybble checkpoint continued by the reference")


# ---- the drop-in ----------------------------------------------------------------------------------------


def test_dropin_optimizers_are_nybbles():
    dropin = pytest.importorskip("bitsandbytes", reason="the drop-in is neither installed nor on the path")
    import bitsandbytes.optim.optimizer

    assert dropin.optim is bnb.optim and bitsandbytes.optim.optimizer is bnb.optim.optimizer
    for name in bnb.optim.__all__:
        assert getattr(dropin.optim, name) is getattr(bnb.optim, name), name
    from bitsandbytes.optim import AdamW8bit, PagedAdEMAMix8bit

    assert AdamW8bit is bnb.optim.AdamW8bit and PagedAdEMAMix8bit is bnb.optim.PagedAdEMAMix8bit
    assert issubclass(dropin.optim.Lion8bit, Optimizer8bit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = dropin.optim.PagedAdamW8bit([torch.nn.Parameter(torch.zeros(8))])
    assert isinstance(optimizer, bnb.optim.optimizer.Optimizer2State)
