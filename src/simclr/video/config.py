"""The `video` config section: clip length, size and encoder."""

from __future__ import annotations

from dataclasses import dataclass

from simclr.config import Config, check, check_choice


@dataclass
class VideoConfig:
    """Video (`data.modality=video`): a folder of video files (class subfolders give labels),
    decoded once into the cache at a fixed length, size and frame rate."""

    # r3d_18, r2plus1d_18, mc3_18 (torchvision's 3-D ResNets), or an image encoder (small_cnn,
    # resnet18, ...) applied to every frame, its features averaged over time
    encoder: str = "r3d_18"
    frames: int = 16  # F frames kept per video (the first ones; a shorter video is looped)
    clip_frames: int = 8  # T frames per view: two clips from independent random starts in F
    size: int = 64  # frames are stored and viewed as size×size (the central square, resized)
    fps: float | None = None  # resample every video to this frame rate; None: each file's own
    # Evaluation, embedding and the report encode a stored video as the mean h of this many
    # evenly spaced T-frame clips (1: the central clip)
    eval_clips: int = 1


def validate(cfg: Config) -> None:
    from simclr.model import ENCODERS
    from simclr.video.encoders import VIDEO_RESNETS

    v: VideoConfig = cfg.video
    check_choice("video.encoder", v.encoder, (*VIDEO_RESNETS, *sorted(ENCODERS)))
    check(v.frames >= 1, f"video.frames must be at least 1, got {v.frames}")
    check(1 <= v.clip_frames <= v.frames,
          f"video.clip_frames must be in [1, video.frames={v.frames}], got {v.clip_frames}")
    check(v.size >= 8, f"video.size must be at least 8, got {v.size}")
    check(v.fps is None or v.fps > 0, f"video.fps must be positive, got {v.fps}")
    check(v.eval_clips >= 1, f"video.eval_clips must be at least 1, got {v.eval_clips}")
