"""Memory-mapped uint8 files whose disk space is reserved before they are written: writing a
map onto a full disk kills the process (SIGBUS) instead of raising."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from simclr.errors import UserError


def new_mapped(path: Path, shape: tuple[int, ...], reserve: bool = True) -> np.memmap:
    """A new uint8 file of `shape` at `path`, mapped for writing. With `reserve` its space is
    reserved now: writing a memory map onto a full disk kills the process (SIGBUS) instead of
    raising. Without, the file is sparse and its writer reserves rows first (`reserve_rows`)."""
    size = int(np.prod(shape))
    with open(path, "wb") as f:
        if reserve and hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, size)
        else:
            f.truncate(size)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)


def reserve_rows(images: np.ndarray, start: int, stop: int) -> None:
    """Reserve the disk space of rows [start, stop) of `images` before they are written, when it
    is a memory-mapped file (a sparse one, see `new_mapped`): a full disk is then a one-line
    error instead of SIGBUS. Arrays in memory need nothing."""
    if not isinstance(images, np.memmap) or stop <= start or not hasattr(os, "posix_fallocate"):
        return
    row = images.nbytes // len(images)
    try:
        with open(str(images.filename), "r+b") as f:
            os.posix_fallocate(f.fileno(), images.offset + start * row, (stop - start) * row)
    except OSError as e:
        raise UserError(f"cannot write the image cache {images.filename}: {e.strerror or e} (free some "
                        "space, or set data.cache_dir or $SIMCLR_CACHE to another disk)") from None
