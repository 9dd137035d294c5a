"""compile=true for images compiles the whole step (views, forward, loss, backward, optimizer):
no graph break, no recompilation after the first step, the eager step's result."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from simclr import ImageAugment, build_model, build_optimizer
from simclr.augment_fused import PLAIN, draw_view, view_pixels
from simclr.compiled import CompiledStep
from simclr.optim import set_lr
from simclr.training import train_step

# Graph breaks and recompiles are Dynamo's, whatever backend runs the graphs: aot_eager traces
# the forward and backward like inductor without generating code (seconds instead of a minute).
BACKEND = "aot_eager"


def setup(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, ImageAugment]:
    torch.manual_seed(seed)
    model = build_model("small_cnn", 3, 16)
    return model, build_optimizer(model, "lars", 0.3, 1e-6), ImageAugment(16, blur_prob=0.5)


def batch(b: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.filterwarnings("ignore:Profiler record function")
def test_compiled_step_has_no_graph_break_and_no_recompile() -> None:
    """fullgraph=True would raise at a break; the counters show none and that the graphs of
    the first step (the loss with its backward, the update) serve the next two, with new
    draws and a new learning rate each step."""
    torch._dynamo.reset()
    counters.clear()
    model, opt, aug = setup()
    step = CompiledStep(model, opt, aug, 0.5, bf16=False, channels_last=False, backend=BACKEND)
    gen, x = torch.Generator().manual_seed(0), batch()
    graphs = []
    for i in range(3):
        set_lr(opt, 0.1 * (i + 1))
        step(x, gen)
        graphs.append(counters["stats"]["unique_graphs"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert graphs == [2, 2, 2]  # the forward (its backward compiled with it) and the optimizer step
    assert counters["stats"]["calls_captured"] > 0


@pytest.mark.filterwarnings("ignore:Profiler record function")
def test_compiled_step_equals_the_eager_step() -> None:
    """The same generator gives the same draws, so the same loss and the same weights after two
    updates as the views computed eagerly → train_step, within float rounding. (The views equal
    the reference augmentation's within rounding, tests/test_augment.py; that rounding alone,
    through two LARS steps of a small network, moves some weights by 1e-5.)"""
    model, opt, aug = setup()
    eager_model = copy.deepcopy(model)
    eager_opt = build_optimizer(eager_model, "lars", 0.3, 1e-6)
    step = CompiledStep(model, opt, aug, 0.5, bf16=False, channels_last=False, backend=BACKEND)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for i in range(2):
        x = batch(seed=i)
        set_lr(opt, 0.2)
        set_lr(eager_opt, 0.2)
        loss = step(x, g1)
        x1, x2 = (view_pixels(aug, x, draw_view(aug, len(x), 3, 20, 20, 1, g2, x.device), k=PLAIN) for _ in "12")
        expected = train_step(eager_model, eager_opt, x1, x2, 0.5)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), setup()[0].parameters(), strict=True))
