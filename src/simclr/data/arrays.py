"""Array files: a .npy of images, or a .npz of images with optional labels."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from simclr.data.imagedata import to_uint8_nchw
from simclr.errors import UserError

IMAGE_KEYS = ("x", "images", "X", "data", "imgs", "image", "inputs")
LABEL_KEYS = ("y", "labels", "Y", "targets", "label", "target")

# The most a zip member's bytes can grow when decompressed (deflate's limit is about 1032:1):
# a member declaring more than this times its stored size is lying about its size.
MAX_EXPANSION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1100}


def read_array_file(path: Path, split: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 N×C×H×W images and int64 labels (or None) from a .npy/.npz.

    Images may be N×H×W, N×H×W×C or N×C×H×W, uint8 or float in [0, 1]. In an .npz the images
    are the first of `x`, `images`, `X`, `data`, ... present (else its only array), labels the
    first of `y`, `labels`, `targets`, ...; with a split (or when only split keys exist, as in
    Keras' mnist.npz) `x_train`/`y_train` or `x_test`/`y_test`.
    """
    if path.suffix not in (".npy", ".npz"):
        raise UserError(f"unsupported data source {path} (expected .npy or .npz)")
    check_declared_sizes(path)
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, MemoryError) as e:  # MemoryError: honestly too large
        raise UserError(f"cannot read {path}: {_first_line(e)}") from None
    if isinstance(arrays, np.ndarray):
        if split is not None:
            raise UserError(f"{path} is a single array: it has no {split} split")
        return to_uint8_nchw(arrays, path), None
    with arrays:
        keys = list(arrays.keys())
        image_key, label_key = _pick_keys(keys, split, path)
        try:
            images = to_uint8_nchw(arrays[image_key], f"{path}[{image_key}]")
            labels = None
            if label_key is not None:
                labels = np.asarray(arrays[label_key]).reshape(-1).astype(np.int64)
        except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as e:
            raise UserError(f"cannot read {path}: {_first_line(e)}") from None
    if labels is not None and len(labels) != len(images):
        raise UserError(f"{path}: {len(labels)} labels ({label_key}) for {len(images)} images ({image_key})")
    return images, labels


def check_declared_sizes(path: Path) -> None:
    """Refuse a .npy, or an .npz member, whose header declares more data than the file holds:
    np.load allocates the declared size before reading, so a tiny file claiming terabytes
    would end in MemoryError. Files np.load cannot parse are left to its own error."""
    try:
        with open(path, "rb") as f:
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # what np.load takes for an .npz
                f.seek(0)
                _check_header(f, os.fstat(f.fileno()).st_size, str(path))
                return
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    _check_member(zf, info, f"{path}[{info.filename[:-4]}]")
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
        raise UserError(f"cannot read {path}: {_first_line(e)}") from None


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> None:
    expansion = MAX_EXPANSION.get(info.compress_type)
    if expansion is not None and info.file_size > expansion * info.compress_size + 1024:
        raise UserError(f"{where}: the archive declares {info.file_size} bytes for {info.compress_size} stored")
    with zf.open(info) as f:
        _check_header(f, info.file_size, where)


def _check_header(f: IO[bytes], available: int, where: str) -> None:
    """`available` is the byte count of the whole .npy, header included, read from `f`."""
    try:
        version = np.lib.format.read_magic(f)
        # Version 3.0 differs from 2.0 only in its header's encoding (UTF-8 field names), which
        # read as latin-1 give the same shape and item size.
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, SyntaxError, EOFError):
        return  # not a .npy np.load can read: its own error says why
    if dtype.hasobject:
        return  # refused by np.load (allow_pickle=False)
    declared = math.prod(shape) * dtype.itemsize
    remaining = available - f.tell()
    if declared > remaining:
        raise UserError(f"{where}: the header declares a {dtype} array of shape {tuple(shape)} "
                        f"({declared} bytes) but only {max(remaining, 0)} bytes follow")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _pick_keys(keys: list[str], split: str | None, path: Path) -> tuple[str, str | None]:
    if split is None and not any(k in keys for k in IMAGE_KEYS) and any(k.endswith("_train") for k in keys):
        split = "train"
    if split is not None:
        image_key = next((f"{k}_{split}" for k in IMAGE_KEYS if f"{k}_{split}" in keys), None)
        if image_key is None:
            raise UserError(f"{path} has no {split} images (expected x_{split}; found {', '.join(keys)})")
        label_key = next((f"{k}_{split}" for k in LABEL_KEYS if f"{k}_{split}" in keys), None)
        return image_key, label_key
    label_key = next((k for k in LABEL_KEYS if k in keys), None)
    image_key = next((k for k in IMAGE_KEYS if k in keys), None)
    image_key = image_key or next((k for k in keys if k != label_key), None)
    if image_key is None:
        raise UserError(f"{path} holds no image array")
    return image_key, label_key
