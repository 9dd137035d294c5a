"""Embeddings: the representation h = f(x) of every input, written where numpy opens it in one line.

h (the encoder's output, before the projection head) is what SimCLR keeps for downstream use
(Chen et al. 2020, arXiv:2002.05709, section 2.1: z = g(h) is thrown away after training).

    data = np.load("embeddings.npz"); data["embeddings"], data["ids"], data["labels"]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simclr.evaluate import extract_features


def embed_to_file(
    encoder: nn.Module, images: torch.Tensor, ids: Sequence[str] | None, labels: torch.Tensor | np.ndarray | None,
    out_path: Path, batch_size: int = 256, device: torch.device | str = "cpu", progress: bool = True,
) -> Path:
    """Write h for uint8 `images` (N, C, H, W) to an .npz with `embeddings` (N, d) float32,
    `ids` (N,) strings (the given identifiers, e.g. file paths, or the row indices) and `labels`
    (N,) int64 (-1 where unknown). Batched in eval mode under `no_grad` with a progress bar;
    the encoder's parameters, buffers and mode are left as they were. The file is written
    atomically (a temporary file renamed over `out_path`)."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to embed")
    if ids is not None and len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} images")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    h = extract_features(encoder, images, batch_size, device, progress="embedding" if progress else None)
    id_array = np.array([str(i) for i in (ids if ids is not None else range(n))], dtype=str)
    label_array = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with open(tmp, "wb") as f:  # a file object, so numpy does not append its own ".npz"
        np.savez(f, embeddings=h.numpy().astype(np.float32).reshape(n, -1), ids=id_array, labels=label_array)
    os.replace(tmp, out_path)
    return out_path
