"""The video modality: a folder of video files (class subfolders give labels) decoded with PyAV
(an optional dependency: `pip install 'simclr-torch[video]'`) into uint8 videos (N, F, C, S, S); two
views are clips of T frames from different times of the same video, each with one draw of the
image recipe for all its frames; 3-D ResNets or a frame-pooled image encoder; raw pixels of the
central clip as the baseline. Moving-MNIST-style clips rendered from real digits serve the tests
and the benchmark."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simclr.errors import UserError
from simclr.evaluate import feature_metrics
from simclr.experiment import SingleEncoder
from simclr.image import build_augment
from simclr.modality import Augment, Baseline
from simclr.model import build_encoder
from simclr.video.augment import ClipAugment
from simclr.video.config import VideoConfig, validate
from simclr.video.data import VIDEO_SUFFIXES, VideoData, load_videos, video_folder
from simclr.video.encoders import VIDEO_RESNETS, ClipEncoder, FramePooled, VideoResNet

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simclr.config import Config


def same_classes(data: VideoData, classes: list[str] | None, source: str) -> VideoData:
    """A second folder's labels renumbered to the first folder's class names."""
    if classes is None or data.classes is None or data.classes == classes or data.labels is None:
        return data
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise UserError(f"{source}: classes {', '.join(unknown)} are not among the training classes")
    index = torch.tensor([classes.index(name) for name in data.classes])
    return VideoData(data.videos, index[data.labels], data.name, data.skipped, classes, data.ids)


def raw_clips(videos: torch.Tensor, clip_frames: int, max_frames: int = 8, max_size: int = 16) -> torch.Tensor:
    """The central T-frame clip of each video as a flat vector in [0, 1]: at most `max_frames`
    evenly spaced frames, each area-averaged down to at most `max_size` px (a linear probe on
    every pixel of every frame would be slow and no better)."""
    start = max(0, (videos.shape[1] - clip_frames) // 2)
    t = min(clip_frames, videos.shape[1])
    keep = start + torch.linspace(0, t - 1, min(t, max_frames)).round().long()
    rows = []
    for start in range(0, len(videos), 256):  # float copies of a few clips at a time
        chunk = videos[start : start + 256]
        x = chunk[:, keep].flatten(0, 1).float() / 255  # (b·t, C, S, S)
        if x.shape[-1] > max_size:
            x = F.adaptive_avg_pool2d(x, max_size)
        rows.append(x.reshape(len(chunk), -1))
    return torch.cat(rows)


def raw_pixels_baseline(
    train: VideoData, test: VideoData, subsets: dict[str, np.ndarray], k: int, seed: int, clip_frames: int = 8
) -> tuple[str, dict[str, float]]:
    """The image baseline's metrics (linear, kNN, labelled subsets) on `raw_clips`."""
    assert train.labels is not None and test.labels is not None
    xtr, xte = raw_clips(train.inputs, clip_frames), raw_clips(test.inputs, clip_frames)
    return "raw_pixels", feature_metrics(xtr, train.labels.long(), xte, test.labels.long(), subsets, k, seed)


class VideoModality(SingleEncoder):
    name = "video"
    config = VideoConfig

    def validate(self, cfg: Config) -> None:
        validate(cfg)

    def claims(self, path: Path) -> bool:
        """A video file, or a folder (with or without class subfolders) of mostly videos."""
        return path.suffix.lower() in VIDEO_SUFFIXES or (path.is_dir() and video_folder(path))

    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[VideoData, None]:
        v = cfg.video
        if like is not None:  # a second folder of this run: the same length, channels and size
            input_shape = [int(n) for n in like.inputs.shape[1:]]
        frames, channels, size = (
            (input_shape[0], input_shape[1], input_shape[-1]) if input_shape else (v.frames, cfg.data.channels, v.size)
        )
        data = load_videos(source, size, v.fps, frames, channels or 3, cfg.data.cache_dir, cfg.data.strict)
        return (same_classes(data, like.classes, source) if like is not None else data), None

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        return ClipAugment(build_augment(cfg.augment, input_shape[-1], cfg.compile), cfg.video.clip_frames)

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        v = cfg.video
        channels, size = input_shape[1], input_shape[-1]
        backbone = (VideoResNet(v.encoder, channels) if v.encoder in VIDEO_RESNETS
                    else FramePooled(build_encoder(v.encoder, channels, size, cfg.model.cifar_stem)))
        return ClipEncoder(backbone, v.clip_frames, v.eval_clips)

    def baseline(self, cfg: Config) -> Baseline:
        return partial(raw_pixels_baseline, clip_frames=cfg.video.clip_frames)

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        return gallery_figure(data.inputs, augment, seed)


def gallery_figure(videos: torch.Tensor, augment: Augment, seed: int, shown: int = 3, columns: int = 8) -> Figure:
    """For a few videos: a strip of the video's frames, then strips of its two views (clips of T
    frames from random starts, one crop/flip/colour draw per clip); at most `columns` evenly
    spaced frames per strip."""
    from matplotlib.figure import Figure

    gen = torch.Generator().manual_seed(seed)
    videos = videos[:shown]
    x1, x2 = augment(videos, gen), augment(videos, gen)  # (n, T, C, S, S) each
    strips = [(title, batch[i]) for i in range(len(videos))
              for title, batch in ((f"video {i + 1}", videos.float() / 255), ("t(x)", x1), ("t'(x)", x2))]
    fig = Figure(figsize=(1.1 * columns, 1.2 * len(strips)), layout="constrained")
    axes = fig.subplots(len(strips), columns, squeeze=False)
    for row, (title, frames) in enumerate(strips):
        picks = torch.linspace(0, len(frames) - 1, min(columns, len(frames))).round().long().tolist()
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(picks):
                ax.axis("off")
                continue
            frame = frames[picks[col]].clamp(0, 1)  # (C, S, S)
            if frame.shape[0] == 1:
                ax.imshow(frame[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(frame.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(f"frame {picks[col]}", fontsize=7)
        axes[row][0].set_ylabel(title, fontsize=9)
    return fig


MODALITY = VideoModality()

__all__ = ["MODALITY", "ClipAugment", "ClipEncoder", "FramePooled", "VideoData", "VideoResNet", "load_videos",
           "raw_clips"]
