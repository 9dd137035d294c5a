"""Two-view augmentation for token ids, batched on the device, every text drawing its own
parameters: a random span (crop), token dropout, and masking / random replacement. The fourth
augmentation, dropout noise (SimCSE, Gao et al. 2021), needs no code here: both views go through
the encoder in one training-mode pass, so each row gets its own dropout mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simclr.text.data import MASK, PAD

FIRST_WORD = 3  # ids below are [PAD], [UNK], [MASK]: random replacements never draw them


@dataclass(frozen=True)
class TextAugment:
    """One random view t(x) of right-padded token ids (B, L). Call it twice for two views."""

    vocab_size: int
    crop_min: float = 0.6  # span length ~ U(crop_min, 1) × the text's length
    word_dropout: float = 0.1
    mask_prob: float = 0.1
    replace_prob: float = 0.05

    def __call__(self, ids: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        b, length = ids.shape
        dev = ids.device
        steps = torch.arange(length, device=dev).expand(b, length)
        n = (ids != PAD).sum(1, keepdim=True)  # (b, 1) tokens in each text

        # Span crop: a window of ceil(frac × n) tokens at a random start, moved to the front.
        frac = self.crop_min + (1 - self.crop_min) * torch.rand(b, 1, generator=gen, device=dev)
        span = torch.ceil(frac * n).long().clamp_min(1)
        start = (torch.rand(b, 1, generator=gen, device=dev) * (n - span + 1).clamp_min(1)).long()
        out = ids.gather(1, (start + steps).clamp(max=length - 1))
        out = torch.where(steps < span, out, PAD)

        # Token dropout: delete tokens (never all of a text), then close the gaps.
        real = out != PAD
        drop = real & (torch.rand(b, length, generator=gen, device=dev) < self.word_dropout)
        drop &= ((real & ~drop).sum(1, keepdim=True) > 0)  # a text that would vanish keeps its tokens
        keep = real & ~drop
        order = torch.argsort((~keep).int(), dim=1, stable=True)  # kept tokens first, in order
        out = torch.where(keep, out, PAD).gather(1, order)

        # Masking and random replacement of the remaining tokens.
        real = out != PAD
        r = torch.rand(b, length, generator=gen, device=dev)
        masked = real & (r < self.mask_prob)
        replaced = real & (r >= self.mask_prob) & (r < self.mask_prob + self.replace_prob)
        random_ids = torch.randint(FIRST_WORD, max(FIRST_WORD + 1, self.vocab_size), (b, length), generator=gen,
                                   device=dev)
        out = torch.where(masked, MASK, torch.where(replaced, random_ids, out))
        return out
