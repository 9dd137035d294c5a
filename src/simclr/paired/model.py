"""Two encoders into one space, and the step's loss (CLIP, Radford et al. 2021, with SimCLR's
augmentation of the image side)."""

from __future__ import annotations

import torch
from torch import nn

from simclr.crossmodal import LearnedTemperature, cross_modal_loss
from simclr.modality import Augment
from simclr.model import ProjectionHead, SimCLR


class FixedTemperature(nn.Module):
    """A constant tau with the interface of `LearnedTemperature` (not saved: the config has it)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value: torch.Tensor
        self.register_buffer("value", torch.tensor(value), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.value


class PairedModel(SimCLR):
    """SimCLR's `encoder` f and `head` g for the first side (images), plus `text_encoder` and
    `text_head` for the second, both heads ending in the shared dimension.
    `forward(images, token_ids)` returns (z_image, z_text), each (n, shared_dim): the two
    "views" of a pair come from two encoders."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead, text_encoder: nn.Module,
                 text_head: ProjectionHead, temperature: nn.Module) -> None:
        super().__init__(encoder, head)
        self.text_encoder = text_encoder
        self.text_head = text_head
        self.temperature = temperature

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.encoder(x1)), self.text_head(self.text_encoder(x2))

    def image_tower(self) -> nn.Sequential:
        """x -> z, the image side into the shared space (shared modules, not copies)."""
        return nn.Sequential(self.encoder, self.head)

    def text_tower(self) -> nn.Sequential:
        return nn.Sequential(self.text_encoder, self.text_head)


def build_temperature(initial: float, learn: bool, minimum: float) -> nn.Module:
    return LearnedTemperature(initial, minimum) if learn else FixedTemperature(initial)


class PairedObjective:
    """One step's loss: an augmented view of each image (SimCLR's recipe, per sample), one of
    its captions drawn per sample (a prompt template; the caption itself for a manifest),
    optionally augmented, then the symmetric cross-modal loss, gathered across ranks."""

    def __init__(self, model: PairedModel, augment: Augment, captions: torch.Tensor,
                 text_augment: Augment | None = None, channels_last: bool = False) -> None:
        self.temperature = model.temperature  # the bare module: `net` may be a DDP wrapper
        self.augment = augment
        self.captions = captions  # (N, T, L) on the training device
        self.text_augment = text_augment
        self.channels_last = channels_last

    def __call__(self, net: nn.Module, x: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = self.augment(x, gen)  # (n, C, H, W)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        device = self.captions.device
        choice = torch.randint(self.captions.shape[1], (len(rows),), generator=gen, device=gen.device).to(device)
        ids = self.captions[rows.to(device), choice]  # (n, L)
        if self.text_augment is not None:
            ids = self.text_augment(ids, gen)
        z_image, z_text = net(images, ids)  # (n, shared_dim) each
        return cross_modal_loss(z_image, z_text, self.temperature())
