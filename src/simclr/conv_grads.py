"""Convolution weight gradients on a few CPU threads: each thread computes its share of the
batch in its own single-threaded call, and the shares are summed, instead of one call that all
threads share.

Why: on CPUs without AMX, oneDNN's bf16 weight-gradient kernel (jit_bf16) splits one call across
threads and reduces their partial sums. On the 2-core machine it runs in one of two modes that
flip between processes and over minutes: the small CNN's three strided layers at 1,024 views take
134-146 ms, or 234-258 ms with both threads busy throughout (twice the CPU time for the same
work). One single-threaded call per half of the batch, on two threads, took 121-132 ms in either
mode (a minute of alternating measurements). In float32 (a different kernel, which did not flip)
the split measured 5-15 % slower per layer, so `auto` uses it only in bf16 (train.py,
`conv_weight_grads`); ResNet-18's bf16 step at batch 256 took the same time either way (4.26-4.87
against 4.29-4.77 s, interleaved).

The forward pass, the input gradient and the bias gradient are oneDNN's as usual; only the weight
gradient's computation changes, to a sum in another order (float rounding).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

_pools: dict[int, ThreadPoolExecutor] = {}


def _workers(n: int) -> ThreadPoolExecutor:
    """A pool of `n` threads, kept for the next call (its threads sleep while unused)."""
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="simclr-weight-grad")
    return _pools[n]


Conv = tuple[list[int], list[int], list[int], int]  # stride, padding, dilation, groups


def weight_grad_per_thread(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conv: Conv) -> torch.Tensor:
    """d loss / d weight of conv2d(x, weight), one single-threaded oneDNN call per thread on
    contiguous slices of the batch, summed (in float32 at least)."""
    stride, padding, dilation, groups = conv
    threads = torch.get_num_threads()
    n, shares = x.shape[0], min(threads, x.shape[0])
    bounds = [i * n // shares for i in range(shares + 1)]

    def share(i: int) -> torch.Tensor:
        torch.set_num_threads(1)  # this thread's calls: one oneDNN thread each
        lo, hi = bounds[i], bounds[i + 1]
        grad_w: torch.Tensor = torch.ops.aten.convolution_backward(
            grad_out[lo:hi], x[lo:hi], weight, None, stride, padding, dilation, False, [0, 0], groups,
            [False, True, False],
        )[1]
        return grad_w

    try:
        others = [_workers(shares - 1).submit(share, i) for i in range(1, shares)] if shares > 1 else []
        # this thread takes the first share meanwhile; bf16 shares are summed in float32
        total = share(0).to(torch.promote_types(weight.dtype, torch.float32))
        for other in others:
            total.add_(other.result())
    finally:
        torch.set_num_threads(threads)
    return total.to(weight.dtype)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor,
        bias: torch.Tensor | None, conv: Conv,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv, ctx.bias_sizes = conv, None if bias is None else list(bias.shape)  # type: ignore[attr-defined]
        stride, padding, dilation, groups = conv
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]  # type: ignore[attr-defined]
        stride, padding, dilation, groups = ctx.conv  # type: ignore[attr-defined]
        grad_x = grad_b = grad_w = None
        if need_x or need_b:  # all threads on one call, as usual
            grad_x, _, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, ctx.bias_sizes, stride, padding, dilation, False, [0, 0], groups,  # type: ignore[attr-defined]
                [need_x, False, need_b],
            )
        if need_w:
            grad_w = weight_grad_per_thread(grad_out, x, weight, ctx.conv)  # type: ignore[attr-defined]
        return grad_x, grad_w, grad_b, None


class PerThreadWeightGradConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state dict) whose weight gradient, in training on a CPU
    with several threads, is computed per thread (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and x.device.type == "cpu" and torch.get_num_threads() > 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # what autocast does for conv2d: everything in its dtype
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        conv: Conv = (list(self.stride), list(self.padding), list(self.dilation), self.groups)  # type: ignore[arg-type]
        with torch.autocast("cpu", enabled=False):
            out: torch.Tensor = _Conv2d.apply(x, weight, bias, conv)
        return out


def per_thread_weight_grads(model: nn.Module) -> int:
    """Make every plain nn.Conv2d of `model` a PerThreadWeightGradConv2d, in place (no new
    parameters: checkpoints and exported weights are unchanged); returns how many."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    for m in convs:
        m.__class__ = PerThreadWeightGradConv2d
    return len(convs)
