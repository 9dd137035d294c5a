"""Read a video file into uint8 frames at a chosen size and frame rate, and write one losslessly.

PyAV (FFmpeg) decodes: torchvision no longer reads video in current releases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr.data.imagedata import fit_uint8
from simclr.errors import UserError
from simclr.extras import require


def _av() -> Any:
    return require("video")


def read_video(
    path: str | Path, size: int | None = None, fps: float | None = None, max_frames: int | None = None,
    channels: int | None = 3,
) -> tuple[np.ndarray, float]:
    """(frames (T, C, S, S) uint8, the frame rate they are at). `fps` resamples in time (each
    output time takes the latest frame shown by then, so a 20 fps clip read at 10 fps keeps every
    second frame); `size` takes the central square and resizes it with antialiasing; at most
    `max_frames` frames from the start. A file FFmpeg cannot decode is a UserError naming it."""
    av = _av()
    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / rate
                if fps is not None and max_frames is not None and t * fps >= max_frames:
                    break  # later frames cannot be picked
                if fps is None and max_frames is not None and len(frames) >= max_frames:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
    except (av.error.FFmpegError, OSError, ValueError) as e:  # type: ignore[attr-defined]
        raise UserError(f"{path}: cannot decode video ({e})") from None
    if not frames:
        raise UserError(f"{path}: no frames decoded")
    if fps is not None:
        start = times[0]
        count = int((times[-1] - start) * fps + 1e-6) + 1
        if max_frames is not None:
            count = min(count, max_frames)
        picks = np.searchsorted(np.asarray(times), start + np.arange(count) / fps + 1e-6, side="right") - 1
        frames = [frames[i] for i in picks]
        rate = fps
    video = np.stack(frames).transpose(0, 3, 1, 2)  # (T, 3, H, W)
    return fit_uint8(video, channels, size), rate


def write_video(path: str | Path, frames: np.ndarray | torch.Tensor, fps: float = 10) -> Path:
    """Frames (T, C, H, W) or (T, H, W) uint8 (C = 1 or 3) → a lossless FFV1 Matroska file
    (decoding gives back exactly these pixels)."""
    av = _av()
    x = np.asarray(frames, dtype=np.uint8)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"frames must be (T, C, H, W) with C in (1, 3), got {x.shape}")
    rgb = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x
    path = Path(path)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = rgb.shape[3], rgb.shape[2], "bgr0"
        for frame in rgb.transpose(0, 2, 3, 1):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
