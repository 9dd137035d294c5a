"""Optimizers and the learning-rate schedule of SimCLR (section B.6 of the paper)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# What the torch._foreach_* ops take and return.
_TensorList = list[torch.Tensor] | tuple[torch.Tensor, ...]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), as in the official SimCLR code.

    For each parameter group with `lars=True`:
        g = grad + weight_decay * w
        trust = trust_coefficient * ||w|| / ||g||   (1 where either norm is 0)
        v = momentum * v + lr * trust * g;   w = w - v
    Groups with `lars=False` (biases, BatchNorm) get plain momentum SGD without weight decay,
    which is what the paper means by excluding them from weight decay and adaptation.

    `step` is multi-tensor: per group (and device/dtype) it dispatches a fixed number of
    `torch._foreach_*` ops whatever the number of parameters, so a GPU step is not launch-bound.
    A group's `lr` may be a float or a 0-dim tensor; a compiled step keeps it in a tensor that it
    `fill_`s, so changing it does not recompile.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, object]],
        lr: float | torch.Tensor,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 1e-3,
    ) -> None:
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            lars=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # foreach kernels and `torch.stack` of the norms need one device and dtype per call.
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for w in group["params"]:
                if w.grad is not None:
                    buckets.setdefault((w.device, w.dtype), []).append(w)
            for params in buckets.values():
                self._update(group, params)
        return loss

    def _update(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """One group's update of `params` (all with a gradient, on one device, of one dtype)."""
        grads: _TensorList = [w.grad for w in params]  # type: ignore[misc]
        lr = group["lr"]
        tensor_lr = isinstance(lr, torch.Tensor)
        # A float lr goes in as `alpha` of the momentum add, which keeps the rounding of the
        # per-tensor `v.mul_(m).add_(g, alpha=lr)`; a tensor lr cannot be an alpha (a Python
        # number), so it is folded into the per-tensor scale instead and alpha is 1.
        alpha = 1.0 if tensor_lr else lr
        updates: _TensorList
        if group["lars"]:
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            # All trust ratios at once. The 1 where a norm is 0 keeps a zero-initialized layer
            # (||w|| = 0) training and a zero gradient from dividing by zero.
            scale = torch.where((w_norm > 0) & (g_norm > 0), group["trust_coefficient"] * w_norm / g_norm, 1.0)
            if tensor_lr:
                scale = scale * lr
            updates = torch._foreach_mul(grads, scale.unbind(0))
        elif tensor_lr:
            updates = torch._foreach_mul(grads, lr)
        else:
            updates = grads  # aliases .grad: only read below, never written

        states = [self.state[w] for w in params]
        old = [i for i, s in enumerate(states) if "momentum_buffer" in s]
        if len(old) < len(params):
            # First step of these parameters: v = 0 gives v = alpha * update, a fresh tensor
            # (never an alias of .grad), made for all of them by one foreach op.
            new = [i for i, s in enumerate(states) if "momentum_buffer" not in s]
            for i, v in zip(new, torch._foreach_mul([updates[i] for i in new], alpha), strict=True):
                states[i]["momentum_buffer"] = v
        if old:
            bufs = [states[i]["momentum_buffer"] for i in old]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, [updates[i] for i in old], alpha=alpha)
        torch._foreach_sub_(params, [s["momentum_buffer"] for s in states])


def is_excluded(name: str, p: torch.Tensor) -> bool:
    """Biases and normalization parameters (all 1-D tensors) skip weight decay and LARS."""
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if is_excluded(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    for g in groups:
        g.pop("lars")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (choose lars, sgd or adamw)")


def scaled_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    """Peak learning rate: base * batch/256 ("linear"), base * sqrt(batch) ("sqrt"), or base."""
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {scaling!r} (choose linear, sqrt or none)")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warmup to `peak_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`.

    A pure function of the step, so resuming needs only the step counter.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate: filled into its tensor where it has one (a compiled step)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
