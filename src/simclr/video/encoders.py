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


class ClipEncoder(nn.Module):
    """f for the video modality: a clip encoder (VideoResNet or FramePooled) that also takes the
    stored videos. Training views are clips of T frames and pass straight through; a longer
    input (F > T frames: evaluation, embedding, the report) is encoded as the mean h of
    `eval_clips` evenly spaced T-frame clips (1: the central one), so every consumer of h sees
    the clip length the encoder was trained on."""

    def __init__(self, backbone: nn.Module, clip_frames: int, eval_clips: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.clip_frames = clip_frames
        self.eval_clips = eval_clips
        self.out_dim: int = backbone.out_dim  # type: ignore[assignment]

    def clip_starts(self, frames: int) -> list[int]:
        t = self.clip_frames
        if frames <= t:
            return [0]
        if self.eval_clips == 1:
            return [(frames - t) // 2]
        return sorted({round(s) for s in torch.linspace(0, frames - t, self.eval_clips).tolist()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f = x.shape[:2]  # (B, F, C, H, W)
        if f <= self.clip_frames:
            h: torch.Tensor = self.backbone(x)
            return h
        starts = self.clip_starts(f)
        clips = torch.cat([x[:, s : s + self.clip_frames] for s in starts])  # (n·B, T, C, H, W)
        return self.backbone(clips).view(len(starts), b, -1).mean(0)  # type: ignore[no-any-return]
