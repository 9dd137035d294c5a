"""Data sources: every source yields uint8 images (N, C, H, W) and optional labels.

`load_images` takes a built-in name (digits, mnist, cifar10, cifar100, stl10) or a path (a
folder, .zip or .tar of images, a .npy/.npz, an MNIST IDX, CIFAR python-batches or STL-10
binary folder). Image files are decoded once into a memory-mapped cache; broken ones are
skipped with a reason (`ImageData.skipped`, `write_skipped`).
"""

from simclr.data.builtin import DEFAULT_SIZE, NAMES, default_root
from simclr.data.builtin import load_digits as _digit_arrays
from simclr.data.cache import default_cache_dir
from simclr.data.imagedata import ImageData, convert_channels, resize_uint8, to_uint8_nchw
from simclr.data.skipped import skip_counts, skip_summary, write_skipped
from simclr.data.sources import load_array_file, load_images

BUILTIN = NAMES  # the built-in dataset names


def load_digits() -> ImageData:
    """scikit-learn's 1,797 handwritten digits: 8×8, 17 grey levels, 10 classes."""
    import torch

    images, labels = _digit_arrays()
    return ImageData(torch.from_numpy(images), torch.from_numpy(labels), "digits")


__all__ = [
    "BUILTIN",
    "DEFAULT_SIZE",
    "ImageData",
    "convert_channels",
    "default_cache_dir",
    "default_root",
    "load_array_file",
    "load_digits",
    "load_images",
    "resize_uint8",
    "skip_counts",
    "skip_summary",
    "to_uint8_nchw",
    "write_skipped",
]
