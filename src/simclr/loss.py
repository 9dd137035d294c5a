"""NT-Xent, the normalized temperature-scaled cross-entropy loss (SimCLR, Chen et al. 2020, eq. 1)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from simclr import dist


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean over anchors of -log softmax(z_i · keys / tau)[positive_i], the self term excluded.

    Fused by hand so that one (2n, 2N) matrix is ever held: E = exp(logits - shift), written in
    place over the logits and kept for the backward pass together with its row sums s. With
    P = E / s (the softmax) and Y the one-hot positives, dL/dlogits = (P - Y) / 2n, so

        dL/dz    = ((E @ keys) / s - keys[positive]) / (2n tau)
        dL/dkeys = (Eᵀ @ (z / s) - Yᵀ z) / (2n tau)

    and no other matrix of that size is made (autograd's log-softmax and cross-entropy hold
    three or four of them at the peak).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, z: torch.Tensor, keys: torch.Tensor | None, temperature: float, offset: int
    ) -> torch.Tensor:
        # keys None: the anchors are all the keys (one process). Passing z twice instead would
        # be one tensor in two inputs, which torch.compile cannot trace into one graph.
        ctx.shared = keys is None
        keys = z if keys is None else keys
        m = z.shape[0]  # 2n local anchors; keys holds all 2N views
        anchor = torch.arange(m, device=z.device)
        positive = offset + (anchor + m // 2) % m  # view 1 of sample k pairs with view 2 of k
        # Rows are unit vectors, so no logit exceeds 1/tau: that bound is a safe softmax shift,
        # folded into the matrix product, whenever the smallest weight exp(-2/tau) stays a
        # normal number; otherwise (tau below ~0.023 in float32) each row's maximum is used.
        if 2 / temperature < -math.log(torch.finfo(z.dtype).tiny) - 1:
            shift = torch.full((1, 1), 1 / temperature, dtype=z.dtype, device=z.device)
            e = torch.addmm(shift, z, keys.T, alpha=1 / temperature, beta=-1)  # (2n, 2N) logits - 1/tau
            row_max = False
        else:
            e = torch.mm(z, keys.T).mul_(1 / temperature)  # (2n, 2N) logits
            row_max = True
        # Mask self-similarity with -inf before the softmax (not a constant subtracted after).
        e[anchor, anchor + offset] = float("-inf")
        if row_max:
            e.sub_(e.amax(1, keepdim=True))
        positive_logit = e[anchor, positive]  # (2n,), shifted like the rest of its row
        s = e.exp_().sum(1)  # (2n,) softmax denominators
        ctx.save_for_backward(z, keys, e, s, positive)
        ctx.temperature = temperature
        return (s.log() - positive_logit).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        z, keys, e, s, positive = ctx.saved_tensors
        scale = grad / (z.shape[0] * ctx.temperature)
        grad_z = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_z = (torch.mm(e, keys) / s.unsqueeze(1) - keys[positive]) * scale  # (2n, d)
        if ctx.shared or ctx.needs_input_grad[1]:
            grad_keys = torch.mm(e.T, z / s.unsqueeze(1)).index_add_(0, positive, z, alpha=-1) * scale  # (2N, d)
        if ctx.shared:  # z is the keys too: both paths' gradients are z's
            return (grad_keys if grad_z is None else grad_z + grad_keys), None, None, None
        return grad_z, grad_keys, None, None


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """Mean NT-Xent loss over all 2N anchors of a batch of N positive pairs.

    For anchor i with positive j:
        l(i, j) = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)
    with sim the cosine similarity. Each anchor has one positive and 2N-2 negatives; the
    anchor itself is excluded from the denominator. The value is the per-anchor mean (the
    official TF code reports the sum of both directions, i.e. twice this).

    When torch.distributed is initialized (and `gather_distributed`), embeddings of all ranks
    are gathered with gradients, so negatives span the global batch; each rank returns the
    mean over its own anchors, and the mean over ranks equals the single-process loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, d), got {tuple(z1.shape)}, {tuple(z2.shape)}")
    # Low-precision inputs are normalized and compared in float32: exp(sim / 0.1) over
    # thousands of negatives is beyond bfloat16's 8-bit mantissa.
    compute_dtype = torch.float32 if z1.dtype in (torch.float16, torch.bfloat16) else z1.dtype
    z = F.normalize(torch.cat([z1, z2]).to(compute_dtype), dim=1)  # (2n, d), local views
    gather = gather_distributed and dist.is_distributed()
    keys = dist.gather_with_grad(z) if gather else None  # (2n * world, d); None: z itself
    # Local anchors in global key order: this rank's [view1 block | view2 block] starts at offset.
    offset = z.shape[0] * dist.rank() if gather else 0
    loss: torch.Tensor = _SoftmaxCrossEntropy.apply(z, keys, temperature, offset)  # type: ignore[no-untyped-call]
    return loss
