"""NT-Xent, the normalized temperature-scaled cross-entropy loss (SimCLR, Chen et al. 2020, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simclr import dist


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
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).to(compute_dtype), dim=1)  # (2n, d), local views
    keys = dist.gather_with_grad(z) if gather_distributed else z  # (2n * world, d)
    offset = 2 * n * dist.rank() if keys is not z else 0

    # Local anchors in global key order: this rank's [view1 block | view2 block] starts at offset.
    logits = (z / temperature) @ keys.T  # (2n, 2n * world)
    anchor = torch.arange(2 * n, device=z.device)
    # Mask self-similarity with -inf before the softmax (not a constant subtracted after).
    logits[anchor, anchor + offset] = float("-inf")
    positive = offset + (anchor + n) % (2 * n)  # view 1 of sample k pairs with view 2 of k
    return F.cross_entropy(logits, positive)
