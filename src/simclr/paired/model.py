"""Two encoders into one space, and the step's loss (CLIP, Radford et al. 2021, with SimCLR's
augmentation of each side)."""

from __future__ import annotations

from typing import Any, ClassVar

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
    """SimCLR's `encoder` f and `head` g for the first side (e.g. images), plus `second_encoder`
    and `second_head` for the other (e.g. captions), both heads ending in the shared dimension.
    `forward(x_first, x_second)` returns (z_first, z_second), each (n, shared_dim): the two
    "views" of a pair come from two encoders."""

    # Checkpoints written before the sides were generic named the second side's modules so.
    RENAMED: ClassVar[dict[str, str]] = {"text_encoder.": "second_encoder.", "text_head.": "second_head."}

    def __init__(self, encoder: nn.Module, head: ProjectionHead, second_encoder: nn.Module,
                 second_head: ProjectionHead, temperature: nn.Module) -> None:
        super().__init__(encoder, head)
        self.second_encoder = second_encoder
        self.second_head = second_head
        self.temperature = temperature
        self._register_load_state_dict_pre_hook(self._rename_old_keys)  # type: ignore[no-untyped-call]

    @classmethod
    def renamed(cls, key: str) -> str:
        """A state-dict key under today's module names."""
        old = next((o for o in cls.RENAMED if key.startswith(o)), None)
        return cls.RENAMED[old] + key[len(old) :] if old else key

    def _rename_old_keys(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in [k for k in state if k.startswith(prefix)]:
            new = prefix + self.renamed(key[len(prefix) :])
            if new != key:
                state[new] = state.pop(key)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.encoder(x1)), self.second_head(self.second_encoder(x2))

    def side_encoder(self, side: int) -> nn.Module:
        """f of side 0 (the first) or 1."""
        return self.encoder if side == 0 else self.second_encoder

    def side_head(self, side: int) -> nn.Module:
        """g of side 0 or 1: h into the shared space."""
        return self.head if side == 0 else self.second_head

    def tower(self, side: int) -> nn.Sequential:
        """x -> z for side 0 or 1, into the shared space (shared modules, not copies)."""
        return nn.Sequential(self.side_encoder(side), self.side_head(side))


def build_temperature(initial: float, learn: bool, minimum: float) -> nn.Module:
    return LearnedTemperature(initial, minimum) if learn else FixedTemperature(initial)


class PairedObjective:
    """One step's loss: a view of each first-side input (its modality's augmentation, per
    sample), one second-side candidate drawn per sample (a prompt template; the caption itself
    for a manifest), augmented by its modality unless `second_augment` is None, then the
    symmetric cross-modal loss, gathered across ranks."""

    def __init__(self, model: PairedModel, augment: Augment, second: torch.Tensor,
                 second_augment: Augment | None = None, channels_last: bool = False) -> None:
        self.temperature = model.temperature  # the bare module: `net` may be a DDP wrapper
        self.augment = augment
        self.second = second  # (N, T, ...) on the training device
        self.second_augment = second_augment
        self.channels_last = channels_last

    def __call__(self, net: nn.Module, x: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        first = self.augment(x, gen)  # (n, ...)
        if self.channels_last:
            first = first.contiguous(memory_format=torch.channels_last)
        device = self.second.device
        choice = torch.randint(self.second.shape[1], (len(rows),), generator=gen, device=gen.device).to(device)
        second = self.second[rows.to(device), choice]  # (n, ...)
        if self.second_augment is not None:
            second = self.second_augment(second, gen)
        z_first, z_second = net(first, second)  # (n, shared_dim) each
        return cross_modal_loss(z_first, z_second, self.temperature())
