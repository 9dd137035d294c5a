"""`compile=true` for images: the whole training step as compiled graphs, without graph breaks.

The step is data → two views → encoder → head → NT-Xent → backward → optimizer. What is random
is drawn first, eagerly, with the run's generator (`augment_fused.draw_view`: a fixed number of
small kernels, the same draws as the eager path). The rest is two graphs:
- the views' pixels, the forward pass and the loss, one graph (`fullgraph=True`: torch.compile
  raises rather than break it), whose backward AOTAutograd compiles with it;
- the optimizer's update, one graph, with the learning rate in a tensor that the loop fills, so a
  new rate each step is new data, not a new graph.
The augmentation has static shapes (`simclr.augment`), so nothing recompiles after the first
step. On CUDA, `compile_mode=reduce-overhead` replays both as CUDA graphs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from simclr.augment import ImageAugment
from simclr.augment_fused import PLAIN, ViewDraws, draw_view, view_pixels
from simclr.loss import nt_xent


class CompiledStep:
    """One SimCLR update of `net` on a uint8 batch, compiled on first call. `fullgraph`: refuse
    any graph break (a single process; DistributedDataParallel splits the graph at its buckets)."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, augment: ImageAugment,
                 temperature: float, bf16: bool, channels_last: bool, mode: str = "default",
                 fullgraph: bool = True, backend: str = "inductor") -> None:
        self.net, self.optimizer, self.augment = net, optimizer, augment
        self.temperature, self.bf16, self.channels_last = temperature, bf16, channels_last
        options: dict[str, Any] = {"fullgraph": fullgraph, "backend": backend, "mode": mode}
        self.loss = torch.compile(self._loss, **options)
        self.update = torch.compile(optimizer.step, **options)
        self._ready = False

    def _loss(self, x: torch.Tensor, d1: ViewDraws, d2: ViewDraws) -> torch.Tensor:
        x1, x2 = view_pixels(self.augment, x, d1, k=PLAIN), view_pixels(self.augment, x, d2, k=PLAIN)
        if self.channels_last:
            x1, x2 = (v.contiguous(memory_format=torch.channels_last) for v in (x1, x2))
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            z1, z2 = self.net(x1, x2)
        return nt_xent(z1, z2, self.temperature)

    def _prepare(self, device: torch.device) -> None:
        """Before the first compile: learning rates in tensors, and momentum buffers where the
        optimizer would create them at its first step (zeros: the same update), so the first
        step's graph is every step's."""
        for group in self.optimizer.param_groups:
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
            if group.get("momentum", 0):
                for p in group["params"]:
                    self.optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        self._ready = True

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if not self._ready:
            self._prepare(x.device)
        b, c, h, w = x.shape
        d1 = draw_view(self.augment, b, c, h, w, 1, gen, x.device)
        d2 = draw_view(self.augment, b, c, h, w, 1, gen, x.device)
        loss = self.loss(x, d1, d2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.update()
        return loss.detach()

