"""A folder of video files (class subfolders give labels) decoded once into the cache as uint8
clips (N, F, C, S, S) at a fixed size, frame rate and length, then memory-mapped like images."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from simclr.data.cache import Built, Slot, cache_root
from simclr.errors import UserError
from simclr.video.io import read_video

log = logging.getLogger("simclr")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


def video_folder(folder: Path, sample: int = 32) -> bool:
    """Whether most of the first `sample` files of a folder (or of its class subfolders) are
    videos. Stops early, so an image folder of a million files costs a few directory reads."""
    found: list[str] = []
    try:
        for entry in folder.iterdir():  # unsorted: no full listing of a huge folder
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                found += [p.suffix.lower() for _, p in zip(range(4), entry.iterdir(), strict=False)
                          if p.is_file() and not p.name.startswith(".")]
            elif entry.is_file():
                found.append(entry.suffix.lower())
            if len(found) >= sample:
                break
    except OSError:
        return False
    return sum(s in VIDEO_SUFFIXES for s in found) > len(found) / 2


@dataclass
class VideoData:
    videos: torch.Tensor  # (N, F, C, S, S) uint8
    labels: torch.Tensor | None
    name: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] | None = None
    ids: list[str] | None = None  # each video's path within the folder

    @property
    def inputs(self) -> torch.Tensor:
        return self.videos

    def __len__(self) -> int:
        return int(self.videos.shape[0])

    def subset(self, index: np.ndarray | torch.Tensor) -> VideoData:
        idx = torch.as_tensor(index, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        ids = [self.ids[i] for i in idx.tolist()] if self.ids is not None else None
        return VideoData(self.videos[idx], labels, self.name, list(self.skipped), self.classes, ids)


def list_videos(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Video files under `folder`, sorted; labels from the first-level subfolders when every
    file is inside one."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
    parts = [p.relative_to(folder).parts for p in files]
    if all(len(q) >= 2 for q in parts):
        classes = sorted({q[0] for q in parts})
        return files, [classes.index(q[0]) for q in parts], classes
    return files, None, None


def skipped_summary(folder: Path, skipped: list[tuple[str, str]], shown: int = 5) -> str:
    """E.g. "clips: 2 video files skipped (undecodable): a/x.mp4, b/y.avi"."""
    names = [os.path.relpath(path, folder) for path, _ in skipped]
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    noun = "file" if len(names) == 1 else "files"
    return f"{folder}: {len(names)} video {noun} skipped (undecodable): {', '.join(names[:shown])}{more}"


def fit_frames(video: np.ndarray, frames: int) -> np.ndarray:
    """Exactly `frames` frames: the first ones, or a short video looped from its start."""
    if len(video) >= frames:
        return video[:frames]
    return video[np.arange(frames) % len(video)]


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime) of a file, the cache's fingerprint; (-1, -1) when it is missing."""
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def decode_video_files(
    files: list[Path], ids: list[str], name: str, identity: dict[str, Any], size: int, fps: float | None,
    frames: int, channels: int, cache_dir: str | None, strict: bool,
    labels: list[int] | None = None, classes: list[str] | None = None,
) -> Any:
    """Decode videos once (at `size` px, `fps`, `frames` frames; `channels` 1 or 3) into the
    cache, reused while the files and the settings are unchanged; returns the cache entry (its
    `images` are the clips of the files kept, `ids` their ids, `skipped` the others with their
    reason). A missing or undecodable file is skipped, or stops the load with `strict`."""
    identity = {**identity, "size": size, "fps": fps, "frames": frames, "channels": channels}
    stamps = [[str(p), *_stamp(p)] for p in files]
    slot = Slot.for_source(cache_root(cache_dir), name, identity, stamps)
    cached = slot.read()
    if cached is not None:
        return cached
    try:
        out = slot.allocate((len(files), frames, channels, size, size))
        kept: list[int] = []
        skipped: list[tuple[str, str]] = []
        for i, path in enumerate(tqdm(files, desc=f"decoding {name}", unit="video")):
            try:
                if not path.is_file():
                    raise UserError(f"{path}: no such file")
                video, _ = read_video(path, size, fps, frames, channels=channels)
            except UserError as e:
                if strict:
                    raise
                skipped.append((str(path), f"undecodable: {str(e).removeprefix(f'{path}: ')}"))
                continue
            out[len(kept)] = fit_frames(video, frames)
            kept.append(i)
        if not kept:
            raise UserError(f"no decodable videos in {name} ({len(skipped)} skipped)")
        kept_labels = np.asarray(labels, dtype=np.int64)[kept] if labels is not None else None
        return slot.write(Built(out, len(kept), kept_labels, classes, skipped, ids=[ids[i] for i in kept]))
    finally:
        slot.cleanup()


def load_videos(
    source: str, size: int = 64, fps: float | None = None, frames: int = 16, channels: int | None = 3,
    cache_dir: str | None = None, strict: bool = False,
) -> VideoData:
    """Decode every video of a folder once (at `size` px, `fps`, `frames` frames; channels 1 or
    3) into the cache; undecodable files are skipped with their reason, or stop the load with
    `strict`."""
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(f"video data must be a folder of video files, got {source}")
    files, labels, classes = list_videos(folder)
    identity = {"kind": "video-folder", "path": os.path.abspath(folder)}
    cached = decode_video_files(files, [str(f.relative_to(folder)) for f in files], folder.name, identity, size, fps,
                                frames, channels or 3, cache_dir, strict, labels, classes)
    if cached.skipped:
        log.warning("%s", skipped_summary(folder, cached.skipped))
    label_tensor = torch.from_numpy(cached.labels.astype(np.int64)) if cached.labels is not None else None
    return VideoData(torch.from_numpy(cached.images), label_tensor, folder.name, cached.skipped, cached.classes,
                     cached.ids)
