"""LARS against a hand computation of its rule, parameter groups, LR scaling and schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

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
