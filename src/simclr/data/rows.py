"""Rows of a large array read on demand: a subset of a memory-mapped set without a copy of it.

`Rows(base, index)` stands for `base[index]`. Indexing it with a tensor, an array or an int reads
just those rows; slicing it gives more `Rows`. So the training loop's batches, feature extraction
in chunks and the kNN monitor read from the memory-mapped cache only what they use, and host
memory stays bounded by the batch, not by the data set. Anything else (`.float()`, `torch.cat`,
`.numpy()`...) materializes `base[index]` first, as a plain subset would have: correct, at the
memory cost it always had.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Rows:
    """The rows `index` of `base` ((N, ...) tensor, typically memory-mapped), read on demand."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor) -> None:
        self.base = base
        self.index = index.to(torch.long)

    def __len__(self) -> int:
        return int(self.index.numel())

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def dim(self) -> int:
        return self.base.ndim

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    @property
    def nbytes(self) -> int:
        return len(self) * self.base[:1].nbytes

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return Rows(self.base, self.index[key])
        if isinstance(key, tuple):  # rows first, then the rest on what they read
            return self[key[0]][(slice(None), *key[1:])] if len(key) > 1 else self[key[0]]
        if isinstance(key, np.ndarray | list):
            key = torch.as_tensor(key)
        return self.base[self.index[key]]

    def materialize(self) -> torch.Tensor:
        return self.base[self.index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.materialize().numpy()
        return a if dtype is None else a.astype(dtype)

    def __getattr__(self, name: str) -> Any:
        # Any other tensor method works on the materialized rows (`images.float()`, `.to(...)`).
        if name.startswith("__") or name in ("base", "index"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def plain(a: Any) -> Any:
            if isinstance(a, Rows):
                return a.materialize()
            if isinstance(a, list | tuple):
                return type(a)(plain(x) for x in a)
            return a

        return func(*plain(args), **{k: plain(v) for k, v in (kwargs or {}).items()})

    def __repr__(self) -> str:
        return f"Rows({len(self)} of {tuple(self.base.shape)} {self.dtype})"


def take(data: torch.Tensor | Rows, index: np.ndarray | torch.Tensor) -> Rows:
    """`data[index]` without reading it (`Rows`)."""
    index = torch.as_tensor(index, dtype=torch.long)
    if isinstance(data, Rows):
        return Rows(data.base, data.index[index])
    return Rows(data, index)


def concat(a: torch.Tensor | Rows, b: torch.Tensor | Rows) -> torch.Tensor | Rows:
    """a then b: still `Rows` when both are rows of one base (a split set pretraining on all of
    it), else a copy."""
    if isinstance(a, Rows) and isinstance(b, Rows) and a.base is b.base:
        return Rows(a.base, torch.cat([a.index, b.index]))
    return torch.cat([x.materialize() if isinstance(x, Rows) else x for x in (a, b)])
