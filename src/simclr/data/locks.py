"""A lock that processes on the same data take through a file: the ranks of a torchrun job, or
two runs started together, so that one of them downloads or converts a data set while the
others wait and then use what it made. Without file locks (Windows) it does nothing: each
process then does the work itself, writing under temporary names as always."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created with its folder), waiting for it."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
