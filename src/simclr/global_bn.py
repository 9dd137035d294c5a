"""Global BatchNorm: statistics over the whole global batch of all ranks (the paper's remedy
for the information leak of per-device BN, section B.2 / "global BN").

On CUDA this is torch's SyncBatchNorm. torch's version refuses CPU tensors, so on CPU (gloo)
the layers become `GlobalBatchNorm`, which all-reduces the per-channel sums with autograd.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from simclr import dist


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return dist_fn.all_reduce(x)  # type: ignore[no-untyped-call, no-any-return]


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm of any rank (1-D, 2-D, 3-D) whose training statistics span every process.

    Two passes (mean, then centred squares) rather than E[x²] − E[x]², for the precision of
    the single-process layer it must match. Under bf16 autocast the statistics are computed in
    float32, as torch's layer does (a bf16 sum or count over thousands of values is off by
    percents), and the output keeps the input's dtype, as torch's does.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_distributed() and dist.world_size() > 1):
            return super().forward(x)
        dtype, x = x.dtype, x.float()
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        totals = _sum_over_ranks(torch.cat([x.sum(dims), count]))  # (c + 1)
        n = totals[c]
        mean = totals[:c] / n
        centred = x - mean.view(shape)
        var = _sum_over_ranks((centred * centred).sum(dims)) / n  # biased, as BN normalizes with
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        tracked = self.num_batches_tracked
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert tracked is not None
                tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(tracked.item())
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        return y.to(dtype)


def to_global_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """Every BatchNorm layer of `module` made global: SyncBatchNorm on CUDA, GlobalBatchNorm
    on CPU; parameters and running statistics are kept."""
    if cuda:
        converted: nn.Module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[no-untyped-call]
        return converted
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        bn = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        module.add_module(name, to_global_batchnorm(child, cuda))
    return module

