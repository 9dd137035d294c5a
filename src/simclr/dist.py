"""Process-group helpers that degrade to a single process when torch.distributed is not in use."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
import torch.distributed.nn.functional as dist_fn


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph.

    The backward pass sums the incoming gradients over ranks (a reduce-scatter), so each
    rank's gradient for its own rows includes the terms from every other rank's loss. Plain
    `torch.distributed.all_gather` cuts the graph, the bug several public ports shipped.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)  # type: ignore[no-untyped-call]
