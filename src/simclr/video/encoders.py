"""Video encoders f: (B, T, C, H, W) clips -> h (B, d), each with an integer `out_dim`."""

from __future__ import annotations

import torch
import torchvision.models.video as tv_video
from torch import nn

VIDEO_RESNETS = ("r3d_18", "r2plus1d_18", "mc3_18")


class VideoResNet(nn.Module):
    """torchvision's 18-layer video ResNets (3-D, (2+1)-D, mixed convolutions), no pretrained
    weights, classifier removed; they take (B, C, T, H, W), so the clip axes are swapped here."""

    def __init__(self, name: str, in_channels: int = 3) -> None:
        super().__init__()
        if name not in VIDEO_RESNETS:
            raise ValueError(f"unknown video encoder {name!r} (choose from {', '.join(VIDEO_RESNETS)})")
        net = getattr(tv_video, name)(weights=None)
        if in_channels != 3:  # same stem geometry, other input channels
            old: nn.Conv3d = net.stem[0]
            net.stem[0] = nn.Conv3d(in_channels, old.out_channels, old.kernel_size,  # type: ignore[arg-type]
                                    old.stride, old.padding, bias=False)  # type: ignore[arg-type]
        self.out_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.net(x.transpose(1, 2))
        return h


class FramePooled(nn.Module):
    """An image encoder applied to every frame, its features averaged over time."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.out_dim: int = image_encoder.out_dim  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        h: torch.Tensor = self.image_encoder(x.flatten(0, 1))
        return h.view(b, t, -1).mean(1)
