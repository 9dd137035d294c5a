"""The contrastive loss across two modalities (paired data such as image + caption).

For a batch of N pairs (a_k, b_k), the positive of a_k is its own partner b_k and the other
N − 1 b's are its negatives, and symmetrically for b_k: the NT-Xent idea with the two views
coming from two encoders (the symmetric InfoNCE of CLIP, Radford et al. 2021). Unlike
`nt_xent` there is no self-similarity to mask: a never meets another a.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from simclr import dist


def cross_modal_loss(
    a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor = 0.07, gather_distributed: bool = True
) -> torch.Tensor:
    """Mean of the a→b and b→a cross-entropies over this rank's N pairs:

        l_a(k) = -log exp(sim(a_k, b_k)/tau) / sum_j exp(sim(a_k, b_j)/tau)

    and l_b(k) the same with a and b swapped, sim the cosine similarity. Under
    torch.distributed both sides are gathered with gradients, so the j run over the global
    batch and the mean over ranks equals the single-process loss (as for `nt_xent`).
    `temperature` may be a tensor (a learned one, see `LearnedTemperature`)."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must both be (N, d), got {tuple(a.shape)}, {tuple(b.shape)}")
    compute_dtype = torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    a, b = F.normalize(a.to(compute_dtype), dim=1), F.normalize(b.to(compute_dtype), dim=1)
    all_a = dist.gather_with_grad(a) if gather_distributed else a
    all_b = dist.gather_with_grad(b) if gather_distributed else b
    offset = a.shape[0] * dist.rank() if all_a is not a else 0
    target = offset + torch.arange(a.shape[0], device=a.device)  # each pair's place in the global batch
    loss_a = F.cross_entropy(a @ all_b.T / temperature, target)
    loss_b = F.cross_entropy(b @ all_a.T / temperature, target)
    return (loss_a + loss_b) / 2


class LearnedTemperature(nn.Module):
    """tau = exp(-s) with s learned, starting from `initial`; tau is kept at or above `minimum`
    (CLIP clamps 1/tau at 100) so the logits cannot blow up."""

    def __init__(self, initial: float = 0.07, minimum: float = 0.01) -> None:
        super().__init__()
        if not 0 < minimum <= initial:
            raise ValueError(f"need 0 < minimum <= initial, got minimum={minimum}, initial={initial}")
        self.log_inverse = nn.Parameter(torch.tensor(math.log(1 / initial)))
        self.max_log_inverse = math.log(1 / minimum)

    def forward(self) -> torch.Tensor:
        return torch.exp(-self.log_inverse.clamp(max=self.max_log_inverse))
