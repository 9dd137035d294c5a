"""Two views of a video: clips of T frames from different times of the same video (temporal
jitter), each with one spatial augmentation (the image recipe: crop, flip, colour, blur) applied
identically to every frame of the clip, drawn per sample, batched on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from simclr.augment import ImageAugment


@dataclass(frozen=True)
class ClipAugment:
    image: ImageAugment  # the per-frame recipe; one draw per clip
    clip_frames: int  # T, frames per view

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """(B, F, C, H, W) uint8 videos of F ≥ T frames -> (B, T, C, size, size) float32 clips,
        each starting at its own uniformly drawn frame."""
        b, f = x.shape[:2]
        if f < self.clip_frames:
            raise ValueError(f"videos of {f} frames are shorter than a clip of {self.clip_frames}")
        start = torch.randint(0, f - self.clip_frames + 1, (b,), generator=gen, device=x.device)
        frames = start.unsqueeze(1) + torch.arange(self.clip_frames, device=x.device)  # (B, T)
        clips = x[torch.arange(b, device=x.device).unsqueeze(1), frames]  # (B, T, C, H, W)
        views = self.image(clips.flatten(0, 1), gen, frames=self.clip_frames)
        return views.view(b, self.clip_frames, *views.shape[1:])
