"""Per-thread convolution weight gradients: the same gradients as nn.Conv2d's (float64 to rounding,
bf16 autocast to bf16 rounding), the input and bias gradients and outputs bit-identical, the
thread count left as it was, and the plain path wherever the split does not apply."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from simclr.config import Config, load_config
from simclr.conv_grads import PerThreadWeightGradConv2d, per_thread_weight_grads, weight_grad_per_thread
from simclr.errors import UserError
from simclr.model import build_model
from simclr.optim import build_optimizer
from simclr.train import train_step, weight_grads_per_thread


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def pair(**kw: object) -> tuple[nn.Conv2d, nn.Conv2d]:
    plain = nn.Conv2d(8, 16, 3, padding=1, **kw).double()  # type: ignore[arg-type]
    split = copy.deepcopy(plain)
    assert per_thread_weight_grads(split) == 1 and type(split) is PerThreadWeightGradConv2d
    return plain, split


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("kw", [{"bias": False}, {"bias": True, "stride": 2}, {"dilation": 2, "groups": 2},
                                {"groups": 4, "stride": 2, "bias": False}])
def test_gradients_equal_nn_conv2d(kw: dict[str, object], n_threads: int, threads: None) -> None:
    torch.set_num_threads(n_threads)
    torch.manual_seed(0)
    plain, split = pair(**kw)
    x = torch.randn(7, 8, 12, 12, dtype=torch.float64)  # 7: shares of unequal size
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), split(xb)
    assert yb.grad_fn is not None and "_Conv2d" in type(yb.grad_fn).__name__  # the split path ran
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)  # type: ignore[arg-type]
    if plain.bias is not None:
        assert torch.equal(plain.bias.grad, split.bias.grad)  # type: ignore[arg-type]
    # The weight gradient: the same sum in another order.
    torch.testing.assert_close(split.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)
    assert torch.get_num_threads() == n_threads


def test_shares_cover_the_batch_once(threads: None) -> None:
    """Against the formula: d loss/d w of a 1×1 convolution is sum over n, y, x of g ⊗ x."""
    torch.set_num_threads(3)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    g = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    w = torch.zeros(6, 4, 1, 1, dtype=torch.float64)
    got = weight_grad_per_thread(g, x, w, ([1, 1], [0, 0], [1, 1], 1))
    want = torch.einsum("nohw,nihw->oi", g, x)[..., None, None]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_matches_the_plain_layer_within_bf16_rounding(threads: None) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    plain = nn.Conv2d(16, 32, 3, 2, 1, bias=False).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    split = copy.deepcopy(plain)
    per_thread_weight_grads(split)
    x = torch.randn(64, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    outs = []
    for layer in (plain, split):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.float().square().mean().backward()
        outs.append(y)
    assert outs[1].dtype == torch.bfloat16 and torch.equal(outs[0], outs[1])
    assert split.weight.grad is not None and split.weight.grad.dtype == torch.float32
    torch.testing.assert_close(split.weight.grad, plain.weight.grad, rtol=2e-2, atol=1e-5)


def test_plain_path_in_eval_without_grad_and_on_one_thread(threads: None) -> None:
    plain, split = pair()
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(split(x), plain(x))
    split.eval()
    assert "_Conv2d" not in type(split(x).grad_fn).__name__
    split.train()
    torch.set_num_threads(1)
    assert "_Conv2d" not in type(split(x).grad_fn).__name__


def test_swap_keeps_parameters_and_state_dict() -> None:
    model = build_model("small_cnn", 3, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert per_thread_weight_grads(model) == 4
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert per_thread_weight_grads(model) == 0  # already swapped; subclasses are left alone


def test_training_step_equals_the_plain_model(threads: None) -> None:
    """One LARS step of the small CNN in float32: the same loss and, to rounding, the same weights."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    plain = build_model("small_cnn", 3, 16).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    split = copy.deepcopy(plain)
    per_thread_weight_grads(split)
    x1, x2 = (torch.rand(32, 3, 16, 16).contiguous(memory_format=torch.channels_last) for _ in range(2))
    losses = [train_step(m, build_optimizer(m, "lars", 0.3, 1e-6), x1, x2, 0.5) for m in (plain, split)]
    assert torch.equal(losses[0], losses[1])
    for a, b in zip(plain.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_auto_splits_only_bf16_eager_training_on_a_multithreaded_cpu(threads: None) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    torch.set_num_threads(2)
    assert weight_grads_per_thread(Config(), cpu, bf16=True)
    assert not weight_grads_per_thread(Config(), cpu, bf16=False)  # float32: measured slower
    assert not weight_grads_per_thread(Config(compile=True), cpu, bf16=True)
    assert not weight_grads_per_thread(Config(compile=True, conv_weight_grads="per_thread"), cpu, bf16=True)
    assert not weight_grads_per_thread(Config(), cuda, bf16=True)
    assert not weight_grads_per_thread(Config(conv_weight_grads="onednn"), cpu, bf16=True)
    assert weight_grads_per_thread(Config(conv_weight_grads="per_thread"), cpu, bf16=False)
    torch.set_num_threads(1)
    assert not weight_grads_per_thread(Config(conv_weight_grads="per_thread"), cpu, bf16=True)
    with pytest.raises(UserError, match="conv_weight_grads must be one of auto, per_thread, onednn"):
        load_config(None, ["conv_weight_grads=fast"])
