"""The cross-modal contrastive loss against a loop written from its formula, and its
distributed gather against one process with the whole batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from simclr.crossmodal import LearnedTemperature, cross_modal_loss
from simclr.model import ProjectionHead
from simclr.paired.model import PairedModel
from simclr.training import update

WORLD, B, D = 2, 5, 8


def reference(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Term by term: cosine similarities, then -log of each positive's softmax share, both ways."""
    n = len(a)

    def cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u * v).sum() / (u.norm() * v.norm())

    total = torch.zeros((), dtype=a.dtype)
    for k in range(n):
        denominator_a = sum(torch.exp(cos(a[k], b[j]) / tau) for j in range(n))
        denominator_b = sum(torch.exp(cos(b[k], a[j]) / tau) for j in range(n))
        total = total - torch.log(torch.exp(cos(a[k], b[k]) / tau) / denominator_a)
        total = total - torch.log(torch.exp(cos(b[k], a[k]) / tau) / denominator_b)
    return total / (2 * n)


def pairs(seed: int = 0, n: int = WORLD * B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64), torch.randn(n, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_value_and_gradients_equal_the_formula(tau: float) -> None:
    a, b = pairs()
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours, ref = cross_modal_loss(a1, b1, tau), reference(a2, b2, tau)
    ours.backward()
    ref.backward()
    assert torch.allclose(ours, ref, rtol=1e-10, atol=0)
    assert torch.allclose(a1.grad, a2.grad, rtol=1e-8, atol=1e-12)
    assert torch.allclose(b1.grad, b2.grad, rtol=1e-8, atol=1e-12)


def test_perfect_pairs_approach_zero_and_random_pairs_log_n() -> None:
    a = torch.eye(4, dtype=torch.float64)
    assert cross_modal_loss(a, a.clone(), 0.01).item() < 1e-20
    # identical similarities everywhere: every softmax is uniform over the n candidates
    same = torch.ones(6, 3, dtype=torch.float64)
    assert cross_modal_loss(same, same, 0.5).item() == pytest.approx(math.log(6), rel=1e-12)


def test_learned_temperature_is_clamped_and_trains() -> None:
    t = LearnedTemperature(initial=0.07, minimum=0.01)
    assert t().item() == pytest.approx(0.07, rel=1e-6)
    with torch.no_grad():
        t.log_inverse.fill_(10.0)  # 1/tau = e^10 is far beyond the clamp
    assert t().item() == pytest.approx(0.01, rel=1e-6)
    t = LearnedTemperature()
    a, b = pairs()
    cross_modal_loss(a.float(), b.float(), t()).backward()
    assert t.log_inverse.grad is not None and t.log_inverse.grad.abs() > 0
    with pytest.raises(ValueError, match="minimum"):
        LearnedTemperature(initial=0.01, minimum=0.1)


def _worker(rank: int, store: str, out: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    a_all, b_all = pairs()
    a = a_all[rank * B : (rank + 1) * B].clone().requires_grad_()
    b = b_all[rank * B : (rank + 1) * B].clone().requires_grad_()
    loss = cross_modal_loss(a, b, 0.1)
    loss.backward()
    torch.save({"loss": loss.detach(), "ga": a.grad, "gb": b.grad}, f"{out}.{rank}")
    torch_dist.destroy_process_group()


def test_two_ranks_equal_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    out = str(tmp_path / "loss")
    mp.spawn(_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD)
    a, b = pairs()
    a.requires_grad_()
    b.requires_grad_()
    single = cross_modal_loss(a, b, 0.1, gather_distributed=False)
    single.backward()
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    assert torch.allclose(sum(r["loss"] for r in ranks) / WORLD, single.detach(), rtol=1e-6, atol=0)
    for r, got in enumerate(ranks):  # the gather's backward sums every rank's terms (see nt_xent)
        rows = slice(r * B, (r + 1) * B)
        assert torch.allclose(got["ga"] / WORLD, a.grad[rows], rtol=1e-6, atol=1e-12)
        assert torch.allclose(got["gb"] / WORLD, b.grad[rows], rtol=1e-6, atol=1e-12)


def _paired_model() -> PairedModel:
    torch.manual_seed(0)
    model = PairedModel(nn.Linear(D, 6), ProjectionHead(6, 4), nn.Linear(D, 6), ProjectionHead(6, 4),
                        LearnedTemperature(0.1, 0.01))
    return model.double()  # float64: the comparison is of the algorithm, not of rounding


def _paired_step(net: nn.Module, model: PairedModel, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """As `PairedObjective` does it: the towers through `net` (maybe DDP), the temperature from
    the bare model, outside the wrapped forward."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    z_a, z_b = net(a, b)
    return update(optimizer, cross_modal_loss(z_a, z_b, model.temperature()))


def _ddp_worker(rank: int, store: str, out: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = _paired_model()
    a, b = (t[rank * B : (rank + 1) * B] for t in pairs())
    loss = _paired_step(DistributedDataParallel(model), model, a, b)
    torch.save({"loss": loss, "state": model.state_dict()}, f"{out}.{rank}")
    torch_dist.destroy_process_group()


def test_learned_temperature_steps_the_same_on_two_ranks_as_in_one_process(tmp_path: Path) -> None:
    out = str(tmp_path / "step")
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD)
    model = _paired_model()
    before = model.temperature.log_inverse.item()
    a, b = pairs()
    single = _paired_step(model, model, a, b)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    assert torch.allclose(sum(r["loss"] for r in ranks) / WORLD, single, rtol=1e-12, atol=0)
    for got in ranks:  # DDP averaged every gradient, the temperature's too: the same step everywhere
        for key, value in model.state_dict().items():
            assert torch.allclose(got["state"][key], value, rtol=1e-10, atol=1e-13), key
    assert model.temperature.log_inverse.item() != before  # the temperature did move
