"""The in-memory form every source is turned into, and tensor-level conversions on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from simclr.data.rows import Rows, take
from simclr.errors import UserError


@dataclass
class ImageData:
    """A set of square uint8 images, optionally labelled.

    `images` may be backed by a memory-mapped cache file; indexing it copies rows into memory.
    A subset's images are `Rows` of its parent's, read when indexed.
    """

    images: torch.Tensor | Rows  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64, or None for unlabeled data
    name: str
    # Files that could not be used, as (path, reason); reasons read "<kind>: <detail>".
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] | None = None  # class names by label index, when the source names them
    ids: list[str] | None = None  # each row's file path within the source, when it has files

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def inputs(self) -> torch.Tensor | Rows:
        """The images, under the name every modality's data shares (simclr.modality.Data)."""
        return self.images

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: np.ndarray | torch.Tensor) -> ImageData:
        """The rows at `index`, with the same name, classes and skipped list. The images are
        not copied (`Rows`): a subset of a memory-mapped set reads only the rows it is asked for."""
        idx = torch.as_tensor(index, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        ids = [self.ids[i] for i in idx.tolist()] if self.ids is not None else None
        return ImageData(take(self.images, idx), labels, self.name, list(self.skipped), self.classes, ids)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to size×size once, bilinear with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def center_square(images: torch.Tensor) -> torch.Tensor:
    """The central square of (N, C, H, W) images, side min(H, W) (a view)."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """1 → 3 channels by repetition, 3 → 1 by ITU-R 601 luma (Pillow's "L" weights)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().to(torch.uint8)
    raise UserError(f"cannot convert {c}-channel images to {channels} channels")


def to_uint8_nchw(x: np.ndarray, origin: object) -> np.ndarray:
    """Images as N×H×W, N×H×W×C or N×C×H×W (uint8, or float in [0, 1] or [0, 255]) → uint8
    N×C×H×W with C in (1, 3): alpha is dropped, two channels (grey + alpha) keep the grey."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 2, 3, 4) and x.shape[1] not in (1, 2, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 2, 3, 4):
        raise UserError(f"{origin}: expected images as N×H×W, N×H×W×C or N×C×H×W, got {x.shape}")
    if x.shape[1] == 4:
        x = x[:, :3]
    elif x.shape[1] == 2:
        x = x[:, :1]
    if x.dtype == np.bool_:
        x = x.astype(np.uint8) * 255
    elif x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number):
            raise UserError(f"{origin}: images must be numbers, got dtype {x.dtype}")
        is_float = np.issubdtype(x.dtype, np.floating)
        x = np.nan_to_num(x.astype(np.float64))
        # Floats in [0, 1] are the usual convention; anything larger is taken as 0..255.
        scale = 255.0 if is_float and float(x.max(initial=0)) <= 1.0 else 1.0
        x = np.clip(np.round(x * scale), 0, 255).astype(np.uint8)
    return x


def fit_uint8(images: np.ndarray, channels: int | None, size: int | None) -> np.ndarray:
    """uint8 N×C×H×W → the configured channels and size×size (central square, then
    antialiased bilinear); None keeps the source's own."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if channels is not None:
        t = convert_channels(t, channels)
    if size is not None or t.shape[-1] != t.shape[-2]:
        t = center_square(t)
        t = resize_uint8(t, size or int(t.shape[-1]))
    return t.numpy()
