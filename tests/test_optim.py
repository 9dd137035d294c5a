"""LARS against a hand computation of its rule and a per-tensor reference, parameter groups, LR scaling and schedule."""

from __future__ import annotations

import io
import itertools
import math
from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from simclr import LARS, lr_at
from simclr.optim import build_optimizer, param_groups, scaled_lr

# ---- learning-rate schedule ------------------------------------------------------------


def test_warmup_starts_at_peak_over_warmup() -> None:
    assert lr_at(0, total_steps=100, warmup_steps=10, peak_lr=2.0) == pytest.approx(0.2)
    assert lr_at(4, total_steps=100, warmup_steps=10, peak_lr=2.0) == pytest.approx(1.0)


def test_peak_at_end_of_warmup() -> None:
    assert lr_at(9, 100, 10, 2.0) == pytest.approx(2.0)
    assert lr_at(10, 100, 10, 2.0) == pytest.approx(2.0)  # cosine starts at its top


def test_cosine_midpoint_quarter_and_end() -> None:
    # 100 decay steps after 10 warmup steps.
    assert lr_at(60, 110, 10, 2.0) == pytest.approx(1.0)  # half way: peak / 2
    assert lr_at(35, 110, 10, 2.0) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, 110, 10, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(109, 110, 10, 2.0) < 1e-3  # the last step trains with almost nothing
    assert lr_at(500, 110, 10, 2.0) == pytest.approx(0.0, abs=1e-12)  # past the end: stays 0


def test_schedule_is_monotone() -> None:
    lrs = [lr_at(s, 200, 20, 1.0) for s in range(201)]
    warmup, decay = lrs[:20], lrs[19:]
    assert all(a < b for a, b in itertools.pairwise(warmup))
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert max(lrs) == pytest.approx(1.0)
    assert all(lr > 0 for lr in lrs[:-1])


def test_no_warmup_starts_at_peak() -> None:
    assert lr_at(0, 50, 0, 0.7) == pytest.approx(0.7)
    assert lr_at(25, 50, 0, 0.7) == pytest.approx(0.35)


def test_scaled_lr() -> None:
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.3, 256, "linear") == pytest.approx(0.3)
    assert scaled_lr(0.075, 1024, "sqrt") == pytest.approx(2.4)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.1, 4096, "none") == 0.1
    with pytest.raises(ValueError):
        scaled_lr(0.1, 256, "cubic")


# ---- LARS ------------------------------------------------------------------------------


def test_lars_single_step_literal_values() -> None:
    # ||w|| = 5, ||g|| = 1, no weight decay: trust = 0.1 * 5 / 1 = 0.5,
    # v = lr * trust * g = 0.2 * 0.5 * g = 0.1 * g, w <- w - v.
    w = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    w.grad = torch.tensor([[0.0, 0.6], [0.8, 0.0]], dtype=torch.float64)
    opt = LARS([w], lr=0.2, momentum=0.9, weight_decay=0.0, trust_coefficient=0.1)
    opt.step()
    expected = torch.tensor([[3.0, -0.06], [-0.08, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-15)


def test_lars_two_steps_against_the_documented_rule() -> None:
    lr, m, wd, eta = 0.5, 0.9, 0.01, 0.1
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    grads = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)]

    w = nn.Parameter(w0.clone())
    opt = LARS([w], lr=lr, momentum=m, weight_decay=wd, trust_coefficient=eta)

    # The rule, written out element by element in Python floats.
    ref = [[float(v) for v in row] for row in w0]
    vel = [[0.0] * 4 for _ in range(3)]
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
        gd = [[float(grad[i, j]) + wd * ref[i][j] for j in range(4)] for i in range(3)]
        w_norm = math.sqrt(sum(x * x for row in ref for x in row))
        g_norm = math.sqrt(sum(x * x for row in gd for x in row))
        trust = eta * w_norm / g_norm
        for i in range(3):
            for j in range(4):
                vel[i][j] = m * vel[i][j] + lr * trust * gd[i][j]
                ref[i][j] -= vel[i][j]
        torch.testing.assert_close(w.detach(), torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_param_groups_split_biases_and_norms() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 2))
    decay, no_decay = param_groups(model, weight_decay=0.25)
    conv, bn, linear = model[0], model[1], model[3]
    assert {id(p) for p in decay["params"]} == {id(conv.weight), id(linear.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(conv.bias), id(bn.weight), id(bn.bias), id(linear.bias)}
    assert (decay["weight_decay"], decay["lars"]) == (0.25, True)
    assert (no_decay["weight_decay"], no_decay["lars"]) == (0.0, False)


def test_param_groups_skip_frozen_parameters() -> None:
    model = nn.Linear(3, 2)
    model.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["params"] == [] and len(no_decay["params"]) == 1


def test_lars_excluded_group_is_plain_momentum_sgd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2, dtype=torch.float64), nn.BatchNorm1d(2, dtype=torch.float64))
    lr, m = 0.1, 0.9
    opt = LARS(param_groups(model, weight_decay=0.5), lr=lr, momentum=m, weight_decay=0.5, trust_coefficient=1e-3)
    excluded = [model[0].bias, model[1].weight, model[1].bias]
    start = [p.detach().clone() for p in excluded]
    g1 = [torch.full_like(p, 0.3) + torch.arange(p.numel(), dtype=p.dtype) for p in excluded]
    g2 = [torch.full_like(p, -0.7) for p in excluded]
    w_before = model[0].weight.detach().clone()
    for grads in (g1, g2):
        for p, g in zip(excluded, grads, strict=True):
            p.grad = g.clone()
        model[0].weight.grad = torch.ones_like(model[0].weight)
        opt.step()
    # No weight decay, no trust ratio: v1 = lr g1, v2 = m v1 + lr g2, w = w0 - v1 - v2.
    for p, w0, a, b in zip(excluded, start, g1, g2, strict=True):
        v1 = lr * a
        v2 = m * v1 + lr * b
        torch.testing.assert_close(p.detach(), w0 - v1 - v2, rtol=0, atol=1e-14)
    # The 2-D weight did get the trust ratio: its step is far smaller than lr * grad.
    step = (w_before - model[0].weight.detach()).abs().max().item()
    assert 0 < step < 0.01 * lr


def test_lars_zero_norm_weight_uses_trust_one() -> None:
    w = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    w.grad = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    LARS([w], lr=0.1, momentum=0.9, weight_decay=0.1, trust_coefficient=1e-3).step()
    # ||w|| = 0: trust = 1 (not 0, which would freeze a zero-initialized layer forever).
    torch.testing.assert_close(w.detach(), -0.1 * w.grad, rtol=0, atol=1e-15)


def test_lars_zero_gradient_leaves_weight() -> None:
    w = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    w.grad = torch.zeros(2, 2, dtype=torch.float64)
    LARS([w], lr=0.1, weight_decay=0.0).step()
    assert torch.equal(w.detach(), torch.ones(2, 2, dtype=torch.float64))


def test_lars_skips_parameters_without_gradient() -> None:
    w = nn.Parameter(torch.ones(2, 2))
    LARS([w], lr=0.1).step()
    assert torch.equal(w.detach(), torch.ones(2, 2))


def test_lars_defaults_are_the_papers() -> None:
    opt = LARS([nn.Parameter(torch.ones(2, 2))], lr=0.1)
    group = opt.param_groups[0]
    assert (group["momentum"], group["trust_coefficient"], group["weight_decay"]) == (0.9, 1e-3, 1e-6)
    with pytest.raises(ValueError):
        LARS([nn.Parameter(torch.ones(1))], lr=-1.0)


# ---- build_optimizer -------------------------------------------------------------------


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_build_lars() -> None:
    opt = build_optimizer(small_model(), "lars", lr=0.6, weight_decay=1e-6, momentum=0.8)
    assert isinstance(opt, LARS)
    decay, no_decay = opt.param_groups
    assert (decay["lr"], decay["momentum"], decay["weight_decay"], decay["lars"]) == (0.6, 0.8, 1e-6, True)
    assert (no_decay["weight_decay"], no_decay["lars"]) == (0.0, False)
    assert len(decay["params"]) == 2 and len(no_decay["params"]) == 4


def test_build_sgd() -> None:
    opt = build_optimizer(small_model(), "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    assert type(opt) is torch.optim.SGD
    decay, no_decay = opt.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)
    assert decay["momentum"] == 0.9 and "lars" not in decay


def test_build_adamw() -> None:
    opt = build_optimizer(small_model(), "adamw", lr=1e-3, weight_decay=0.05)
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert (decay["lr"], decay["weight_decay"], no_decay["weight_decay"]) == (1e-3, 0.05, 0.0)


def test_build_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="adam"):
        build_optimizer(small_model(), "adam", lr=0.1, weight_decay=0.0)


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_built_optimizers_reduce_a_simple_loss(name: str) -> None:
    torch.manual_seed(0)
    model = small_model()
    x, y = torch.randn(64, 4), torch.randn(64, 2)
    lr = {"lars": 1.0, "sgd": 0.05, "adamw": 0.01}[name]
    opt = build_optimizer(model, name, lr=lr, weight_decay=1e-6)
    first = None
    for _ in range(30):
        loss = ((model(x) - y) ** 2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.9 * first


# ---- multi-tensor LARS against the per-tensor reference -------------------------------


@torch.no_grad()
def reference_lars_step(opt: torch.optim.Optimizer) -> None:
    """The per-tensor LARS step that `LARS.step` replaced, kept here as the reference.

    It works on `opt`'s groups and state, which have the same layout (`momentum_buffer`).
    """
    for group in opt.param_groups:
        for w in group["params"]:
            if w.grad is None:
                continue
            g = w.grad
            if group["lars"]:
                if group["weight_decay"] != 0:
                    g = g.add(w, alpha=group["weight_decay"])
                w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                trust = torch.where(
                    (w_norm > 0) & (g_norm > 0),
                    group["trust_coefficient"] * w_norm / g_norm,
                    torch.ones_like(w_norm),
                )
                g = g * trust
            state = opt.state[w]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(w)
            v = state["momentum_buffer"]
            v.mul_(group["momentum"]).add_(g, alpha=group["lr"])
            w.sub_(v)


def mixed_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Both parameter groups, and a weight of all zeros (its trust ratio is 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2, bias=False)
    ).to(dtype)
    with torch.no_grad():
        model[3].weight.zero_()
    return model


def build_lars(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    opt = build_optimizer(model, "lars", lr=lr, weight_decay=0.1, momentum=0.9)
    # The default 1e-3 makes LARS steps ~1e-4 of a weight, hard to tell from rounding.
    opt.param_groups[0]["trust_coefficient"] = 0.5
    return opt


def set_grads(model: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    model[2].bias.grad = None  # never has a gradient: never updated, no state
    if step < 2:
        model[0].weight.grad = None  # gets its first gradient (and buffer) later than the rest


def assert_same_state(
    model: nn.Module, opt: torch.optim.Optimizer, ref_model: nn.Module, ref_opt: torch.optim.Optimizer, **tol: float
) -> None:
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), **tol, msg=lambda m, n=name: f"{n}: {m}")
        assert ("momentum_buffer" in opt.state[p]) == ("momentum_buffer" in ref_opt.state[q]), name
        if "momentum_buffer" in ref_opt.state[q]:
            torch.testing.assert_close(
                opt.state[p]["momentum_buffer"],
                ref_opt.state[q]["momentum_buffer"],
                **tol,
                msg=lambda m, n=name: f"{n}: {m}",
            )


TOLERANCES = {torch.float32: {"rtol": 1e-6, "atol": 1e-7}, torch.float64: {"rtol": 1e-14, "atol": 1e-16}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lars_equals_the_per_tensor_reference(dtype: torch.dtype) -> None:
    model, ref_model = mixed_model(dtype), mixed_model(dtype)
    opt, ref_opt = build_lars(model, lr=0.8), build_lars(ref_model, lr=0.8)
    for step in range(5):
        set_grads(model, step)
        set_grads(ref_model, step)
        opt.step()
        reference_lars_step(ref_opt)
        assert_same_state(model, opt, ref_model, ref_opt, **TOLERANCES[dtype])
    assert "momentum_buffer" not in opt.state[model[2].bias]
    # The parameters moved by far more than the tolerance, so the comparison is not vacuous.
    assert (model[3].weight.detach() != 0).all()
    assert not torch.allclose(model[0].weight.detach(), mixed_model(dtype)[0].weight.detach(), rtol=0, atol=1e-2)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched under it (what would be kernel launches on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def ops_in_second_step(layers: int, per_tensor: bool) -> Counter[str]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(layers)])  # 2 * layers tensors
    opt = build_optimizer(model, "lars", lr=0.1, weight_decay=1e-4)
    step = (lambda: reference_lars_step(opt)) if per_tensor else opt.step
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    step()  # creates the momentum buffers
    with OpCounter() as counter:
        step()
    return counter.ops


def test_lars_op_count_is_independent_of_the_number_of_tensors() -> None:
    small, large = ops_in_second_step(4, per_tensor=False), ops_in_second_step(8, per_tensor=False)
    assert small == large, (small, large)
    # A fixed handful per group: 22 with torch 2.14 (2 of them the profiler's record_function).
    assert small.total() <= 30
    # The per-tensor reference does grow with the tensor count, so the counting sees the loop.
    ref_small, ref_large = ops_in_second_step(4, per_tensor=True), ops_in_second_step(8, per_tensor=True)
    assert ref_large.total() > ref_small.total() > small.total()


def test_lars_tensor_lr_equals_float_lr() -> None:
    model, ref_model = mixed_model(), mixed_model()
    opt, ref_opt = build_lars(model, lr=0.1), build_lars(ref_model, lr=0.1)
    lr = torch.tensor(0.1)
    for group in opt.param_groups:
        group["lr"] = lr  # one tensor shared by the groups, as a compiled step keeps it
    for step, value in enumerate([0.1, 0.3, 0.05, 0.2]):
        lr.fill_(value)
        for group in ref_opt.param_groups:
            group["lr"] = value
        set_grads(model, step)
        set_grads(ref_model, step)
        opt.step()
        ref_opt.step()
        assert_same_state(model, opt, ref_model, ref_opt, **TOLERANCES[torch.float32])
    assert not torch.allclose(model[0].weight.detach(), mixed_model()[0].weight.detach(), rtol=0, atol=1e-2)


@pytest.mark.parametrize("saved_by", ["reference", "lars"])
def test_lars_continues_identically_from_a_checkpoint(saved_by: str) -> None:
    # A checkpoint written by the per-tensor class (same state layout) or by LARS itself.
    model, ref_model = mixed_model(), mixed_model()
    opt, ref_opt = build_lars(model, lr=0.5), build_lars(ref_model, lr=0.5)
    for step in range(3):
        set_grads(ref_model, step)
        if saved_by == "reference":
            reference_lars_step(ref_opt)
        else:
            ref_opt.step()
    buffer = io.BytesIO()
    torch.save({"model": ref_model.state_dict(), "optimizer": ref_opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    assert_same_state(model, opt, ref_model, ref_opt, rtol=0, atol=0)
    for step in range(3, 6):
        set_grads(model, step)
        set_grads(ref_model, step)
        opt.step()
        reference_lars_step(ref_opt)
        assert_same_state(model, opt, ref_model, ref_opt, **TOLERANCES[torch.float32])


def test_compiled_lars_step_does_not_recompile_when_a_tensor_lr_changes() -> None:
    # Inductor on CPU compiles this in about 10 s; one graph, reused for every step.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    eager_model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    eager_model.load_state_dict(model.state_dict())
    opt, eager_opt = build_lars(model, lr=0.1), build_lars(eager_model, lr=0.1)
    lr = torch.tensor(0.1)
    for group in opt.param_groups:
        group["lr"] = lr

    def set_all_grads(step: int) -> None:
        g = torch.Generator().manual_seed(step)
        for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()

    # The first step creates the momentum buffers: a different program, so it runs eagerly here.
    set_all_grads(0)
    opt.step()
    eager_opt.step()
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled_step = torch.compile(opt.step, fullgraph=True)
    graphs = []
    for step, value in enumerate([0.3, 0.05, 0.2], start=1):
        lr.fill_(value)
        for group in eager_opt.param_groups:
            group["lr"] = value
        set_all_grads(step)
        compiled_step()
        eager_opt.step()
        graphs.append(counters["stats"]["unique_graphs"])
        assert_same_state(model, opt, eager_model, eager_opt, rtol=1e-5, atol=1e-6)  # the new lr was used
    assert graphs == [1, 1, 1], graphs
    assert not counters["graph_break"]
    torch._dynamo.reset()
