"""Array files: a .npy of images, or a .npz of images with optional labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simclr.data.imagedata import to_uint8_nchw
from simclr.errors import UserError

IMAGE_KEYS = ("x", "images", "X", "data", "imgs", "image", "inputs")
LABEL_KEYS = ("y", "labels", "Y", "targets", "label", "target")


def read_array_file(path: Path, split: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 N×C×H×W images and int64 labels (or None) from a .npy/.npz.

    Images may be N×H×W, N×H×W×C or N×C×H×W, uint8 or float in [0, 1]. In an .npz the images
    are the first of `x`, `images`, `X`, `data`, ... present (else its only array), labels the
    first of `y`, `labels`, `targets`, ...; with a split (or when only split keys exist, as in
    Keras' mnist.npz) `x_train`/`y_train` or `x_test`/`y_test`.
    """
    if path.suffix not in (".npy", ".npz"):
        raise UserError(f"unsupported data source {path} (expected .npy or .npz)")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
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
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if labels is not None and len(labels) != len(images):
        raise UserError(f"{path}: {len(labels)} labels ({label_key}) for {len(images)} images ({image_key})")
    return images, labels


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
