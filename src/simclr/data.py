"""Data sources: every source yields uint8 images (N, C, H, W) and optional labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from simclr.errors import UserError


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64, or None for unlabeled data
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: np.ndarray | torch.Tensor) -> ImageData:
        idx = torch.as_tensor(index, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        return ImageData(self.images[idx], labels, self.name)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to size×size once, bilinear with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().to(torch.uint8)
    raise UserError(f"cannot convert {c}-channel images to {channels} channels")


def load_digits() -> ImageData:
    """scikit-learn's 1,797 handwritten digits: 8×8, 17 grey levels, 10 classes."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    return ImageData(images, torch.from_numpy(d.target).long(), "digits")


BUILTIN = {"digits": load_digits}

# Built-in sets too small for crops at their own size are upsampled to this by default.
DEFAULT_SIZE = {"digits": 16}


def load_images(source: str, channels: int | None = None, image_size: int | None = None) -> ImageData:
    """Load a data source by built-in name or path, converted to `channels` and `image_size`
    (None keeps the source's own)."""
    if source in BUILTIN:
        data = BUILTIN[source]()
        image_size = image_size or DEFAULT_SIZE.get(source)
    elif not Path(source).exists():
        raise UserError(f"data path does not exist: {source}")
    else:
        data = load_array_file(Path(source))
    images = data.images
    if channels is not None:
        images = convert_channels(images, channels)
    if image_size is not None:
        images = resize_uint8(images, image_size)
    return ImageData(images, data.labels, data.name)


def load_array_file(path: Path) -> ImageData:
    """A .npy/.npz of images (N×H×W, N×H×W×C or N×C×H×W; uint8 or float in [0, 1]),
    with labels from a `y` or `labels` array in an .npz."""
    if path.suffix not in (".npy", ".npz"):
        raise UserError(f"unsupported data source {path} (expected a built-in name or .npy/.npz)")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    labels = None
    if isinstance(arrays, np.lib.npyio.NpzFile):
        keys = list(arrays.keys())
        label_key = next((k for k in ("y", "labels") if k in keys), None)
        image_key = next((k for k in ("x", "images", "X") if k in keys), None)
        image_key = image_key or next((k for k in keys if k != label_key), None)
        if image_key is None:
            raise UserError(f"{path} holds no image array")
        x = arrays[image_key]
        if label_key is not None:
            labels = torch.from_numpy(np.asarray(arrays[label_key]).astype(np.int64))
    else:
        x = arrays
    return ImageData(to_uint8_nchw(x, path), labels, path.stem)


def to_uint8_nchw(x: np.ndarray, origin: Path | str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise UserError(f"{origin}: expected images as N×H×W, N×H×W×C or N×C×H×W, got {x.shape}")
    if x.shape[1] == 4:
        x = x[:, :3]  # drop alpha
    if x.dtype != np.uint8:
        x = np.clip(np.round(x.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x))
